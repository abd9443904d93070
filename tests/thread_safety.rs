//! Thread safety: the public types are `Send + Sync` where that makes sense (checked at
//! compile time), and `sgemm`, every case of the op table (`common/ops.rs`: the ops,
//! layers and networks), the layers and the loaders give bit-identical results when called from several std threads at once (each also
//! using rayon's global pool), compared with the same calls made serially.

use std::sync::Barrier;

mod common;

use common::ops::op_cases;

use convinit::Error;
use convinit::data::{DType, Mnist, NdArray, Value, pickle};
use convinit::gemm::sgemm;
use convinit::init::{BiasInit, FanMode, Init, Nonlinearity};
use convinit::nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Layer, LeakyRelu, Linear, LinearConfig, Relu,
    Sequential,
};
use convinit::ops::{Conv2dGeometry, Conv2dGrads, Conv2dOptions, LinearGrads, conv2d};
use ndarray::{Array, Array2, Array4, ArrayD, s};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn assert_send_sync<T: Send + Sync + ?Sized>() {}
fn assert_send<T: Send + ?Sized>() {}

#[test]
fn public_types_are_send_and_sync() {
    // Layers, alone, boxed and in a container.
    assert_send_sync::<Conv2d>();
    assert_send_sync::<Linear>();
    assert_send_sync::<Relu>();
    assert_send_sync::<LeakyRelu>();
    assert_send_sync::<AdaptiveAvgPool2d>();
    assert_send_sync::<Flatten>();
    assert_send_sync::<Sequential>();
    assert_send_sync::<dyn Layer>();
    assert_send_sync::<Box<dyn Layer>>();
    // Configs, options, geometry, gradients, init schemes.
    assert_send_sync::<Conv2dConfig>();
    assert_send_sync::<LinearConfig>();
    assert_send_sync::<Conv2dOptions>();
    assert_send_sync::<Conv2dGeometry>();
    assert_send_sync::<Conv2dGrads>();
    assert_send_sync::<LinearGrads>();
    assert_send_sync::<Init>();
    assert_send_sync::<BiasInit>();
    assert_send_sync::<FanMode>();
    assert_send_sync::<Nonlinearity>();
    // Data and errors: a loaded value can be handed to another thread, an error can
    // cross threads (and be boxed as `dyn Error + Send + Sync`).
    assert_send_sync::<Value>();
    assert_send_sync::<NdArray>();
    assert_send_sync::<DType>();
    assert_send_sync::<Mnist>();
    assert_send_sync::<Error>();
    let _: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::Config {
        op: "x",
        message: String::new(),
    });
    // Tensors.
    assert_send_sync::<Array4<f32>>();
    assert_send_sync::<ArrayD<f32>>();
    assert_send::<ndarray::ArrayViewMut2<'static, f32>>();
}

fn uniform<Sh: ndarray::ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f32, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

fn bits<'a>(a: impl IntoIterator<Item = &'a f32>) -> Vec<u32> {
    a.into_iter().map(|v| v.to_bits()).collect()
}

/// One thread's work: a GEMM in a transposed layout, and every case of the op table
/// (`common/ops.rs`, forward and backward on the view and owned paths and through the
/// functional ops), on inputs seeded by `seed` (so every thread works on different data).
fn work(seed: u64) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (m, k, n) = (64 + seed as usize, 150, 97);
    let a: Array2<f32> = uniform(&mut rng, (k, m));
    let b: Array2<f32> = uniform(&mut rng, (2 * k, n));
    let mut c: Array2<f32> = uniform(&mut rng, (m, n));
    sgemm(1.5, a.t(), b.slice(s![..;2, ..]), 0.5, c.view_mut()).unwrap();
    let mut out = vec![bits(&c)];
    for case in op_cases() {
        out.extend(case.outputs(seed));
    }
    out
}

const THREADS: u64 = 6;
const ROUNDS: usize = 3;

#[test]
fn gemm_and_conv_from_several_threads_match_serial_results() {
    let serial: Vec<_> = (0..THREADS).map(work).collect();
    let barrier = Barrier::new(THREADS as usize);
    let concurrent: Vec<Vec<Vec<Vec<u32>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|seed| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    (0..ROUNDS).map(|_| work(seed)).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (seed, rounds) in concurrent.iter().enumerate() {
        for (r, got) in rounds.iter().enumerate() {
            assert!(
                got == &serial[seed],
                "thread {seed} round {r}: results differ from the serial run"
            );
        }
    }
    // The threads really worked on different data.
    assert_ne!(serial[0], serial[1]);
}

/// A shared `&Conv2d` used from several threads (it is `Sync`), and a `Sequential`
/// trained on another thread (it is `Send`), match the same work done on this thread.
#[test]
fn layers_shared_and_moved_across_threads() {
    let mut rng = StdRng::seed_from_u64(9);
    let layer = Conv2d::new(Conv2dConfig::new(3, 4, (3, 3)), &mut rng).unwrap();
    let xs: Vec<Array4<f32>> = (0..4).map(|_| uniform(&mut rng, (5, 3, 8, 8))).collect();
    let expect: Vec<_> = xs
        .iter()
        .map(|x| {
            let y = conv2d(
                x.view(),
                layer.weight().view(),
                layer.bias().map(|b| b.view()),
                &layer.config().options(),
            )
            .unwrap();
            bits(&y)
        })
        .collect();
    let got: Vec<_> = std::thread::scope(|scope| {
        let layer = &layer;
        let handles: Vec<_> = xs
            .iter()
            .map(|x| {
                scope.spawn(move || {
                    let y = conv2d(
                        x.view(),
                        layer.weight().view(),
                        layer.bias().map(|b| b.view()),
                        &layer.config().options(),
                    )
                    .unwrap();
                    bits(&y)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, expect);

    let make = || {
        let mut rng = StdRng::seed_from_u64(10);
        Sequential::new()
            .with(Conv2d::new(Conv2dConfig::new(1, 4, (3, 3)), &mut rng).unwrap())
            .with(Relu::new())
            .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
            .with(Flatten::new(1, -1))
            .with(Linear::new(LinearConfig::new(4, 1), &mut rng).unwrap())
    };
    let train = |mut net: Sequential| {
        let x: ArrayD<f32> = ArrayD::from_shape_fn(ndarray::IxDyn(&[7, 1, 9, 9]), |i| {
            (i[0] * 81 + i[2] * 9 + i[3]) as f32 / 567.0
        });
        let y = net.forward(x.view()).unwrap();
        net.backward(ArrayD::ones(y.raw_dim()).view()).unwrap();
        let grads: Vec<_> = net
            .named_parameters()
            .iter()
            .map(|p| bits(p.grad.iter()))
            .collect();
        (net, grads)
    };
    let (_, here) = train(make());
    let net = make();
    let (net, there) = std::thread::spawn(move || train(net)).join().unwrap();
    assert_eq!(here, there);
    assert_eq!(net.len(), 5);
}

/// The pickle reader from several threads at once (each call has its own machine).
#[test]
fn pickle_reader_from_several_threads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pickle");
    let files = [
        "arrays_protocol2.pkl",
        "arrays_protocol3.pkl",
        "arrays_protocol4.pkl",
        "arrays_protocol4.pkl.gz",
        "arrays_protocol5.pkl",
    ];
    let expect: Vec<Value> = files
        .iter()
        .map(|f| pickle::load(dir.join(f)).unwrap())
        .collect();
    let got: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| {
                let path = dir.join(f);
                scope.spawn(move || pickle::load(path).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, expect);
}
