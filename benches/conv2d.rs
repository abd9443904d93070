//! conv2d benchmarks on the shapes `examples/bench.rs` and PyTorch's anchor measure:
//! `conv2d_fwd/<shape>` and `conv2d_fwd_bwd/<shape>` (forward, then the input, weight
//! and bias gradients) on the global pool, each path forced on a small shape
//! (`conv2d_path/...`), and a naive direct convolution (plain loops) as the baseline on
//! `seed_l2`. Throughput is in flops (2 N O L C k^2 per pass; 3x for fwd+bwd).
//! Quick run: `cargo bench --bench conv2d -- --quick`.

use std::hint::black_box;

use convinit::gemm::Kernel;
use convinit::ops::{
    Conv2dGeometry, Conv2dOptions, ConvPlan, ForwardAlgo, InputGradAlgo, WeightGradAlgo, conv2d,
    conv2d_backward, conv2d_with_plan,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array1, Array4};

/// (name, [N, C, H, W, O, k, stride, padding]), as `examples/bench.rs`.
const SHAPES: &[(&str, [usize; 8])] = &[
    ("seed_l1", [100, 1, 28, 28, 8, 5, 2, 2]),
    ("seed_l2", [100, 8, 14, 14, 16, 3, 2, 1]),
    ("seed_l3", [100, 16, 7, 7, 32, 3, 2, 1]),
    ("seed_l4", [100, 32, 4, 4, 1, 3, 2, 1]),
    ("nb_32x1x5", [200, 1, 28, 28, 32, 5, 1, 0]),
    ("resnet_64", [32, 64, 56, 56, 64, 3, 1, 1]),
    ("resnet_128s2", [32, 64, 56, 56, 128, 3, 2, 1]),
    ("vgg_256", [8, 256, 28, 28, 256, 3, 1, 1]),
];

/// Deterministic tensors with entries in [-1, 1).
fn tensor(shape: (usize, usize, usize, usize), seed: usize) -> Array4<f32> {
    Array4::from_shape_fn(shape, |(a, b, c, d)| {
        ((a * 131 + b * 71 + c * 37 + d * 13 + seed * 17) % 257) as f32 / 128.0 - 1.0
    })
}

struct Problem {
    x: Array4<f32>,
    w: Array4<f32>,
    b: Array1<f32>,
    dy: Array4<f32>,
    opts: Conv2dOptions,
    flops: u64,
}

fn problem(s: [usize; 8]) -> Problem {
    let [n, c, h, w, o, k, st, p] = s;
    let opts = Conv2dOptions::new()
        .with_stride((st, st))
        .with_padding((p, p));
    let geo = Conv2dGeometry::new("bench", [n, c, h, w], [o, c, k, k], &opts).expect("geometry");
    let (_, _, oh, ow) = geo.y_shape();
    Problem {
        x: tensor((n, c, h, w), 1),
        w: tensor((o, c, k, k), 2).mapv(|v| v * 0.1),
        b: Array1::from_shape_fn(o, |i| i as f32 * 0.01),
        dy: tensor((n, o, oh, ow), 3),
        opts,
        flops: 2 * (n * o * oh * ow * c * k * k) as u64,
    }
}

fn bench_shapes(c: &mut Criterion) {
    for &(name, s) in SHAPES {
        let pb = problem(s);
        let big = pb.flops > 1_000_000_000;
        let mut g = c.benchmark_group("conv2d_fwd");
        g.throughput(Throughput::Elements(pb.flops));
        if big {
            g.sample_size(10);
        }
        g.bench_function(name, |bch| {
            bch.iter(|| {
                black_box(
                    conv2d(pb.x.view(), pb.w.view(), Some(pb.b.view()), &pb.opts).expect("conv"),
                )
            })
        });
        g.finish();
        let mut g = c.benchmark_group("conv2d_fwd_bwd");
        g.throughput(Throughput::Elements(3 * pb.flops));
        if big {
            g.sample_size(10);
        }
        g.bench_function(name, |bch| {
            bch.iter(|| {
                black_box(
                    conv2d(pb.x.view(), pb.w.view(), Some(pb.b.view()), &pb.opts).expect("conv"),
                );
                black_box(
                    conv2d_backward(pb.x.view(), pb.w.view(), true, pb.dy.view(), &pb.opts)
                        .expect("conv"),
                )
            })
        });
        g.finish();
    }
}

/// Each path forced on seed_l2 (and the pointwise lowering on a 1x1 conv).
fn bench_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv2d_path");
    let pb = problem([100, 8, 14, 14, 16, 3, 2, 1]);
    g.throughput(Throughput::Elements(pb.flops));
    let geo =
        Conv2dGeometry::new("bench", [100, 8, 14, 14], [16, 8, 3, 3], &pb.opts).expect("geometry");
    let base = ConvPlan::choose(&geo, rayon::current_num_threads());
    let variants = [
        ("chosen", base),
        (
            "rows_not_map",
            ConvPlan {
                use_map: false,
                ..base
            },
        ),
        (
            "one_image_per_tile",
            ConvPlan {
                tile_cols: 49,
                ..base
            },
        ),
        (
            "serial",
            ConvPlan {
                parallel: false,
                ..base
            },
        ),
        (
            "columns_not_direct",
            ConvPlan {
                forward: ForwardAlgo::Columns,
                input_grad: InputGradAlgo::Columns,
                weight_grad: WeightGradAlgo::Columns,
                ..base
            },
        ),
    ];
    // The chosen algorithms on each GEMM kernel this CPU runs.
    let kernels = Kernel::ALL
        .into_iter()
        .filter(|k| k.is_supported())
        .map(|kernel| (kernel.name(), ConvPlan { kernel, ..base }));
    for (label, plan) in variants.into_iter().chain(kernels) {
        g.bench_function(BenchmarkId::new("seed_l2", label), |bch| {
            bch.iter(|| {
                black_box(
                    conv2d_with_plan(pb.x.view(), pb.w.view(), Some(pb.b.view()), &pb.opts, plan)
                        .expect("conv"),
                )
            })
        });
    }
    let pw = problem([32, 64, 28, 28, 64, 1, 1, 0]);
    let geo =
        Conv2dGeometry::new("bench", [32, 64, 28, 28], [64, 64, 1, 1], &pw.opts).expect("geometry");
    let base = ConvPlan::choose(&geo, rayon::current_num_threads());
    g.throughput(Throughput::Elements(pw.flops));
    for (label, plan) in [
        ("pointwise", base),
        (
            "im2col",
            ConvPlan {
                forward: ForwardAlgo::Columns,
                ..base
            },
        ),
    ] {
        g.bench_function(BenchmarkId::new("pw_32x64x28x28", label), |bch| {
            bch.iter(|| {
                black_box(
                    conv2d_with_plan(pw.x.view(), pw.w.view(), Some(pw.b.view()), &pw.opts, plan)
                        .expect("conv"),
                )
            })
        });
    }
    g.finish();
}

/// The baseline: a direct convolution in plain loops (no im2col, no GEMM), stride and
/// padding only.
fn naive_conv(
    x: &Array4<f32>,
    w: &Array4<f32>,
    b: &Array1<f32>,
    stride: usize,
    pad: usize,
) -> Array4<f32> {
    let (n, c, h, wd) = x.dim();
    let (o, _, k, _) = w.dim();
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (wd + 2 * pad - k) / stride + 1;
    let mut y = Array4::<f32>::zeros((n, o, oh, ow));
    for ni in 0..n {
        for oi in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[oi];
                    for ci in 0..c {
                        for i in 0..k {
                            let Some(iy) = (oy * stride + i).checked_sub(pad).filter(|&v| v < h)
                            else {
                                continue;
                            };
                            for j in 0..k {
                                let Some(ix) =
                                    (ox * stride + j).checked_sub(pad).filter(|&v| v < wd)
                                else {
                                    continue;
                                };
                                acc += x[[ni, ci, iy, ix]] * w[[oi, ci, i, j]];
                            }
                        }
                    }
                    y[[ni, oi, oy, ox]] = acc;
                }
            }
        }
    }
    y
}

fn bench_naive(c: &mut Criterion) {
    let pb = problem([100, 8, 14, 14, 16, 3, 2, 1]);
    let mut g = c.benchmark_group("conv2d_fwd_naive");
    g.throughput(Throughput::Elements(pb.flops));
    g.bench_function("seed_l2", |bch| {
        bch.iter(|| black_box(naive_conv(&pb.x, &pb.w, &pb.b, 2, 1)))
    });
    g.finish();
}

criterion_group!(benches, bench_naive, bench_paths, bench_shapes);
criterion_main!(benches);
