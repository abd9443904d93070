//! Finite-difference gradient checks of every layer's backward pass.
//!
//! The analytic gradients come from the crate (f32, through the `Layer` trait). The
//! numeric ones are central differences of `L(z) = sum(F(z) * r)` where `F` is an
//! independent f64 reference forward written here (the conv one is the naive loops in
//! `common/naive.rs`) and `r` is the upstream gradient given to `backward`.
//!
//! Tolerance: |analytic - numeric| <= 1e-4 * max(1, max |numeric|) per tensor. Every `F`
//! here is linear, quadratic or piecewise linear, so in f64 a central difference is exact
//! up to rounding (~1e-16 * |L| / h, below 1e-10 for h = 1e-3) as long as no input
//! crosses a kink, which we prevent by keeping activation inputs at least 0.05 away from
//! zero. What remains is the f32 rounding of the analytic gradient: sums of at most a few
//! hundred products of O(1) values, ~1e-6 relative in practice and bounded well below
//! 1e-4, while an indexing or scaling bug moves gradients by O(0.1).

mod common;

use common::naive::{self, Params};
use convinit::nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Layer, LeakyRelu, Linear, LinearConfig, Relu,
    Sequential,
};
use convinit::ops::{mse, mse_backward};
use ndarray::{Array, Array1, Array2, Array4, ArrayD, ArrayViewD, Dimension, Ix1, Ix2, Ix4, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const H: f64 = 1e-3;

fn uniform<Sh: ndarray::ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f32, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Values in [-1, -0.05] or [0.05, 1]: far enough from an activation's kink.
fn away_from_zero<Sh: ndarray::ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f32, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || {
        let m = rng.random_range(0.05f32..1.0);
        if rng.random_bool(0.5) { m } else { -m }
    })
}

fn to64<D: Dimension>(a: &Array<f32, D>) -> Array<f64, D> {
    a.mapv(f64::from)
}

/// Central differences of `f` at `at`, one element at a time.
fn numeric_grad<D: Dimension>(
    at: &Array<f64, D>,
    f: impl Fn(&Array<f64, D>) -> f64,
) -> Array<f64, D> {
    numeric_grad_h(at, H, f)
}

/// Central differences with step `h`.
fn numeric_grad_h<D: Dimension>(
    at: &Array<f64, D>,
    h: f64,
    f: impl Fn(&Array<f64, D>) -> f64,
) -> Array<f64, D> {
    let mut z = at.clone();
    let mut g = Array::zeros(at.raw_dim());
    for (i, gi) in g.iter_mut().enumerate() {
        let orig = z.as_slice().unwrap()[i];
        z.as_slice_mut().unwrap()[i] = orig + h;
        let plus = f(&z);
        z.as_slice_mut().unwrap()[i] = orig - h;
        let minus = f(&z);
        z.as_slice_mut().unwrap()[i] = orig;
        *gi = (plus - minus) / (2.0 * h);
    }
    g
}

/// `sum(y * r)`.
fn dot<D: Dimension>(y: &Array<f64, D>, r: &ArrayD<f64>) -> f64 {
    assert_eq!(y.shape(), r.shape());
    y.iter().zip(r.iter()).map(|(a, b)| a * b).sum()
}

fn assert_grad(what: &str, analytic: ArrayViewD<'_, f32>, numeric: ArrayD<f64>) {
    assert_eq!(analytic.shape(), numeric.shape(), "{what}: shape");
    let scale = numeric.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = analytic
        .iter()
        .zip(numeric.iter())
        .map(|(&a, &n)| (f64::from(a) - n).abs())
        .fold(0.0f64, f64::max);
    assert!(
        err <= 1e-4 * scale,
        "{what}: max |analytic - numeric| = {err:e} > {:e}",
        1e-4 * scale
    );
    // A gradient that is all zeros would pass against an all-zero reference: make sure
    // the check actually compared something.
    assert!(
        numeric.iter().any(|&v| v != 0.0),
        "{what}: numeric gradient is all zero"
    );
}

/// Forward then backward through `layer` with a random upstream gradient; returns the
/// input gradient and the upstream gradient (f64).
fn run_layer(
    layer: &mut dyn Layer,
    x: &ArrayD<f32>,
    rng: &mut StdRng,
) -> (ArrayD<f32>, ArrayD<f64>) {
    let y = layer.forward(x.view()).unwrap();
    let r: ArrayD<f32> = uniform(rng, y.raw_dim());
    layer.zero_grad();
    let dx = layer.backward(r.view()).unwrap();
    (dx, to64(&r))
}

fn conv_check(cfg: Conv2dConfig, n: usize, hw: (usize, usize), seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conv = Conv2d::new(cfg, &mut rng).unwrap();
    let x = uniform(&mut rng, (n, cfg.in_channels, hw.0, hw.1)).into_dyn();
    let (dx, r) = run_layer(&mut conv, &x, &mut rng);
    let p = Params {
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
        groups: cfg.groups,
    };
    let x64 = to64(&x).into_dimensionality::<Ix4>().unwrap();
    let w64 = to64(conv.weight());
    let b64 = conv.bias().map(to64);
    let what = format!("{cfg:?}");

    let num = numeric_grad(&x64, |x| dot(&naive::conv2d(x, &w64, b64.as_ref(), p), &r));
    assert_grad(&format!("conv dx {what}"), dx.view(), num.into_dyn());
    let num = numeric_grad(&w64, |w| dot(&naive::conv2d(&x64, w, b64.as_ref(), p), &r));
    assert_grad(
        &format!("conv dw {what}"),
        conv.weight_grad().view().into_dyn(),
        num.into_dyn(),
    );
    if let Some(b64) = &b64 {
        let num = numeric_grad(b64, |b| dot(&naive::conv2d(&x64, &w64, Some(b), p), &r));
        assert_grad(
            &format!("conv db {what}"),
            conv.bias_grad().unwrap().view().into_dyn(),
            num.into_dyn(),
        );
    }
}

#[test]
fn conv2d_gradients() {
    conv_check(Conv2dConfig::new(2, 3, (3, 3)), 2, (5, 6), 1);
    conv_check(
        Conv2dConfig::new(3, 2, (2, 3))
            .with_stride((2, 1))
            .with_padding((1, 2)),
        2,
        (6, 5),
        2,
    );
    conv_check(
        Conv2dConfig::new(4, 4, (3, 2))
            .with_dilation((2, 1))
            .with_groups(2)
            .with_padding((2, 0)),
        1,
        (7, 4),
        3,
    );
    conv_check(
        Conv2dConfig::new(2, 3, (1, 1))
            .with_bias(false)
            .with_padding((2, 1)),
        2,
        (3, 4),
        4,
    );
}

fn linear_ref(x: &Array2<f64>, w: &Array2<f64>, b: Option<&Array1<f64>>) -> Array2<f64> {
    let mut y = Array2::zeros((x.nrows(), w.nrows()));
    for ((i, j), v) in y.indexed_iter_mut() {
        *v = (0..x.ncols()).map(|k| x[[i, k]] * w[[j, k]]).sum::<f64>() + b.map_or(0.0, |b| b[j]);
    }
    y
}

#[test]
fn linear_gradients() {
    for (bias, seed) in [(true, 10), (false, 11)] {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut lin = Linear::new(LinearConfig::new(5, 3).with_bias(bias), &mut rng).unwrap();
        let x = uniform(&mut rng, (4, 5)).into_dyn();
        let (dx, r) = run_layer(&mut lin, &x, &mut rng);
        let x64 = to64(&x).into_dimensionality::<Ix2>().unwrap();
        let w64 = to64(lin.weight());
        let b64 = lin.bias().map(to64);
        let num = numeric_grad(&x64, |x| dot(&linear_ref(x, &w64, b64.as_ref()), &r));
        assert_grad("linear dx", dx.view(), num.into_dyn());
        let num = numeric_grad(&w64, |w| dot(&linear_ref(&x64, w, b64.as_ref()), &r));
        assert_grad(
            "linear dw",
            lin.weight_grad().view().into_dyn(),
            num.into_dyn(),
        );
        if let Some(b64) = &b64 {
            let num = numeric_grad(b64, |b| dot(&linear_ref(&x64, &w64, Some(b)), &r));
            assert_grad(
                "linear db",
                lin.bias_grad().unwrap().view().into_dyn(),
                num.into_dyn(),
            );
        }
    }
}

#[test]
fn relu_gradient() {
    let mut rng = StdRng::seed_from_u64(20);
    let x = away_from_zero(&mut rng, (2, 3, 4, 5)).into_dyn();
    let (dx, r) = run_layer(&mut Relu::new(), &x, &mut rng);
    let num = numeric_grad(&to64(&x), |z| dot(&z.mapv(|v| v.max(0.0)), &r));
    assert_grad("relu dx", dx.view(), num);
}

#[test]
fn leaky_relu_gradients() {
    for (k, slope) in [0.0f32, 0.1, 5.0f32.sqrt()].into_iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(30 + k as u64);
        let x = away_from_zero(&mut rng, (3, 2, 5)).into_dyn();
        let (dx, r) = run_layer(&mut LeakyRelu::new(slope), &x, &mut rng);
        let s = f64::from(slope);
        let num = numeric_grad(&to64(&x), |z| {
            dot(&z.mapv(|v| if v > 0.0 { v } else { s * v }), &r)
        });
        assert_grad(&format!("leaky_relu({slope}) dx"), dx.view(), num);
    }
}

/// Adaptive average pooling by its definition, with the window bounds computed in floating
/// point: start = floor(i * H / out), end = ceil((i + 1) * H / out).
fn pool_ref(x: &Array4<f64>, (oh, ow): (usize, usize)) -> Array4<f64> {
    let (n, c, h, w) = x.dim();
    let bounds = |i: usize, size: usize, out: usize| {
        let start = (i as f64 * size as f64 / out as f64).floor() as usize;
        let end = ((i + 1) as f64 * size as f64 / out as f64).ceil() as usize;
        start..end
    };
    let mut y = Array4::zeros((n, c, oh, ow));
    for ((ni, ci, i, j), v) in y.indexed_iter_mut() {
        let (rows, cols) = (bounds(i, h, oh), bounds(j, w, ow));
        let count = (rows.len() * cols.len()) as f64;
        let mut sum = 0.0;
        for r in rows {
            for q in cols.clone() {
                sum += x[[ni, ci, r, q]];
            }
        }
        *v = sum / count;
    }
    y
}

#[test]
fn adaptive_avg_pool2d_gradients() {
    // Global, uneven and overlapping windows, and outputs larger than the input.
    let cases = [
        ((4, 4), (1, 1)),
        ((7, 5), (3, 2)),
        ((5, 7), (3, 4)),
        ((3, 2), (5, 7)),
        ((6, 6), (4, 6)),
    ];
    for (k, (hw, out)) in cases.into_iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(40 + k as u64);
        let x = uniform(&mut rng, (2, 2, hw.0, hw.1)).into_dyn();
        let mut pool = AdaptiveAvgPool2d::new(out).unwrap();
        let (dx, r) = run_layer(&mut pool, &x, &mut rng);
        let y = pool.forward(x.view()).unwrap();
        let x64 = to64(&x).into_dimensionality::<Ix4>().unwrap();
        let y_ref = pool_ref(&x64, out);
        let fwd_err = y
            .iter()
            .zip(y_ref.iter())
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max);
        assert!(
            fwd_err < 1e-6,
            "pool {hw:?} -> {out:?}: forward error {fwd_err:e}"
        );
        let num = numeric_grad(&x64, |z| dot(&pool_ref(z, out), &r));
        assert_grad(
            &format!("pool {hw:?} -> {out:?} dx"),
            dx.view(),
            num.into_dyn(),
        );
    }
}

#[test]
fn flatten_gradients() {
    // (start_dim, end_dim, input shape, expected output shape)
    let cases: [(isize, isize, &[usize], &[usize]); 4] = [
        (1, -1, &[2, 3, 4, 5], &[2, 60]),
        (0, -1, &[4, 1, 1, 1], &[4]),
        (1, 2, &[2, 3, 4, 5], &[2, 12, 5]),
        (-2, -1, &[3, 2, 2], &[3, 4]),
    ];
    for (k, (start, end, shape, want)) in cases.into_iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(50 + k as u64);
        let x = uniform(&mut rng, IxDyn(shape));
        let mut flat = Flatten::new(start, end);
        let y = flat.forward(x.view()).unwrap();
        assert_eq!(y.shape(), want, "flatten({start}, {end}) of {shape:?}");
        let (dx, r) = run_layer(&mut flat, &x, &mut rng);
        let num = numeric_grad(&to64(&x), |z| {
            dot(
                &z.as_standard_layout()
                    .into_owned()
                    .into_shape_with_order(IxDyn(want))
                    .unwrap(),
                &r,
            )
        });
        assert_grad(&format!("flatten({start}, {end}) dx"), dx.view(), num);
    }
}

#[test]
fn mse_gradients() {
    let mut rng = StdRng::seed_from_u64(60);
    let target: Array1<f32> = uniform(&mut rng, 7);
    let t64 = to64(&target);
    let loss_ref = |p: &ArrayD<f64>| {
        p.iter()
            .zip(t64.iter())
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            / 7.0
    };
    for shape in [vec![7], vec![7, 1]] {
        let pred = uniform(&mut rng, IxDyn(&shape));
        let loss = mse(pred.view(), target.view()).unwrap();
        let p64 = to64(&pred);
        assert!(
            (f64::from(loss) - loss_ref(&p64)).abs() < 1e-6,
            "mse {shape:?}"
        );
        let grad = mse_backward(pred.view(), target.view()).unwrap();
        assert_eq!(grad.shape(), pred.shape());
        assert_grad(
            &format!("mse dpred {shape:?}"),
            grad.view(),
            numeric_grad(&p64, loss_ref),
        );
    }
}

/// The whole chain: conv, ReLU, conv, leaky ReLU, pooling, flatten, linear, then MSE,
/// every parameter gradient of the Sequential against differences of an f64 forward.
/// Hidden pre-activations cannot be kept away from the kinks here, so the step is
/// `H_NET` = 1e-6 (a crossing needs a pre-activation within ~1e-6 of zero; the f64
/// rounding error ~1e-16 * |L| / h stays near 1e-10).
#[test]
fn sequential_gradients() {
    let mut rng = StdRng::seed_from_u64(70);
    let c1 = Conv2dConfig::new(1, 3, (3, 3))
        .with_stride((2, 2))
        .with_padding((1, 1));
    let c2 = Conv2dConfig::new(3, 4, (3, 3)).with_padding((1, 1));
    let mut net = Sequential::new()
        .with(Conv2d::new(c1, &mut rng).unwrap())
        .with(Relu::new())
        .with(Conv2d::new(c2, &mut rng).unwrap())
        .with(LeakyRelu::new(0.1))
        .with(AdaptiveAvgPool2d::new((2, 2)).unwrap())
        .with(Flatten::default())
        .with(Linear::new(LinearConfig::new(16, 1), &mut rng).unwrap());
    let x = uniform(&mut rng, (3, 1, 7, 7)).into_dyn();
    let target: Array1<f32> = uniform(&mut rng, 3);
    let out = net.forward(x.view()).unwrap();
    assert_eq!(out.shape(), &[3, 1]);
    let dout = mse_backward(out.view(), target.view()).unwrap();
    net.zero_grad();
    let dx = net.backward(dout.view()).unwrap();

    // The f64 forward of the same network from a flat list of parameters.
    let params: Vec<ArrayD<f64>> = net
        .named_parameters()
        .iter()
        .map(|p| p.value.mapv(f64::from))
        .collect();
    let p1 = Params {
        stride: (2, 2),
        padding: (1, 1),
        dilation: (1, 1),
        groups: 1,
    };
    let p2 = Params {
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
        groups: 1,
    };
    let t64 = to64(&target);
    let x64 = to64(&x).into_dimensionality::<Ix4>().unwrap();
    let forward = |x: &Array4<f64>, ps: &[ArrayD<f64>]| -> f64 {
        let d4 = |a: &ArrayD<f64>| a.clone().into_dimensionality::<Ix4>().unwrap();
        let d1 = |a: &ArrayD<f64>| a.clone().into_dimensionality::<Ix1>().unwrap();
        let h = naive::conv2d(x, &d4(&ps[0]), Some(&d1(&ps[1])), p1).mapv(|v| v.max(0.0));
        let h = naive::conv2d(&h, &d4(&ps[2]), Some(&d1(&ps[3])), p2)
            .mapv(|v| if v > 0.0 { v } else { 0.1 * v });
        let h = pool_ref(&h, (2, 2));
        let h = h.into_shape_with_order((3, 16)).unwrap();
        let out = linear_ref(
            &h,
            &ps[4].clone().into_dimensionality::<Ix2>().unwrap(),
            Some(&d1(&ps[5])),
        );
        out.iter()
            .zip(t64.iter())
            .map(|(o, t)| (o - t).powi(2))
            .sum::<f64>()
            / 3.0
    };
    const H_NET: f64 = 1e-6;
    let num = numeric_grad_h(&x64, H_NET, |z| forward(z, &params));
    assert_grad("net dx", dx.view(), num.into_dyn());
    for (k, p) in net.named_parameters().iter().enumerate() {
        let num = numeric_grad_h(&params[k], H_NET, |z| {
            let mut ps = params.clone();
            ps[k] = z.clone();
            forward(&x64, &ps)
        });
        assert_grad(&format!("net {}", p.name), p.grad.view(), num);
    }
}

/// Gradients accumulate with `+=` across backward calls until `zero_grad`.
#[test]
fn gradients_accumulate_until_zeroed() {
    let mut rng = StdRng::seed_from_u64(80);
    let mut conv = Conv2d::new(Conv2dConfig::new(2, 2, (3, 3)), &mut rng).unwrap();
    let x = uniform(&mut rng, (2, 2, 5, 5)).into_dyn();
    let y = conv.forward(x.view()).unwrap();
    let r: ArrayD<f32> = uniform(&mut rng, y.raw_dim());
    conv.backward(r.view()).unwrap();
    let once = conv.weight_grad().clone();
    let once_b = conv.bias_grad().unwrap().clone();
    conv.backward(r.view()).unwrap();
    assert_eq!(conv.weight_grad(), &(&once * 2.0));
    assert_eq!(conv.bias_grad().unwrap(), &(&once_b * 2.0));
    conv.zero_grad();
    assert!(
        conv.weight_grad()
            .iter()
            .chain(conv.bias_grad().unwrap())
            .all(|&g| g == 0.0)
    );
}
