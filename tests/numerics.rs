//! Numerical guards: non-finite values propagate as in PyTorch (NaN in, NaN out, only
//! where the math says; no silent zeroing), and `sgemm` is right for infinities and
//! denormals in every layout.
//!
//! - relu / leaky relu forward and backward: NaN stays NaN (`torch.relu(nan) = nan`);
//!   the backward selects (`x <= 0 ? 0 : dy`) as `threshold_backward` does.
//! - adaptive average pooling: a NaN spreads to exactly the windows that contain it
//!   (PyTorch's `start = floor(i * in / out)`, `end = ceil((i + 1) * in / out)`), and a
//!   NaN in the upstream gradient to exactly the inputs of its window.
//! - conv2d: a NaN in `x` spreads to exactly the outputs whose receptive field covers it
//!   (same image, output channels of its group, positions from stride / padding /
//!   dilation), computed independently below; backward likewise for `dw`, and `dx` stays
//!   finite; a NaN in `dy` reaches exactly the inputs under its window and all of its
//!   output channel's `dw` and `db`.
//! - mse, mse_backward, stats, normalize.
//! - sgemm against an f64-accumulated naive reference, with infinities, denormals and
//!   NaN, in contiguous, transposed, strided and negative-stride layouts: NaN and infinity positions
//!   equal, finite values within a bound relative to `sum |a| |b|` (which also catches a
//!   kernel that flushes denormals to zero).

use convinit::data::{normalize, stats, to_images};
use convinit::gemm::sgemm;
use convinit::nn::{Layer, LeakyRelu, Relu};
use convinit::ops::{
    Conv2dOptions, adaptive_avg_pool2d, adaptive_avg_pool2d_backward, conv2d, conv2d_backward,
    leaky_relu, leaky_relu_backward, mse, mse_backward, relu, relu_backward,
};
use ndarray::{Array, Array1, Array2, Array4, ArrayView2, Ix4, array, s};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn uniform<Sh: ndarray::ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f32, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Asserts NaN exactly where `expect_nan` says, and finite values elsewhere.
#[track_caller]
fn assert_nan_mask(what: &str, got: &Array<f32, Ix4>, expect_nan: impl Fn([usize; 4]) -> bool) {
    let mut nans = 0;
    for ((a, b, c, d), &v) in got.indexed_iter() {
        let want = expect_nan([a, b, c, d]);
        assert_eq!(
            v.is_nan(),
            want,
            "{what}: at {:?} got {v}, expected {}",
            (a, b, c, d),
            if want { "NaN" } else { "a finite value" }
        );
        assert!(want || v.is_finite(), "{what}: {v} at {:?}", (a, b, c, d));
        nans += usize::from(want);
    }
    assert!(nans > 0, "{what}: the expected mask is empty");
}

// ---------------------------------------------------------------------------------------
// Activations

#[test]
fn relu_and_leaky_relu_propagate_nan_like_pytorch() {
    let x = array![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, 0.0, 2.0];
    let y = relu(x.view()).unwrap();
    assert!(y[0].is_nan(), "relu(NaN) must be NaN, got {}", y[0]);
    assert_eq!(y.slice(s![1..]), array![f32::INFINITY, 0.0, 0.0, 0.0, 2.0]);
    let y = leaky_relu(x.view(), 0.1).unwrap();
    assert!(y[0].is_nan());
    assert_eq!(
        y.slice(s![1..]),
        array![f32::INFINITY, f32::NEG_INFINITY, -0.1, 0.0, 2.0]
    );
    // Backward: NaN in dy passes where the input was positive (or NaN: `NaN <= 0` is
    // false, as in torch's threshold_backward) and is zeroed where relu was flat.
    let dy = array![3.0f32, f32::NAN, f32::NAN, f32::NAN, 1.0, 1.0];
    let dx = relu_backward(x.view(), dy.view()).unwrap();
    assert_eq!(dx[0], 3.0);
    assert!(dx[1].is_nan());
    assert_eq!(dx.slice(s![2..]), array![0.0, 0.0, 0.0, 1.0]);
    let dx = leaky_relu_backward(x.view(), dy.view(), 0.5).unwrap();
    // NaN input: the negative branch (`NaN > 0` is false), dy * slope.
    assert_eq!(dx[0], 1.5);
    assert!(dx[1].is_nan() && dx[2].is_nan() && dx[3].is_nan());
    assert_eq!(dx.slice(s![4..]), array![0.5, 1.0]);
    // The layers do the same.
    let xd = x.clone().into_dyn();
    assert!(Relu::new().forward(xd.view()).unwrap()[0].is_nan());
    assert!(LeakyRelu::new(0.01).forward(xd.view()).unwrap()[0].is_nan());
}

// ---------------------------------------------------------------------------------------
// Pooling

/// PyTorch's adaptive pooling window, written out again here independently.
fn window(i: usize, input: usize, out: usize) -> std::ops::Range<usize> {
    let start = (i * input) / out;
    let end = ((i + 1) * input).div_ceil(out);
    start..end
}

#[test]
fn pooling_spreads_nan_to_exactly_the_covering_windows() {
    let mut rng = StdRng::seed_from_u64(1);
    for (h, w, oh, ow) in [(7, 9, 3, 4), (5, 5, 1, 1), (4, 6, 7, 9), (8, 8, 2, 2)] {
        let mut x: Array4<f32> = uniform(&mut rng, (2, 3, h, w));
        let (nh, nw) = (h / 2, w - 1);
        x[[1, 2, nh, nw]] = f32::NAN;
        let y = adaptive_avg_pool2d(x.view(), (oh, ow)).unwrap();
        assert_nan_mask(&format!("pool {h}x{w}->{oh}x{ow}"), &y, |[n, c, i, j]| {
            n == 1 && c == 2 && window(i, h, oh).contains(&nh) && window(j, w, ow).contains(&nw)
        });
        // Backward: a NaN in dy at (0, 1, oi, oj) reaches exactly its window's inputs.
        let mut dy: Array4<f32> = uniform(&mut rng, (2, 3, oh, ow));
        let (oi, oj) = (oh - 1, 0);
        dy[[0, 1, oi, oj]] = f32::NAN;
        let dx = adaptive_avg_pool2d_backward((2, 3, h, w), dy.view()).unwrap();
        assert_nan_mask(&format!("pool backward {h}x{w}"), &dx, |[n, c, i, j]| {
            n == 0 && c == 1 && window(oi, h, oh).contains(&i) && window(oj, w, ow).contains(&j)
        });
    }
    // +inf and -inf in one window average to NaN; +inf alone to +inf.
    let mut x = Array4::<f32>::zeros((1, 1, 2, 4));
    x[[0, 0, 0, 0]] = f32::INFINITY;
    x[[0, 0, 1, 1]] = f32::NEG_INFINITY;
    x[[0, 0, 0, 2]] = f32::INFINITY;
    let y = adaptive_avg_pool2d(x.view(), (1, 2)).unwrap();
    assert!(y[[0, 0, 0, 0]].is_nan());
    assert_eq!(y[[0, 0, 0, 1]], f32::INFINITY);
}

// ---------------------------------------------------------------------------------------
// Convolution

/// Whether output position `oi` reads input row `h` through some kernel row.
fn covers(oi: usize, h: usize, k: usize, stride: usize, pad: usize, dil: usize) -> bool {
    (0..k).any(|ki| oi * stride + ki * dil == h + pad)
}

/// Whether kernel row `ki` of some output position reads input row `h`.
fn tap_reads(ki: usize, h: usize, out: usize, stride: usize, pad: usize, dil: usize) -> bool {
    (0..out).any(|oi| oi * stride + ki * dil == h + pad)
}

#[test]
fn conv_spreads_nan_to_exactly_the_receptive_fields() {
    let mut rng = StdRng::seed_from_u64(2);
    // (N, C, H, W), (O, kh, kw), stride, padding, dilation, groups, NaN at (n, c, h, w)
    let configs = [
        (
            (2, 1, 9, 9),
            (3, 3, 3),
            (1, 1),
            (0, 0),
            (1, 1),
            1,
            (1, 0, 4, 4),
        ),
        (
            (3, 4, 11, 10),
            (6, 3, 2),
            (2, 1),
            (1, 2),
            (1, 2),
            2,
            (2, 3, 0, 9),
        ),
        (
            (1, 6, 12, 12),
            (6, 5, 5),
            (2, 2),
            (2, 2),
            (1, 1),
            3,
            (0, 2, 7, 1),
        ),
        (
            (2, 2, 8, 8),
            (4, 1, 1),
            (3, 3),
            (0, 0),
            (1, 1),
            1,
            (0, 1, 6, 3),
        ),
        (
            (9, 2, 6, 7),
            (2, 3, 3),
            (1, 1),
            (3, 3),
            (2, 2),
            2,
            (8, 1, 5, 6),
        ),
    ];
    for (xs, (o, kh, kw), st, pad, dil, g, nan_at) in configs {
        let what = format!("conv x {xs:?} w ({o}, {kh}, {kw}) s {st:?} p {pad:?} d {dil:?} g {g}");
        let (_, c, _, _) = xs;
        let (cg, og) = (c / g, o / g);
        let opts = Conv2dOptions::new()
            .with_stride(st)
            .with_padding(pad)
            .with_dilation(dil)
            .with_groups(g);
        let mut x: Array4<f32> = uniform(&mut rng, xs);
        let w: Array4<f32> = uniform(&mut rng, (o, cg, kh, kw));
        let b: Array1<f32> = uniform(&mut rng, o);
        let (nn, nc, nh, nw) = nan_at;
        x[[nn, nc, nh, nw]] = f32::NAN;
        let group_of_c = nc / cg;
        let y = conv2d(x.view(), w.view(), Some(b.view()), &opts).unwrap();
        let (_, _, oh, ow) = y.dim();
        assert_nan_mask(&format!("{what}: y"), &y, |[n, oc, i, j]| {
            n == nn
                && oc / og == group_of_c
                && covers(i, nh, kh, st.0, pad.0, dil.0)
                && covers(j, nw, kw, st.1, pad.1, dil.1)
        });
        // Backward with a finite dy: dw gets NaN at exactly the taps that read the NaN,
        // for the output channels of its group; dx = W^T dy never sees x, stays finite.
        let dy: Array4<f32> = uniform(&mut rng, y.raw_dim());
        let gr = conv2d_backward(x.view(), w.view(), true, dy.view(), &opts).unwrap();
        assert!(gr.dx.iter().all(|v| v.is_finite()), "{what}: dx not finite");
        assert!(gr.db.as_ref().unwrap().iter().all(|v| v.is_finite()));
        assert_nan_mask(&format!("{what}: dw"), &gr.dw, |[oc, ci, ki, kj]| {
            oc / og == group_of_c
                && ci == nc % cg
                && tap_reads(ki, nh, oh, st.0, pad.0, dil.0)
                && tap_reads(kj, nw, ow, st.1, pad.1, dil.1)
        });
        // A NaN in dy at (n, o, i, j), x finite: dx NaN at the inputs under that window
        // in its group's channels; dw NaN for all of channel o (padding zeros times NaN
        // are NaN too, as in IEEE and PyTorch); db NaN at o only.
        let mut x = x;
        x[[nn, nc, nh, nw]] = 0.5;
        let mut dy = dy;
        let (dn, dc, di, dj) = (xs.0 - 1, o - 1, oh / 2, ow - 1);
        dy[[dn, dc, di, dj]] = f32::NAN;
        let gr = conv2d_backward(x.view(), w.view(), true, dy.view(), &opts).unwrap();
        assert_nan_mask(&format!("{what}: dx"), &gr.dx, |[n, ci, h, wi]| {
            n == dn
                && ci / cg == dc / og
                && covers(di, h, kh, st.0, pad.0, dil.0)
                && covers(dj, wi, kw, st.1, pad.1, dil.1)
        });
        assert_nan_mask(&format!("{what}: dw from dy"), &gr.dw, |[oc, ..]| oc == dc);
        for (oc, v) in gr.db.as_ref().unwrap().iter().enumerate() {
            assert_eq!(v.is_nan(), oc == dc, "{what}: db[{oc}] = {v}");
        }
    }
}

/// The helpers above agree with the conv's own geometry on a case worked by hand:
/// a 3x3 kernel, stride 1, no padding on 5 rows; input row 2 is read by outputs 0..=2.
#[test]
fn receptive_field_helpers_are_right() {
    assert_eq!((0..3).filter(|&o| covers(o, 2, 3, 1, 0, 1)).count(), 3);
    assert!(!covers(0, 3, 3, 1, 0, 1));
    // Stride 2, padding 1: output 0 reads rows -1, 0, 1; output 1 reads 1, 2, 3.
    assert!(covers(0, 1, 3, 2, 1, 1) && covers(1, 1, 3, 2, 1, 1));
    assert!(!covers(0, 2, 3, 2, 1, 1));
    // Tap 0 of a 3-tap kernel, 3 outputs, stride 1: reads rows 0, 1, 2, not 3.
    assert!(tap_reads(0, 2, 3, 1, 0, 1) && !tap_reads(0, 3, 3, 1, 0, 1));
}

// ---------------------------------------------------------------------------------------
// Loss and stats

#[test]
fn mse_and_stats_propagate_nan() {
    let pred = array![1.0f32, f32::NAN, 3.0];
    let target = array![1.0f32, 2.0, 2.0];
    assert!(mse(pred.view(), target.view()).unwrap().is_nan());
    let d = mse_backward(pred.view(), target.view()).unwrap();
    assert_eq!(d[0], 0.0);
    assert!(d[1].is_nan());
    assert!((d[2] - 2.0 / 3.0).abs() < 1e-7);
    // inf - inf is NaN; inf - finite is inf.
    let pred = array![f32::INFINITY, f32::INFINITY];
    let target = array![f32::INFINITY, 0.0];
    assert!(mse(pred.view(), target.view()).unwrap().is_nan());
    let d = mse_backward(pred.view(), target.view()).unwrap();
    assert!(d[0].is_nan());
    assert_eq!(d[1], f32::INFINITY);
    let pred = array![f32::INFINITY, 1.0];
    let target = array![0.0f32, 1.0];
    assert_eq!(mse(pred.view(), target.view()).unwrap(), f32::INFINITY);

    let x = array![[0.5f32, f32::NAN], [1.0, 2.0]];
    let (m, sd) = stats(&x);
    assert!(m.is_nan() && sd.is_nan());
    let n = normalize(&x, 0.5, 2.0);
    assert!(n[[0, 1]].is_nan());
    assert_eq!(n[[0, 0]], 0.0);
    assert_eq!(n[[1, 1]], 0.75);
    let (m, sd) = stats(&array![1.0f32, f32::INFINITY]);
    assert_eq!(m, f64::INFINITY);
    assert!(sd.is_nan());
    let imgs = to_images(&array![[1.0f32, f32::NAN, 3.0, 4.0]]).unwrap();
    assert!(imgs[[0, 0, 0, 1]].is_nan());
    assert_eq!(imgs[[0, 0, 1, 1]], 4.0);
}

// ---------------------------------------------------------------------------------------
// sgemm with infinities, NaN and denormals

/// `alpha * A * B + beta * C` accumulated in f64, plus `sum |alpha a b|` per entry.
fn reference(
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: &Array2<f32>,
) -> (Array2<f64>, Array2<f64>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    let mut r = Array2::<f64>::zeros((m, n));
    let mut mag = Array2::<f64>::zeros((m, n));
    for i in 0..m {
        for j in 0..n {
            let (mut acc, mut abs) = (0.0f64, 0.0f64);
            for p in 0..k {
                let t = f64::from(a[[i, p]]) * f64::from(b[[p, j]]);
                acc += t;
                abs += t.abs();
            }
            let mut v = f64::from(alpha) * acc;
            if beta != 0.0 {
                v += f64::from(beta) * f64::from(c[[i, j]]);
            }
            r[[i, j]] = v;
            mag[[i, j]] = f64::from(alpha).abs() * abs;
        }
    }
    (r, mag)
}

#[track_caller]
fn check_against_reference(
    what: &str,
    k: usize,
    got: &Array2<f32>,
    want: &Array2<f64>,
    mag: &Array2<f64>,
) {
    for ((ij, &g), (&w, &s)) in got.indexed_iter().zip(want.iter().zip(mag.iter())) {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: at {ij:?} expected NaN, got {g}");
        } else if w.is_infinite() {
            assert_eq!(f64::from(g), w, "{what}: at {ij:?}");
        } else {
            // Any summation order is within k * eps * sum |a b| (k = inner dimension);
            // plus one denormal step for the final rounding. A flushed denormal is not.
            let tol = (k as f64 + 2.0) * f64::from(f32::EPSILON) * s + f64::from(f32::from_bits(1));
            let err = (f64::from(g) - w).abs();
            assert!(
                err <= tol,
                "{what}: at {ij:?} got {g:e}, want {w:e} (err {err:e} > tol {tol:e})"
            );
        }
    }
}

#[test]
fn sgemm_handles_inf_nan_and_denormals_in_every_layout() {
    let mut rng = StdRng::seed_from_u64(3);
    let (m, k, n) = (37, 53, 29);
    let tiny = f32::MIN_POSITIVE; // 2^-126, the smallest normal
    // A: mostly finite, a few +inf / -inf / NaN, and a denormal-only row.
    let mut a: Array2<f32> = uniform(&mut rng, (m, k));
    a[[3, 5]] = f32::INFINITY;
    a[[3, 9]] = f32::NEG_INFINITY; // row 3: inf - inf where B is positive in both
    a[[7, 0]] = f32::INFINITY;
    a[[11, 20]] = f32::NAN;
    for p in 0..k {
        a[[20, p]] = tiny * (p as f32 + 1.0) / 64.0; // denormals
    }
    let mut b: Array2<f32> = uniform(&mut rng, (k, n));
    b[[5, 2]] = 0.0; // inf * 0 = NaN at (3, 2) and (7 doesn't use row 5)
    b[[0, 4]] = 0.0; // row 7: inf * 0 = NaN at column 4
    b[[9, 6]] = f32::NEG_INFINITY;
    for j in 0..n {
        b[[5, j]] = b[[5, j]].abs() + 0.5 * f32::from(u8::from(j != 2));
        b[[9, j]] = b[[9, j]].abs() + 0.5;
    }
    b[[9, 6]] = f32::NEG_INFINITY;
    b[[30, 10]] = tiny / 8.0; // a denormal in B
    // Layouts: contiguous, transposed (copied then viewed as .t()), strided.
    let at = a.t().as_standard_layout().into_owned();
    let bt = b.t().as_standard_layout().into_owned();
    let mut a_wide = Array2::<f32>::from_elem((m, 2 * k), 7.0);
    a_wide.slice_mut(s![.., ..;2]).assign(&a);
    let mut b_tall = Array2::<f32>::from_elem((3 * k, n), -7.0);
    b_tall.slice_mut(s![1..;3, ..]).assign(&b);
    // Negative strides: stored reversed, viewed reversed back.
    let a_rev = a.slice(s![..;-1, ..]).to_owned();
    let b_rev = b.slice(s![.., ..;-1]).to_owned();
    let a_views: [(&str, ArrayView2<'_, f32>); 4] = [
        ("A", a.view()),
        ("A^T^T", at.t()),
        ("A strided", a_wide.slice(s![.., ..;2])),
        ("A negative stride", a_rev.slice(s![..;-1, ..])),
    ];
    let b_views: [(&str, ArrayView2<'_, f32>); 4] = [
        ("B", b.view()),
        ("B^T^T", bt.t()),
        ("B strided", b_tall.slice(s![1..;3, ..])),
        ("B negative stride", b_rev.slice(s![.., ..;-1])),
    ];
    let c0: Array2<f32> = uniform(&mut rng, (m, n));
    let mut checked_nan = 0;
    for (an, av) in &a_views {
        for (bn, bv) in &b_views {
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.0), (-2.0, 0.25)] {
                let what = format!("{an} x {bn}, alpha {alpha}, beta {beta}");
                // With beta = 0, C starts as NaN: it must not be read.
                let mut c = if beta == 0.0 {
                    Array2::from_elem((m, n), f32::NAN)
                } else {
                    c0.clone()
                };
                let (want, mag) = reference(alpha, *av, *bv, beta, &c0);
                sgemm(alpha, *av, *bv, beta, c.view_mut()).unwrap();
                check_against_reference(&what, k, &c, &want, &mag);
                checked_nan += want.iter().filter(|v| v.is_nan()).count();
                // Output written through a strided (column-major) view too.
                let mut ct = Array2::<f32>::from_elem((n, m), f32::NAN);
                if beta != 0.0 {
                    ct.assign(&c0.t());
                }
                sgemm(alpha, *av, *bv, beta, ct.view_mut().reversed_axes()).unwrap();
                check_against_reference(
                    &format!("{what}, C^T"),
                    k,
                    &ct.t().to_owned(),
                    &want,
                    &mag,
                );
            }
        }
    }
    // The reference really has NaN (inf - inf, inf * 0, NaN rows) and the denormal row
    // is not flushed to zero.
    assert!(checked_nan >= 48 * 3, "{checked_nan}");
    let mut c = Array2::<f32>::zeros((m, n));
    sgemm(1.0, a.view(), b.view(), 0.0, c.view_mut()).unwrap();
    assert!(
        c.row(20)
            .iter()
            .any(|&v| v != 0.0 && v.abs() < f32::MIN_POSITIVE * 64.0)
    );
}
