//! `BatchNorm2d` and the layer state model: defaults, running statistics in training and
//! eval mode, momentum `None`, buffers apart from parameters, inference, and LSUV leaving
//! batch norm, biases and buffers alone. (PyTorch conformance: `tests/reference.rs`,
//! gradients: the op table in `tests/common/ops.rs`.)

use convinit::nn::{
    BatchNorm2d, BatchNorm2dConfig, BufferView, Conv2d, Conv2dConfig, Layer, Relu, Sequential,
};
use convinit::train::{LsuvConfig, lsuv};
use ndarray::{Array1, Array4, ArrayD, Axis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn data(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array4::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..3.0))
}

/// Per-channel mean and unbiased variance, in f64.
fn channel_stats(x: &Array4<f32>) -> Vec<(f64, f64)> {
    x.axis_iter(Axis(1))
        .map(|c| {
            let m = c.len() as f64;
            let mean = c.iter().map(|&v| f64::from(v)).sum::<f64>() / m;
            let ss = c
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>();
            (mean, ss / (m - 1.0))
        })
        .collect()
}

fn close(a: f32, b: f64, what: &str) {
    assert!(
        (f64::from(a) - b).abs() <= 1e-5 * b.abs().max(1.0),
        "{what}: {a} vs {b}"
    );
}

#[test]
fn defaults_are_pytorchs() {
    let bn = BatchNorm2d::new(BatchNorm2dConfig::new(3)).unwrap();
    assert_eq!(bn.weight().unwrap(), Array1::<f32>::ones(3));
    assert_eq!(bn.bias().unwrap(), Array1::<f32>::zeros(3));
    assert_eq!(bn.running_mean().unwrap(), Array1::<f32>::zeros(3));
    assert_eq!(bn.running_var().unwrap(), Array1::<f32>::ones(3));
    assert_eq!(bn.num_batches_tracked(), Some(0));
    assert!(bn.is_training());
    assert!(!bn.lsuv_rescales());
    assert_eq!(
        bn.describe(),
        "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    );
    let cfg = BatchNorm2dConfig::new(2)
        .with_momentum(None)
        .with_affine(false)
        .with_track_running_stats(false);
    let bare = BatchNorm2d::new(cfg).unwrap();
    assert!(bare.params().is_empty() && bare.buffers().is_empty());
    assert_eq!(bare.num_batches_tracked(), None);
    assert_eq!(
        bare.describe(),
        "BatchNorm2d(2, eps=1e-05, momentum=None, affine=False, track_running_stats=False)"
    );
}

#[test]
fn training_updates_running_statistics_and_eval_uses_them() {
    let mut bn = BatchNorm2d::new(BatchNorm2dConfig::new(3)).unwrap();
    let x = data((4, 3, 5, 6), 1);
    let stats = channel_stats(&x);
    let y = bn.forward(x.view().into_dyn()).unwrap();
    // Normalised with the batch statistics: mean 0, biased variance 1 per channel.
    for (c, yc) in y.axis_iter(Axis(1)).enumerate() {
        let m = yc.len() as f64;
        let mean = yc.iter().map(|&v| f64::from(v)).sum::<f64>() / m;
        let var = yc
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / m;
        assert!(mean.abs() < 1e-6, "channel {c}: mean {mean}");
        assert!((var - 1.0).abs() < 1e-3, "channel {c}: var {var}");
    }
    for (c, &(mean, var)) in stats.iter().enumerate() {
        close(bn.running_mean().unwrap()[c], 0.1 * mean, "running_mean");
        close(
            bn.running_var().unwrap()[c],
            0.9 + 0.1 * var,
            "running_var (unbiased)",
        );
    }
    assert_eq!(bn.num_batches_tracked(), Some(1));

    // Eval mode: the running statistics, not updated, and the counter stays.
    bn.set_training(false);
    let (rm, rv) = (
        bn.running_mean().unwrap().clone(),
        bn.running_var().unwrap().clone(),
    );
    let z = bn.forward(x.view().into_dyn()).unwrap();
    for ((n, c, h, w), &v) in z
        .clone()
        .into_dimensionality::<ndarray::Ix4>()
        .unwrap()
        .indexed_iter()
    {
        let want =
            (f64::from(x[[n, c, h, w]]) - f64::from(rm[c])) / (f64::from(rv[c]) + 1e-5).sqrt();
        close(v, want, "eval output");
    }
    assert_eq!(bn.running_mean().unwrap(), rm);
    assert_eq!(bn.running_var().unwrap(), rv);
    assert_eq!(bn.num_batches_tracked(), Some(1));
    // Eval mode takes one value per channel.
    bn.forward(x.slice(ndarray::s![..1, .., ..1, ..1]).into_dyn())
        .unwrap();
}

#[test]
fn momentum_none_is_the_cumulative_average() {
    let cfg = BatchNorm2dConfig::new(2).with_momentum(None);
    let mut bn = BatchNorm2d::new(cfg).unwrap();
    let batches: Vec<Array4<f32>> = (0..3).map(|s| data((3, 2, 4, 4), 10 + s)).collect();
    for x in &batches {
        bn.forward(x.view().into_dyn()).unwrap();
    }
    assert_eq!(bn.num_batches_tracked(), Some(3));
    for c in 0..2 {
        let (m, v): (Vec<f64>, Vec<f64>) = batches.iter().map(|x| channel_stats(x)[c]).unzip();
        close(
            bn.running_mean().unwrap()[c],
            m.iter().sum::<f64>() / 3.0,
            "mean",
        );
        close(
            bn.running_var().unwrap()[c],
            v.iter().sum::<f64>() / 3.0,
            "var",
        );
    }
}

#[test]
fn without_running_statistics_eval_mode_uses_the_batch() {
    let cfg = BatchNorm2dConfig::new(2).with_track_running_stats(false);
    let mut a = BatchNorm2d::new(cfg).unwrap();
    let x = data((3, 2, 4, 4), 5);
    let train = a.forward(x.view().into_dyn()).unwrap();
    a.set_training(false);
    let eval = a.forward(x.view().into_dyn()).unwrap();
    assert_eq!(train, eval);
}

/// A conv, batch norm, ReLU net: buffers are named as PyTorch's `state_dict`, are not
/// parameters, and eval / infer behave.
fn net(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new()
        .with(Conv2d::new(Conv2dConfig::new(1, 4, (3, 3)), &mut rng).unwrap())
        .with(BatchNorm2d::new(BatchNorm2dConfig::new(4)).unwrap())
        .with(Relu::new())
}

#[test]
fn buffers_are_named_apart_from_parameters() {
    let mut n = net(0);
    let params: Vec<String> = n
        .named_parameters_mut()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(params, ["0.weight", "0.bias", "1.weight", "1.bias"]);
    let buffers: Vec<String> = n.named_buffers().into_iter().map(|b| b.name).collect();
    assert_eq!(
        buffers,
        ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    );
    let kinds: Vec<(bool, Vec<usize>)> = n
        .named_buffers()
        .iter()
        .map(|b| {
            (
                matches!(b.value, BufferView::I64(_)),
                b.value.shape().to_vec(),
            )
        })
        .collect();
    assert_eq!(kinds, [(false, vec![4]), (false, vec![4]), (true, vec![])]);
    assert_eq!(n.num_parameters(), 4 * 9 + 4 + 4 + 4);
    let summary = n.to_string();
    assert!(
        summary.contains("(1): BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)  # 8 params"),
        "{summary}"
    );
    assert!(
        summary.ends_with("# 48 params in total, training mode, 9 buffer values"),
        "{summary}"
    );
}

#[test]
fn eval_and_infer() {
    let x = data((5, 1, 8, 8), 3).into_dyn();
    let mut a = net(1);
    a.forward(x.view()).unwrap();
    let mut b = net(1);
    // infer in training mode updates the statistics as forward does (torch.no_grad()
    // does not change the mode) and gives the same output.
    let ya = a.forward(x.view()).unwrap();
    b.infer(x.view()).unwrap();
    let yb = b.infer(x.view()).unwrap();
    assert_eq!(ya, yb);
    let stats = |n: &Sequential| -> Vec<Vec<u32>> {
        n.named_buffers()
            .iter()
            .map(|b| match &b.value {
                BufferView::F32(v) => v.iter().map(|f| f.to_bits()).collect(),
                BufferView::I64(v) => v.iter().map(|&i| i as u32).collect(),
            })
            .collect()
    };
    assert_eq!(stats(&a), stats(&b));
    // Eval mode: output from the running statistics, same through forward and infer,
    // the statistics unchanged; infer keeps nothing for backward.
    a.eval();
    b.eval();
    assert!(!a.get::<BatchNorm2d>(1).unwrap().is_training());
    let before = stats(&a);
    let ea = a.forward(x.view()).unwrap();
    let eb = b.infer(x.view()).unwrap();
    assert_eq!(ea, eb);
    assert_ne!(ea, ya);
    assert_eq!(stats(&a), before);
    assert!(b.backward(ArrayD::ones(eb.raw_dim()).view()).is_err());
    // Backward in eval mode works (the running statistics are constants).
    a.backward(ArrayD::ones(ea.raw_dim()).view()).unwrap();
    a.train();
    assert!(a.get::<BatchNorm2d>(1).unwrap().is_training());
}

#[test]
fn lsuv_rescales_convolutions_only_and_keeps_buffers() {
    let x = data((16, 1, 10, 10), 7).into_dyn();
    // A second conv after the batch norm: LSUV's passes run the batch norm (in
    // training mode) to reach it.
    let mut n = net(2).with(
        Conv2d::new(
            Conv2dConfig::new(4, 2, (3, 3)),
            &mut StdRng::seed_from_u64(5),
        )
        .unwrap(),
    );
    // Non-trivial batch norm parameters, to see that LSUV leaves them alone.
    {
        let bn: &mut BatchNorm2d = n.get_mut(1).unwrap();
        bn.weight_mut().unwrap().fill(1.5);
        bn.bias_mut().unwrap().fill(0.25);
    }
    let buffers = |n: &Sequential| -> Vec<String> {
        n.named_buffers()
            .iter()
            .map(|b| format!("{} {:?}", b.name, b.value))
            .collect()
    };
    let before = buffers(&n);
    let conv_bias = n.get::<Conv2d>(0).unwrap().bias().unwrap().clone();
    let config = LsuvConfig {
        center: false,
        ..LsuvConfig::default()
    };
    let report = lsuv(&mut n, x.view(), &config).unwrap();
    assert_eq!(report.iter().map(|l| l.layer).collect::<Vec<_>>(), [0, 3]);
    assert!(
        report.iter().all(|l| l.converged && l.iterations >= 1),
        "{report:?}"
    );
    let bn: &BatchNorm2d = n.get(1).unwrap();
    assert!(bn.weight().unwrap().iter().all(|&w| w == 1.5));
    assert!(bn.bias().unwrap().iter().all(|&b| b == 0.25));
    assert_eq!(
        buffers(&n),
        before,
        "LSUV's passes left the running statistics"
    );
    // Without centering, the conv's bias is left alone too.
    assert_eq!(n.get::<Conv2d>(0).unwrap().bias().unwrap(), conv_bias);
}

/// The op's statistics against f64 sums, on data far from zero (mean 1000, spread 0.5,
/// and with the first image offset:
/// a one-pass `E[x^2] - E[x]^2` in f32 would lose every digit of the variance) and on
/// plane sizes that leave partial lanes and blocks; a transposed view gives the same
/// bits as its contiguous copy.
#[test]
fn statistics_hold_far_from_zero_and_in_any_layout() {
    use convinit::ops::{BatchNormOptions, batch_norm2d};
    // The last two cases put the first image far from the rest (the op's shift is the
    // first plane's mean: this takes its second pass).
    for (shape, seed, skew) in [
        ((3, 2, 7, 9), 3u64, 0.0),
        ((2, 3, 13, 11), 4, 0.0),
        ((5, 1, 1, 3), 5, 0.0),
        ((4, 2, 5, 5), 6, 40.0),
        ((3, 1, 1, 1), 7, -3.0),
    ] {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = Array4::from_shape_fn(shape, |(n, _, _, _)| {
            1000.0 + rng.random_range(-0.5f32..0.5) + if n == 0 { skew } else { 0.0 }
        });
        let want = channel_stats(&x);
        let (mut rm, mut rv) = (Array1::zeros(shape.1), Array1::ones(shape.1));
        let opts = BatchNormOptions {
            momentum: 1.0,
            ..BatchNormOptions::default()
        };
        let (y, stats) = batch_norm2d(
            x.view(),
            Some(rm.view_mut()),
            Some(rv.view_mut()),
            None,
            None,
            &opts,
        )
        .unwrap();
        for (c, &(mean, var)) in want.iter().enumerate() {
            close(stats.mean[c], mean, "mean");
            assert!(
                (f64::from(rv[c]) - var).abs() <= 1e-4 * var,
                "unbiased variance {} vs {var}",
                rv[c]
            );
            close(rm[c], mean, "running mean");
        }
        // The same input as a strided view (W and H swapped back by the view).
        let mut t = Array4::zeros((shape.0, shape.1, shape.3, shape.2));
        t.assign(&x.view().permuted_axes([0, 1, 3, 2]));
        let tv = t.view().permuted_axes([0, 1, 3, 2]);
        assert!(shape.2 == 1 || !tv.is_standard_layout());
        let (y2, stats2) = batch_norm2d(tv, None, None, None, None, &opts).unwrap();
        assert_eq!(stats2.mean, stats.mean);
        assert_eq!(stats2.invstd, stats.invstd);
        assert_eq!(y2, y);
    }
}
