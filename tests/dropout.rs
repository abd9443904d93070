//! Dropout and channel dropout: statistics that cannot pass by accident, exact inverted
//! scaling, seeds, calls and thread counts, eval mode, and the backward's mask.

use convinit::Error;
use convinit::nn::{Dropout, Dropout2d, Layer, Sequential};
use convinit::ops::{dropout, dropout_backward, dropout2d, dropout2d_backward};
use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Values in [0.5, 1.5): never zero, so a zero in the output is a dropped element.
fn data(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(0.5f32..1.5))
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// The fraction kept must be within 5 standard deviations of `1 - p`: at n = 10^6 that
/// is +-0.0023 for p = 0.3, so keeping everything, or using p for the keep probability,
/// fails by a margin of hundreds of deviations.
#[test]
fn keep_fraction_and_exact_scaling() {
    let n = 1_000_000;
    let x = data(&[10, 100, 1000], 1);
    for p in [0.1f32, 0.3, 0.5, 0.9] {
        let y = dropout(x.view(), p, 42, 0).unwrap();
        let mut kept = 0usize;
        for (&a, &b) in x.iter().zip(&y) {
            if b != 0.0 {
                assert_eq!(
                    b,
                    a / (1.0 - p),
                    "p {p}: a kept value is x / (1 - p) exactly"
                );
                kept += 1;
            }
        }
        let frac = kept as f64 / n as f64;
        let want = 1.0 - f64::from(p);
        let sd = (want * (1.0 - want) / n as f64).sqrt();
        assert!(
            (frac - want).abs() <= 5.0 * sd,
            "p {p}: kept {frac}, expected {want} +- {}",
            5.0 * sd
        );
    }
    assert_eq!(dropout(x.view(), 0.0, 42, 0).unwrap(), x);
    assert!(
        dropout(x.view(), 1.0, 42, 0)
            .unwrap()
            .iter()
            .all(|&v| v == 0.0)
    );
}

/// Same seed and call: same mask; another seed or call: about 2 p (1 - p) of the
/// positions differ (0.42 at p = 0.3; 5 deviations at n = 10^6 are +-0.0025).
#[test]
fn seeds_and_calls() {
    let x = data(&[1_000_000], 2);
    let p = 0.3;
    let a = dropout(x.view(), p, 7, 0).unwrap();
    assert_eq!(a, dropout(x.view(), p, 7, 0).unwrap());
    let want = 2.0 * 0.3 * 0.7;
    let sd = (want * (1.0 - want) / 1e6f64).sqrt();
    for other in [
        dropout(x.view(), p, 8, 0).unwrap(),
        dropout(x.view(), p, 7, 1).unwrap(),
    ] {
        let differ = a
            .iter()
            .zip(&other)
            .filter(|(u, v)| (**u == 0.0) != (**v == 0.0))
            .count() as f64
            / 1e6;
        assert!((differ - want).abs() <= 5.0 * sd, "{differ}");
    }
    // The layer advances its call per training-mode forward pass: a new mask each time,
    // and a layer set back to call 0 replays the first.
    let mut d = Dropout::new(p, 7).unwrap();
    let first = d.forward(x.view()).unwrap();
    assert_eq!(first, a);
    assert_eq!(d.calls(), 1);
    let second = d.forward(x.view()).unwrap();
    assert_eq!(second, dropout(x.view(), p, 7, 1).unwrap());
    d.set_calls(0);
    assert_eq!(d.forward(x.view()).unwrap(), a);
}

#[test]
fn the_same_bits_at_any_thread_count() {
    let x = data(&[7, 3, 129, 131], 3);
    let run = || {
        let mut out = vec![
            dropout(x.view(), 0.4, 11, 3).unwrap(),
            dropout2d(x.view(), 0.4, 11, 3).unwrap(),
        ];
        let mut d = Dropout::new(0.4, 11).unwrap();
        out.push(
            d.forward_shared(x.clone().into_shared())
                .unwrap()
                .into_owned(),
        );
        out.push(d.backward_owned(x.clone()).unwrap());
        out
    };
    let one = in_pool(1, run);
    for t in [2, 3, 7] {
        let other = in_pool(t, run);
        for (a, b) in one.iter().zip(&other) {
            let (a, b): (Vec<u32>, Vec<u32>) = (
                a.iter().map(|v| v.to_bits()).collect(),
                b.iter().map(|v| v.to_bits()).collect(),
            );
            assert!(a == b, "{t} threads differ");
        }
    }
}

/// Backward routes through the same mask with the same scale, in any layout.
#[test]
fn backward_uses_the_forward_mask() {
    let x = data(&[4, 5, 6, 7], 4);
    let dy = data(&[4, 5, 6, 7], 5);
    let mut d = Dropout::new(0.5, 3).unwrap();
    let y = d.forward(x.view()).unwrap();
    let dx = d.backward(dy.view()).unwrap();
    for ((&yv, &xv), (&g, &dv)) in y.iter().zip(&x).zip(dx.iter().zip(&dy)) {
        if yv == 0.0 {
            assert_eq!(g, 0.0);
        } else {
            assert_eq!(yv, xv / 0.5);
            assert_eq!(g, dv / 0.5);
        }
    }
    assert_eq!(dx, dropout_backward(dy.view(), 0.5, 3, 0).unwrap());
    // A transposed view: the mask follows the logical order.
    let t = x.t();
    let yt = dropout(t.view(), 0.5, 3, 0).unwrap();
    assert_eq!(
        yt,
        dropout(t.as_standard_layout().view(), 0.5, 3, 0).unwrap()
    );
}

#[test]
fn channel_dropout_drops_whole_planes() {
    let x = data(&[200, 50, 3, 4], 6);
    let p = 0.3;
    let y = dropout2d(x.view(), p, 9, 0).unwrap();
    let mut dropped = 0usize;
    for (xp, yp) in x
        .view()
        .into_shape_with_order((10_000, 12))
        .unwrap()
        .outer_iter()
        .zip(
            y.view()
                .into_shape_with_order((10_000, 12))
                .unwrap()
                .outer_iter(),
        )
    {
        if yp.iter().all(|&v| v == 0.0) {
            dropped += 1;
        } else {
            for (&a, &b) in xp.iter().zip(&yp) {
                assert_eq!(b, a / (1.0 - p));
            }
        }
    }
    // 10^4 planes: 5 deviations are +-0.023.
    let frac = dropped as f64 / 1e4;
    assert!((frac - 0.3).abs() <= 5.0 * (0.21f64 / 1e4).sqrt(), "{frac}");
    let mut d = Dropout2d::new(p, 9).unwrap();
    assert_eq!(d.forward(x.view()).unwrap(), y);
    let dx = d.backward(x.view()).unwrap();
    assert_eq!(dx, dropout2d_backward(x.view(), p, 9, 0).unwrap());
    assert_eq!(d.describe(), "Dropout2d(p=0.3, inplace=False)");
}

#[test]
fn eval_mode_is_the_identity() {
    let x = data(&[3, 4, 5, 5], 7);
    let mut net = Sequential::new()
        .with(Dropout::new(0.5, 1).unwrap())
        .with(Dropout2d::new(0.5, 2).unwrap());
    let train = net.forward(x.view()).unwrap();
    assert_ne!(train, x);
    net.eval();
    assert_eq!(net.forward(x.view()).unwrap(), x);
    assert_eq!(net.backward(x.view()).unwrap(), x);
    assert_eq!(net.infer(x.view()).unwrap(), x);
    // Eval passes do not advance the mask.
    assert_eq!(net.get::<Dropout>(0).unwrap().calls(), 1);
    net.train();
    assert!(net.forward(x.view()).unwrap().iter().any(|&v| v == 0.0));
    assert_eq!(
        Dropout::new(0.25, 0).unwrap().describe(),
        "Dropout(p=0.25, inplace=False)"
    );
}

#[test]
fn bad_probabilities_and_states_are_errors() {
    for p in [-0.1f32, 1.5, f32::NAN] {
        let e = Dropout::new(p, 0).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
        assert!(e.to_string().contains("Dropout"), "{e}");
        assert!(e.to_string().contains(&p.to_string()), "{e}");
        let e = dropout(ArrayD::zeros(IxDyn(&[2])).view(), p, 0, 0).unwrap_err();
        assert!(e.to_string().starts_with("dropout:"), "{e}");
        assert!(
            Dropout2d::new(p, 0)
                .unwrap_err()
                .to_string()
                .contains("Dropout2d")
        );
    }
    let mut d = Dropout::new(0.5, 0).unwrap();
    let e = d.backward(ArrayD::zeros(IxDyn(&[2])).view()).unwrap_err();
    assert!(matches!(e, Error::State { .. }), "{e}");
    d.forward(ArrayD::zeros(IxDyn(&[2, 3])).view()).unwrap();
    let e = d
        .backward(ArrayD::zeros(IxDyn(&[3, 2])).view())
        .unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("Dropout"),
        "{e}"
    );
    let e = dropout2d(ArrayD::zeros(IxDyn(&[5])).view(), 0.5, 0, 0).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("dropout2d"),
        "{e}"
    );
}
