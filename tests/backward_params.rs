//! `Layer::backward_params` and `Sequential::backward_params`: the parameter gradients
//! of `backward`, bit for bit, without the input gradient; the same errors as `backward`.

use convinit::Error;
use convinit::nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Layer, LeakyRelu, Linear, LinearConfig, Relu,
    Sequential,
};
use convinit::ops::{mse, mse_backward};
use ndarray::{Array1, Array4, ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

type MakeNet = fn(u64) -> Sequential;
type BoxedLayer = Box<dyn Layer>;

fn randn(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.sample(StandardNormal))
}

fn conv(i: usize, o: usize, k: usize, p: usize) -> Conv2dConfig {
    Conv2dConfig::new(i, o, (k, k))
        .with_stride((2, 2))
        .with_padding((p, p))
}

/// The notebook's seed network.
fn seed_net(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new()
        .with(Conv2d::new(conv(1, 8, 5, 2), &mut rng).unwrap())
        .with(Relu::new())
        .with(Conv2d::new(conv(8, 16, 3, 1), &mut rng).unwrap())
        .with(Relu::new())
        .with(Conv2d::new(conv(16, 32, 3, 1), &mut rng).unwrap())
        .with(Relu::new())
        .with(Conv2d::new(conv(32, 1, 3, 1), &mut rng).unwrap())
        .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
        .with(Flatten::new(0, -1))
}

/// A first conv with groups and no bias.
fn grouped_net(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new()
        .with(Conv2d::new(conv(4, 6, 3, 1).with_groups(2).with_bias(false), &mut rng).unwrap())
        .with(LeakyRelu::new(0.1))
        .with(Conv2d::new(conv(6, 1, 3, 1), &mut rng).unwrap())
        .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
        .with(Flatten::new(0, -1))
}

/// A first linear layer, with and without a bias further on.
fn linear_net(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new()
        .with(Linear::new(LinearConfig::new(12, 7), &mut rng).unwrap())
        .with(Relu::new())
        .with(Linear::new(LinearConfig::new(7, 1).with_bias(false), &mut rng).unwrap())
}

/// A parameter-free first layer (the default `backward_params`).
fn relu_first_net(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new()
        .with(Relu::new())
        .with(Linear::new(LinearConfig::new(12, 1), &mut rng).unwrap())
}

fn grad_bits(net: &Sequential) -> Vec<(String, Vec<u32>)> {
    net.named_parameters()
        .into_iter()
        .map(|p| (p.name, p.grad.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// Two steps without `zero_grad` in between (so gradients accumulate), the second on
/// another batch; returns the outputs and the parameter gradients, as bits.
fn steps(
    mut net: Sequential,
    x_shape: &[usize],
    params_only: bool,
) -> (Vec<u32>, Vec<(String, Vec<u32>)>) {
    let mut outs = Vec::new();
    for seed in [1, 2] {
        let x = randn(x_shape, seed);
        let out = net.forward(x.view()).unwrap();
        let target = Array1::from_iter((0..x_shape[0]).map(|i| i as f32 / 7.0));
        let out1 = out.view().into_shape_with_order(x_shape[0]).unwrap();
        assert!(mse(out1, target.view()).unwrap().is_finite());
        let g = mse_backward(out1, target.view())
            .unwrap()
            .into_shape_with_order(out.raw_dim())
            .unwrap();
        if params_only {
            net.backward_params(g).unwrap();
        } else {
            let dx = net.backward(g.view()).unwrap();
            assert_eq!(dx.shape(), x_shape);
        }
        outs.extend(out.iter().map(|v| v.to_bits()));
    }
    (outs, grad_bits(&net))
}

#[test]
fn sequential_parameter_gradients_are_backwards_bit_for_bit() {
    let cases: Vec<(&str, MakeNet, Vec<usize>)> = vec![
        ("seed net", seed_net, vec![37, 1, 28, 28]),
        ("grouped first conv", grouped_net, vec![5, 4, 9, 11]),
        ("linear first", linear_net, vec![9, 12]),
        ("relu first", relu_first_net, vec![9, 12]),
    ];
    for (what, make, shape) in cases {
        let want = steps(make(3), &shape, false);
        let got = steps(make(3), &shape, true);
        assert!(!want.1.is_empty(), "{what}");
        assert!(
            want.1
                .iter()
                .all(|(_, g)| g.iter().any(|&b| f32::from_bits(b) != 0.0)),
            "{what}: every gradient is non-zero"
        );
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn layer_parameter_gradients_are_backwards_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(4);
    let conv_cfg = conv(3, 4, 3, 1);
    let conv_layer = Conv2d::new(conv_cfg, &mut rng).unwrap();
    let lin = Linear::new(LinearConfig::new(5, 3), &mut rng).unwrap();
    let cases: Vec<(BoxedLayer, BoxedLayer, Vec<usize>)> = vec![
        (
            Box::new(conv_layer.clone()),
            Box::new(conv_layer),
            vec![2, 3, 7, 6],
        ),
        (Box::new(lin.clone()), Box::new(lin), vec![4, 5]),
        (Box::new(Relu::new()), Box::new(Relu::new()), vec![4, 5]),
    ];
    for (mut a, mut b, shape) in cases {
        for seed in [5, 6] {
            let x = randn(&shape, seed);
            let ya = a.forward(x.view()).unwrap();
            let yb = b.forward_shared(x.into_shared()).unwrap();
            assert_eq!(ya, yb);
            let g = randn(ya.shape(), seed + 10);
            a.backward(g.view()).unwrap();
            b.backward_params(g).unwrap();
        }
        let bits = |l: &dyn Layer| -> Vec<Vec<u32>> {
            l.params()
                .iter()
                .map(|p| p.grad.iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(a.as_ref()), bits(b.as_ref()), "{}", a.name());
    }
}

/// The error of `backward` and of `backward_params` on the same state and gradient.
fn both_errors(mut make: impl FnMut() -> Sequential, grad: &ArrayD<f32>) -> (Error, Error) {
    let a = make().backward(grad.view()).unwrap_err();
    let b = make().backward_params(grad.clone()).unwrap_err();
    (a, b)
}

fn same_error(what: &str, (a, b): (Error, Error), kind: fn(&Error) -> bool) {
    assert!(kind(&a), "{what}: {a}");
    assert_eq!(a.to_string(), b.to_string(), "{what}");
}

#[test]
fn errors_are_backwards() {
    let is_state = |e: &Error| matches!(e, Error::State { .. });
    let is_shape = |e: &Error| matches!(e, Error::Shape { .. });
    let x = ArrayD::<f32>::ones(IxDyn(&[3, 1, 28, 28]));
    let ok = ArrayD::<f32>::ones(IxDyn(&[3]));
    let bad = ArrayD::<f32>::ones(IxDyn(&[4]));

    // Before any forward pass: the last layer says so.
    same_error("not run", both_errors(|| seed_net(0), &ok), is_state);
    // A gradient of the wrong shape.
    let ran = || {
        let mut n = seed_net(0);
        n.forward(x.view()).unwrap();
        n
    };
    same_error("wrong shape", both_errors(ran, &bad), is_shape);
    // After a forward pass that failed.
    let failed = || {
        let mut n = seed_net(0);
        n.forward(x.view()).unwrap();
        assert!(
            n.forward(ArrayD::ones(IxDyn(&[3, 2, 28, 28])).view())
                .is_err()
        );
        n
    };
    same_error("failed forward", both_errors(failed, &ok), is_state);

    // The same on a lone first layer, which takes the parameter-only path itself.
    let lone = |run: bool| {
        move || {
            let mut rng = StdRng::seed_from_u64(0);
            let mut n = Sequential::new().with(Conv2d::new(conv(1, 2, 3, 1), &mut rng).unwrap());
            if run {
                n.forward(Array4::<f32>::ones((2, 1, 6, 6)).into_dyn().view())
                    .unwrap();
            }
            n
        }
    };
    let g = ArrayD::<f32>::ones(IxDyn(&[2, 2, 3, 3]));
    same_error("lone conv, not run", both_errors(lone(false), &g), is_state);
    let e = both_errors(lone(true), &ArrayD::ones(IxDyn(&[2, 2, 3, 4])));
    assert!(e.0.to_string().contains("layer 0, Conv2d"), "{}", e.0);
    same_error("lone conv, wrong shape", e, is_shape);
    let rank = both_errors(lone(true), &ArrayD::ones(IxDyn(&[2, 18])));
    same_error("lone conv, wrong rank", rank, is_shape);
    // A weight replaced by one of another shape through `weight_mut`.
    let replaced = || {
        let mut n = lone(true)();
        *n.get_mut::<Conv2d>(0).unwrap().weight_mut() = Array4::zeros((2, 1, 2, 2));
        n
    };
    same_error("replaced weight", both_errors(replaced, &g), is_shape);

    // Linear as the first layer.
    let lin = |run: bool| {
        move || {
            let mut rng = StdRng::seed_from_u64(0);
            let mut n =
                Sequential::new().with(Linear::new(LinearConfig::new(3, 2), &mut rng).unwrap());
            if run {
                n.forward(ArrayD::ones(IxDyn(&[4, 3])).view()).unwrap();
            }
            n
        }
    };
    let g = ArrayD::<f32>::ones(IxDyn(&[4, 2]));
    same_error(
        "lone linear, not run",
        both_errors(lin(false), &g),
        is_state,
    );
    let e = both_errors(lin(true), &ArrayD::ones(IxDyn(&[4, 3])));
    same_error("lone linear, wrong shape", e, is_shape);
}

#[test]
fn an_empty_sequential_has_nothing_to_do() {
    let mut n = Sequential::new();
    let y = n.forward(ArrayD::ones(IxDyn(&[2, 3])).view()).unwrap();
    n.backward_params(y).unwrap();
}
