//! Training pieces against PyTorch's numbers (tools/train_reference.py prints them),
//! finite differences, and the behaviour of the loop, telemetry and LSUV.
// The PyTorch values are pasted as printed (9 significant digits), not rounded to f32.
#![allow(clippy::excessive_precision)]

use convinit::Error;
use convinit::data::Mnist;
use convinit::init::Init;
use convinit::nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, GeneralRelu, Layer, Linear, LinearConfig,
    Relu, Sequential,
};
use convinit::train::{
    Adam, AdamConfig, AdamW, CrossEntropyOptions, FitConfig, LrSchedule, LsuvConfig, LsuvPoint,
    Optimizer, Reduction, Sgd, SgdConfig, Split, Telemetry, accuracy, batch_indices, cross_entropy,
    cross_entropy_backward, cross_entropy_backward_with, cross_entropy_with,
    cross_entropy_with_grad, cross_entropy_with_grad_with, evaluate, fit, gather_images,
    gather_rows, lsuv, predict, softmax,
};
use ndarray::{Array1, Array2, Array4, ArrayD, ShapeBuilder, array};
use ndarray_rand::RandomExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal, Uniform};

fn close(what: &str, ours: &[f32], reference: &[f32], tol: f32) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths");
    for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}[{i}]: ours {a}, PyTorch {b}"
        );
    }
}

// ---------------------------------------------------------------- cross-entropy

fn ce_case() -> (Array2<f32>, Array1<i64>) {
    let logits = array![
        [1.0f32, 2.0, 0.5, -1.0, 0.0],
        [0.1, -0.2, 0.3, 0.4, -0.5],
        [80.0, 100.0, -50.0, 3.0, 99.0],
        [-3.0, -3.0, -3.0, -3.0, -3.0]
    ];
    (logits, array![1i64, 4, 2, 0])
}

#[test]
fn cross_entropy_matches_pytorch() {
    let (logits, target) = ce_case();
    const LOSS: f32 = 3.866959000e+01;
    const GRAD: [f32; 20] = [
        5.178098381e-02,
        -1.092447042e-01,
        3.140674904e-02,
        7.007793058e-03,
        1.904915646e-02,
        5.143089592e-02,
        3.810094297e-02,
        6.281783432e-02,
        6.942444295e-02,
        -2.217741311e-01,
        3.767062495e-10,
        1.827646494e-01,
        -2.500000000e-01,
        1.373272495e-43,
        6.723535806e-02,
        -2.000000030e-01,
        4.999999702e-02,
        4.999999702e-02,
        4.999999702e-02,
        4.999999702e-02,
    ];
    let loss = cross_entropy(logits.view(), target.view()).unwrap();
    close("loss", &[loss], &[LOSS], 1e-6);
    let grad = cross_entropy_backward(logits.view(), target.view()).unwrap();
    close("grad", grad.as_slice().unwrap(), &GRAD, 1e-6);
    let (l2, g2) = cross_entropy_with_grad(logits.view(), target.view()).unwrap();
    assert_eq!((l2, &g2), (loss, &grad));
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(7);
    let logits = Array2::<f32>::random_using((5, 7), StandardNormal, &mut rng) * 3.0;
    let target = array![0i64, 6, 3, 3, 1];
    let grad = cross_entropy_backward(logits.view(), target.view()).unwrap();
    // f64 reference loss, central differences.
    let loss64 = |l: &Array2<f64>| -> f64 {
        let mut s = 0.0;
        for (row, &t) in l.outer_iter().zip(&target) {
            let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            s += m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - row[t as usize];
        }
        s / l.nrows() as f64
    };
    let base = logits.mapv(f64::from);
    let h = 1e-5;
    for i in 0..5 {
        for j in 0..7 {
            let (mut plus, mut minus) = (base.clone(), base.clone());
            plus[[i, j]] += h;
            minus[[i, j]] -= h;
            let fd = (loss64(&plus) - loss64(&minus)) / (2.0 * h);
            assert!(
                (f64::from(grad[[i, j]]) - fd).abs() < 1e-6,
                "d loss / d logits[{i}, {j}]: ours {}, finite difference {fd}",
                grad[[i, j]]
            );
        }
    }
}

#[test]
fn cross_entropy_is_stable_and_rejects_bad_targets() {
    let huge = array![[1000.0f32, -1000.0], [-1000.0, 1000.0]];
    let loss = cross_entropy(huge.view(), array![0i64, 0].view()).unwrap();
    assert!((loss - 1000.0).abs() < 1e-3, "{loss}");
    let grad = cross_entropy_backward(huge.view(), array![0i64, 0].view()).unwrap();
    assert!(grad.iter().all(|g| g.is_finite()));

    // NaN propagates to the loss; argmax picks it, as torch.argmax.
    let nan = array![[0.0f32, f32::NAN, 1.0]];
    assert!(
        cross_entropy(nan.view(), array![2i64].view())
            .unwrap()
            .is_nan()
    );
    assert_eq!(convinit::train::argmax(nan.view()).unwrap(), [1]);

    let (logits, _) = ce_case();
    // A bad label is a data error naming its index and value.
    for (bad, index, value) in [
        (array![0i64, 1, 5, 0], 2u64, 5i64),
        (array![0i64, -1, 2, 0], 1, -1),
        (array![0i64, 1, 2, i64::MAX], 3, i64::MAX),
    ] {
        let e = cross_entropy(logits.view(), bad.view()).unwrap_err();
        let want = format!("target[{index}] = {value} is not a class index in 0..5");
        assert!(
            matches!(&e, Error::InvalidContent { format: "labels", message }
                if message.contains(&want)),
            "{e:?}"
        );
        for e in [
            accuracy(logits.view(), bad.view()).unwrap_err(),
            cross_entropy_backward(logits.view(), bad.view()).unwrap_err(),
            cross_entropy_with_grad(logits.view(), bad.view()).unwrap_err(),
        ] {
            assert!(
                matches!(
                    &e,
                    Error::InvalidContent {
                        format: "labels",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains(&want), "{e}");
        }
    }
    let e = cross_entropy(logits.view(), array![0i64, 1].view()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let empty = Array2::<f32>::zeros((0, 3));
    assert!(cross_entropy(empty.view(), Array1::<i64>::zeros(0).view()).is_err());
}

/// `F.cross_entropy` with options by its definition in f64: per row
/// `(1 - ls) * (-log p[t]) + ls * mean_k(-log p[k])`, then mean or sum.
fn ce_f64(l: &Array2<f64>, target: &Array1<i64>, ls: f64, sum: bool) -> f64 {
    let mut s = 0.0;
    for (row, &t) in l.outer_iter().zip(target) {
        let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let smooth = row.iter().map(|v| lse - v).sum::<f64>() / row.len() as f64;
        s += (1.0 - ls) * (lse - row[t as usize]) + ls * smooth;
    }
    if sum { s } else { s / l.nrows() as f64 }
}

#[test]
fn cross_entropy_smoothing_and_sum_follow_the_definition_and_finite_differences() {
    let mut rng = StdRng::seed_from_u64(8);
    let logits = Array2::<f32>::random_using((5, 7), StandardNormal, &mut rng) * 3.0;
    let target = array![0i64, 6, 3, 3, 1];
    let base = logits.mapv(f64::from);
    for ls in [0.0f32, 0.1, 0.5, 1.0] {
        for (reduction, sum) in [(Reduction::Mean, false), (Reduction::Sum, true)] {
            let o = CrossEntropyOptions::new()
                .with_label_smoothing(ls)
                .with_reduction(reduction);
            let ls = f64::from(ls);
            let (loss, grad) =
                cross_entropy_with_grad_with(logits.view(), target.view(), &o).unwrap();
            let want = ce_f64(&base, &target, ls, sum);
            assert!(
                (f64::from(loss) - want).abs() < 1e-6 * want.abs().max(1.0),
                "{o:?}: {loss} vs {want}"
            );
            assert_eq!(
                cross_entropy_with(logits.view(), target.view(), &o).unwrap(),
                loss
            );
            assert_eq!(
                cross_entropy_backward_with(logits.view(), target.view(), &o).unwrap(),
                grad
            );
            let h = 1e-5;
            for ((i, j), &g) in grad.indexed_iter() {
                let (mut plus, mut minus) = (base.clone(), base.clone());
                plus[[i, j]] += h;
                minus[[i, j]] -= h;
                let fd = (ce_f64(&plus, &target, ls, sum) - ce_f64(&minus, &target, ls, sum))
                    / (2.0 * h);
                assert!(
                    (f64::from(g) - fd).abs() < 1e-6,
                    "{o:?}: d loss / d logits[{i}, {j}]: ours {g}, finite difference {fd}"
                );
            }
        }
    }
    // The defaults are the plain functions', bit for bit.
    let d = CrossEntropyOptions::default();
    assert_eq!(
        cross_entropy_with_grad_with(logits.view(), target.view(), &d).unwrap(),
        cross_entropy_with_grad(logits.view(), target.view()).unwrap()
    );
    // Smoothing moves the loss (so the comparisons above can fail).
    let smooth = CrossEntropyOptions::new().with_label_smoothing(0.1);
    let (a, b) = (
        cross_entropy_with(logits.view(), target.view(), &smooth).unwrap(),
        cross_entropy(logits.view(), target.view()).unwrap(),
    );
    assert!((a - b).abs() > 1e-2, "{a} vs {b}");
}

#[test]
fn cross_entropy_options_reject_bad_smoothing() {
    let (logits, target) = ce_case();
    for ls in [-0.1f32, 1.5, f32::NAN] {
        let o = CrossEntropyOptions::new().with_label_smoothing(ls);
        let e = cross_entropy_with(logits.view(), target.view(), &o).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Config {
                    op: "cross_entropy",
                    ..
                }
            ),
            "{ls}: {e}"
        );
        assert!(
            e.to_string().contains(&format!("label_smoothing = {ls}")),
            "{e}"
        );
        assert!(cross_entropy_with_grad_with(logits.view(), target.view(), &o).is_err());
    }
}

#[test]
fn softmax_rows_sum_to_one_and_survive_large_logits() {
    let (logits, _) = ce_case();
    let p = softmax(logits.view()).unwrap();
    for (row, l) in p.outer_iter().zip(logits.outer_iter()) {
        assert!((row.sum() - 1.0).abs() < 1e-6, "{row}");
        // Order-preserving, and exp(l_k - l_0) = p_k / p_0.
        let (l0, p0) = (f64::from(l[0]), f64::from(row[0]));
        for (&pk, &lk) in row.iter().zip(l.iter()) {
            if pk > 1e-30 && p0 > 1e-30 {
                let r = f64::from(pk) / p0;
                assert!((r.ln() - (f64::from(lk) - l0)).abs() < 1e-5, "{row}");
            }
        }
    }
    assert_eq!(p.row(3).to_vec(), [0.2; 5]);
    let nan = softmax(array![[0.0f32, f32::NAN]].view()).unwrap();
    assert!(nan.iter().all(|v| v.is_nan()));
}

#[test]
fn predict_gives_the_argmax_of_the_logits() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut net = Sequential::new()
        .with(Flatten::new(1, -1))
        .with(Linear::new(LinearConfig::new(6, 4), &mut rng).unwrap());
    let x = Array4::<f32>::random_using((9, 1, 2, 3), StandardNormal, &mut rng).into_dyn();
    let classes = predict(&mut net, x.view()).unwrap();
    let logits = net
        .forward(x.view())
        .unwrap()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    assert_eq!(classes, convinit::train::argmax(logits.view()).unwrap());
    assert!(classes.iter().any(|&c| c != classes[0]), "{classes:?}");
    // Logits must be (N, classes).
    let mut flat = Sequential::new().with(Flatten::new(0, -1));
    let e = predict(&mut flat, x.view()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

#[test]
fn accuracy_counts_argmax_hits_first_index_on_ties() {
    let logits = array![[1.0f32, 1.0, 0.0], [0.0, 2.0, 2.0], [5.0, 0.0, 6.0]];
    assert_eq!(
        accuracy(logits.view(), array![0i64, 1, 2].view()).unwrap(),
        1.0
    );
    assert_eq!(
        accuracy(logits.view(), array![1i64, 2, 0].view()).unwrap(),
        0.0
    );
}

// ---------------------------------------------------------------- SGD

/// A model whose only parameter is the 4 values of `p`.
fn one_param(p: [f32; 4]) -> Sequential {
    let w = Array2::from_shape_vec((4, 1), p.to_vec()).unwrap();
    Sequential::new()
        .with(Linear::from_parts(LinearConfig::new(1, 4).with_bias(false), w, None).unwrap())
}

fn run_sgd(config: SgdConfig) -> Vec<Vec<f32>> {
    let grads = [
        [0.5f32, -1.0, 2.0, 0.0],
        [-0.25, 0.75, 1.0, -3.0],
        [1.5, 0.1, -0.5, 0.2],
    ];
    let mut net = one_param([1.0, -2.0, 0.5, 3.0]);
    let mut opt = Sgd::new(config).unwrap();
    grads
        .iter()
        .map(|g| {
            for mut p in net.named_parameters_mut() {
                p.grad
                    .assign(&ndarray::aview1(g).into_shape_with_order((4, 1)).unwrap());
            }
            opt.step(&mut net).unwrap();
            net.named_parameters()[0].value.iter().copied().collect()
        })
        .collect()
}

fn check_sgd(name: &str, config: SgdConfig, expected: [[f32; 4]; 3]) {
    for (step, (ours, theirs)) in run_sgd(config).iter().zip(&expected).enumerate() {
        close(&format!("{name} step {}", step + 1), ours, theirs, 2e-6);
    }
}

#[test]
fn sgd_plain_matches_pytorch() {
    check_sgd(
        "plain",
        SgdConfig::new(0.1),
        [
            [
                9.499999881e-01,
                -1.899999976e+00,
                3.000000119e-01,
                3.000000000e+00,
            ],
            [
                9.749999642e-01,
                -1.975000024e+00,
                2.000000179e-01,
                3.299999952e+00,
            ],
            [
                8.249999881e-01,
                -1.985000014e+00,
                2.500000298e-01,
                3.279999971e+00,
            ],
        ],
    );
}

#[test]
fn sgd_momentum_and_weight_decay_match_pytorch() {
    check_sgd(
        "momentum_wd",
        SgdConfig::new(0.1)
            .with_momentum(0.9)
            .with_weight_decay(0.01),
        [
            [
                9.490000010e-01,
                -1.898000002e+00,
                2.994999886e-01,
                2.996999979e+00,
            ],
            [
                9.271510243e-01,
                -1.879302025e+00,
                1.875047199e-02,
                3.291302919e+00,
            ],
            [
                7.565597892e-01,
                -1.870594501e+00,
                -1.839428544e-01,
                3.532884359e+00,
            ],
        ],
    );
}

#[test]
fn sgd_dampening_matches_pytorch() {
    check_sgd(
        "dampening",
        SgdConfig::new(0.05)
            .with_momentum(0.8)
            .with_dampening(0.3)
            .with_weight_decay(0.1),
        [
            [
                9.699999690e-01,
                -1.939999938e+00,
                3.975000083e-01,
                2.984999895e+00,
            ],
            [
                9.513549805e-01,
                -1.911459923e+00,
                2.791087627e-01,
                3.067552328e+00,
            ],
            [
                8.806092143e-01,
                -1.885437846e+00,
                2.009188831e-01,
                3.115857840e+00,
            ],
        ],
    );
}

#[test]
fn sgd_nesterov_matches_pytorch() {
    check_sgd(
        "nesterov",
        SgdConfig::new(0.2)
            .with_momentum(0.9)
            .with_nesterov(true)
            .with_weight_decay(0.001),
        [
            [
                8.096200228e-01,
                -1.619240046e+00,
                -2.601899803e-01,
                2.998859882e+00,
            ],
            [
                8.231503963e-01,
                -1.741300702e+00,
                -9.641721249e-01,
                4.137234211e+00,
            ],
            [
                2.201606184e-01,
                -1.753785133e+00,
                -1.227436423e+00,
                4.544738770e+00,
            ],
        ],
    );
}

#[test]
fn sgd_rejects_bad_configs_and_foreign_models() {
    for bad in [
        SgdConfig::new(-0.1),
        SgdConfig::new(f32::NAN),
        SgdConfig::new(0.1).with_momentum(1.0),
        SgdConfig::new(0.1).with_dampening(1.5),
        SgdConfig::new(0.1).with_weight_decay(-1.0),
        SgdConfig::new(0.1).with_nesterov(true),
        SgdConfig::new(0.1)
            .with_momentum(0.9)
            .with_dampening(0.1)
            .with_nesterov(true),
    ] {
        let e = Sgd::new(bad).unwrap_err();
        assert!(matches!(e, Error::Config { op: "SGD", .. }), "{bad:?}: {e}");
    }
    let mut opt = Sgd::new(SgdConfig::new(0.1).with_momentum(0.5)).unwrap();
    assert!(opt.set_lr(-1.0).is_err());
    assert_eq!(opt.lr(), 0.1);
    let mut net = one_param([1.0; 4]);
    opt.step(&mut net).unwrap();
    assert_eq!(opt.momentum_buffer("0.weight").unwrap().shape(), &[4, 1]);
    // Another model with a same-named parameter of another shape: nothing is updated.
    let w = Array2::from_elem((2, 1), 1.0f32);
    let mut other = Sequential::new()
        .with(Linear::from_parts(LinearConfig::new(1, 2).with_bias(false), w, None).unwrap());
    let e = opt.step(&mut other).unwrap_err();
    assert!(e.to_string().contains("0.weight"), "{e}");
    assert!(other.named_parameters()[0].value.iter().all(|&v| v == 1.0));
}

/// Two linear layers with gradients of ones; the second layer's weight gradient is
/// replaced by one of another shape through `weight_grad_mut`.
fn net_with_bad_grad() -> Sequential {
    let layer = |w: Array2<f32>| {
        let (o, i) = w.dim();
        let mut l = Linear::from_parts(LinearConfig::new(i, o), w, Some(Array1::ones(o))).unwrap();
        l.weight_grad_mut().fill(1.0);
        l.bias_grad_mut().unwrap().fill(1.0);
        l
    };
    let first = layer(Array2::from_elem((3, 2), 1.0));
    let mut second = layer(Array2::from_elem((2, 3), 1.0));
    *second.weight_grad_mut() = Array2::ones((3, 2));
    Sequential::new().with(first).with(second)
}

#[test]
fn sgd_checks_every_gradient_shape_before_updating_any() {
    for config in [
        SgdConfig::new(0.1),
        SgdConfig::new(0.1).with_weight_decay(0.01),
        SgdConfig::new(0.1).with_momentum(0.9).with_nesterov(true),
    ] {
        let mut net = net_with_bad_grad();
        let before: Vec<Vec<f32>> = net
            .named_parameters()
            .iter()
            .map(|p| p.value.iter().copied().collect())
            .collect();
        let mut opt = Sgd::new(config).unwrap();
        let e = opt.step(&mut net).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, Error::Shape { op: "SGD", .. }),
            "{config:?}: {e}"
        );
        assert!(
            msg.contains("1.weight") && msg.contains("[2, 3]") && msg.contains("[3, 2]"),
            "{msg}"
        );
        // The parameters before the bad one (0.weight, 0.bias) are untouched, and no
        // momentum buffer was created.
        let after: Vec<Vec<f32>> = net
            .named_parameters()
            .iter()
            .map(|p| p.value.iter().copied().collect())
            .collect();
        assert_eq!(before, after, "{config:?}: partial update");
        assert!(opt.momentum_buffer("0.weight").is_none(), "{config:?}");
    }
    // With the gradient's shape fixed, the same step goes through and updates everything.
    let mut net = net_with_bad_grad();
    let mut opt = Sgd::new(SgdConfig::new(0.5)).unwrap();
    let second = net.layer_mut(1).unwrap().as_any_mut();
    let second = second.downcast_mut::<Linear>().unwrap();
    *second.weight_grad_mut() = Array2::ones((2, 3));
    opt.step(&mut net).unwrap();
    assert!(
        net.named_parameters()
            .iter()
            .all(|p| p.value.iter().all(|&v| v == 0.5))
    );
}

#[test]
fn sgd_plain_weight_decay_matches_pytorchs_formula() {
    // torch.optim.SGD with momentum 0: d_p = g + weight_decay * p; p -= lr * d_p. A large
    // decay, so that a flipped sign (g - wd * p) lands far outside the tolerance.
    let (lr, wd) = (0.1f64, 0.5f64);
    let grads = [
        [0.5f64, -1.0, 2.0, 0.0],
        [-0.25, 0.75, 1.0, -3.0],
        [1.5, 0.1, -0.5, 0.2],
    ];
    let mut p = [1.0f64, -2.0, 0.5, 3.0];
    let mut want = Vec::new();
    let mut flipped = p;
    for g in &grads {
        for i in 0..4 {
            p[i] -= lr * (g[i] + wd * p[i]);
            flipped[i] -= lr * (g[i] - wd * flipped[i]);
        }
        want.push(p.map(|v| v as f32));
    }
    let ours = run_sgd(SgdConfig::new(0.1).with_weight_decay(0.5));
    for (step, (o, w)) in ours.iter().zip(&want).enumerate() {
        close(&format!("plain wd step {}", step + 1), o, w, 2e-6);
    }
    // The wrong sign is far away: this test can fail.
    assert!((f64::from(ours[2][3]) - flipped[3]).abs() > 0.1);
}

#[test]
fn sgd_reset_forgets_the_momentum_and_restores_the_rate() {
    let config = SgdConfig::new(0.1).with_momentum(0.9);
    let mut opt = Sgd::new(config).unwrap();
    let mut net = one_param([1.0, -2.0, 0.5, 3.0]);
    for mut p in net.named_parameters_mut() {
        p.grad.fill(1.0);
    }
    opt.step(&mut net).unwrap();
    opt.step(&mut net).unwrap();
    opt.set_lr(0.03).unwrap();
    assert_eq!((opt.lr(), Optimizer::base_lr(&opt)), (0.03, 0.1));
    assert!(opt.momentum_buffer("0.weight").is_some());
    opt.reset();
    assert_eq!(opt.lr(), 0.1);
    assert!(opt.momentum_buffer("0.weight").is_none());
    // After the reset the optimiser behaves exactly as a new one.
    let mut fresh = Sgd::new(config).unwrap();
    assert_eq!(run_steps(&mut opt), run_steps(&mut fresh));
}

/// Three steps of `opt` on a fresh [`one_param`] model with [`OPT_GRADS`]; the parameter
/// after each.
fn run_steps(opt: &mut dyn Optimizer) -> Vec<Vec<f32>> {
    let mut net = one_param(OPT_P0);
    OPT_GRADS
        .iter()
        .map(|g| {
            for mut p in net.named_parameters_mut() {
                p.grad
                    .assign(&ndarray::aview1(g).into_shape_with_order((4, 1)).unwrap());
            }
            opt.step(&mut net).unwrap();
            net.named_parameters()[0].value.iter().copied().collect()
        })
        .collect()
}

const OPT_P0: [f32; 4] = [1.0, -2.0, 0.5, 3.0];
/// Gradients that shrink, so AMSGrad's maximum differs from the plain second moment.
const OPT_GRADS: [[f32; 4]; 5] = [
    [0.5, -1.0, 2.0, 0.0],
    [-0.25, 0.75, 1.0, -3.0],
    [0.05, 0.01, -0.5, 0.2],
    [0.01, -0.02, 0.03, 1e-3],
    [-0.01, 0.0, 0.02, 1e-4],
];

/// Adam by its definition, in f64: the parameter after each step of [`OPT_GRADS`].
fn adam_f64(c: AdamConfig, decoupled: bool) -> Vec<Vec<f32>> {
    let (b1, b2) = c.betas;
    let (lr, eps, wd) = (f64::from(c.lr), f64::from(c.eps), f64::from(c.weight_decay));
    let mut p: Vec<f64> = OPT_P0.iter().map(|&v| f64::from(v)).collect();
    let (mut m, mut v, mut vmax) = (vec![0.0; 4], vec![0.0; 4], vec![0.0f64; 4]);
    let mut out = Vec::new();
    for (t, g) in OPT_GRADS.iter().enumerate() {
        let t = (t + 1) as i32;
        for i in 0..4 {
            let mut g = f64::from(g[i]);
            if decoupled {
                p[i] *= 1.0 - lr * wd;
            } else {
                g += wd * p[i];
            }
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            vmax[i] = vmax[i].max(v[i]);
            let second = if c.amsgrad { vmax[i] } else { v[i] };
            let m_hat = m[i] / (1.0 - b1.powi(t));
            p[i] -= lr * m_hat / ((second / (1.0 - b2.powi(t))).sqrt() + eps);
        }
        out.push(p.iter().map(|&v| v as f32).collect());
    }
    out
}

#[test]
fn adam_and_adamw_follow_their_definitions() {
    let configs = [
        AdamConfig::adam(),
        AdamConfig::adam().with_lr(0.05).with_weight_decay(0.1),
        AdamConfig::adam()
            .with_lr(0.05)
            .with_betas(0.9, 0.5)
            .with_amsgrad(true),
        AdamConfig::adam()
            .with_lr(0.02)
            .with_betas(0.8, 0.99)
            .with_eps(1e-3)
            .with_weight_decay(0.3)
            .with_amsgrad(true),
    ];
    for c in configs {
        let ours = run_steps(&mut Adam::new(c).unwrap());
        for (step, (o, w)) in ours.iter().zip(&adam_f64(c, false)).enumerate() {
            close(&format!("Adam {c:?} step {}", step + 1), o, w, 1e-6);
        }
        let c = AdamConfig {
            weight_decay: c.weight_decay.max(0.01),
            ..c
        };
        let ours = run_steps(&mut AdamW::new(c).unwrap());
        for (step, (o, w)) in ours.iter().zip(&adam_f64(c, true)).enumerate() {
            close(&format!("AdamW {c:?} step {}", step + 1), o, w, 1e-6);
        }
    }
    // The variants differ where they should (so the comparisons above can fail): AMSGrad
    // once the second moment shrinks, L2 against decoupled decay.
    let c = AdamConfig::adam().with_lr(0.05).with_betas(0.9, 0.5);
    let far = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .any(|(x, y)| (x - y).abs() > 1e-3)
    };
    let plain = run_steps(&mut Adam::new(c).unwrap());
    assert!(far(
        &plain,
        &run_steps(&mut Adam::new(c.with_amsgrad(true)).unwrap())
    ));
    let c = c.with_weight_decay(0.5);
    assert!(far(
        &run_steps(&mut Adam::new(c).unwrap()),
        &run_steps(&mut AdamW::new(c).unwrap())
    ));
}

#[test]
fn adam_defaults_are_pytorchs() {
    let a = AdamConfig::adam();
    assert_eq!(
        (a.lr, a.betas, a.eps, a.weight_decay, a.amsgrad),
        (1e-3, (0.9, 0.999), 1e-8, 0.0, false)
    );
    assert_eq!(AdamConfig::default(), a);
    assert_eq!(AdamConfig::adamw(), a.with_weight_decay(1e-2));
    assert_eq!(Adam::default().config(), &a);
    assert_eq!(AdamW::default().config(), &AdamConfig::adamw());
    let opts: [&dyn Optimizer; 3] = [
        &Adam::default(),
        &AdamW::default(),
        &Sgd::new(SgdConfig::new(0.1)).unwrap(),
    ];
    let names: Vec<_> = opts.iter().map(|o| (o.name(), o.lr())).collect();
    assert_eq!(names, [("Adam", 1e-3), ("AdamW", 1e-3), ("SGD", 0.1)]);
}

#[test]
fn adam_rejects_bad_configs_naming_the_value() {
    let a = AdamConfig::adam();
    for (bad, what) in [
        (a.with_lr(-1.0), "lr = -1"),
        (a.with_lr(f32::INFINITY), "lr = inf"),
        (a.with_eps(-1e-8), "eps = -0.00000001"),
        (a.with_betas(1.0, 0.999), "betas[0] = 1"),
        (a.with_betas(0.9, -0.5), "betas[1] = -0.5"),
        (a.with_betas(0.9, f64::NAN), "betas[1] = NaN"),
        (a.with_weight_decay(-0.1), "weight_decay = -0.1"),
        (a.with_weight_decay(f32::NAN), "weight_decay = NaN"),
    ] {
        let e = Adam::new(bad).unwrap_err();
        assert!(
            matches!(e, Error::Config { op: "Adam", .. }),
            "{bad:?}: {e}"
        );
        assert!(e.to_string().contains(what), "{what}: {e}");
        let e = AdamW::new(bad).unwrap_err();
        assert!(matches!(e, Error::Config { op: "AdamW", .. }), "{e}");
        assert!(bad.validate().is_err());
    }
    let mut opt = AdamW::default();
    let e = opt.set_lr(f32::NAN).unwrap_err();
    assert!(matches!(e, Error::Config { op: "AdamW", .. }), "{e}");
    assert_eq!(opt.lr(), 1e-3);
}

#[test]
fn adam_checks_every_shape_before_updating_any() {
    for amsgrad in [false, true] {
        let c = AdamConfig::adam().with_amsgrad(amsgrad);
        let opts: [Box<dyn Optimizer>; 2] = [
            Box::new(Adam::new(c).unwrap()),
            Box::new(AdamW::new(c).unwrap()),
        ];
        for mut opt in opts {
            let mut net = net_with_bad_grad();
            let values = |net: &Sequential| -> Vec<Vec<f32>> {
                net.named_parameters()
                    .iter()
                    .map(|p| p.value.iter().copied().collect())
                    .collect()
            };
            let before = values(&net);
            let e = opt.step(&mut net).unwrap_err();
            assert!(matches!(e, Error::Shape { .. }), "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains(opt.name()) && msg.contains("1.weight") && msg.contains("[3, 2]"),
                "{msg}"
            );
            assert_eq!(before, values(&net), "{opt:?}: partial update");
            // Nothing was kept either: a good model of another shape steps fine.
            let mut other = one_param([1.0; 4]);
            opt.step(&mut other).unwrap();
            // ... after which a same-named parameter of another shape is refused.
            let w = Array2::from_elem((2, 1), 1.0f32);
            let mut small = Sequential::new().with(
                Linear::from_parts(LinearConfig::new(1, 2).with_bias(false), w, None).unwrap(),
            );
            let e = opt.step(&mut small).unwrap_err();
            assert!(e.to_string().contains("exp_avg"), "{e}");
            assert!(small.named_parameters()[0].value.iter().all(|&v| v == 1.0));
        }
    }
}

#[test]
fn adam_keeps_state_per_parameter_and_reset_forgets_it() {
    let c = AdamConfig::adam().with_lr(0.05).with_amsgrad(true);
    let mut opt = Adam::new(c).unwrap();
    run_steps(&mut opt);
    let s = opt.state("0.weight").unwrap();
    assert_eq!(s.step, OPT_GRADS.len() as u64);
    assert_eq!(s.exp_avg.shape(), [4, 1]);
    assert!(s.max_exp_avg_sq.is_some());
    assert!(opt.state("0.bias").is_none());
    opt.set_lr(0.01).unwrap();
    Optimizer::reset(&mut opt);
    assert!(opt.state("0.weight").is_none());
    assert_eq!((opt.lr(), opt.base_lr()), (0.05, 0.05));
    let mut fresh = Adam::new(c).unwrap();
    assert_eq!(run_steps(&mut opt), run_steps(&mut fresh));
}

// ---------------------------------------------------------------- GeneralRelu

const GRELU_X: [f32; 10] = [-3.0, -0.5, 0.0, 0.25, 1.0, 5.9, 6.0, 6.4, 7.0, 10.0];

fn check_grelu(
    leak: Option<f32>,
    sub: Option<f32>,
    maxv: Option<f32>,
    y: [f32; 10],
    dx: [f32; 10],
) {
    let mut act = GeneralRelu::new(leak, sub, maxv).unwrap();
    let x = Array1::from(GRELU_X.to_vec()).into_dyn();
    let out = act.forward(x.view()).unwrap();
    close("y", out.as_slice().unwrap(), &y, 1e-7);
    let dy = Array1::from_shape_fn(10, |i| (i + 1) as f32).into_dyn();
    let grad = act.backward(dy.view()).unwrap();
    close("dx", grad.as_slice().unwrap(), &dx, 1e-7);
}

#[test]
fn general_relu_matches_pytorch() {
    check_grelu(
        Some(0.1),
        Some(0.4),
        Some(6.0),
        [
            -7.000000477e-01,
            -4.500000179e-01,
            -4.000000060e-01,
            -1.500000060e-01,
            6.000000238e-01,
            5.5,
            5.599999905e+00,
            6.0,
            6.0,
            6.0,
        ],
        [
            1.000000015e-01,
            2.000000030e-01,
            3.000000119e-01,
            4.0,
            5.0,
            6.0,
            7.0,
            0.0,
            0.0,
            0.0,
        ],
    );
    check_grelu(
        None,
        Some(0.5),
        None,
        [
            -0.5,
            -0.5,
            -0.5,
            -0.25,
            0.5,
            5.400000095e+00,
            5.5,
            5.900000095e+00,
            6.5,
            9.5,
        ],
        [0.0, 0.0, 0.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
    );
    check_grelu(
        Some(0.2),
        None,
        Some(3.0),
        [
            -6.000000238e-01,
            -1.000000015e-01,
            0.0,
            0.25,
            1.0,
            3.0,
            3.0,
            3.0,
            3.0,
            3.0,
        ],
        [
            2.000000030e-01,
            4.000000060e-01,
            6.000000238e-01,
            4.0,
            5.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ],
    );
}

#[test]
fn general_relu_gradient_matches_finite_differences() {
    let mut act = GeneralRelu::new(Some(0.1), Some(0.4), Some(2.0)).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    // Points at least 0.01 away from the kinks at 0 and at maxv + sub = 2.4.
    let x: Vec<f32> = (0..200)
        .map(|_| Uniform::new(-4.0f32, 4.0).unwrap().sample(&mut rng))
        .filter(|v| v.abs() > 0.01 && (v - 2.4).abs() > 0.01)
        .collect();
    let n = x.len();
    let x = Array1::from(x).into_dyn();
    let dy = Array1::from_shape_fn(n, |i| ((i % 7) as f32 - 3.0) * 0.5).into_dyn();
    act.forward(x.view()).unwrap();
    let dx = act.backward(dy.view()).unwrap();
    let f = |v: f64| -> f64 {
        let r = if v > 0.0 { v } else { 0.1 * v };
        (r - 0.4).min(2.0)
    };
    let h = 1e-4;
    for i in 0..n {
        let v = f64::from(x[i]);
        let fd = (f(v + h) - f(v - h)) / (2.0 * h) * f64::from(dy[i]);
        assert!(
            (f64::from(dx[i]) - fd).abs() < 1e-5,
            "x = {v}: ours {}, fd {fd}",
            dx[i]
        );
    }
}

#[test]
fn general_relu_errors() {
    assert!(GeneralRelu::new(Some(f32::NAN), None, None).is_err());
    assert!(GeneralRelu::new(None, None, Some(f32::INFINITY)).is_err());
    let mut act = GeneralRelu::default();
    let e = act
        .backward(ArrayD::zeros(ndarray::IxDyn(&[2])).view())
        .unwrap_err();
    assert!(matches!(e, Error::State { .. }), "{e}");
    act.forward(ArrayD::zeros(ndarray::IxDyn(&[3])).view())
        .unwrap();
    let e = act
        .backward(ArrayD::zeros(ndarray::IxDyn(&[2])).view())
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert_eq!(act.name(), "GeneralRelu");
}

// ---------------------------------------------------------------- batches and schedule

#[test]
fn batches_are_a_seeded_permutation() {
    let draw = |seed| batch_indices(10, 3, Some(&mut StdRng::seed_from_u64(seed))).unwrap();
    let a = draw(1);
    assert_eq!(a, draw(1));
    assert_ne!(a, draw(2));
    assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
    let mut all = a.concat();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    assert!(batch_indices::<StdRng>(10, 0, None).is_err());

    let x = Array2::<f32>::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32);
    let y = array![7i64, 8, 9];
    let (xb, yb) = gather_images(x.view(), y.view(), &[2, 0], (1, 2, 2)).unwrap();
    assert_eq!(xb.dim(), (2, 1, 2, 2));
    assert_eq!(xb[[0, 0, 1, 1]], 11.0);
    assert_eq!(yb, array![9i64, 7]);
    assert!(gather_images(x.view(), y.view(), &[3], (1, 2, 2)).is_err());
    assert!(gather_images(x.view(), y.view(), &[0], (1, 3, 3)).is_err());
}

#[test]
fn batch_helpers_take_any_count_or_say_why_not() {
    // Batch sizes of any size: at most one batch.
    assert_eq!(
        batch_indices::<StdRng>(3, usize::MAX, None).unwrap(),
        [vec![0, 1, 2]]
    );
    assert!(
        batch_indices::<StdRng>(0, usize::MAX, None)
            .unwrap()
            .is_empty()
    );
    // More indices than memory holds: an allocation error, not an abort.
    for n in [usize::MAX, usize::MAX / 8 + 1] {
        let e = batch_indices::<StdRng>(n, 1, None).unwrap_err();
        assert!(matches!(e, Error::Alloc { op: "batches", .. }), "{n}: {e}");
        assert!(
            e.to_string().contains(&format!("{n} example indices")),
            "{e}"
        );
        let e = batch_indices(n, 7, Some(&mut StdRng::seed_from_u64(0))).unwrap_err();
        assert!(matches!(e, Error::Alloc { .. }), "{n}: {e}");
    }
    // Gathering rows: a broadcast x with rows of 2^61 values (no memory behind them).
    let one = [0.5f32];
    let wide = 1usize << 61;
    let x = ndarray::ArrayView2::from_shape((1, wide).strides((0, 0)), &one).unwrap();
    let y = array![3i64];
    for idx in [vec![0usize], vec![0, 0, 0]] {
        let e = gather_rows(x, y.view(), &idx).unwrap_err();
        assert!(matches!(e, Error::Alloc { op: "batches", .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("{} rows of x [1, {wide}]", idx.len())),
            "{e}"
        );
        let e = gather_images(x, y.view(), &idx, (1, 1, wide)).unwrap_err();
        assert!(matches!(e, Error::Alloc { .. }), "{e}");
    }
    // Repeated indices gather repeated rows.
    let x = Array2::<f32>::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32);
    let y = array![7i64, 8];
    let (xb, yb) = gather_rows(x.view(), y.view(), &[1, 0, 1]).unwrap();
    assert_eq!(
        xb,
        array![[3.0, 4.0, 5.0], [0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    );
    assert_eq!(yb, array![8, 7, 8]);
    // Strided rows (a transposed view) gather the same as their contiguous copy.
    let xt = Array2::<f32>::from_shape_fn((3, 2), |(j, i)| (i * 3 + j) as f32);
    let (xs, _) = gather_rows(xt.t(), y.view(), &[1, 0, 1]).unwrap();
    assert_eq!(xs, xb);
    // An image shape whose size overflows.
    let e = gather_images(x.view(), y.view(), &[0], (usize::MAX, 2, 1)).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

#[test]
fn loss_helpers_on_huge_broadcast_logits_fail_cleanly() {
    let one = [0.25f32];
    // 2^61 rows of one class: argmax would need 2^64 bytes.
    let tall = ndarray::ArrayView2::from_shape((1usize << 61, 1).strides((0, 0)), &one).unwrap();
    let e = convinit::train::argmax(tall).unwrap_err();
    assert!(matches!(e, Error::Alloc { op: "argmax", .. }), "{e}");
    // Two rows of 2^61 classes: the gradient would need 2^64 bytes.
    let wide = ndarray::ArrayView2::from_shape((2, 1usize << 61).strides((0, 0)), &one).unwrap();
    let target = array![0i64, 1];
    for e in [
        cross_entropy_with_grad(wide, target.view()).unwrap_err(),
        cross_entropy_backward(wide, target.view()).unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                Error::Alloc {
                    op: "cross_entropy",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("gradient of logits [2, 2305843009213693952]"),
            "{e}"
        );
    }
}

#[test]
fn warmup_cosine_schedule() {
    let s = LrSchedule::WarmupCosine { warmup: 0.2 };
    let lrs: Vec<f32> = (0..10).map(|i| s.lr(1.0, i, 10)).collect();
    close("warm-up", &lrs[..2], &[0.5, 1.0], 1e-7);
    close("cosine middle", &[lrs[6]], &[0.5], 1e-6);
    assert!(lrs.windows(2).skip(2).all(|w| w[1] < w[0]), "{lrs:?}");
    assert_eq!(LrSchedule::Constant.lr(0.3, 5, 10), 0.3);
}

// ---------------------------------------------------------------- the loop

fn small_net(init: &Init, seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    let conv = |c, o, k, p| {
        Conv2dConfig::new(c, o, (k, k))
            .with_stride((2, 2))
            .with_padding((p, p))
    };
    Sequential::new()
        .with(Conv2d::with_init(conv(1, 8, 5, 2), init, &mut rng).unwrap())
        .with(Relu::new())
        .with(Conv2d::with_init(conv(8, 16, 3, 1), init, &mut rng).unwrap())
        .with(Relu::new())
        .with(Conv2d::with_init(conv(16, 10, 3, 1), init, &mut rng).unwrap())
        .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
        .with(Flatten::new(1, -1))
}

/// The first `n` images of the embedded sample, normalised as the examples do.
fn mnist(n: usize) -> (Array2<f32>, Array1<i64>, Array2<f32>, Array1<i64>) {
    let m = Mnist::embedded().unwrap();
    let norm = |x: &Array2<f32>| x.slice(ndarray::s![..n, ..]).mapv(|v| (v - 0.13) / 0.31);
    (
        norm(&m.train.0),
        m.train.1.slice(ndarray::s![..n]).to_owned(),
        norm(&m.valid.0),
        m.valid.1.slice(ndarray::s![..n]).to_owned(),
    )
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn fit_learns_mnist_and_is_deterministic() {
    let (xt, yt, xv, yv) = mnist(400);
    let train = Split::new(xt.view(), yt.view());
    let valid = Split::new(xv.view(), yv.view());
    let config = FitConfig::new(5, 32).with_seed(5);
    let run = || {
        let mut net = small_net(&Init::KAIMING_NORMAL, 1);
        let mut opt = Sgd::new(SgdConfig::new(0.1).with_momentum(0.9)).unwrap();
        let mut steps = Vec::new();
        let history = fit(
            &mut net,
            &mut opt,
            train,
            Some(valid),
            &config,
            |info, _| {
                steps.push((info.step, info.epoch, info.loss));
                Ok(())
            },
        )
        .unwrap();
        let w = net.named_parameters()[0].value.to_owned();
        (history, steps, w, net)
    };
    let (history, steps, w, mut trained) = run();
    assert_eq!(history.len(), 5);
    assert_eq!(steps.len(), 5 * 13);
    assert_eq!(steps.last().map(|s| (s.0, s.1)), Some((64, 4)));
    let first = history[0].train_loss;
    let last = history[4].train_loss;
    assert!(last < 0.7 * first, "train loss {first} -> {last}");
    let acc = history[4].valid_accuracy.unwrap();
    assert!(
        acc > 0.45,
        "validation accuracy after 5 epochs on 400 images: {acc}"
    );
    // Same seed, same everything (timings aside).
    let (history2, steps2, w2, _) = run();
    assert_eq!(steps, steps2);
    assert_eq!(w, w2);
    for (a, b) in history.iter().zip(&history2) {
        assert_eq!(
            (a.train_loss, a.valid_accuracy),
            (b.train_loss, b.valid_accuracy)
        );
    }
    // evaluate agrees with the last epoch's validation figures.
    let (l, a) = evaluate(&mut trained, valid, (1, 28, 28), 100).unwrap();
    let last = history[4];
    assert!(
        (l - last.valid_loss.unwrap()).abs() < 1e-5,
        "{l} vs {last:?}"
    );
    assert_eq!(a, last.valid_accuracy.unwrap());
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn fit_trains_with_adam() {
    let (xt, yt, xv, yv) = mnist(400);
    let train = Split::new(xt.view(), yt.view());
    let valid = Split::new(xv.view(), yv.view());
    let mut net = small_net(&Init::KAIMING_NORMAL, 1);
    let mut opt: Box<dyn Optimizer> =
        Box::new(Adam::new(AdamConfig::adam().with_lr(1e-2)).unwrap());
    let mut lrs = Vec::new();
    let history = fit(
        &mut net,
        opt.as_mut(),
        train,
        Some(valid),
        &FitConfig::new(4, 32).with_seed(2),
        |info, _| {
            lrs.push(info.lr);
            Ok(())
        },
    )
    .unwrap();
    let (first, last) = (history[0].train_loss, history[3].train_loss);
    assert!(last < 0.7 * first, "train loss {first} -> {last}");
    // Chance is 0.1; SGD's test above reaches 0.45 in 5 epochs.
    assert!(history[3].valid_accuracy.unwrap() > 0.35, "{history:?}");
    // No schedule: the optimiser's own rate at every step, left as it was.
    assert!(lrs.iter().all(|&l| l == 1e-2), "{lrs:?}");
    assert_eq!(opt.lr(), 1e-2);
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn fit_trains_with_the_loss_options() {
    let (xt, yt, _, _) = mnist(64);
    let train = Split::new(xt.view(), yt.view());
    let run = |loss: CrossEntropyOptions, lr: f32| {
        let mut net = small_net(&Init::KAIMING_NORMAL, 1);
        let mut opt = Sgd::new(SgdConfig::new(lr)).unwrap();
        let mut losses = Vec::new();
        let config = FitConfig::new(1, 16).with_loss(loss);
        let h = fit(&mut net, &mut opt, train, None, &config, |info, _| {
            losses.push(info.loss);
            Ok(())
        })
        .unwrap();
        (
            h[0].train_loss,
            losses,
            net.named_parameters()[0].value.to_owned(),
        )
    };
    let (mean, mean_steps, w_mean) = run(CrossEntropyOptions::new(), 0.1);
    // A sum over batches of 16 at lr / 16 takes the same steps (up to rounding); its
    // per-step losses are 16 times the means, and the epoch figure is per example.
    let sum = CrossEntropyOptions::new().with_reduction(Reduction::Sum);
    let (per_example, sum_steps, w_sum) = run(sum, 0.1 / 16.0);
    assert!(
        (per_example - mean).abs() < 1e-4 * mean,
        "{per_example} vs {mean}"
    );
    assert!((sum_steps[0] - 16.0 * mean_steps[0]).abs() < 1e-4 * sum_steps[0]);
    assert!(w_sum.iter().zip(&w_mean).all(|(a, b)| (a - b).abs() < 1e-4));
    // Smoothing changes what is minimised; a bad value is refused before any step.
    let (smoothed, _, _) = run(CrossEntropyOptions::new().with_label_smoothing(0.2), 0.1);
    assert!(smoothed != mean);
    let mut net = small_net(&Init::KAIMING_NORMAL, 1);
    let mut opt = Sgd::new(SgdConfig::new(0.1)).unwrap();
    let bad = FitConfig::new(1, 16).with_loss(CrossEntropyOptions::new().with_label_smoothing(2.0));
    let e = fit(&mut net, &mut opt, train, None, &bad, |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("label_smoothing = 2"), "{e}");
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn fit_schedules_relative_to_the_optimizers_base_rate() {
    let (xt, yt, _, _) = mnist(64);
    let train = Split::new(xt.view(), yt.view());
    let schedule = LrSchedule::WarmupCosine { warmup: 0.25 };
    let config = FitConfig::new(2, 16).with_schedule(schedule);
    let mut net = small_net(&Init::KAIMING_NORMAL, 1);
    let mut opt = Sgd::new(SgdConfig::new(0.2).with_momentum(0.9)).unwrap();
    for run in 0..2 {
        let mut lrs = Vec::new();
        fit(&mut net, &mut opt, train, None, &config, |info, _| {
            lrs.push(info.lr);
            Ok(())
        })
        .unwrap();
        let want: Vec<f32> = (0..8).map(|s| schedule.lr(0.2, s, 8)).collect();
        // The same sequence on the second run: the base rate, not the last one, scales.
        assert_eq!(lrs, want, "run {run}");
        assert_eq!(lrs[1], 0.2, "the peak is the optimiser's rate");
        // The optimiser holds the last scheduled rate, and its base.
        assert_eq!((opt.lr(), opt.base_lr()), (want[7], 0.2));
    }
    let bad = config.with_schedule(LrSchedule::WarmupCosine { warmup: 1.5 });
    let e = fit(&mut net, &mut opt, train, None, &bad, |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("warmup = 1.5"), "{e}");
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn fit_rejects_bad_settings_and_outputs() {
    let (xt, yt, _, _) = mnist(16);
    let train = Split::new(xt.view(), yt.view());
    let mut opt = Sgd::new(SgdConfig::new(0.1)).unwrap();
    let ok = |_: &_, _: &_| Ok(());
    let mut net = small_net(&Init::KAIMING_NORMAL, 1);
    for bad in [FitConfig::new(0, 8), FitConfig::new(1, 0)] {
        assert!(matches!(
            fit(&mut net, &mut opt, train, None, &bad, ok),
            Err(Error::Config { .. })
        ));
    }
    let wrong_shape = FitConfig::new(1, 8).with_image_shape((1, 27, 27));
    assert!(fit(&mut net, &mut opt, train, None, &wrong_shape, ok).is_err());
    // A network that does not end in (N, classes).
    let mut rng = StdRng::seed_from_u64(0);
    let mut conv_only =
        Sequential::new().with(Conv2d::new(Conv2dConfig::new(1, 2, (3, 3)), &mut rng).unwrap());
    let e = fit(
        &mut conv_only,
        &mut opt,
        train,
        None,
        &FitConfig::new(1, 8),
        ok,
    )
    .unwrap_err();
    assert!(e.to_string().contains("logits (N, classes)"), "{e}");
    // A callback error stops training.
    let e = fit(
        &mut net,
        &mut opt,
        train,
        None,
        &FitConfig::new(1, 8),
        |_, _| {
            Err(Error::Config {
                op: "test",
                message: "stop".into(),
            })
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("stop"));
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn fit_reports_a_bad_label_by_its_index_in_the_split_before_any_update() {
    let (xt, yt, xv, yv) = mnist(16);
    let ok = |_: &_, _: &_| Ok(());
    let config = FitConfig::new(2, 4);
    for (split, at, value) in [("train.y", 11usize, 10i64), ("valid.y", 3, -2)] {
        let (mut yt, mut yv) = (yt.clone(), yv.clone());
        if split == "train.y" {
            yt[at] = value;
        } else {
            yv[at] = value;
        }
        let mut net = small_net(&Init::KAIMING_NORMAL, 1);
        let before: Vec<Vec<f32>> = net
            .named_parameters()
            .iter()
            .map(|p| p.value.iter().copied().collect())
            .collect();
        let mut opt = Sgd::new(SgdConfig::new(0.1)).unwrap();
        let mut steps = 0;
        let e = fit(
            &mut net,
            &mut opt,
            Split::new(xt.view(), yt.view()),
            Some(Split::new(xv.view(), yv.view())),
            &config,
            |_, _| {
                steps += 1;
                Ok(())
            },
        )
        .unwrap_err();
        let want = format!("{split}[{at}] = {value} is not a class index in 0..10");
        assert!(
            matches!(&e, Error::InvalidContent { format: "labels", message }
                if message.contains(&want)),
            "{e:?}"
        );
        assert_eq!(steps, 0, "{split}: a step ran before the error");
        let after: Vec<Vec<f32>> = net
            .named_parameters()
            .iter()
            .map(|p| p.value.iter().copied().collect())
            .collect();
        assert_eq!(before, after, "{split}: the model was updated");
        if split == "valid.y" {
            let e =
                evaluate(&mut net, Split::new(xv.view(), yv.view()), (1, 28, 28), 2).unwrap_err();
            assert!(e.to_string().contains("y[3] = -2"), "{e}");
            assert!(
                matches!(
                    e,
                    Error::InvalidContent {
                        format: "labels",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }
    // The same data with good labels trains.
    let mut net = small_net(&Init::KAIMING_NORMAL, 1);
    let mut opt = Sgd::new(SgdConfig::new(0.1)).unwrap();
    let train = Split::new(xt.view(), yt.view());
    assert_eq!(
        fit(&mut net, &mut opt, train, None, &config, ok)
            .unwrap()
            .len(),
        2
    );
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn fit_with_usize_max_epochs_is_rejected_or_stopped_by_the_callback() {
    let (xt, yt, _, _) = mnist(16);
    let stop = || Error::State {
        op: "test",
        message: "enough".into(),
    };
    // 16 examples in batches of 8 is 2 steps per epoch: usize::MAX epochs overflow the
    // step count, which is a config error before anything runs.
    let mut net = small_net(&Init::KAIMING_NORMAL, 1);
    let mut opt = Sgd::new(SgdConfig::new(0.1)).unwrap();
    let train = Split::new(xt.view(), yt.view());
    let mut steps = 0;
    let e = fit(
        &mut net,
        &mut opt,
        train,
        None,
        &FitConfig::new(usize::MAX, 8),
        |_, _| {
            steps += 1;
            Ok(())
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Config { op: "fit", .. }), "{e}");
    assert!(e.to_string().contains(&usize::MAX.to_string()), "{e}");
    assert_eq!(steps, 0);
    // One step per epoch: usize::MAX epochs is a valid run of usize::MAX steps (with a
    // schedule over all of them), which the callback stops after three steps.
    for batch_size in [16, usize::MAX] {
        let mut seen = Vec::new();
        let config = FitConfig::new(usize::MAX, batch_size)
            .with_schedule(LrSchedule::WarmupCosine { warmup: 0.5 });
        let e = fit(&mut net, &mut opt, train, None, &config, |info, _| {
            seen.push((info.epoch, info.step, info.total_steps, info.batch_size));
            if seen.len() == 3 { Err(stop()) } else { Ok(()) }
        })
        .unwrap_err();
        assert!(matches!(e, Error::State { op: "test", .. }), "{e}");
        assert_eq!(
            seen,
            [
                (0, 0, usize::MAX, 16),
                (1, 1, usize::MAX, 16),
                (2, 2, usize::MAX, 16)
            ]
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn schedule_and_evaluate_take_any_count() {
    // The schedule at the extremes of its counts: finite, within [0, peak].
    let s = LrSchedule::WarmupCosine { warmup: 1.0 };
    for (step, total) in [
        (0, 0),
        (usize::MAX, 0),
        (usize::MAX - 1, usize::MAX),
        (usize::MAX, usize::MAX),
        (0, usize::MAX),
    ] {
        for s in [s, LrSchedule::WarmupCosine { warmup: 0.0 }] {
            let lr = s.lr(0.5, step, total);
            assert!(
                (0.0..=0.5).contains(&lr),
                "{s:?} at {step} of {total}: {lr}"
            );
        }
    }
    assert_eq!(s.lr(0.5, usize::MAX - 1, usize::MAX), 0.5);
    // evaluate with a batch far larger than the split: one batch.
    let (xt, yt, _, _) = mnist(16);
    let mut net = small_net(&Init::KAIMING_NORMAL, 1);
    let data = Split::new(xt.view(), yt.view());
    let whole = evaluate(&mut net, data, (1, 28, 28), usize::MAX).unwrap();
    assert_eq!(whole, evaluate(&mut net, data, (1, 28, 28), 16).unwrap());
    assert!(matches!(
        evaluate(&mut net, data, (1, 28, 28), 0),
        Err(Error::Config { .. })
    ));
    // An image shape whose size overflows is a shape error, in evaluate and in fit.
    let huge = (usize::MAX, usize::MAX, 2);
    let e = evaluate(&mut net, data, huge, 8).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let mut opt = Sgd::new(SgdConfig::new(0.1)).unwrap();
    let config = FitConfig::new(1, 8).with_image_shape(huge);
    let e = fit(&mut net, &mut opt, data, None, &config, |_, _| Ok(())).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

// ---------------------------------------------------------------- telemetry

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn telemetry_records_every_layer_and_writes_csv() {
    let (xt, yt, _, _) = mnist(96);
    let train = Split::new(xt.view(), yt.view());
    let mut net = small_net(&Init::KAIMING_NORMAL, 2);
    let mut opt = Sgd::new(SgdConfig::new(0.05)).unwrap();
    let mut telemetry = Telemetry::new().with_histogram(20, (-5.0, 5.0)).unwrap();
    let mut checked = false;
    fit(
        &mut net,
        &mut opt,
        train,
        None,
        &FitConfig::new(1, 32),
        |info, net| {
            telemetry.record(info.step, net)?;
            if !checked {
                // Compare the first step's figures with the saved outputs themselves.
                checked = true;
                let rows = telemetry.rows();
                let relu = net.output(1).unwrap();
                let n = relu.len() as f64;
                let mean = relu.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let std = (relu
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt();
                let zeros = relu.iter().filter(|&&v| v == 0.0).count() as f64 / n;
                assert!((f64::from(rows[1].act_mean) - mean).abs() < 1e-5);
                assert!((f64::from(rows[1].act_std) - std).abs() < 1e-5);
                assert!((f64::from(rows[1].act_near_zero) - zeros).abs() < 0.01);
                assert!(rows[1].act_near_zero > 0.2, "a ReLU zeroes many units");
                assert_eq!(rows[1].grad_std, None);
                let g = net.get::<Conv2d>(0).unwrap().weight_grad();
                assert!(rows[0].grad_std.unwrap() > 0.0 && g.iter().any(|&v| v != 0.0));
                let h = &telemetry.histograms()[1];
                let inside = relu.iter().filter(|&&v| (-5.0..=5.0).contains(&v)).count();
                assert_eq!(h.counts.iter().sum::<u32>() as usize, inside);
                assert_eq!(h.counts.len(), 20);
            }
            Ok(())
        },
    )
    .unwrap();
    assert!(checked);
    let layers = net.len();
    assert_eq!(telemetry.rows().len(), 3 * layers);
    assert_eq!(telemetry.layer(2).count(), 3);

    let mut csv = Vec::new();
    telemetry.write_csv(&mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "step,layer,name,act_mean,act_std,act_near_zero,grad_std"
    );
    assert_eq!(lines.len(), 1 + 3 * layers);
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(&first[..3], ["0", "0", "Conv2d"]);
    assert!(first[6].parse::<f32>().unwrap() > 0.0);
    let relu: Vec<&str> = lines[2].split(',').collect();
    assert_eq!((relu[2], relu[6]), ("ReLU", ""));
    let last: Vec<&str> = lines.last().unwrap().split(',').collect();
    assert_eq!(&last[..3], ["2", &(layers - 1).to_string(), "Flatten"]);
    for line in &lines[1..] {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols.len(), 7, "{line}");
        for c in &cols[3..6] {
            assert!(c.parse::<f32>().unwrap().is_finite(), "{line}");
        }
    }
    let mut hist = Vec::new();
    telemetry.write_histograms_csv(&mut hist).unwrap();
    let hist = String::from_utf8(hist).unwrap();
    assert!(hist.starts_with("step,layer,bin_0,bin_1,"));
    assert_eq!(hist.lines().count(), 1 + 3 * layers);
    assert_eq!(hist.lines().nth(1).unwrap().split(',').count(), 2 + 20);

    // Nothing to read before a forward pass.
    let fresh = small_net(&Init::KAIMING_NORMAL, 2);
    let e = Telemetry::new().record(0, &fresh).unwrap_err();
    assert!(matches!(e, Error::State { .. }), "{e}");
    assert!(Telemetry::new().with_histogram(0, (0.0, 1.0)).is_err());
    assert!(Telemetry::new().with_histogram(4, (1.0, 1.0)).is_err());
    // Bin counts up to the documented maximum; beyond it, a config error (not an abort at
    // the first record).
    let max = Telemetry::MAX_HISTOGRAM_BINS;
    assert_eq!(max, 65_536);
    let t = Telemetry::new().with_histogram(max, (0.0, 1.0)).unwrap();
    assert_eq!(t.histogram_bins(), (max, (0.0, 1.0)));
    for bins in [max + 1, usize::MAX / 4, usize::MAX] {
        let e = Telemetry::new()
            .with_histogram(bins, (0.0, 1.0))
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Config {
                    op: "Telemetry",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("1 to 65536 bins")
                && e.to_string().contains(&format!("got {bins} bins")),
            "{e}"
        );
    }
    assert!(Telemetry::new().with_near_zero(-1.0).is_err());
}

// ---------------------------------------------------------------- LSUV

fn layer_stds(net: &mut Sequential, x: &Array4<f32>) -> Vec<(usize, f64, f64)> {
    net.forward(x.view().into_dyn()).unwrap();
    [0, 2, 4]
        .iter()
        .map(|&i| {
            let y = net.output(i).unwrap();
            let n = y.len() as f64;
            let m = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let s = (y.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / n).sqrt();
            (i, m, s)
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn lsuv_brings_each_layer_output_to_unit_std() {
    let (xt, _, _, _) = mnist(128);
    let x = xt.into_shape_with_order((128, 1, 28, 28)).unwrap();
    let mut net = small_net(&Init::PytorchDefault, 4);
    let before = layer_stds(&mut net, &x);
    assert!(
        before.iter().any(|&(_, _, s)| (s - 1.0).abs() > 0.2),
        "{before:?}"
    );
    let report = lsuv(&mut net, x.view().into_dyn(), &LsuvConfig::default()).unwrap();
    assert_eq!(
        report.iter().map(|l| l.layer).collect::<Vec<_>>(),
        [0, 2, 4]
    );
    assert!(
        report
            .iter()
            .all(|l| l.converged && l.iterations >= 1 && l.iterations <= 10)
    );
    for (i, m, s) in layer_stds(&mut net, &x) {
        assert!((s - 1.0).abs() <= 1e-3, "layer {i}: std {s}");
        assert!(m.abs() <= 1e-3, "layer {i}: mean {m}");
    }

    // Measured after the activation (a shifted GeneralRelu can reach mean 0, std 1).
    let mut rng = StdRng::seed_from_u64(9);
    let cfg = |c, o| Conv2dConfig::new(c, o, (3, 3)).with_padding((1, 1));
    let mut net = Sequential::new()
        .with(Conv2d::new(cfg(1, 8), &mut rng).unwrap())
        .with(GeneralRelu::new(Some(0.1), Some(0.4), None).unwrap())
        .with(Conv2d::new(cfg(8, 8), &mut rng).unwrap())
        .with(GeneralRelu::new(Some(0.1), Some(0.4), None).unwrap());
    let config = LsuvConfig {
        point: LsuvPoint::AfterActivation,
        tol: 0.01,
        max_iters: 50,
        ..LsuvConfig::default()
    };
    let report = lsuv(&mut net, x.view().into_dyn(), &config).unwrap();
    for l in &report {
        assert!(l.converged, "{l:?}");
    }
    net.forward(x.view().into_dyn()).unwrap();
    let y = net.output(3).unwrap();
    let n = y.len() as f32;
    let m = y.sum() / n;
    let s = (y.mapv(|v| (v - m) * (v - m)).sum() / n).sqrt();
    assert!(
        (s - 1.0).abs() <= 0.011 && m.abs() <= 0.011,
        "mean {m} std {s}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn lsuv_errors_on_zero_std_and_bad_config() {
    let x = Array4::<f32>::zeros((4, 1, 8, 8));
    let mut net = small_net(&Init::KAIMING_NORMAL, 0); // zero biases: all outputs are 0
    let e = lsuv(&mut net, x.view().into_dyn(), &LsuvConfig::default()).unwrap_err();
    assert!(matches!(e, Error::State { .. }), "{e}");
    assert!(e.to_string().contains("layer 0"), "{e}");
    for bad in [
        LsuvConfig {
            tol: 0.0,
            ..LsuvConfig::default()
        },
        LsuvConfig {
            max_iters: 0,
            ..LsuvConfig::default()
        },
        LsuvConfig {
            target_std: f32::NAN,
            ..LsuvConfig::default()
        },
    ] {
        assert!(matches!(
            lsuv(&mut net, x.view().into_dyn(), &bad),
            Err(Error::Config { .. })
        ));
    }
    // Bounded: one round allowed, a tolerance no one reaches in one round.
    let (xt, _, _, _) = mnist(32);
    let x = xt.into_shape_with_order((32, 1, 28, 28)).unwrap();
    let mut net = small_net(&Init::PytorchDefault, 4);
    let config = LsuvConfig {
        point: LsuvPoint::AfterActivation,
        max_iters: 1,
        tol: 1e-6,
        ..LsuvConfig::default()
    };
    let report = lsuv(&mut net, x.view().into_dyn(), &config).unwrap();
    // Layers 0 and 2 are measured after a ReLU, which one rescaling cannot fix exactly
    // (layer 4 is followed by linear layers only: one round is exact there).
    assert!(
        report[..2]
            .iter()
            .all(|l| l.iterations == 1 && !l.converged),
        "{report:?}"
    );
}

#[test]
fn lsuv_rescales_layers_without_bias() {
    let mut rng = StdRng::seed_from_u64(1);
    let x = Array4::<f32>::random_using((16, 2, 6, 6), StandardNormal, &mut rng) + 3.0;
    let cfg = Conv2dConfig::new(2, 4, (3, 3)).with_bias(false);
    let mut net = Sequential::new().with(Conv2d::new(cfg, &mut rng).unwrap());
    let report = lsuv(&mut net, x.view().into_dyn(), &LsuvConfig::default()).unwrap();
    assert!(report[0].converged, "{report:?}");
    assert!((report[0].std - 1.0).abs() <= 1e-3);
    assert!(report[0].mean.abs() > 0.01, "no bias: the mean stays");

    // Any round limit: usize::MAX stops as soon as the layer converges.
    let mut again =
        Sequential::new().with(Conv2d::new(cfg, &mut StdRng::seed_from_u64(2)).unwrap());
    let unbounded = LsuvConfig {
        max_iters: usize::MAX,
        ..LsuvConfig::default()
    };
    let report = lsuv(&mut again, x.view().into_dyn(), &unbounded).unwrap();
    assert!(
        report[0].converged && report[0].iterations <= 10,
        "{report:?}"
    );

    // The batch is read where it is: a column-major copy gives the same report.
    let xf = {
        let mut f = Array4::<f32>::zeros(x.raw_dim().f());
        f.assign(&x);
        f
    };
    let fresh = || Sequential::new().with(Conv2d::new(cfg, &mut StdRng::seed_from_u64(3)).unwrap());
    let (mut a, mut b) = (fresh(), fresh());
    assert_eq!(
        lsuv(&mut a, x.view().into_dyn(), &LsuvConfig::default()).unwrap(),
        lsuv(&mut b, xf.view().into_dyn(), &LsuvConfig::default()).unwrap()
    );
}
