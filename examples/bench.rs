//! Benchmarks of the crate's kernels on the shapes `../shared/tools/torch_anchor.py`
//! measures in PyTorch, with the same JSON names, so the two can be compared side by side.
//!
//! ```sh
//! cargo run --release --example bench -- --json [--threads T] [--only NAME] [--reps R]
//! ```
//!
//! Every figure is the median of several runs after a warm-up (at least three calls and
//! 50 ms). The JSON also says which CPU the figures come from (`cpu`: micro-architecture,
//! brand, cache sizes) and the GEMM kernel and block sizes in effect (`gemm`), which
//! `CONVINIT_GEMM_KERNEL` and `CONVINIT_GEMM_BLOCKS` force. `--only` runs one item
//! (`sgemm`, `fma`, `seed_net`, `layers`, or a conv name such as `resnet_64`), e.g. to
//! measure the
//! peak memory of one shape with `/usr/bin/time -v`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use convinit::buffers::recycle;
use convinit::gemm::{GemmBlocks, Kernel, sgemm};
use convinit::nn::{
    AdaptiveAvgPool2d, BatchNorm2d, BatchNorm2dConfig, Conv2d, Conv2dConfig, Flatten, Layer, Relu,
    Sequential,
};
use convinit::ops::{
    MaxPool2dOptions, MemoryFormat, conv2d, conv2d_backward, max_pool2d, max_pool2d_backward,
    max_pool2d_with_indices, mse, mse_backward,
};
use convinit::threads::KeepAwake;
use convinit::train::cross_entropy_with_grad;
use ndarray::{Array, Array1, Array2, Array4, Dimension, ShapeBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde_json::{Value, json};

/// The LeNet of `examples/lenet` (its builder; the rest of that example is unused here).
#[allow(dead_code)]
#[path = "lenet.rs"]
mod lenet_example;

/// The conv2d shapes, shared with examples/convbench (which uses the rest of the file).
#[allow(dead_code)]
#[path = "common/shapes.rs"]
mod shapes;
use shapes::{ConvShape, NAMED_SHAPES as CONV_SHAPES};

/// The FMA peak measure, shared with examples/convbench.
#[path = "common/peak.rs"]
mod peak;
use peak::fma_peak;

#[derive(Debug)]
struct Options {
    json: bool,
    threads: usize,
    only: Option<String>,
    reps: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        json: false,
        threads: 2,
        only: None,
        reps: 7,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            let v = it.next().ok_or(format!("{name} needs a number"))?;
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        };
        match a.as_str() {
            "--json" => o.json = true,
            "--threads" => o.threads = num("--threads")?.max(1),
            "--reps" => o.reps = num("--reps")?.max(1),
            "--only" => {
                let name = it.next().ok_or("--only needs a NAME")?;
                let known = ["sgemm", "fma", "seed_net", "conv2d", "layers"];
                if !known.contains(&name.as_str()) && !CONV_SHAPES.iter().any(|(n, _)| *n == name) {
                    let shapes: Vec<&str> = CONV_SHAPES.iter().map(|(n, _)| *n).collect();
                    return Err(format!(
                        "--only: unknown name {name:?}; one of {known:?} or a conv shape {shapes:?}"
                    ));
                }
                o.only = Some(name);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: bench [--json] [--threads T] [--reps R] [--only sgemm|fma|seed_net|layers|<conv name>]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(o)
}

/// Median seconds of `reps` timed runs of `inner` calls each, after a warm-up of at
/// least three calls and 50 ms: one call leaves sub-millisecond kernels measured while
/// the caches, the thread pool and the allocator are still settling (seed_l1 forward:
/// 0.23 ms median after one warm-up call, 0.156 ms in steady state).
fn median_secs(reps: usize, inner: usize, mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    let mut calls = 0;
    while calls < 3 || warm.elapsed().as_secs_f64() < 0.05 {
        f();
        calls += 1;
    }
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..inner {
                f();
            }
            t.elapsed().as_secs_f64() / inner as f64
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

fn randn<D: Dimension, Sh: ShapeBuilder<Dim = D>>(shape: Sh, rng: &mut StdRng) -> Array<f32, D> {
    Array::from_shape_simple_fn(shape, || rng.sample::<f32, _>(StandardNormal))
}

fn round(x: f64, places: i32) -> f64 {
    let p = 10f64.powi(places);
    (x * p).round() / p
}

fn bench_sgemm(reps: usize, rng: &mut StdRng) -> Value {
    let mut out = serde_json::Map::new();
    for n in [256usize, 512, 1024, 2048] {
        let a: Array2<f32> = randn((n, n), rng);
        let b: Array2<f32> = randn((n, n), rng);
        let mut c = Array2::<f32>::zeros((n, n));
        let t = median_secs(reps, (2048 / n).max(1), || {
            sgemm(1.0, a.view(), b.view(), 0.0, c.view_mut()).expect("sgemm shapes agree");
            black_box(&c);
        });
        out.insert(
            n.to_string(),
            json!(round(2.0 * (n as f64).powi(3) / t / 1e9, 1)),
        );
    }
    Value::Object(out)
}

fn bench_conv(s: &ConvShape, reps: usize, rng: &mut StdRng) -> convinit::Result<Value> {
    let x: Array4<f32> = randn(s.x_dim(), rng);
    let mut crng = StdRng::seed_from_u64(1);
    let cfg = Conv2dConfig::new(s.c, s.o, s.kernel)
        .with_stride(s.stride)
        .with_padding(s.padding)
        .with_dilation(s.dilation)
        .with_groups(s.groups);
    let layer = Conv2d::new(cfg, &mut crng)?;
    let opts = s.options();
    let bias = layer.bias().map(|b| b.view());
    let dy: Array4<f32> = randn(s.y_dim(), rng);
    let flops = 2.0 * s.macs();
    // Outputs and gradients go back to the buffer cache, as a training loop's layers
    // hand theirs back: the next call reuses their memory instead of faulting in fresh
    // pages, whose cost depends on what ran before (pw_64x128's 51 MB forward output:
    // 11 ms alone, 26 ms inside this run; 2 threads, Intel Xeon).
    let fwd = median_secs(reps, 1, || {
        let y = conv2d(x.view(), layer.weight().view(), bias, &opts).expect("valid conv");
        recycle(black_box(y));
    });
    let fwd_bwd = median_secs(reps, 1, || {
        let y = conv2d(x.view(), layer.weight().view(), bias, &opts).expect("valid conv");
        recycle(black_box(y));
        let g = conv2d_backward(x.view(), layer.weight().view(), true, dy.view(), &opts)
            .expect("valid conv");
        let g = black_box(g);
        recycle(g.dx);
        recycle(g.dw);
    });
    Ok(json!({
        "shape": s.given,
        "fwd_ms": round(fwd * 1e3, 4),
        "fwd_bwd_ms": round(fwd_bwd * 1e3, 4),
        "fwd_gflops": round(flops / fwd / 1e9, 1),
        "fwd_bwd_gflops": round(3.0 * flops / fwd_bwd / 1e9, 1),
    }))
}

/// The seed net, its hidden activations channels-last (as `train_mnist` runs them: the
/// direct conv path then needs no transposes; the same values as channel-major), keeping
/// only what backward needs (as `train_mnist` and PyTorch do: each ReLU then runs in
/// place over its conv's output).
fn seed_net(rng: &mut StdRng) -> convinit::Result<Sequential> {
    let conv = |i, o, k, p| {
        let format = if o > 1 {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        };
        Conv2dConfig::new(i, o, (k, k))
            .with_stride((2, 2))
            .with_padding((p, p))
            .with_memory_format(format)
    };
    Ok(Sequential::new()
        .with(Conv2d::new(conv(1, 8, 5, 2), rng)?)
        .with(Relu::new())
        .with(Conv2d::new(conv(8, 16, 3, 1), rng)?)
        .with(Relu::new())
        .with(Conv2d::new(conv(16, 32, 3, 1), rng)?)
        .with(Relu::new())
        .with(Conv2d::new(conv(32, 1, 3, 1), rng)?)
        .with(AdaptiveAvgPool2d::new((1, 1))?)
        .with(Flatten::new(0, -1))
        .with_retain_outputs(false))
}

fn bench_seed_net(reps: usize, rng: &mut StdRng) -> convinit::Result<Value> {
    let mut out = serde_json::Map::new();
    for n in [100usize, 1000, 10000] {
        let mut net = seed_net(rng)?;
        let x: Array4<f32> = randn((n, 1, 28, 28), rng);
        let y: Array1<f32> = randn(n, rng);
        // Shared, so the first conv keeps the batch for backward without copying it (as
        // PyTorch keeps a reference to its input).
        let x = x.into_dyn().into_shared();
        let mut step = || -> convinit::Result<()> {
            // The pool polls through the step's small ops, as `train::fit` has it (and
            // as PyTorch's OpenMP threads spin between ops).
            let _awake = KeepAwake::new();
            net.zero_grad();
            let out = net.forward_shared(x.clone())?;
            black_box(mse(out.view(), y.view())?);
            // The batch needs no gradient (PyTorch skips it too).
            net.backward_params(mse_backward(out.view(), y.view())?)?;
            Ok(())
        };
        let t = median_secs(reps.min(5), 1, || step().expect("seed net runs"));
        out.insert(n.to_string(), json!(round(t * 1e3, 3)));
    }
    Ok(Value::Object(out))
}

/// Max pooling and batch norm on ResNet-sized tensors (training mode), as
/// torch_anchor.py's `layers`.
fn bench_layers(reps: usize, rng: &mut StdRng) -> convinit::Result<Value> {
    // Each layer's tensors are freed before the next one's are made.
    let max_pool = {
        let x: Array4<f32> = randn((32, 64, 112, 112), rng);
        let opts = MaxPool2dOptions::new((3, 3))
            .with_stride((2, 2))
            .with_padding((1, 1));
        let y = max_pool2d(x.view(), &opts)?;
        let dy: Array4<f32> = randn(y.raw_dim(), rng);
        let fwd = median_secs(reps, 1, || {
            black_box(max_pool2d(x.view(), &opts).expect("valid pool"));
        });
        let fwd_bwd = median_secs(reps, 1, || {
            let (y, idx) = max_pool2d_with_indices(x.view(), &opts).expect("valid pool");
            black_box(y);
            black_box(max_pool2d_backward(x.dim(), idx.view(), dy.view()).expect("valid pool"));
        });
        json!({
            "shape": [32, 64, 112, 112, 3, 2, 1],
            "fwd_ms": round(fwd * 1e3, 4),
            "fwd_bwd_ms": round(fwd_bwd * 1e3, 4),
        })
    };
    // As PyTorch's: the forward alone keeps nothing for a backward (`torch.no_grad()`
    // there, `infer` here), the forward + backward keeps a reference to the input.
    let x = randn((32, 64, 56, 56), rng).into_dyn().into_shared();
    let dy = randn((32, 64, 56, 56), rng).into_dyn();
    let mut bn = BatchNorm2d::new(BatchNorm2dConfig::new(64))?;
    let fwd = median_secs(reps, 1, || {
        black_box(bn.infer(x.clone()).expect("valid batch norm"));
    });
    let fwd_bwd = median_secs(reps, 1, || {
        bn.zero_grad();
        black_box(bn.forward_shared(x.clone()).expect("valid batch norm"));
        black_box(bn.backward(dy.view()).expect("valid batch norm"));
    });
    let batch_norm = json!({
        "shape": [32, 64, 56, 56],
        "fwd_ms": round(fwd * 1e3, 4),
        "fwd_bwd_ms": round(fwd_bwd * 1e3, 4),
    });
    Ok(json!({ "max_pool_resnet": max_pool, "batch_norm_resnet": batch_norm }))
}

/// One training step of the LeNet (forward in training mode, cross-entropy, backward of
/// the parameters), at N = 64 and 256, as torch_anchor.py's `lenet_fwd_bwd_ms`.
fn bench_lenet(reps: usize, rng: &mut StdRng) -> convinit::Result<Value> {
    let mut out = serde_json::Map::new();
    for n in [64usize, 256] {
        let mut net = lenet_example::lenet(rng)?;
        let x = randn((n, 1, 28, 28), rng).into_dyn().into_shared();
        let t: Array1<i64> = (0..n).map(|_| rng.random_range(0..10)).collect();
        let mut step = || -> convinit::Result<()> {
            // The pool polls through the step's small ops, as `train::fit` has it (and
            // as PyTorch's OpenMP threads spin between ops).
            let _awake = KeepAwake::new();
            net.zero_grad();
            let out = net.forward_shared(x.clone())?;
            let logits = out
                .view()
                .into_dimensionality::<ndarray::Ix2>()
                .map_err(|e| convinit::Error::Shape {
                    op: "bench",
                    message: e.to_string(),
                })?;
            let (loss, dlogits) = cross_entropy_with_grad(logits, t.view())?;
            black_box(loss);
            net.backward_params(dlogits.into_dyn())?;
            Ok(())
        };
        let t = median_secs(reps.min(5), 1, || step().expect("lenet runs"));
        out.insert(n.to_string(), json!(round(t * 1e3, 3)));
    }
    Ok(Value::Object(out))
}

/// The CPU the figures come from (`convinit::cpu`), as the GEMM sees it.
fn cpu_json() -> Value {
    let cpu = convinit::cpu::CpuInfo::get();
    json!({
        "microarch": cpu.microarch.name(),
        "vendor": cpu.vendor,
        "family": cpu.family,
        "model": cpu.model,
        "brand": cpu.brand,
        "avx512f": cpu.avx512f,
        "avx2_fma": cpu.avx2_fma,
        "l1d_bytes": cpu.l1d_bytes,
        "l2_bytes": cpu.l2_bytes,
        "l3_bytes": cpu.l3_bytes,
        "caches_detected": cpu.caches_detected,
    })
}

/// The GEMM kernel and block sizes `sgemm` runs with (after `CONVINIT_GEMM_KERNEL` and
/// `CONVINIT_GEMM_BLOCKS`), and the sizes detected from the caches.
fn gemm_json() -> Value {
    let k = Kernel::selected();
    let blocks = |b: GemmBlocks| json!({"mr": b.mr, "nr": b.nr, "kc": b.kc, "mc": b.mc, "l2_budget": b.l2_budget, "nc": b.nc});
    json!({
        "kernel": k.name(),
        "half_vectors": k.half_vectors(),
        "blocks": blocks(k.blocks()),
        "detected_blocks": blocks(k.detected_blocks()),
    })
}

fn run(o: &Options) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
    let mut rng = StdRng::seed_from_u64(0);
    let want = |name: &str| o.only.as_deref().is_none_or(|only| only == name);
    let mut out = BTreeMap::<String, Value>::new();
    out.insert(
        "crate".into(),
        json!(format!("convinit {}", env!("CARGO_PKG_VERSION"))),
    );
    out.insert("threads".into(), json!(o.threads));
    out.insert("cpu".into(), cpu_json());
    out.insert("gemm".into(), gemm_json());
    if want("fma") {
        out.insert(
            "fma_peak_gflops".into(),
            json!(round(fma_peak(o.threads), 1)),
        );
    }
    if want("sgemm") {
        out.insert("sgemm_gflops".into(), bench_sgemm(o.reps, &mut rng));
    }
    let mut conv = serde_json::Map::new();
    for (name, fields) in CONV_SHAPES {
        if want(name) || o.only.as_deref() == Some("conv2d") {
            let s = ConvShape::from_fields(name, fields)?;
            conv.insert(name.to_string(), bench_conv(&s, o.reps, &mut rng)?);
        }
    }
    if !conv.is_empty() {
        out.insert("conv2d".into(), Value::Object(conv));
    }
    if want("seed_net") {
        out.insert(
            "seed_net_fwd_bwd_ms".into(),
            bench_seed_net(o.reps, &mut rng)?,
        );
    }
    if want("layers") {
        out.insert("layers".into(), bench_layers(o.reps, &mut rng)?);
        out.insert("lenet_fwd_bwd_ms".into(), bench_lenet(o.reps, &mut rng)?);
    }
    Ok(json!(out))
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    // The calling thread is worker 0 (as `train_mnist` has it): the benchmark loops and
    // the outputs they allocate and drop run on the main thread, whose glibc arena keeps
    // a freed block for the next call. From a pool thread, whose arena hands large
    // blocks back to the system, dw_64 read 10-18 ms after resnet_128s2 against 3.0-3.3
    // alone (2 threads, Intel Xeon).
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .use_current_thread()
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench: cannot build a pool of {} threads: {e}", o.threads);
            std::process::exit(1);
        }
    };
    match pool.install(|| run(&o)) {
        Ok(v) => {
            if o.json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        }
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
}
