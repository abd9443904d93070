//! `Layer::backward_params` and `Sequential::backward_params`: the parameter gradients
//! of `backward`, bit for bit, without the input gradient; the same errors as `backward`.

mod common;

use common::ops::op_cases;
use convinit::Error;
use convinit::nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Layer, Linear, LinearConfig, Relu, Sequential,
};
use ndarray::{Array4, ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

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

/// Every case of the op table (`common/ops.rs`; networks with a conv, a linear or a
/// parameter-free layer first, and every layer alone): two steps without `zero_grad`
/// in between (so gradients accumulate), one built copy through `forward` and
/// `backward`, the other through `forward_shared` and `backward_params`. Same outputs,
/// same parameter gradients bit for bit, none of them all zero.
#[test]
fn parameter_gradients_are_backwards_bit_for_bit() {
    let mut with_params = 0;
    for case in op_cases() {
        let (mut a, mut rng) = case.build(0);
        let (mut b, _) = case.build(0);
        for _ in 0..2 {
            let x = case.draw_x(&mut rng);
            let ya = a.forward(x.view()).unwrap();
            let yb = b.forward_shared(x.into_shared()).unwrap();
            assert_eq!(ya, yb, "{case:?}");
            let g: ArrayD<f32> =
                ArrayD::from_shape_simple_fn(ya.raw_dim(), || rng.sample(StandardNormal));
            let dx = a.backward(g.view()).unwrap();
            assert_eq!(dx.shape(), case.x_shape.as_slice(), "{case:?}");
            b.backward_params(g).unwrap();
        }
        let bits = |l: &dyn Layer| -> Vec<(String, Vec<u32>)> {
            l.params()
                .into_iter()
                .map(|p| (p.name, p.grad.iter().map(|v| v.to_bits()).collect()))
                .collect()
        };
        let (want, got) = (bits(a.as_ref()), bits(b.as_ref()));
        assert!(
            want.iter()
                .all(|(_, g)| g.iter().any(|&b| f32::from_bits(b) != 0.0)),
            "{case:?}: every gradient is non-zero"
        );
        assert_eq!(got, want, "{case:?}");
        with_params += usize::from(!want.is_empty());
    }
    assert!(with_params >= 15, "{with_params}");
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
