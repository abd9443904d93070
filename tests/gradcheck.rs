//! Finite-difference gradient checks of every layer's backward pass, over the op-case
//! table (`common/ops.rs`), and the layout test of every case.
//!
//! The analytic gradients come from the crate (f32, through the `Layer` trait). The
//! numeric ones are central differences of `L(z) = sum(F(z) * r)` where `F` is the
//! case's independent f64 reference forward (`OpCase::reference`; the conv one is the
//! naive loops in `common/naive.rs`) and `r` is the upstream gradient given to
//! `backward`.
//!
//! Tolerance: |analytic - numeric| <= 1e-4 * max(1, max |numeric|) per tensor. Every `F`
//! here is linear, quadratic or piecewise linear, so in f64 a central difference is exact
//! up to rounding (~1e-16 * |L| / h, below 1e-10 for h = 1e-3) as long as no input
//! crosses a kink, which we prevent by keeping activation inputs at least 0.05 away from
//! zero. What remains is the f32 rounding of the analytic gradient: sums of at most a few
//! hundred products of O(1) values, ~1e-6 relative in practice and bounded well below
//! 1e-4, while an indexing or scaling bug moves gradients by O(0.1).

mod common;

use common::ops::{LAYOUTS, OPS, OpCase, bits, in_layout, op_cases};
use convinit::nn::{Conv2d, Conv2dConfig, Layer, Sequential};
use ndarray::{Array, ArrayD, ArrayViewD, Dimension};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn uniform<Sh: ndarray::ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f32, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

fn to64<D: Dimension>(a: &Array<f32, D>) -> Array<f64, D> {
    a.mapv(f64::from)
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

/// Every case of the op table small enough for finite differences: the forward against
/// the f64 reference, the input gradient and every parameter gradient against central
/// differences of `sum(reference(x, params) * dy)`.
#[test]
fn every_op_case_against_finite_differences() {
    let mut ops_checked = std::collections::BTreeSet::new();
    let mut n = 0;
    for case in op_cases().into_iter().filter(OpCase::finite_differences) {
        let run = case.run(0);
        let x64 = to64(&run.x);
        let p64: Vec<ArrayD<f64>> = run.params.iter().map(to64).collect();
        let r = to64(&run.dy);
        let y_ref = (case.reference)(&x64, &p64);
        assert_eq!(run.y.shape(), y_ref.shape(), "{case:?}: output shape");
        let scale = y_ref.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let fwd_err = run
            .y
            .iter()
            .zip(y_ref.iter())
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max);
        assert!(
            fwd_err <= case.forward_tol * scale,
            "{case:?}: forward error {fwd_err:e}"
        );
        let num = numeric_grad_h(&x64, case.step, |z| dot(&(case.reference)(z, &p64), &r));
        assert_grad(&format!("{case:?} dx"), run.dx.view(), num);
        for (k, g) in run.grads.iter().enumerate() {
            let num = numeric_grad_h(&p64[k], case.step, |z| {
                let mut ps = p64.clone();
                ps[k] = z.clone();
                dot(&(case.reference)(&x64, &ps), &r)
            });
            assert_grad(&format!("{case:?} param {k}"), g.view(), num);
        }
        ops_checked.insert(case.op);
        n += 1;
    }
    // Every op family has at least one case checked here.
    let want: std::collections::BTreeSet<_> = OPS.iter().copied().collect();
    assert_eq!(
        ops_checked, want,
        "op families with a finite-difference case"
    );
    assert!(n >= 30, "only {n} cases checked");
}

/// The table's conv cases cover what the conv paths branch on.
#[test]
fn the_table_covers_conv_options() {
    let cases = op_cases();
    let small: Vec<_> = cases
        .iter()
        .filter(|c| c.op == "conv2d" && c.finite_differences())
        .map(|c| c.name.clone())
        .collect();
    let any = |pat: &str| small.iter().any(|n| n.contains(pat));
    assert!(any("groups: 2"), "{small:?}");
    assert!(any("groups: 1"), "{small:?}");
    assert!(any("dilation: (2, 1)"), "{small:?}");
    assert!(any("stride: (2, 1)"), "{small:?}");
    assert!(
        any("kernel_size: (2, 3)") && any("kernel_size: (3, 2)"),
        "{small:?}"
    );
    assert!(any("bias: false"), "{small:?}");
    // N = 1 and padding (2, 1) larger than a 1x1 kernel.
    assert!(
        cases
            .iter()
            .any(|c| c.op == "conv2d" && c.x_shape[0] == 1 && c.finite_differences())
    );
    assert!(
        any("kernel_size: (1, 1)") && any("padding: (2, 1)"),
        "{small:?}"
    );
}

/// Element-wise ops pair `x` and `dy` by index, not by memory order: every case of the
/// table, with `x` and `dy` in every pair of layouts (standard, Fortran, channels-last
/// permuted), gives bit for bit the standard-layout results, through the layer's view
/// path (`forward`, `backward`), its owned path (`forward_shared`, `backward_owned`, as
/// `Sequential` runs it), `Sequential` itself (for the Sequential cases) and the
/// functional op.
#[test]
fn every_op_case_is_layout_independent() {
    let mut checked = 0;
    for case in op_cases() {
        let want = run_in_layouts(&case, "standard", "standard");
        for &lx in LAYOUTS {
            for &ldy in LAYOUTS {
                let got = run_in_layouts(&case, lx, ldy);
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    assert!(a == b, "{case:?}: output {i} differs with x {lx}, dy {ldy}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 100);
}

/// Outputs (bits, logical order) of the case with `x` in layout `lx` and `dy` in `ldy`.
fn run_in_layouts(case: &OpCase, lx: &str, ldy: &str) -> Vec<Vec<u32>> {
    let (mut layer, mut rng) = case.build(0);
    let x = case.draw_x(&mut rng);
    let y = layer.forward(in_layout(&x, lx).view()).unwrap();
    let dy: ArrayD<f32> = uniform(&mut rng, y.raw_dim());
    let dx = layer.backward(in_layout(&dy, ldy).view()).unwrap();
    let mut out = vec![bits(&y), bits(&dx)];
    // The owned path, x handed over unique (layers may write over it) and shared.
    for unique in [true, false] {
        let xs = in_layout(&x, lx).into_shared();
        let keep = (!unique).then(|| xs.clone());
        let y = layer.forward_shared(xs).unwrap();
        let dx = layer.backward_owned(in_layout(&dy, ldy)).unwrap();
        out.extend([bits(&y), bits(&dx)]);
        drop(keep);
    }
    out.extend(layer.params().iter().map(|p| bits(p.grad.iter())));
    if let Some(f) = &case.functional {
        let params: Vec<ArrayD<f32>> = layer.params().iter().map(|p| p.value.to_owned()).collect();
        out.extend(
            f(&in_layout(&x, lx), &params, &in_layout(&dy, ldy))
                .iter()
                .map(bits),
        );
    }
    // Through a Sequential holding the layer, both backward entry points.
    let (layer, _) = case.build(0);
    let mut net = Sequential::new();
    net.push(layer);
    let y = net.forward(in_layout(&x, lx).view()).unwrap();
    let dx = net.backward(in_layout(&dy, ldy).view()).unwrap();
    out.extend([bits(&y), bits(&dx)]);
    let y = net.forward_shared(in_layout(&x, lx).into_shared()).unwrap();
    let dx = net.backward_owned(in_layout(&dy, ldy)).unwrap();
    out.extend([bits(&y), bits(&dx)]);
    out
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
