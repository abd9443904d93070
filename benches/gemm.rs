//! sgemm benchmarks: square sizes per micro-kernel on the global pool and on one
//! thread, the skinny conv-like shapes, and the naive f64 reference as a baseline on
//! small sizes. Throughput is in flops (2 m n k), so criterion's "elem/s" reads as
//! FLOP/s. Quick run: `cargo bench --bench gemm -- --quick`.

use std::hint::black_box;

use convinit::gemm::{Kernel, sgemm_naive, sgemm_with_kernel};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;

/// A deterministic matrix with entries in [-1, 1).
fn matrix(rows: usize, cols: usize, seed: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |(i, j)| {
        ((i * 131 + j * 71 + seed * 17) % 257) as f32 / 128.0 - 1.0
    })
}

/// The kernels this CPU supports.
fn kernels() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|k| k.is_supported())
        .collect()
}

/// Registers `group/kernel/label` for an `m x k x n` product, optionally in a pool of
/// `threads` threads.
fn bench_shape(
    c: &mut Criterion,
    group: &str,
    (m, k, n): (usize, usize, usize),
    label: &str,
    threads: Option<usize>,
) {
    let a = matrix(m, k, 1);
    let b = matrix(k, n, 2);
    let mut out = Array2::<f32>::zeros((m, n));
    let pool = threads.map(|t| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .expect("thread pool")
    });
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
    if m * n * k >= 512 * 512 * 512 {
        g.sample_size(10);
    }
    for kernel in kernels() {
        let mut run = || {
            sgemm_with_kernel(kernel, 1.0, a.view(), b.view(), 0.0, out.view_mut()).expect("sgemm");
            black_box(&out);
        };
        g.bench_function(BenchmarkId::new(kernel.name(), label), |bch| match &pool {
            Some(p) => p.install(|| bch.iter(&mut run)),
            None => bch.iter(&mut run),
        });
    }
    g.finish();
}

fn square(c: &mut Criterion) {
    for n in [64, 256, 512, 1024, 2048] {
        bench_shape(c, "sgemm", (n, n, n), &n.to_string(), None);
    }
    for n in [256, 1024] {
        bench_shape(c, "sgemm_1thread", (n, n, n), &n.to_string(), Some(1));
    }
}

fn conv_shapes(c: &mut Criterion) {
    // (m, k, n): output channels, Cin*kh*kw, pixels of the batch.
    for (m, k, n) in [
        (8, 25, 196 * 100),
        (32, 144, 16 * 100),
        (64, 576, 3136),
        (256, 2304, 784),
    ] {
        let label = format!("m{m}_k{k}_n{n}");
        bench_shape(c, "sgemm_conv", (m, k, n), &label, None);
    }
}

fn naive_baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("naive");
    for n in [64, 128] {
        let a = matrix(n, n, 1);
        let b = matrix(n, n, 2);
        let mut out = Array2::<f32>::zeros((n, n));
        g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |bch| {
            bch.iter(|| {
                sgemm_naive(1.0, a.view(), b.view(), 0.0, out.view_mut()).expect("naive");
                black_box(&out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, naive_baseline, square, conv_shapes);
criterion_main!(benches);
