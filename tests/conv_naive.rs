//! The public conv2d (whatever algorithm `ConvPlan::choose` picks for each shape: direct,
//! phase, columns or pointwise) against a naive direct convolution (f64 loops in
//! `common/naive.rs`) over randomised configurations: forward and all three gradients,
//! and strided / broadcast views of the inputs. Every algorithm forced on every GEMM
//! kernel is `tests/conv_algorithms.rs`.

mod common;

use common::naive::{self, Params, assert_close, random_array, to64};
use convinit::ops::{Conv2dOptions, conv2d, conv2d_backward};
use ndarray::{Array1, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
struct Cfg {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: (usize, usize),
    p: Params,
    bias: bool,
}

fn check(cfg: Cfg, rng: &mut StdRng) {
    let g = cfg.p.groups;
    let x = random_array(rng, (cfg.n, cfg.c, cfg.h, cfg.w));
    let w = random_array(rng, (cfg.o, cfg.c / g, cfg.k.0, cfg.k.1));
    let b: Option<Array1<f32>> = cfg.bias.then(|| random_array(rng, ndarray::Ix1(cfg.o)));
    let opts = Conv2dOptions::new()
        .with_stride(cfg.p.stride)
        .with_padding(cfg.p.padding)
        .with_dilation(cfg.p.dilation)
        .with_groups(g);

    let y = conv2d(x.view(), w.view(), b.as_ref().map(|b| b.view()), &opts).unwrap();
    let y_ref = naive::conv2d(&to64(&x), &to64(&w), b.as_ref().map(to64).as_ref(), cfg.p);
    assert_close("y", &cfg, y.view(), &y_ref);

    let dy: Array4<f32> = random_array(rng, y.raw_dim());
    let grads = conv2d_backward(x.view(), w.view(), cfg.bias, dy.view(), &opts).unwrap();
    let (dx_ref, dw_ref, db_ref) = naive::conv2d_backward(&to64(&x), &to64(&w), &to64(&dy), cfg.p);
    assert_close("dx", &cfg, grads.dx.view(), &dx_ref);
    assert_close("dw", &cfg, grads.dw.view(), &dw_ref);
    match grads.db {
        Some(db) => assert_close("db", &cfg, db.view(), &db_ref),
        None => assert!(!cfg.bias, "db missing for {cfg:?}"),
    }
}

fn random_cfg(rng: &mut StdRng) -> Cfg {
    let groups = rng.random_range(1..=3);
    let k = (rng.random_range(1..=4), rng.random_range(1..=4));
    let stride = (rng.random_range(1..=3), rng.random_range(1..=3));
    let dilation = (rng.random_range(1..=3), rng.random_range(1..=3));
    // Padding up to 5 is often larger than the kernel.
    let padding = (rng.random_range(0..=5), rng.random_range(0..=5));
    // Smallest input the dilated kernel fits, plus up to 6 (odd and even sizes).
    let min = |k: usize, d: usize, p: usize| (d * (k - 1) + 1).saturating_sub(2 * p).max(1);
    let h = min(k.0, dilation.0, padding.0) + rng.random_range(0..=6);
    let w = min(k.1, dilation.1, padding.1) + rng.random_range(0..=6);
    Cfg {
        n: rng.random_range(1..=3),
        c: groups * rng.random_range(1..=3),
        h,
        w,
        o: groups * rng.random_range(1..=3),
        k,
        p: Params {
            stride,
            padding,
            dilation,
            groups,
        },
        bias: rng.random_bool(0.7),
    }
}

#[test]
fn random_configurations_match_naive() {
    let mut rng = StdRng::seed_from_u64(0x5eed_c0de);
    for _ in 0..150 {
        let cfg = random_cfg(&mut rng);
        check(cfg, &mut rng);
    }
}

fn cfg(n: usize, c: usize, hw: (usize, usize), o: usize, k: (usize, usize), p: Params) -> Cfg {
    Cfg {
        n,
        c,
        h: hw.0,
        w: hw.1,
        o,
        k,
        p,
        bias: true,
    }
}

fn params(
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
) -> Params {
    Params {
        stride,
        padding,
        dilation,
        groups,
    }
}

#[test]
fn edge_configurations_match_naive() {
    let mut rng = StdRng::seed_from_u64(7);
    let cases = [
        // 1x1 kernel, N = 1.
        cfg(1, 5, (4, 6), 3, (1, 1), params((1, 1), (0, 0), (1, 1), 1)),
        // 1x1 kernel with padding larger than the kernel.
        cfg(2, 2, (3, 3), 2, (1, 1), params((1, 1), (3, 2), (1, 1), 1)),
        // Kernel exactly the padded input: one output.
        cfg(1, 2, (3, 5), 2, (5, 7), params((1, 1), (1, 1), (1, 1), 1)),
        // Stride larger than the kernel, odd sizes: inputs skipped entirely.
        cfg(2, 3, (11, 9), 4, (2, 3), params((3, 4), (0, 1), (1, 1), 1)),
        // Depthwise (groups = channels) with dilation.
        cfg(2, 4, (9, 10), 4, (3, 3), params((1, 2), (2, 2), (2, 3), 4)),
        // Depthwise with a channel multiplier.
        cfg(1, 3, (7, 7), 6, (3, 2), params((2, 1), (1, 0), (1, 1), 3)),
        // The seed net's first layer.
        cfg(3, 1, (28, 28), 8, (5, 5), params((2, 2), (2, 2), (1, 1), 1)),
        // 1 x W images, rectangular kernel.
        cfg(2, 2, (1, 13), 3, (1, 4), params((1, 3), (0, 2), (1, 2), 1)),
        // Enough images for several reduction chunks, with a ragged last chunk.
        cfg(19, 2, (5, 5), 3, (3, 3), params((1, 1), (1, 1), (1, 1), 1)),
    ];
    for c in cases {
        check(c, &mut rng);
        check(Cfg { bias: false, ..c }, &mut rng);
    }
}

/// Views that are not in standard layout (here NHWC memory seen as NCHW, and a
/// transposed weight) give the same result as contiguous copies.
#[test]
fn strided_views_match_contiguous() {
    let mut rng = StdRng::seed_from_u64(11);
    let nhwc: Array4<f32> = random_array(&mut rng, (2, 6, 5, 3));
    let x = nhwc.view().permuted_axes([0, 3, 1, 2]);
    let w_t: Array4<f32> = random_array(&mut rng, (3, 4, 3, 3));
    let w = w_t.view().permuted_axes([1, 0, 2, 3]);
    let opts = Conv2dOptions::new()
        .with_padding((1, 1))
        .with_stride((2, 1));
    let y = conv2d(x, w, None, &opts).unwrap();
    let y2 = conv2d(x.to_owned().view(), w.to_owned().view(), None, &opts).unwrap();
    assert_eq!(y, y2);
    let dy: Array4<f32> = random_array(&mut rng, y.raw_dim());
    let dy_t = dy.view().reversed_axes().to_owned();
    let dy_view = dy_t.view().reversed_axes();
    let g1 = conv2d_backward(x, w, false, dy_view, &opts).unwrap();
    let g2 = conv2d_backward(
        x.to_owned().view(),
        w.to_owned().view(),
        false,
        dy.view(),
        &opts,
    )
    .unwrap();
    assert_eq!(g1, g2);
}

/// NaN and infinity propagate through the conv instead of being clamped or skipped.
#[test]
fn non_finite_values_propagate() {
    let mut x = Array4::<f32>::ones((1, 1, 5, 5));
    x[[0, 0, 2, 2]] = f32::NAN;
    x[[0, 0, 0, 0]] = f32::INFINITY;
    let w = Array4::<f32>::ones((1, 1, 3, 3));
    let y = conv2d(x.view(), w.view(), None, &Conv2dOptions::new()).unwrap();
    // Every 3x3 window of the 5x5 input covers the centre.
    assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    let y = conv2d(
        x.view(),
        w.view(),
        None,
        &Conv2dOptions::new().with_padding((1, 1)),
    )
    .unwrap();
    assert!(y[[0, 0, 0, 0]].is_infinite());
    let dy = Array4::<f32>::from_elem(y.raw_dim(), f32::NAN);
    let g = conv2d_backward(
        x.view(),
        w.view(),
        true,
        dy.view(),
        &Conv2dOptions::new().with_padding((1, 1)),
    )
    .unwrap();
    assert!(g.dx.iter().all(|v| v.is_nan()));
    assert!(g.dw.iter().all(|v| v.is_nan()));
    assert!(g.db.unwrap().iter().all(|v| v.is_nan()));
}
