//! Results are bit-identical for any rayon thread count: every case of the op table
//! (`common/ops.rs`: conv forward and backward in several configurations, pooling,
//! activations, linear, MSE, flatten, networks; element-wise ops and pooling on both
//! sides of their parallel threshold), every
//! initialiser, the seed network (forward, MSE, backward, every parameter gradient, and a
//! second step through `forward_shared` and `backward_params`) and
//! the GEMM, the depthwise and Winograd conv algorithms forced, in rayon pools of 1, 2
//! and 7 threads ([`THREADS`]), compared with
//! `to_bits()`. [`rayon_num_threads_env_var_gives_identical_hashes`] also runs this test
//! binary as a child process with `RAYON_NUM_THREADS` = 1, 2 and 7 (how users set it)
//! and compares a hash of all the outputs.

mod common;

use std::hash::Hasher;

use common::ops::{PARALLEL_ABOVE, op_cases};
use common::{fixtures_dir, load_case};
use convinit::gemm::sgemm;
use convinit::init::{BiasInit, FanMode, Init, Nonlinearity};
use convinit::nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Linear, LinearConfig, Relu, Sequential,
};
use convinit::ops::{mse, mse_backward};
use ndarray::Axis;
use ndarray::{Array, Array1, Array2, ArrayD, s};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The rayon thread counts compared: serial, the laptop, and more threads than cores
/// and than most work splits divide evenly by.
const THREADS: [usize; 3] = [1, 2, 7];

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn bits<'a>(a: impl IntoIterator<Item = &'a f32>) -> Vec<u32> {
    a.into_iter().map(|v| v.to_bits()).collect()
}

fn uniform<Sh: ndarray::ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f32, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Every case of the op table (`common/ops.rs`): conv in several configurations, linear,
/// activations, pooling, flatten, MSE and networks, forward and backward on the view
/// and the owned paths and through the functional ops, with cases above the parallel
/// threshold of the element-wise ops and pooling so their rayon paths are compared.
fn op_case_runs() -> Vec<(String, Vec<Vec<u32>>)> {
    op_cases()
        .iter()
        .map(|case| (format!("{case:?}"), case.outputs(0)))
        .collect()
}

fn ops_run() -> Vec<Vec<u32>> {
    op_case_runs().into_iter().flat_map(|(_, v)| v).collect()
}

/// Every initialiser, through `Init` (weight and bias) and the layers' constructors.
fn init_run() -> Vec<Vec<u32>> {
    let schemes = [
        Init::PytorchDefault,
        Init::KAIMING_UNIFORM,
        Init::KAIMING_NORMAL,
        Init::KaimingNormal {
            mode: FanMode::FanOut,
            nonlinearity: Nonlinearity::Tanh,
        },
        Init::XAVIER_UNIFORM,
        Init::XAVIER_NORMAL,
        Init::UNIFORM,
        Init::NORMAL,
        Init::TRUNC_NORMAL,
        Init::Constant(0.25),
        Init::Zeros,
        Init::Ones,
        Init::ORTHOGONAL,
        Init::Orthogonal { gain: 2.0 },
    ];
    let mut out = Vec::new();
    for (i, scheme) in schemes.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(100 + i as u64);
        let mut w = ArrayD::<f32>::zeros(ndarray::IxDyn(&[16, 8, 3, 3]));
        let mut b = Array1::<f32>::zeros(16);
        scheme
            .apply(w.view_mut(), Some(b.view_mut()), &mut rng)
            .unwrap();
        out.extend([bits(&w), bits(&b)]);
        let mut b2 = Array1::<f32>::zeros(16);
        scheme
            .apply_with_bias(
                w.view_mut(),
                Some(b2.view_mut()),
                BiasInit::Uniform {
                    low: -0.5,
                    high: 0.5,
                },
                &mut rng,
            )
            .unwrap();
        out.extend([bits(&w), bits(&b2)]);
    }
    let mut rng = StdRng::seed_from_u64(5);
    let c = Conv2d::new(Conv2dConfig::new(3, 32, (5, 5)), &mut rng).unwrap();
    let l = Linear::new(LinearConfig::new(784, 50), &mut rng).unwrap();
    out.extend([bits(c.weight()), bits(c.bias().unwrap())]);
    out.extend([bits(l.weight()), bits(l.bias().unwrap())]);
    out
}

/// `sgemm` on shapes big enough for a parallel kernel, in every layout: contiguous,
/// transposed, strided (every other row / column), and with beta != 0.
fn gemm_run() -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(6);
    let (m, k, n) = (300, 500, 700);
    let a: Array2<f32> = uniform(&mut rng, (m, k));
    let b: Array2<f32> = uniform(&mut rng, (k, n));
    let at: Array2<f32> = a.t().as_standard_layout().into_owned();
    let bt: Array2<f32> = b.t().as_standard_layout().into_owned();
    let a2: Array2<f32> = uniform(&mut rng, (2 * m, 2 * k));
    let b2: Array2<f32> = uniform(&mut rng, (2 * k, 2 * n));
    let c0: Array2<f32> = uniform(&mut rng, (m, n));
    let mut out = Vec::new();
    let mut run = |a: ndarray::ArrayView2<'_, f32>, b: ndarray::ArrayView2<'_, f32>, beta| {
        let mut c = c0.clone();
        sgemm(0.75, a, b, beta, c.view_mut()).unwrap();
        out.push(bits(&c));
    };
    run(a.view(), b.view(), 0.0);
    run(at.t(), b.view(), 0.0);
    run(a.view(), bt.t(), 0.0);
    run(at.t(), bt.t(), 1.0);
    run(a2.slice(s![..;2, ..;2]), b2.slice(s![..;2, 1..;2]), 0.5);
    run(
        a2.slice(s![1..;2, ..k]).t().t(),
        b2.slice(s![..k, ..;2]),
        0.0,
    );
    out
}

/// The notebook's seed net on the reference weights and a larger random batch.
fn seed_net_run() -> Vec<Vec<u32>> {
    let case = load_case(&fixtures_dir().join("seed_net_8.safetensors")).unwrap();
    let conv = |i: usize, cin, cout, k, s, p| {
        let w = case
            .tensor(&format!("{i}.weight"))
            .unwrap()
            .clone()
            .into_dimensionality()
            .unwrap();
        let b = case
            .tensor(&format!("{i}.bias"))
            .unwrap()
            .clone()
            .into_dimensionality()
            .unwrap();
        let cfg = Conv2dConfig::new(cin, cout, (k, k))
            .with_stride((s, s))
            .with_padding((p, p));
        Conv2d::from_parts(cfg, w, Some(b)).unwrap()
    };
    let mut net = Sequential::new()
        .with(conv(0, 1, 8, 5, 2, 2))
        .with(Relu::new())
        .with(conv(2, 8, 16, 3, 2, 1))
        .with(Relu::new())
        .with(conv(4, 16, 32, 3, 2, 1))
        .with(Relu::new())
        .with(conv(6, 32, 1, 3, 2, 1))
        .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
        .with(Flatten::new(0, -1));
    let mut rng = StdRng::seed_from_u64(2);
    let x: ArrayD<f32> = uniform(&mut rng, (53, 1, 28, 28)).into_dyn();
    let target: Array1<f32> = uniform(&mut rng, 53);
    let out = net.forward(x.view()).unwrap();
    let loss = mse(out.view(), target.view()).unwrap();
    let dout = mse_backward(out.view(), target.view()).unwrap();
    let dx = net.backward(dout.view()).unwrap();
    let mut all = vec![bits(&out), vec![loss.to_bits()], bits(&dx)];
    all.extend(net.named_parameters().iter().map(|p| bits(p.grad.iter())));
    assert_eq!(net.layer(0).unwrap().name(), "Conv2d");
    // Every parameter's gradient is there (4 convs x weight and bias).
    assert_eq!(all.len(), 3 + 8);
    // A second step as training runs it: the batch handed over shared (the ReLUs
    // write over their previous outputs), no input gradient. Same gradients.
    net.zero_grad();
    let out2 = net.forward_shared(x.into_shared()).unwrap();
    net.backward_params(mse_backward(out2.view(), target.view()).unwrap())
        .unwrap();
    let again: Vec<Vec<u32>> = net
        .named_parameters()
        .iter()
        .map(|p| bits(p.grad.iter()))
        .collect();
    assert_eq!(bits(&out2), all[0]);
    assert_eq!(again, all[3..]);
    all
}

/// The depthwise conv path (`groups == C`) forced on every pass, through the public
/// setting and on explicit parallel plans: forward, backward and the parameters-only
/// backward, on N = 1 (one reduction chunk: the channels split over the pool), a batch
/// not a multiple of the reduction chunk with multiplier 2 and stride 2, and a dilated
/// 5x5 kernel.
fn depthwise_run() -> Vec<Vec<u32>> {
    use convinit::ops::{
        Conv2dGeometry, Conv2dOptions, ConvAlgorithm, ConvAlgos, ConvPlan, ForwardAlgo, conv2d,
        conv2d_backward, conv2d_backward_params, conv2d_backward_with_plan, conv2d_with_plan,
    };
    // N, C, H, W, multiplier, k, stride, padding, dilation.
    let shapes = [
        (1, 32, 40, 37, 1, 3, 1, 1, 1),
        (37, 12, 17, 15, 2, 3, 2, 1, 1),
        (9, 16, 14, 13, 1, 5, 1, 2, 2),
    ];
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    for (n, c, h, w, m, k, s, p, d) in shapes {
        let base = Conv2dOptions::new()
            .with_stride((s, s))
            .with_padding((p, p))
            .with_dilation((d, d))
            .with_groups(c);
        let opts =
            base.with_algorithm(ConvAlgorithm::Fixed(ConvAlgos::named("depthwise").unwrap()));
        let x: Array<f32, _> = uniform(&mut rng, (n, c, h, w));
        let wt: Array<f32, _> = uniform(&mut rng, (c * m, 1, k, k));
        let b: Array1<f32> = uniform(&mut rng, c * m);
        let y = conv2d(x.view(), wt.view(), Some(b.view()), &opts).unwrap();
        let dy: Array<f32, _> = uniform(&mut rng, y.raw_dim());
        let g = conv2d_backward(x.view(), wt.view(), true, dy.view(), &opts).unwrap();
        let pg = conv2d_backward_params(x.view(), wt.view(), true, dy.view(), &opts).unwrap();
        out.extend([
            bits(&y),
            bits(&g.dx),
            bits(&g.dw),
            bits(g.db.as_ref().unwrap()),
        ]);
        out.extend([bits(&pg.dw), bits(pg.db.as_ref().unwrap())]);
        // The parallel split forced, whatever the chooser says of the size.
        let geo = Conv2dGeometry::new("t", [n, c, h, w], [c * m, 1, k, k], &base).unwrap();
        let plan = ConvPlan {
            parallel: true,
            ..ConvAlgos::named("depthwise")
                .unwrap()
                .apply_to(ConvPlan::choose(&geo, 2))
        };
        assert_eq!(plan.forward, ForwardAlgo::Depthwise);
        let y = conv2d_with_plan(x.view(), wt.view(), None, &base, plan).unwrap();
        let g =
            conv2d_backward_with_plan(x.view(), wt.view(), false, dy.view(), &base, plan).unwrap();
        out.extend([bits(&y), bits(&g.dx), bits(&g.dw)]);
    }
    out
}

/// The Winograd algorithms (F2 and F4) forced on every pass, through the public
/// setting and on explicit parallel plans: a batch whose images are cut into bands of
/// tile rows, N = 1 with padding 2 and many channels, unpadded odd sizes (partial
/// tiles), and an image of more tiles than one weight-gradient block.
fn winograd_run() -> Vec<Vec<u32>> {
    use convinit::ops::{
        Conv2dGeometry, Conv2dOptions, ConvAlgorithm, ConvAlgos, ConvPlan, ForwardAlgo,
        InputGradAlgo, WeightGradAlgo, conv2d, conv2d_backward, conv2d_backward_with_plan,
        conv2d_with_plan,
    };
    // N, C, H, W, O, padding.
    let shapes = [
        (3, 24, 30, 29, 20, 1),
        (1, 40, 45, 50, 33, 2),
        (9, 8, 11, 13, 12, 0),
        (1, 2, 201, 190, 3, 1),
    ];
    let algos = [
        (
            ForwardAlgo::WinogradF2,
            InputGradAlgo::WinogradF2,
            WeightGradAlgo::WinogradF2,
        ),
        (
            ForwardAlgo::WinogradF4,
            InputGradAlgo::WinogradF4,
            WeightGradAlgo::WinogradF4,
        ),
    ];
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(11);
    for (n, c, h, w, o, p) in shapes {
        let base = Conv2dOptions::new().with_padding((p, p));
        let x: Array<f32, _> = uniform(&mut rng, (n, c, h, w));
        let wt: Array<f32, _> = uniform(&mut rng, (o, c, 3, 3));
        let b: Array1<f32> = uniform(&mut rng, o);
        for (fwd, dx, dw) in algos {
            let fixed = ConvAlgos::new()
                .with_forward(fwd)
                .with_input_grad(dx)
                .with_weight_grad(dw);
            let opts = base.with_algorithm(ConvAlgorithm::Fixed(fixed));
            let y = conv2d(x.view(), wt.view(), Some(b.view()), &opts).unwrap();
            let dy: Array<f32, _> = uniform(&mut rng, y.raw_dim());
            let g = conv2d_backward(x.view(), wt.view(), true, dy.view(), &opts).unwrap();
            out.extend([bits(&y), bits(&g.dx), bits(&g.dw)]);
            // The parallel split forced, whatever the chooser says of the size.
            let geo = Conv2dGeometry::new("t", [n, c, h, w], [o, c, 3, 3], &base).unwrap();
            let plan = ConvPlan {
                parallel: true,
                ..fixed.apply_to(ConvPlan::choose(&geo, 2))
            };
            assert_eq!(plan.forward, fwd);
            let yp = conv2d_with_plan(x.view(), wt.view(), Some(b.view()), &base, plan).unwrap();
            assert_eq!(bits(&yp), bits(&y), "the parallel split changes nothing");
            let gp = conv2d_backward_with_plan(x.view(), wt.view(), false, dy.view(), &base, plan)
                .unwrap();
            assert_eq!(
                bits(&gp.dx),
                bits(&g.dx),
                "the parallel split changes nothing"
            );
            assert_eq!(
                bits(&gp.dw),
                bits(&g.dw),
                "the parallel split changes nothing"
            );
        }
    }
    out
}

/// The clipped forward forced, through the public setting and on an explicit parallel
/// plan, both memory formats out: seed_l3's geometry on 13 images (a partial block),
/// N = 1 with padding past the kernel (positions whose windows are all padding), and a
/// dilated, unevenly strided kernel; with the direct forward's result beside it.
fn clipped_run() -> Vec<Vec<u32>> {
    use convinit::ops::{
        Conv2dGeometry, Conv2dOptions, ConvAlgorithm, ConvAlgos, ConvPlan, ForwardAlgo,
        MemoryFormat, conv2d, conv2d_with_plan,
    };
    // N, C, H, W, O, kernel, stride, padding, dilation.
    let shapes = [
        (13, 16, 7, 7, 32, 3, (2, 2), (1, 1), (1, 1)),
        (1, 8, 5, 4, 20, 2, (1, 1), (3, 3), (1, 1)),
        (6, 12, 11, 9, 40, 3, (2, 1), (2, 3), (2, 1)),
        // Blocks of images that depend on the pool (one block on one thread), with
        // rows of one vector (16 output channels), whose tiles split the taps in two.
        (10, 16, 10, 10, 16, 7, (2, 2), (3, 3), (1, 1)),
    ];
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(12);
    for (n, c, h, w, o, k, s, p, d) in shapes {
        let base = Conv2dOptions::new()
            .with_stride(s)
            .with_padding(p)
            .with_dilation(d);
        let x: Array<f32, _> = uniform(&mut rng, (n, c, h, w));
        let wt: Array<f32, _> = uniform(&mut rng, (o, c, k, k));
        let b: Array1<f32> = uniform(&mut rng, o);
        let fixed = ConvAlgos::new().with_forward(ForwardAlgo::Clipped);
        for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
            let opts = base.with_memory_format(format);
            let forced = opts.with_algorithm(ConvAlgorithm::Fixed(fixed));
            let y = conv2d(x.view(), wt.view(), Some(b.view()), &forced).unwrap();
            let geo = Conv2dGeometry::new("t", [n, c, h, w], [o, c, k, k], &opts).unwrap();
            let plan = ConvPlan {
                parallel: true,
                ..fixed.apply_to(ConvPlan::choose(&geo, 2))
            };
            let yp = conv2d_with_plan(x.view(), wt.view(), Some(b.view()), &opts, plan).unwrap();
            assert_eq!(bits(&yp), bits(&y), "the parallel split changes nothing");
            out.push(bits(&y));
        }
        let direct = base.with_algorithm(ConvAlgorithm::Fixed(ConvAlgos::named("direct").unwrap()));
        out.push(bits(
            &conv2d(x.view(), wt.view(), Some(b.view()), &direct).unwrap(),
        ));
    }
    out
}

/// Runs `f` in a pool of each of [`THREADS`] and asserts the results are identical.
fn assert_same_in_every_pool(what: &str, f: fn() -> Vec<Vec<u32>>) {
    let one = in_pool(THREADS[0], f);
    assert!(one.iter().all(|v| !v.is_empty()), "{what}: an empty output");
    for &t in &THREADS[1..] {
        let other = in_pool(t, f);
        assert_eq!(other.len(), one.len());
        for (i, (a, b)) in one.iter().zip(&other).enumerate() {
            let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert!(
                a == b,
                "{what}: output {i} differs in {diff} of {} values with {t} threads",
                a.len()
            );
        }
    }
}

#[test]
fn seed_net_is_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("seed net", seed_net_run);
}

/// Each op case in pools of 1, 2 and 7 threads, named in the failure message.
#[test]
fn every_op_case_is_bit_identical_across_thread_counts() {
    let one = in_pool(THREADS[0], op_case_runs);
    for &t in &THREADS[1..] {
        let other = in_pool(t, op_case_runs);
        assert_eq!(other.len(), one.len());
        for ((name, a), (_, b)) in one.iter().zip(&other) {
            assert!(a.iter().all(|v| !v.is_empty()), "{name}: an empty output");
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
                assert!(
                    a == b,
                    "{name}: output {i} differs in {diff} of {} values with {t} threads",
                    a.len()
                );
            }
        }
    }
}

/// The table reaches the rayon paths: every element-wise op and pooling has a case
/// above the parallel threshold (and one below, the serial path).
#[test]
fn the_op_table_crosses_the_parallel_threshold() {
    let cases = op_cases();
    for op in [
        "relu",
        "leaky_relu",
        "general_relu",
        "adaptive_avg_pool2d",
        "flatten",
    ] {
        assert!(
            cases
                .iter()
                .any(|c| c.op == op && c.above_parallel_threshold()),
            "{op}: no case above {PARALLEL_ABOVE} elements"
        );
        assert!(
            cases
                .iter()
                .any(|c| c.op == op && !c.above_parallel_threshold()),
            "{op}: no case below {PARALLEL_ABOVE} elements"
        );
    }
    assert!(
        cases
            .iter()
            .any(|c| c.op == "sequential" && c.above_parallel_threshold())
    );
}

/// The rayon paths compute what the serial ones do: every parameter-free case above the
/// parallel threshold, run whole (parallel) and in slices along the batch axis small
/// enough for the serial path, gives the same bits (forward and backward, through the
/// functional ops). A pool of 1 thread still takes the parallel path, so the comparison
/// across pools alone would not see a parallel path that is wrong the same way each time.
#[test]
fn parallel_paths_match_the_serial_path() {
    let mut checked = 0;
    for case in op_cases() {
        let Some(f) = &case.functional else { continue };
        if !case.above_parallel_threshold() || case.has_params() {
            continue;
        }
        let run = case.run(0);
        let whole = f(&run.x, &[], &run.dy);
        let n = run.x.shape()[0];
        let per = (PARALLEL_ABOVE / 2 / (run.x.len() / n)).max(1);
        let mut pieces: Vec<Vec<ArrayD<f32>>> = Vec::new();
        for start in (0..n).step_by(per) {
            let end = (start + per).min(n);
            let x = run.x.slice_axis(Axis(0), (start..end).into()).to_owned();
            let dy = run.dy.slice_axis(Axis(0), (start..end).into()).to_owned();
            assert!(x.len() <= PARALLEL_ABOVE / 2);
            pieces.push(f(&x, &[], &dy));
        }
        assert!(pieces.len() > 1, "{case:?}");
        for (i, w) in whole.iter().enumerate() {
            let views: Vec<_> = pieces.iter().map(|p| p[i].view()).collect();
            let joined = ndarray::concatenate(Axis(0), &views).unwrap();
            assert!(
                bits(w) == bits(&joined),
                "{case:?}: output {i} differs between the parallel and the serial path"
            );
        }
        checked += 1;
    }
    assert!(checked >= 6, "{checked}");
}

#[test]
fn depthwise_is_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("depthwise conv", depthwise_run);
    // And on 3 threads, which splits the channels unevenly.
    assert_eq!(in_pool(1, depthwise_run), in_pool(3, depthwise_run));
}

#[test]
fn winograd_is_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("winograd conv", winograd_run);
    // And on 3 threads, which splits the tasks unevenly.
    assert_eq!(in_pool(1, winograd_run), in_pool(3, winograd_run));
}

/// The direct forward of batches too small to share by images (1 and 3 images: each
/// image's positions split over the pool when it has 2^20 multiply-adds per task), in
/// both memory formats, with 16 and 40
/// output channels (rows of one vector, and masked rows), with and without padding.
fn direct_small_batch_run() -> Vec<Vec<u32>> {
    use convinit::ops::{
        Conv2dOptions, ConvAlgorithm, ConvAlgos, ForwardAlgo, MemoryFormat, conv2d,
    };
    // N, C, H, W, O, kernel, stride, padding.
    let shapes = [
        (1, 32, 40, 40, 16, 3, (1, 1), (1, 1)),
        (3, 8, 33, 31, 40, 5, (2, 1), (2, 0)),
        (1, 24, 17, 17, 40, 1, (1, 1), (0, 0)),
    ];
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(21);
    for (n, c, h, w, o, k, s, p) in shapes {
        let x: Array<f32, _> = uniform(&mut rng, (n, c, h, w));
        let wt: Array<f32, _> = uniform(&mut rng, (o, c, k, k));
        let b: Array1<f32> = uniform(&mut rng, o);
        let fixed = ConvAlgos::new().with_forward(ForwardAlgo::Direct);
        for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
            let opts = Conv2dOptions::new()
                .with_stride(s)
                .with_padding(p)
                .with_memory_format(format)
                .with_algorithm(ConvAlgorithm::Fixed(fixed));
            let y = conv2d(x.view(), wt.view(), Some(b.view()), &opts).unwrap();
            out.push(bits(&y));
        }
    }
    out
}

/// The phase forward of batches too small to share by images (1 and 3 images: each
/// image's output channels split over the pool in runs of weight panels), with groups
/// and with more output channels than one panel.
fn phase_small_batch_run() -> Vec<Vec<u32>> {
    use convinit::ops::{Conv2dOptions, ConvAlgorithm, ConvAlgos, ForwardAlgo, conv2d};
    // N, C, H, W, O, kernel, stride, padding, groups.
    let shapes = [
        (1, 3, 40, 40, 64, 5, (2, 2), (2, 2), 1),
        (3, 4, 30, 30, 40, 3, (1, 1), (1, 1), 2),
        (1, 1, 48, 48, 100, 3, (1, 1), (0, 0), 1),
    ];
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(22);
    for (n, c, h, w, o, k, s, p, g) in shapes {
        let x: Array<f32, _> = uniform(&mut rng, (n, c, h, w));
        let wt: Array<f32, _> = uniform(&mut rng, (o, c / g, k, k));
        let b: Array1<f32> = uniform(&mut rng, o);
        let fixed = ConvAlgos::new().with_forward(ForwardAlgo::Phase);
        let opts = Conv2dOptions::new()
            .with_stride(s)
            .with_padding(p)
            .with_groups(g)
            .with_algorithm(ConvAlgorithm::Fixed(fixed));
        let y = conv2d(x.view(), wt.view(), Some(b.view()), &opts).unwrap();
        out.push(bits(&y));
    }
    out
}

/// The backward of batches too small to share the pool by reduction chunks (1 and 3
/// images): each chunk's input and weight gradients side by side on the pool, unfused,
/// against the serial fused pass, on every algorithm that fuses (and two that do not),
/// in both memory formats where the algorithm runs them.
fn small_batch_backward_run() -> Vec<Vec<u32>> {
    use convinit::ops::{
        Conv2dGeometry, Conv2dOptions, ConvAlgorithm, ConvAlgos, InputGradAlgo as I, MemoryFormat,
        WeightGradAlgo as W, conv2d_backward, to_memory_format,
    };
    // N, C, H, W, O, kernel, stride (2), padding (2), groups; the two algorithms.
    let cases = [
        ([1, 32, 40, 40, 16, 3, 1, 1, 1, 1, 1], I::Direct, W::Direct),
        ([3, 8, 33, 31, 40, 5, 2, 1, 2, 0, 1], I::Direct, W::Direct),
        ([1, 8, 50, 50, 24, 3, 2, 1, 1, 0, 1], I::Columns, W::Columns),
        ([3, 6, 30, 30, 40, 3, 1, 1, 1, 1, 2], I::Columns, W::Columns),
        (
            [1, 24, 30, 30, 40, 1, 1, 1, 0, 0, 1],
            I::Pointwise,
            W::Pointwise,
        ),
        ([1, 3, 40, 40, 64, 5, 2, 2, 2, 2, 1], I::Phase, W::Phase),
        ([3, 4, 30, 30, 40, 3, 1, 1, 1, 1, 2], I::Phase, W::Phase),
        (
            [1, 32, 48, 48, 32, 3, 1, 1, 1, 1, 32],
            I::Depthwise,
            W::Depthwise,
        ),
        (
            [1, 16, 40, 40, 24, 3, 1, 1, 1, 1, 1],
            I::WinogradF4,
            W::Direct,
        ),
        (
            [1, 16, 40, 40, 24, 3, 1, 1, 2, 2, 1],
            I::Columns,
            W::WinogradF2,
        ),
    ];
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(23);
    for ([n, c, h, w, o, k, sh, sw, ph, pw, g], dx, dw) in cases {
        let x: Array<f32, _> = uniform(&mut rng, (n, c, h, w));
        let wt: Array<f32, _> = uniform(&mut rng, (o, c / g, k, k));
        let fixed = ConvAlgos::new().with_input_grad(dx).with_weight_grad(dw);
        let formats: &[MemoryFormat] = match (dx, dw) {
            (I::Direct, W::Direct) => &[MemoryFormat::Contiguous, MemoryFormat::ChannelsLast],
            _ => &[MemoryFormat::Contiguous],
        };
        for &format in formats {
            let opts = Conv2dOptions::new()
                .with_stride((sh, sw))
                .with_padding((ph, pw))
                .with_groups(g)
                .with_memory_format(format)
                .with_algorithm(ConvAlgorithm::Fixed(fixed));
            let geo = Conv2dGeometry::new("test", [n, c, h, w], [o, c / g, k, k], &opts).unwrap();
            let dy: Array<f32, _> = uniform(&mut rng, geo.y_shape());
            let (x, dy) = (
                to_memory_format(x.view(), format).unwrap(),
                to_memory_format(dy.view(), format).unwrap(),
            );
            let gr = conv2d_backward(x.view(), wt.view(), true, dy.view(), &opts).unwrap();
            out.push(bits(&gr.dx));
            out.push(bits(&gr.dw));
            out.push(bits(gr.db.as_ref().unwrap()));
        }
    }
    out
}

/// The column algorithms' forward of batches too small to share the pool by images (1
/// and 3 images: each image's columns cut into one run per thread), pointwise and
/// im2col, with groups, and with a bias.
fn column_small_batch_run() -> Vec<Vec<u32>> {
    use convinit::ops::{Conv2dOptions, ConvAlgorithm, ConvAlgos, ForwardAlgo as F, conv2d};
    // N, C, H, W, O, kernel, stride, padding, groups; the algorithm.
    let cases = [
        ([1, 128, 14, 15, 100, 1, 1, 0, 1], F::Pointwise),
        ([3, 128, 20, 19, 128, 1, 1, 0, 2], F::Pointwise),
        ([1, 32, 30, 29, 40, 3, 2, 1, 1], F::Columns),
        ([3, 64, 20, 20, 48, 3, 1, 1, 4], F::Columns),
    ];
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(24);
    for ([n, c, h, w, o, k, s, p, g], algo) in cases {
        let x: Array<f32, _> = uniform(&mut rng, (n, c, h, w));
        let wt: Array<f32, _> = uniform(&mut rng, (o, c / g, k, k));
        let b: Array1<f32> = uniform(&mut rng, o);
        let opts = Conv2dOptions::new()
            .with_stride((s, s))
            .with_padding((p, p))
            .with_groups(g)
            .with_algorithm(ConvAlgorithm::Fixed(ConvAlgos::new().with_forward(algo)));
        out.push(bits(
            &conv2d(x.view(), wt.view(), Some(b.view()), &opts).unwrap(),
        ));
        out.push(bits(&conv2d(x.view(), wt.view(), None, &opts).unwrap()));
    }
    out
}

#[test]
fn column_small_batches_are_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("column conv, small batches", column_small_batch_run);
    assert_eq!(
        in_pool(1, column_small_batch_run),
        in_pool(3, column_small_batch_run)
    );
}

#[test]
fn small_batch_backwards_are_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("backward, small batches", small_batch_backward_run);
    assert_eq!(
        in_pool(1, small_batch_backward_run),
        in_pool(3, small_batch_backward_run)
    );
}

#[test]
fn phase_small_batches_are_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("phase conv, small batches", phase_small_batch_run);
    assert_eq!(
        in_pool(1, phase_small_batch_run),
        in_pool(3, phase_small_batch_run)
    );
}

#[test]
fn direct_small_batches_are_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("direct conv, small batches", direct_small_batch_run);
    assert_eq!(
        in_pool(1, direct_small_batch_run),
        in_pool(3, direct_small_batch_run)
    );
}

#[test]
fn clipped_is_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("clipped conv", clipped_run);
    // And on 3 threads, which splits the blocks unevenly.
    assert_eq!(in_pool(1, clipped_run), in_pool(3, clipped_run));
}

#[test]
fn initialisers_are_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("init", init_run);
}

#[test]
fn gemm_is_bit_identical_across_thread_counts() {
    assert_same_in_every_pool("sgemm", gemm_run);
}

/// The comparison can fail: a different seed gives different bits.
#[test]
fn the_comparison_sees_a_difference() {
    let a = init_run();
    let mut rng = StdRng::seed_from_u64(99);
    let mut w = ArrayD::<f32>::zeros(ndarray::IxDyn(&[16, 8, 3, 3]));
    Init::PytorchDefault
        .apply(w.view_mut(), None, &mut rng)
        .unwrap();
    assert_ne!(a[0], bits(&w));
}

// ---------------------------------------------------------------------------------------
// RAYON_NUM_THREADS, set the way users set it: in a child process.

const CHILD_ENV: &str = "CONVINIT_DETERMINISM_CHILD";

/// FNV-1a over every output's length and bits.
fn hash_all() -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for run in [ops_run, seed_net_run, init_run, gemm_run, depthwise_run] {
        for v in run() {
            h.write_usize(v.len());
            for x in v {
                h.write_u32(x);
            }
        }
    }
    h.finish()
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// In a child process (the env var set by the parent test below): prints the global
/// pool's thread count and the hash. A no-op in a normal run.
#[test]
fn child_prints_hash_of_all_outputs() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    println!(
        "THREADS={} HASH={:016x}",
        rayon::current_num_threads(),
        hash_all()
    );
}

#[test]
fn rayon_num_threads_env_var_gives_identical_hashes() {
    let exe = std::env::current_exe().unwrap();
    let mut hashes = Vec::new();
    for t in THREADS {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "child_prints_hash_of_all_outputs",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env("RAYON_NUM_THREADS", t.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child with {t} threads failed: {stdout}"
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("THREADS=").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no hash from the child with {t} threads: {stdout}"));
        let (threads, hash) = line.split_once(" HASH=").unwrap();
        // The env var reached the child's global pool.
        assert_eq!(threads, t.to_string());
        hashes.push(hash.to_string());
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "hashes differ by RAYON_NUM_THREADS {THREADS:?}: {hashes:?}"
    );
}
