//! The `_into` ops, which write into the caller's buffer: the same bits as the
//! allocating ops whatever the buffer held before (garbage, NaN, the last call's
//! output), the same running statistics, and a clear error for a buffer of the wrong
//! shape or layout.

use convinit::Error;
use convinit::ops::{
    BatchNormOptions, Conv2dOptions, MaxPool2dOptions, batch_norm2d, batch_norm2d_into, conv2d,
    conv2d_into, max_pool2d, max_pool2d_into,
};
use ndarray::{Array1, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn data(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array4::from_shape_simple_fn(shape, || rng.random_range(-2.0f32..2.0))
}

/// A buffer full of NaN: an `_into` op that leaves any element unwritten shows it.
fn poisoned(shape: (usize, usize, usize, usize)) -> Array4<f32> {
    Array4::from_elem(shape, f32::NAN)
}

fn bits(a: &Array4<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

fn is_shape_error(e: Error) -> bool {
    matches!(e, Error::Shape { .. })
}

#[test]
fn conv2d_into_matches_conv2d() {
    let cases = [
        (
            (2, 3, 9, 7),
            (4, 3, 3, 3),
            Conv2dOptions::new().with_padding((1, 1)),
        ),
        (
            (1, 4, 12, 10),
            (6, 2, 3, 5),
            Conv2dOptions::new()
                .with_stride((2, 1))
                .with_groups(2)
                .with_dilation((1, 2)),
        ),
        ((3, 8, 6, 6), (16, 8, 1, 1), Conv2dOptions::new()),
    ];
    for (i, (xs, ws, opts)) in cases.into_iter().enumerate() {
        let x = data(xs, i as u64);
        let w = data(ws, 10 + i as u64);
        let b = Array1::from_shape_fn(ws.0, |o| o as f32 * 0.1);
        let want = conv2d(x.view(), w.view(), Some(b.view()), &opts).unwrap();
        let mut out = poisoned(want.dim());
        for _ in 0..2 {
            conv2d_into(x.view(), w.view(), Some(b.view()), &opts, out.view_mut()).unwrap();
            assert_eq!(bits(&out), bits(&want), "case {i}");
        }
        // Wrong shape, wrong layout.
        let mut bad = Array4::zeros((want.dim().0, want.dim().1, want.dim().2 + 1, want.dim().3));
        let e = conv2d_into(x.view(), w.view(), None, &opts, bad.view_mut()).unwrap_err();
        assert!(is_shape_error(e));
        let mut t = Array4::<f32>::zeros((want.dim().0, want.dim().1, want.dim().3, want.dim().2));
        let tv = t.view_mut().permuted_axes([0, 1, 3, 2]);
        if want.dim().2 > 1 && want.dim().3 > 1 {
            let e = conv2d_into(x.view(), w.view(), None, &opts, tv).unwrap_err();
            assert!(is_shape_error(e), "case {i}");
        }
    }
}

#[test]
fn batch_norm2d_into_matches_batch_norm2d() {
    let x = data((4, 3, 5, 7), 3);
    let weight = Array1::from_vec(vec![0.5f32, 1.5, -1.0]);
    let bias = Array1::from_vec(vec![0.1f32, 0.0, -0.3]);
    for training in [true, false] {
        let opts = BatchNormOptions {
            training,
            ..BatchNormOptions::default()
        };
        let (mut rm1, mut rv1) = (Array1::from_elem(3, 0.2f32), Array1::from_elem(3, 1.3f32));
        let (mut rm2, mut rv2) = (rm1.clone(), rv1.clone());
        let (want, s1) = batch_norm2d(
            x.view(),
            Some(rm1.view_mut()),
            Some(rv1.view_mut()),
            Some(weight.view()),
            Some(bias.view()),
            &opts,
        )
        .unwrap();
        let mut out = poisoned(x.dim());
        let s2 = batch_norm2d_into(
            x.view(),
            Some(rm2.view_mut()),
            Some(rv2.view_mut()),
            Some(weight.view()),
            Some(bias.view()),
            &opts,
            out.view_mut(),
        )
        .unwrap();
        assert_eq!(bits(&out), bits(&want), "training {training}");
        assert_eq!(s1, s2);
        assert_eq!((rm1, rv1), (rm2.clone(), rv2.clone()));
        // A wrong buffer is refused before the running statistics move.
        let before = (rm2.clone(), rv2.clone());
        let mut bad = Array4::zeros((4, 3, 5, 6));
        let e = batch_norm2d_into(
            x.view(),
            Some(rm2.view_mut()),
            Some(rv2.view_mut()),
            None,
            None,
            &opts,
            bad.view_mut(),
        )
        .unwrap_err();
        assert!(is_shape_error(e));
        assert_eq!((rm2, rv2), before);
    }
}

#[test]
fn max_pool2d_into_matches_max_pool2d() {
    let mut x = data((2, 3, 11, 9), 5);
    x[[0, 1, 2, 3]] = f32::NAN;
    for opts in [
        MaxPool2dOptions::new((2, 2)),
        MaxPool2dOptions::new((3, 3))
            .with_stride((2, 2))
            .with_padding((1, 1))
            .with_ceil_mode(true),
        MaxPool2dOptions::new((2, 3)).with_dilation((2, 1)),
    ] {
        let want = max_pool2d(x.view(), &opts).unwrap();
        let mut out = poisoned(want.dim());
        max_pool2d_into(x.view(), &opts, out.view_mut()).unwrap();
        assert_eq!(bits(&out), bits(&want), "{opts:?}");
        let mut bad = Array4::zeros((2, 3, 1, 1));
        if want.dim() != (2, 3, 1, 1) {
            let e = max_pool2d_into(x.view(), &opts, bad.view_mut()).unwrap_err();
            assert!(is_shape_error(e));
        }
    }
}

/// The `_into` ops give the same bits on pools of 1, 2 and 3 threads.
#[test]
fn into_ops_are_the_same_at_any_thread_count() {
    let x = data((5, 8, 13, 11), 7);
    let w = data((8, 8, 3, 3), 8);
    let conv_opts = Conv2dOptions::new().with_padding((1, 1));
    let pool_opts = MaxPool2dOptions::new((3, 3))
        .with_stride((2, 2))
        .with_padding((1, 1));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut y = poisoned((5, 8, 13, 11));
            conv2d_into(x.view(), w.view(), None, &conv_opts, y.view_mut()).unwrap();
            let mut z = poisoned(y.dim());
            batch_norm2d_into(
                y.view(),
                None,
                None,
                None,
                None,
                &BatchNormOptions::default(),
                z.view_mut(),
            )
            .unwrap();
            let mut p = poisoned((5, 8, 7, 6));
            max_pool2d_into(z.view(), &pool_opts, p.view_mut()).unwrap();
            [bits(&y), bits(&z), bits(&p)]
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}
