//! Bad input returns an `Error` naming the op and the shapes, and never panics.

use std::panic::{AssertUnwindSafe, catch_unwind};

use convinit::Error;
use convinit::nn::{
    AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm2d, BatchNorm2dConfig, Conv2d,
    Conv2dConfig, Dropout, Dropout2d, Flatten, GeneralRelu, Layer, LeakyRelu, Linear, LinearConfig,
    MaxPool2d, Relu, Sequential,
};
use convinit::ops::{
    AvgPool2dOptions, BatchNormOptions, Conv2dOptions, MaxPool2dOptions, adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward, adaptive_max_pool2d, adaptive_max_pool2d_backward, avg_pool2d,
    avg_pool2d_backward, batch_norm2d, batch_norm2d_backward, conv2d, conv2d_backward, flatten,
    leaky_relu_backward, linear, linear_backward, max_pool2d, max_pool2d_backward, mse,
    mse_backward, relu_backward,
};
use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use rand::SeedableRng;
use rand::rngs::StdRng;

type Call = Box<dyn Fn() -> Result<(), Error>>;

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Shape { .. } => "shape",
        Error::Config { .. } => "config",
        Error::State { .. } => "state",
        Error::Alloc { .. } => "alloc",
        _ => "other",
    }
}

fn x4(shape: (usize, usize, usize, usize)) -> Array4<f32> {
    Array4::ones(shape)
}

fn conv_layer(cfg: Conv2dConfig) -> Conv2d {
    Conv2d::new(cfg, &mut StdRng::seed_from_u64(0)).unwrap()
}

fn opts() -> Conv2dOptions {
    Conv2dOptions::new()
}

/// One element broadcast to `shape`: a layer input with a huge logical size (terabytes,
/// far beyond what Linux's overcommit grants) and no memory behind it.
fn broadcast(shape: &[usize]) -> ndarray::ArrayViewD<'static, f32> {
    use ndarray::ShapeBuilder;
    static ONE: [f32; 1] = [1.0];
    let zeros = IxDyn(&vec![0; shape.len()]);
    ndarray::ArrayViewD::from_shape(IxDyn(shape).strides(zeros), &ONE).unwrap()
}

const TB_SIDE: usize = 1 << 20;

/// Layers asked for buffers of terabytes: [`Error::Alloc`], never an abort.
fn alloc_table() -> Vec<(&'static str, Call, &'static str, Vec<&'static str>)> {
    vec![
        (
            "Conv2d.forward: a broadcast input of terabytes",
            Box::new(|| {
                let mut c = conv_layer(Conv2dConfig::new(1, 1, (1024, 1024)));
                c.forward(broadcast(&[TB_SIDE, 1, 1024, 1024])).map(drop)
            }),
            "alloc",
            vec!["conv2d", "cannot allocate", "[1048576, 1, 1024, 1024]"],
        ),
        (
            "Linear.forward: a broadcast input of terabytes",
            Box::new(|| {
                let mut l = Linear::new(LinearConfig::new(16, 4), &mut StdRng::seed_from_u64(0))?;
                l.forward(broadcast(&[1 << 40, 16])).map(drop)
            }),
            "alloc",
            vec!["linear", "cannot allocate", "[1099511627776, 4]"],
        ),
        (
            "Flatten.forward: a broadcast input of terabytes",
            Box::new(|| {
                Flatten::new(1, -1)
                    .forward(broadcast(&[TB_SIDE, TB_SIDE, 4]))
                    .map(drop)
            }),
            "alloc",
            vec!["flatten", "cannot allocate", "[1048576, 1048576, 4]"],
        ),
        (
            "AdaptiveAvgPool2d.forward: an output of terabytes",
            Box::new(|| {
                AdaptiveAvgPool2d::new((TB_SIDE, TB_SIDE))?
                    .forward(ArrayD::ones(IxDyn(&[1, 1, 4, 4])).view())
                    .map(drop)
            }),
            "alloc",
            vec![
                "adaptive_avg_pool2d",
                "cannot allocate",
                "[1, 1, 1048576, 1048576]",
            ],
        ),
        (
            "MaxPool2d.forward: a broadcast input of terabytes",
            Box::new(|| {
                MaxPool2d::new(MaxPool2dOptions::new((2, 2)))?
                    .forward(broadcast(&[TB_SIDE, 1, 1024, 1024]))
                    .map(drop)
            }),
            "alloc",
            vec!["max_pool2d", "cannot allocate", "[1048576, 1, 1024, 1024]"],
        ),
        (
            "AvgPool2d.forward: a broadcast input of terabytes",
            Box::new(|| {
                AvgPool2d::new(AvgPool2dOptions::new((2, 2)))?
                    .forward(broadcast(&[TB_SIDE, 1, 1024, 1024]))
                    .map(drop)
            }),
            "alloc",
            vec!["avg_pool2d", "cannot allocate", "[1048576, 1, 1024, 1024]"],
        ),
        (
            "AdaptiveMaxPool2d.forward: an output of terabytes",
            Box::new(|| {
                AdaptiveMaxPool2d::new((TB_SIDE, TB_SIDE))?
                    .forward(ArrayD::ones(IxDyn(&[1, 1, 4, 4])).view())
                    .map(drop)
            }),
            "alloc",
            vec![
                "adaptive_max_pool2d",
                "cannot allocate",
                "[1, 1, 1048576, 1048576]",
            ],
        ),
        (
            "Sequential.forward: a layer's allocation failure names the layer",
            Box::new(|| {
                let mut net = Sequential::new()
                    .with(Relu::new())
                    .with(AdaptiveAvgPool2d::new((TB_SIDE, TB_SIDE))?);
                net.forward(ArrayD::ones(IxDyn(&[1, 1, 4, 4])).view())
                    .map(drop)
            }),
            "alloc",
            vec!["adaptive_avg_pool2d", "cannot allocate", "layer 1"],
        ),
        (
            "ReLU.forward: a broadcast input of terabytes",
            Box::new(|| {
                Relu::new()
                    .forward(broadcast(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            }),
            "alloc",
            vec!["ReLU", "cannot allocate", "[1048576, 1048576]"],
        ),
        (
            "LeakyReLU.forward: a broadcast input of terabytes",
            Box::new(|| {
                LeakyRelu::new(0.1)
                    .forward(broadcast(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            }),
            "alloc",
            vec!["LeakyReLU", "cannot allocate", "[1048576, 1048576]"],
        ),
        (
            "GeneralRelu.forward: a broadcast input of terabytes",
            Box::new(|| {
                GeneralRelu::new(Some(0.1), Some(0.4), Some(6.0))?
                    .forward(broadcast(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            }),
            "alloc",
            vec!["cannot allocate", "[1048576, 1048576]"],
        ),
        (
            "Sequential.forward: no layers, a broadcast input of terabytes",
            Box::new(|| {
                Sequential::new()
                    .forward(broadcast(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            }),
            "alloc",
            vec!["Sequential", "cannot allocate", "[1048576, 1048576]"],
        ),
        (
            "Sequential.backward: a broadcast grad_out of terabytes",
            Box::new(|| {
                Sequential::new()
                    .backward(broadcast(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            }),
            "alloc",
            vec![
                "Sequential",
                "cannot allocate",
                "grad_out [1048576, 1048576]",
            ],
        ),
    ]
}

/// (what, the call, the expected error kind, substrings the message must contain)
fn table() -> Vec<(&'static str, Call, &'static str, Vec<&'static str>)> {
    let mut t = base_table();
    t.extend(alloc_table());
    t.extend(state_table());
    t
}

fn bn(c: usize) -> BatchNorm2d {
    BatchNorm2d::new(BatchNorm2dConfig::new(c)).unwrap()
}

/// Batch norm and dropout.
fn state_table() -> Vec<(&'static str, Call, &'static str, Vec<&'static str>)> {
    vec![
        (
            "BatchNorm2d: no channels",
            Box::new(|| BatchNorm2d::new(BatchNorm2dConfig::new(0)).map(drop)),
            "config",
            vec!["BatchNorm2d", "num_features", "0"],
        ),
        (
            "BatchNorm2d: negative eps",
            Box::new(|| BatchNorm2d::new(BatchNorm2dConfig::new(2).with_eps(-1.0)).map(drop)),
            "config",
            vec!["BatchNorm2d", "eps", "-1"],
        ),
        (
            "BatchNorm2d: momentum above 1",
            Box::new(|| {
                BatchNorm2d::new(BatchNorm2dConfig::new(2).with_momentum(Some(1.5))).map(drop)
            }),
            "config",
            vec!["BatchNorm2d", "momentum", "1.5"],
        ),
        (
            "BatchNorm2d: one value per channel in training mode",
            Box::new(|| bn(3).forward(x4((1, 3, 1, 1)).into_dyn().view()).map(drop)),
            "config",
            vec![
                "BatchNorm2d",
                "Expected more than 1 value per channel when training",
                "[1, 3, 1, 1]",
            ],
        ),
        (
            "BatchNorm2d: one value per channel without running statistics, eval mode",
            Box::new(|| {
                let cfg = BatchNorm2dConfig::new(3).with_track_running_stats(false);
                let mut b = BatchNorm2d::new(cfg)?;
                b.set_training(false);
                b.forward(x4((1, 3, 1, 1)).into_dyn().view()).map(drop)
            }),
            "config",
            vec![
                "BatchNorm2d",
                "more than 1 value per channel",
                "[1, 3, 1, 1]",
            ],
        ),
        (
            "BatchNorm2d: channel mismatch",
            Box::new(|| bn(3).forward(x4((2, 4, 3, 3)).into_dyn().view()).map(drop)),
            "shape",
            vec!["BatchNorm2d", "[2, 4, 3, 3]", "num_features = 3"],
        ),
        (
            "BatchNorm2d: rank 3",
            Box::new(|| {
                bn(3)
                    .forward(ArrayD::ones(IxDyn(&[2, 3, 4])).view())
                    .map(drop)
            }),
            "shape",
            vec!["BatchNorm2d", "(N, C, H, W)", "[2, 3, 4]"],
        ),
        (
            "BatchNorm2d: backward before forward",
            Box::new(|| bn(3).backward(x4((2, 3, 2, 2)).into_dyn().view()).map(drop)),
            "state",
            vec!["BatchNorm2d", "before forward"],
        ),
        (
            "BatchNorm2d: grad_out of the wrong shape",
            Box::new(|| {
                let mut b = bn(3);
                b.forward(x4((2, 3, 2, 2)).into_dyn().view())?;
                b.backward(x4((2, 3, 2, 3)).into_dyn().view()).map(drop)
            }),
            "shape",
            vec!["BatchNorm2d", "[2, 3, 2, 3]", "[2, 3, 2, 2]"],
        ),
        (
            "BatchNorm2d: a weight replaced by one of another length",
            Box::new(|| {
                let mut b = bn(3);
                *b.weight_mut().unwrap() = Array1::ones(4);
                b.forward(x4((2, 3, 2, 2)).into_dyn().view()).map(drop)
            }),
            "shape",
            vec!["BatchNorm2d", "weight has length 4", "num_features is 3"],
        ),
        (
            "BatchNorm2d.forward: a broadcast input of terabytes",
            Box::new(|| {
                bn(2)
                    .forward(broadcast(&[TB_SIDE, 2, 1024, 1024]))
                    .map(drop)
            }),
            "alloc",
            vec![
                "batch_norm2d",
                "cannot allocate",
                "[1048576, 2, 1024, 1024]",
            ],
        ),
        (
            "Dropout: p above 1",
            Box::new(|| Dropout::new(1.5, 0).map(drop)),
            "config",
            vec!["Dropout", "between 0 and 1", "1.5"],
        ),
        (
            "Dropout2d: negative p",
            Box::new(|| Dropout2d::new(-0.5, 0).map(drop)),
            "config",
            vec!["Dropout2d", "-0.5"],
        ),
        (
            "Dropout.forward: a broadcast input of terabytes",
            Box::new(|| {
                Dropout::new(0.5, 0)?
                    .forward(broadcast(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            }),
            "alloc",
            vec!["dropout", "cannot allocate", "[1048576, 1048576]"],
        ),
        (
            "batch_norm2d: eval mode without running statistics",
            Box::new(|| {
                let o = BatchNormOptions {
                    training: false,
                    ..BatchNormOptions::default()
                };
                batch_norm2d(x4((2, 3, 2, 2)).view(), None, None, None, None, &o).map(drop)
            }),
            "config",
            vec!["batch_norm2d", "running_mean"],
        ),
        (
            "batch_norm2d: a bias of the wrong length",
            Box::new(|| {
                let b = Array1::<f32>::zeros(2);
                let o = BatchNormOptions::default();
                batch_norm2d(
                    x4((2, 3, 2, 2)).view(),
                    None,
                    None,
                    None,
                    Some(b.view()),
                    &o,
                )
                .map(drop)
            }),
            "shape",
            vec!["batch_norm2d", "bias has length 2", "3 channels"],
        ),
        (
            "batch_norm2d: NaN eps",
            Box::new(|| {
                let o = BatchNormOptions {
                    eps: f64::NAN,
                    ..BatchNormOptions::default()
                };
                batch_norm2d(x4((2, 3, 2, 2)).view(), None, None, None, None, &o).map(drop)
            }),
            "config",
            vec!["batch_norm2d", "eps", "NaN"],
        ),
        (
            "batch_norm2d_backward: dy of another shape",
            Box::new(|| {
                let o = BatchNormOptions::default();
                let (_, stats) = batch_norm2d(x4((2, 3, 2, 2)).view(), None, None, None, None, &o)?;
                batch_norm2d_backward(
                    x4((2, 3, 2, 2)).view(),
                    None,
                    true,
                    &stats,
                    x4((2, 3, 1, 2)).view(),
                )
                .map(drop)
            }),
            "shape",
            vec!["batch_norm2d", "[2, 3, 1, 2]", "[2, 3, 2, 2]"],
        ),
    ]
}

fn base_table() -> Vec<(&'static str, Call, &'static str, Vec<&'static str>)> {
    vec![
        (
            "conv2d: channel mismatch",
            Box::new(|| {
                conv2d(
                    x4((1, 3, 5, 5)).view(),
                    x4((2, 2, 3, 3)).view(),
                    None,
                    &opts(),
                )
                .map(drop)
            }),
            "shape",
            vec!["conv2d", "[1, 3, 5, 5]", "[2, 2, 3, 3]"],
        ),
        (
            "conv2d: kernel larger than padded input",
            Box::new(|| {
                conv2d(
                    x4((1, 1, 2, 2)).view(),
                    x4((1, 1, 5, 5)).view(),
                    None,
                    &opts().with_padding((1, 1)),
                )
                .map(drop)
            }),
            "shape",
            vec!["conv2d", "[1, 1, 2, 2]", "[1, 1, 5, 5]", "does not fit"],
        ),
        (
            "conv2d: dilated kernel larger than input",
            Box::new(|| {
                conv2d(
                    x4((1, 1, 6, 6)).view(),
                    x4((1, 1, 3, 3)).view(),
                    None,
                    &opts().with_dilation((3, 1)),
                )
                .map(drop)
            }),
            "shape",
            vec!["conv2d", "[1, 1, 6, 6]", "(3, 1)"],
        ),
        (
            "conv2d: zero stride",
            Box::new(|| {
                conv2d(
                    x4((1, 1, 5, 5)).view(),
                    x4((1, 1, 3, 3)).view(),
                    None,
                    &opts().with_stride((0, 1)),
                )
                .map(drop)
            }),
            "config",
            vec!["conv2d", "stride", "(0, 1)"],
        ),
        (
            "conv2d: zero dilation",
            Box::new(|| {
                conv2d(
                    x4((1, 1, 5, 5)).view(),
                    x4((1, 1, 3, 3)).view(),
                    None,
                    &opts().with_dilation((1, 0)),
                )
                .map(drop)
            }),
            "config",
            vec!["conv2d", "dilation", "(1, 0)"],
        ),
        (
            "conv2d: huge dilation overflows",
            Box::new(|| {
                conv2d(
                    x4((1, 1, 5, 5)).view(),
                    x4((1, 1, 3, 3)).view(),
                    None,
                    &opts().with_dilation((usize::MAX, 1)),
                )
                .map(drop)
            }),
            "shape",
            vec!["conv2d", "[1, 1, 5, 5]"],
        ),
        (
            "conv2d: groups do not divide channels",
            Box::new(|| {
                conv2d(
                    x4((1, 3, 5, 5)).view(),
                    x4((2, 1, 3, 3)).view(),
                    None,
                    &opts().with_groups(2),
                )
                .map(drop)
            }),
            "config",
            vec!["conv2d", "groups 2", "[1, 3, 5, 5]", "[2, 1, 3, 3]"],
        ),
        (
            "conv2d: zero groups",
            Box::new(|| {
                conv2d(
                    x4((1, 3, 5, 5)).view(),
                    x4((2, 3, 3, 3)).view(),
                    None,
                    &opts().with_groups(0),
                )
                .map(drop)
            }),
            "config",
            vec!["conv2d", "groups"],
        ),
        (
            "conv2d: zero-size kernel",
            Box::new(|| {
                conv2d(
                    x4((1, 1, 5, 5)).view(),
                    x4((1, 1, 0, 3)).view(),
                    None,
                    &opts(),
                )
                .map(drop)
            }),
            "config",
            vec!["conv2d", "kernel", "[1, 1, 0, 3]"],
        ),
        (
            "conv2d: bias of the wrong length",
            Box::new(|| {
                let b = Array1::<f32>::zeros(3);
                conv2d(
                    x4((1, 1, 5, 5)).view(),
                    x4((2, 1, 3, 3)).view(),
                    Some(b.view()),
                    &opts(),
                )
                .map(drop)
            }),
            "shape",
            vec!["conv2d", "bias", "length 3", "[2, 1, 3, 3]"],
        ),
        (
            "conv2d_backward: grad_out of the wrong shape",
            Box::new(|| {
                conv2d_backward(
                    x4((1, 1, 5, 5)).view(),
                    x4((2, 1, 3, 3)).view(),
                    true,
                    x4((1, 2, 4, 3)).view(),
                    &opts(),
                )
                .map(drop)
            }),
            "shape",
            vec!["conv2d", "[1, 2, 4, 3]", "(1, 2, 3, 3)"],
        ),
        (
            "Conv2d: wrong rank",
            Box::new(|| {
                let mut c = conv_layer(Conv2dConfig::new(1, 2, (3, 3)));
                c.forward(ArrayD::zeros(IxDyn(&[1, 5, 5])).view()).map(drop)
            }),
            "shape",
            vec!["Conv2d", "(N, C, H, W)", "[1, 5, 5]"],
        ),
        (
            "Conv2d: channel mismatch",
            Box::new(|| {
                let mut c = conv_layer(Conv2dConfig::new(1, 2, (3, 3)));
                c.forward(x4((2, 3, 5, 5)).into_dyn().view()).map(drop)
            }),
            "shape",
            vec!["[2, 3, 5, 5]", "[2, 1, 3, 3]"],
        ),
        (
            "Conv2d: backward before forward",
            Box::new(|| {
                let mut c = conv_layer(Conv2dConfig::new(1, 2, (3, 3)));
                c.backward(x4((1, 2, 3, 3)).into_dyn().view()).map(drop)
            }),
            "state",
            vec!["Conv2d", "before forward"],
        ),
        (
            "Conv2d: grad_out of the wrong shape",
            Box::new(|| {
                let mut c = conv_layer(Conv2dConfig::new(1, 2, (3, 3)));
                c.forward(x4((1, 1, 5, 5)).into_dyn().view())?;
                c.backward(x4((1, 2, 2, 3)).into_dyn().view()).map(drop)
            }),
            "shape",
            vec!["Conv2d", "[1, 2, 2, 3]", "[1, 2, 3, 3]"],
        ),
        (
            "Conv2d: groups not dividing the channels in the config",
            Box::new(|| {
                Conv2d::new(
                    Conv2dConfig::new(3, 4, (3, 3)).with_groups(2),
                    &mut StdRng::seed_from_u64(0),
                )
                .map(drop)
            }),
            "config",
            vec!["Conv2d", "groups 2", "in_channels 3"],
        ),
        (
            "Conv2d: zero stride in the config",
            Box::new(|| {
                Conv2d::new(
                    Conv2dConfig::new(1, 1, (3, 3)).with_stride((1, 0)),
                    &mut StdRng::seed_from_u64(0),
                )
                .map(drop)
            }),
            "config",
            vec!["Conv2d", "stride", "(1, 0)"],
        ),
        (
            "Conv2d::from_parts: weight of the wrong shape",
            Box::new(|| {
                Conv2d::from_parts(
                    Conv2dConfig::new(2, 3, (3, 3)),
                    x4((3, 1, 3, 3)),
                    Some(Array1::zeros(3)),
                )
                .map(drop)
            }),
            "shape",
            vec!["Conv2d", "[3, 1, 3, 3]", "(3, 2, 3, 3)"],
        ),
        (
            "Conv2d::from_parts: bias of the wrong length",
            Box::new(|| {
                Conv2d::from_parts(
                    Conv2dConfig::new(1, 3, (3, 3)),
                    x4((3, 1, 3, 3)),
                    Some(Array1::zeros(2)),
                )
                .map(drop)
            }),
            "shape",
            vec!["Conv2d", "length 2", "[3, 1, 3, 3]"],
        ),
        (
            "Conv2d::from_parts: bias given to a bias-free config",
            Box::new(|| {
                Conv2d::from_parts(
                    Conv2dConfig::new(1, 3, (3, 3)).with_bias(false),
                    x4((3, 1, 3, 3)),
                    Some(Array1::zeros(3)),
                )
                .map(drop)
            }),
            "config",
            vec!["Conv2d", "bias"],
        ),
        (
            "linear: feature mismatch",
            Box::new(|| {
                linear(
                    Array2::zeros((2, 4)).view(),
                    Array2::zeros((3, 5)).view(),
                    None,
                )
                .map(drop)
            }),
            "shape",
            vec!["linear", "[2, 4]", "[3, 5]"],
        ),
        (
            "linear_backward: grad_out of the wrong shape",
            Box::new(|| {
                linear_backward(
                    Array2::zeros((2, 4)).view(),
                    Array2::zeros((3, 4)).view(),
                    true,
                    Array2::zeros((2, 2)).view(),
                )
                .map(drop)
            }),
            "shape",
            vec!["linear", "[2, 2]", "(2, 3)"],
        ),
        (
            "Linear: wrong rank",
            Box::new(|| {
                let mut l = Linear::new(LinearConfig::new(4, 3), &mut StdRng::seed_from_u64(0))?;
                l.forward(x4((1, 1, 2, 2)).into_dyn().view()).map(drop)
            }),
            "shape",
            vec!["Linear", "[1, 1, 2, 2]"],
        ),
        (
            "Linear: bias of the wrong length",
            Box::new(|| {
                Linear::from_parts(
                    LinearConfig::new(4, 3),
                    Array2::zeros((3, 4)),
                    Some(Array1::zeros(4)),
                )
                .map(drop)
            }),
            "shape",
            vec!["Linear", "length 4", "[3, 4]"],
        ),
        (
            "Linear: backward before forward",
            Box::new(|| {
                let mut l = Linear::new(LinearConfig::new(4, 3), &mut StdRng::seed_from_u64(0))?;
                l.backward(ArrayD::zeros(IxDyn(&[2, 3])).view()).map(drop)
            }),
            "state",
            vec!["Linear", "before forward"],
        ),
        (
            "ReLU: backward before forward",
            Box::new(|| {
                Relu::new()
                    .backward(ArrayD::zeros(IxDyn(&[2, 3])).view())
                    .map(drop)
            }),
            "state",
            vec!["ReLU", "before forward"],
        ),
        (
            "ReLU: grad_out of the wrong shape",
            Box::new(|| {
                let mut r = Relu::new();
                r.forward(ArrayD::zeros(IxDyn(&[2, 3])).view())?;
                r.backward(ArrayD::zeros(IxDyn(&[3, 2])).view()).map(drop)
            }),
            "shape",
            vec!["ReLU", "[3, 2]", "[2, 3]"],
        ),
        (
            "relu_backward: grad_out of the wrong shape",
            Box::new(|| {
                relu_backward(
                    ArrayD::zeros(IxDyn(&[2, 3])).view(),
                    ArrayD::zeros(IxDyn(&[6])).view(),
                )
                .map(drop)
            }),
            "shape",
            vec!["relu", "[6]", "[2, 3]"],
        ),
        (
            "leaky_relu_backward: grad_out of the wrong shape",
            Box::new(|| {
                leaky_relu_backward(
                    ArrayD::zeros(IxDyn(&[2, 3])).view(),
                    ArrayD::zeros(IxDyn(&[2, 4])).view(),
                    0.1,
                )
                .map(drop)
            }),
            "shape",
            vec!["leaky_relu", "[2, 4]", "[2, 3]"],
        ),
        (
            "LeakyReLU: backward before forward",
            Box::new(|| {
                LeakyRelu::new(0.1)
                    .backward(ArrayD::zeros(IxDyn(&[2])).view())
                    .map(drop)
            }),
            "state",
            vec!["LeakyReLU", "before forward"],
        ),
        (
            "adaptive_avg_pool2d: zero output size",
            Box::new(|| adaptive_avg_pool2d(x4((1, 1, 4, 4)).view(), (0, 2)).map(drop)),
            "config",
            vec!["adaptive_avg_pool2d", "(0, 2)", "[1, 1, 4, 4]"],
        ),
        (
            "AdaptiveAvgPool2d: zero output size",
            Box::new(|| AdaptiveAvgPool2d::new((2, 0)).map(drop)),
            "config",
            vec!["AdaptiveAvgPool2d", "(2, 0)"],
        ),
        (
            "adaptive_avg_pool2d: empty input",
            Box::new(|| adaptive_avg_pool2d(x4((1, 1, 0, 4)).view(), (1, 1)).map(drop)),
            "shape",
            vec!["adaptive_avg_pool2d", "[1, 1, 0, 4]"],
        ),
        (
            "adaptive_avg_pool2d_backward: grad_out channels differ",
            Box::new(|| {
                adaptive_avg_pool2d_backward((1, 2, 4, 4), x4((1, 3, 1, 1)).view()).map(drop)
            }),
            "shape",
            vec!["adaptive_avg_pool2d", "[1, 3, 1, 1]", "[1, 2, 4, 4]"],
        ),
        (
            "AdaptiveAvgPool2d: wrong rank",
            Box::new(|| {
                AdaptiveAvgPool2d::new((1, 1))?
                    .forward(ArrayD::zeros(IxDyn(&[4, 4])).view())
                    .map(drop)
            }),
            "shape",
            vec!["AdaptiveAvgPool2d", "[4, 4]"],
        ),
        (
            "AdaptiveAvgPool2d: backward before forward",
            Box::new(|| {
                AdaptiveAvgPool2d::new((1, 1))?
                    .backward(x4((1, 1, 1, 1)).into_dyn().view())
                    .map(drop)
            }),
            "state",
            vec!["AdaptiveAvgPool2d", "before forward"],
        ),
        (
            "max_pool2d: padding above half the kernel",
            Box::new(|| {
                let o = MaxPool2dOptions::new((3, 3)).with_padding((2, 0));
                max_pool2d(x4((1, 1, 8, 8)).view(), &o).map(drop)
            }),
            "config",
            vec!["max_pool2d", "padding (2, 0)", "(3, 3)"],
        ),
        (
            "MaxPool2d: zero stride",
            Box::new(|| {
                MaxPool2d::new(MaxPool2dOptions::new((2, 2)).with_stride((0, 1))).map(drop)
            }),
            "config",
            vec!["MaxPool2d", "stride", "(0, 1)"],
        ),
        (
            "MaxPool2d: zero dilation",
            Box::new(|| {
                MaxPool2d::new(MaxPool2dOptions::new((2, 2)).with_dilation((1, 0))).map(drop)
            }),
            "config",
            vec!["MaxPool2d", "dilation", "(1, 0)"],
        ),
        (
            "max_pool2d: zero kernel",
            Box::new(|| {
                max_pool2d(x4((1, 1, 4, 4)).view(), &MaxPool2dOptions::new((0, 2))).map(drop)
            }),
            "config",
            vec!["max_pool2d", "kernel size", "(0, 2)"],
        ),
        (
            "max_pool2d: input smaller than the dilated kernel",
            Box::new(|| {
                let o = MaxPool2dOptions::new((3, 3)).with_dilation((2, 2));
                max_pool2d(x4((1, 1, 4, 9)).view(), &o).map(drop)
            }),
            "shape",
            vec!["max_pool2d", "[1, 1, 4, 9]", "dilation (2, 2)"],
        ),
        (
            "max_pool2d: zero channels",
            Box::new(|| {
                max_pool2d(x4((1, 0, 4, 4)).view(), &MaxPool2dOptions::new((2, 2))).map(drop)
            }),
            "shape",
            vec!["max_pool2d", "[1, 0, 4, 4]"],
        ),
        (
            "max_pool2d_backward: an index outside the plane",
            Box::new(|| {
                let idx = Array4::from_elem((1, 1, 2, 2), 16i64);
                max_pool2d_backward((1, 1, 4, 4), idx.view(), x4((1, 1, 2, 2)).view()).map(drop)
            }),
            "shape",
            vec!["max_pool2d", "index 16", "4 x 4"],
        ),
        (
            "max_pool2d_backward: indices and grad_out differ",
            Box::new(|| {
                let idx = Array4::from_elem((1, 1, 2, 3), 0i64);
                max_pool2d_backward((1, 1, 4, 4), idx.view(), x4((1, 1, 2, 2)).view()).map(drop)
            }),
            "shape",
            vec!["max_pool2d", "[1, 1, 2, 3]", "[1, 1, 2, 2]"],
        ),
        (
            "MaxPool2d: grad_out of the wrong shape",
            Box::new(|| {
                let mut p = MaxPool2d::new(MaxPool2dOptions::new((2, 2)))?;
                p.forward(x4((1, 1, 4, 4)).into_dyn().view())?;
                p.backward(x4((1, 1, 3, 2)).into_dyn().view()).map(drop)
            }),
            "shape",
            vec!["MaxPool2d", "[1, 1, 3, 2]", "[1, 1, 2, 2]"],
        ),
        (
            "MaxPool2d: backward before forward",
            Box::new(|| {
                MaxPool2d::new(MaxPool2dOptions::new((2, 2)))?
                    .backward(x4((1, 1, 1, 1)).into_dyn().view())
                    .map(drop)
            }),
            "state",
            vec!["MaxPool2d", "before forward"],
        ),
        (
            "MaxPool2d: wrong rank",
            Box::new(|| {
                MaxPool2d::new(MaxPool2dOptions::new((2, 2)))?
                    .forward(ArrayD::zeros(IxDyn(&[4, 4])).view())
                    .map(drop)
            }),
            "shape",
            vec!["MaxPool2d", "[4, 4]"],
        ),
        (
            "AvgPool2d: zero divisor_override",
            Box::new(|| {
                AvgPool2d::new(AvgPool2dOptions::new((2, 2)).with_divisor_override(Some(0)))
                    .map(drop)
            }),
            "config",
            vec!["AvgPool2d", "divisor_override", "Some(0)"],
        ),
        (
            "avg_pool2d: padding above half the kernel",
            Box::new(|| {
                let o = AvgPool2dOptions::new((2, 4)).with_padding((0, 3));
                avg_pool2d(x4((1, 1, 8, 8)).view(), &o).map(drop)
            }),
            "config",
            vec!["avg_pool2d", "padding (0, 3)", "(2, 4)"],
        ),
        (
            "avg_pool2d: input smaller than the kernel",
            Box::new(|| {
                avg_pool2d(x4((1, 1, 1, 4)).view(), &AvgPool2dOptions::new((2, 2))).map(drop)
            }),
            "shape",
            vec!["avg_pool2d", "[1, 1, 1, 4]", "kernel (2, 2)"],
        ),
        (
            "avg_pool2d_backward: grad_out not the output's shape",
            Box::new(|| {
                let o = AvgPool2dOptions::new((2, 2));
                avg_pool2d_backward((1, 1, 4, 4), x4((1, 1, 3, 2)).view(), &o).map(drop)
            }),
            "shape",
            vec!["avg_pool2d", "[1, 1, 3, 2]", "[1, 1, 2, 2]"],
        ),
        (
            "AvgPool2d: backward before forward",
            Box::new(|| {
                AvgPool2d::new(AvgPool2dOptions::new((2, 2)))?
                    .backward(x4((1, 1, 1, 1)).into_dyn().view())
                    .map(drop)
            }),
            "state",
            vec!["AvgPool2d", "before forward"],
        ),
        (
            "adaptive_max_pool2d: zero output size",
            Box::new(|| adaptive_max_pool2d(x4((1, 1, 4, 4)).view(), (3, 0)).map(drop)),
            "config",
            vec!["adaptive_max_pool2d", "(3, 0)", "[1, 1, 4, 4]"],
        ),
        (
            "AdaptiveMaxPool2d: zero output size",
            Box::new(|| AdaptiveMaxPool2d::new((0, 1)).map(drop)),
            "config",
            vec!["AdaptiveMaxPool2d", "(0, 1)"],
        ),
        (
            "adaptive_max_pool2d: empty input",
            Box::new(|| adaptive_max_pool2d(x4((1, 1, 4, 0)).view(), (1, 1)).map(drop)),
            "shape",
            vec!["adaptive_max_pool2d", "[1, 1, 4, 0]"],
        ),
        (
            "adaptive_max_pool2d_backward: a negative index",
            Box::new(|| {
                let idx = Array4::from_elem((1, 1, 1, 1), -2i64);
                adaptive_max_pool2d_backward((1, 1, 4, 4), idx.view(), x4((1, 1, 1, 1)).view())
                    .map(drop)
            }),
            "shape",
            vec!["adaptive_max_pool2d", "index -2"],
        ),
        (
            "AdaptiveMaxPool2d: backward before forward",
            Box::new(|| {
                AdaptiveMaxPool2d::new((1, 1))?
                    .backward(x4((1, 1, 1, 1)).into_dyn().view())
                    .map(drop)
            }),
            "state",
            vec!["AdaptiveMaxPool2d", "before forward"],
        ),
        (
            "flatten: start_dim out of range",
            Box::new(|| flatten(ArrayD::zeros(IxDyn(&[2, 3])).view(), 2, -1).map(drop)),
            "shape",
            vec!["flatten", "start_dim 2", "[2, 3]"],
        ),
        (
            "Flatten: grad_out of the wrong shape",
            Box::new(|| {
                let mut f = Flatten::default();
                f.forward(x4((2, 1, 2, 2)).into_dyn().view())?;
                f.backward(ArrayD::zeros(IxDyn(&[2, 3])).view()).map(drop)
            }),
            "shape",
            vec!["flatten", "[2, 3]", "[2, 4]"],
        ),
        (
            "Flatten: backward before forward",
            Box::new(|| {
                Flatten::default()
                    .backward(ArrayD::zeros(IxDyn(&[2, 3])).view())
                    .map(drop)
            }),
            "state",
            vec!["Flatten", "before forward"],
        ),
        (
            "mse: mismatched lengths",
            Box::new(|| {
                mse(
                    Array1::<f32>::zeros(4).view(),
                    Array1::<f32>::zeros(5).view(),
                )
                .map(drop)
            }),
            "shape",
            vec!["mse", "[4]", "[5]"],
        ),
        (
            "mse: (N, 2) predictions",
            Box::new(|| {
                mse(
                    Array2::<f32>::zeros((4, 2)).view(),
                    Array1::<f32>::zeros(4).view(),
                )
                .map(drop)
            }),
            "shape",
            vec!["mse", "[4, 2]"],
        ),
        (
            "mse_backward: mismatched lengths",
            Box::new(|| {
                mse_backward(
                    Array2::<f32>::zeros((3, 1)).view(),
                    Array1::<f32>::zeros(4).view(),
                )
                .map(drop)
            }),
            "shape",
            vec!["mse", "[3, 1]", "[4]"],
        ),
        (
            "mse: empty",
            Box::new(|| {
                mse(
                    Array1::<f32>::zeros(0).view(),
                    Array1::<f32>::zeros(0).view(),
                )
                .map(drop)
            }),
            "shape",
            vec!["mse", "[0]"],
        ),
        (
            "Sequential: bad input names the layer",
            Box::new(|| {
                let mut net = Sequential::new()
                    .with(Relu::new())
                    .with(conv_layer(Conv2dConfig::new(1, 2, (3, 3))));
                net.forward(x4((1, 2, 5, 5)).into_dyn().view()).map(drop)
            }),
            "shape",
            vec!["conv2d", "[1, 2, 5, 5]", "layer 1", "Conv2d"],
        ),
        (
            "Sequential: backward before forward",
            Box::new(|| {
                let mut net = Sequential::new().with(conv_layer(Conv2dConfig::new(1, 2, (3, 3))));
                net.backward(x4((1, 2, 3, 3)).into_dyn().view()).map(drop)
            }),
            "state",
            vec!["Conv2d", "before forward", "layer 0"],
        ),
    ]
}

#[test]
fn bad_input_returns_errors_without_panicking() {
    let mut problems = Vec::new();
    let table = table();
    for (what, call, want_kind, needles) in &table {
        match catch_unwind(AssertUnwindSafe(call)) {
            Err(_) => problems.push(format!("{what}: panicked")),
            Ok(Ok(())) => problems.push(format!("{what}: returned Ok")),
            Ok(Err(e)) => {
                let msg = e.to_string();
                if kind(&e) != *want_kind {
                    problems.push(format!(
                        "{what}: {} error, expected {want_kind}: {msg}",
                        kind(&e)
                    ));
                }
                for needle in needles {
                    if !msg.contains(needle) {
                        problems.push(format!("{what}: message lacks {needle:?}: {msg}"));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} bad calls misbehaved:\n{}",
        problems.len(),
        table.len(),
        problems.join("\n")
    );
}

/// The error check above cannot pass by returning errors for everything: the same calls
/// with the mistake fixed succeed.
#[test]
fn corrected_calls_succeed() {
    conv2d(
        x4((1, 3, 5, 5)).view(),
        x4((2, 3, 3, 3)).view(),
        None,
        &opts(),
    )
    .unwrap();
    conv2d(
        x4((1, 1, 3, 3)).view(),
        x4((1, 1, 5, 5)).view(),
        None,
        &opts().with_padding((1, 1)),
    )
    .unwrap();
    conv2d(
        x4((1, 4, 5, 5)).view(),
        x4((2, 2, 3, 3)).view(),
        None,
        &opts().with_groups(2),
    )
    .unwrap();
    mse(
        Array2::<f32>::zeros((4, 1)).view(),
        Array1::<f32>::zeros(4).view(),
    )
    .unwrap();
    adaptive_avg_pool2d(x4((1, 1, 2, 2)).view(), (5, 3)).unwrap();
    max_pool2d(
        x4((1, 1, 8, 8)).view(),
        &MaxPool2dOptions::new((3, 3)).with_padding((1, 0)),
    )
    .unwrap();
    max_pool2d(
        x4((1, 1, 5, 9)).view(),
        &MaxPool2dOptions::new((3, 3)).with_dilation((2, 2)),
    )
    .unwrap();
    avg_pool2d(
        x4((1, 1, 2, 4)).view(),
        &AvgPool2dOptions::new((2, 2)).with_divisor_override(Some(3)),
    )
    .unwrap();
    adaptive_max_pool2d(x4((1, 1, 4, 1)).view(), (3, 2)).unwrap();
    let idx = Array4::from_elem((1, 1, 2, 2), 15i64);
    max_pool2d_backward((1, 1, 4, 4), idx.view(), x4((1, 1, 2, 2)).view()).unwrap();
    let mut net = Sequential::new()
        .with(Relu::new())
        .with(conv_layer(Conv2dConfig::new(2, 2, (3, 3))));
    let y = net.forward(x4((1, 2, 5, 5)).into_dyn().view()).unwrap();
    net.backward(y.view()).unwrap();
    // Batch norm: two values per channel train; one value per channel in eval mode.
    let mut b = bn(3);
    b.forward(x4((2, 3, 1, 1)).into_dyn().view()).unwrap();
    b.forward(x4((1, 3, 2, 1)).into_dyn().view()).unwrap();
    b.set_training(false);
    b.forward(x4((1, 3, 1, 1)).into_dyn().view()).unwrap();
    assert!(BatchNorm2d::new(BatchNorm2dConfig::new(2).with_eps(0.0).with_momentum(None)).is_ok());
}

/// Degenerate but valid shapes (empty batch, no input or output channels) work.
#[test]
fn degenerate_shapes_do_not_panic() {
    let y = conv2d(
        x4((0, 2, 5, 5)).view(),
        x4((3, 2, 3, 3)).view(),
        None,
        &opts(),
    )
    .unwrap();
    assert_eq!(y.dim(), (0, 3, 3, 3));
    let g = conv2d_backward(
        x4((0, 2, 5, 5)).view(),
        x4((3, 2, 3, 3)).view(),
        true,
        y.view(),
        &opts(),
    )
    .unwrap();
    assert_eq!(g.dw, Array4::<f32>::zeros((3, 2, 3, 3)));
    let b = Array1::from_elem(3, 0.5f32);
    let y = conv2d(
        x4((1, 0, 5, 5)).view(),
        x4((3, 0, 3, 3)).view(),
        Some(b.view()),
        &opts(),
    )
    .unwrap();
    assert!(y.iter().all(|&v| v == 0.5));
    let y = conv2d(
        x4((1, 2, 5, 5)).view(),
        x4((0, 2, 3, 3)).view(),
        None,
        &opts(),
    )
    .unwrap();
    assert_eq!(y.dim(), (1, 0, 3, 3));
    let r =
        catch_unwind(|| adaptive_avg_pool2d(x4((1, 1, 1, 1)).view(), (1 << 62, 1 << 62)).is_err());
    assert!(matches!(r, Ok(true)));
}
