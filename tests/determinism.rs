//! Results are bit-identical for any rayon thread count (1, 2 and 7 threads).

mod common;

use common::{load_case, reference_dir};
use convinit::nn::{AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Relu, Sequential};
use convinit::ops::{Conv2dOptions, conv2d, conv2d_backward, mse, mse_backward};
use ndarray::{Array, Array1, Array4, ArrayD};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn bits<'a>(a: impl IntoIterator<Item = &'a f32>) -> Vec<u32> {
    a.into_iter().map(|v| v.to_bits()).collect()
}

fn uniform<Sh: ndarray::ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f32, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Conv forward and backward on a batch large enough for several reduction chunks.
fn conv_run() -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(1);
    let x: Array4<f32> = uniform(&mut rng, (37, 4, 13, 11));
    let w: Array4<f32> = uniform(&mut rng, (6, 2, 3, 3));
    let b: Array1<f32> = uniform(&mut rng, 6);
    let opts = Conv2dOptions::new()
        .with_padding((1, 2))
        .with_stride((2, 1))
        .with_groups(2);
    let y = conv2d(x.view(), w.view(), Some(b.view()), &opts).unwrap();
    let dy: Array4<f32> = uniform(&mut rng, y.raw_dim());
    let g = conv2d_backward(x.view(), w.view(), true, dy.view(), &opts).unwrap();
    vec![
        bits(&y),
        bits(&g.dx),
        bits(&g.dw),
        bits(g.db.as_ref().unwrap()),
    ]
}

/// The notebook's seed net on the reference weights and a larger random batch.
fn seed_net_run() -> Vec<Vec<u32>> {
    let case = load_case(&reference_dir().join("seed_net_8.safetensors")).unwrap();
    let conv = |i: usize, cin, cout, k, s, p| {
        let w = case
            .tensor(&format!("{i}.weight"))
            .unwrap()
            .clone()
            .into_dimensionality()
            .unwrap();
        let b = case
            .tensor(&format!("{i}.bias"))
            .unwrap()
            .clone()
            .into_dimensionality()
            .unwrap();
        let cfg = Conv2dConfig::new(cin, cout, (k, k))
            .with_stride((s, s))
            .with_padding((p, p));
        Conv2d::from_parts(cfg, w, Some(b)).unwrap()
    };
    let mut net = Sequential::new()
        .with(conv(0, 1, 8, 5, 2, 2))
        .with(Relu::new())
        .with(conv(2, 8, 16, 3, 2, 1))
        .with(Relu::new())
        .with(conv(4, 16, 32, 3, 2, 1))
        .with(Relu::new())
        .with(conv(6, 32, 1, 3, 2, 1))
        .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
        .with(Flatten::new(0, -1));
    let mut rng = StdRng::seed_from_u64(2);
    let x: ArrayD<f32> = uniform(&mut rng, (53, 1, 28, 28)).into_dyn();
    let target: Array1<f32> = uniform(&mut rng, 53);
    let out = net.forward(x.view()).unwrap();
    let loss = mse(out.view(), target.view()).unwrap();
    let dout = mse_backward(out.view(), target.view()).unwrap();
    let dx = net.backward(dout.view()).unwrap();
    let mut all = vec![bits(&out), vec![loss.to_bits()], bits(&dx)];
    all.extend(net.named_parameters().iter().map(|p| bits(p.grad.iter())));
    assert_eq!(net.layer(0).unwrap().name(), "Conv2d");
    all
}

#[test]
fn conv_is_bit_identical_across_thread_counts() {
    let one = in_pool(1, conv_run);
    for t in [2, 7] {
        assert!(
            in_pool(t, conv_run) == one,
            "conv results differ with {t} threads"
        );
    }
}

#[test]
fn seed_net_is_bit_identical_across_thread_counts() {
    let one = in_pool(1, seed_net_run);
    for t in [2, 7] {
        assert!(
            in_pool(t, seed_net_run) == one,
            "seed net results differ with {t} threads"
        );
    }
}
