//! Channels-last (`MemoryFormat::ChannelsLast`) inputs, outputs and gradients of
//! `conv2d`: every algorithm gives the bits of the channel-major run, in every
//! combination of input, output and `grad_out` layouts, and the results come back in the
//! layouts promised (output: `options.memory_format`; `dx`: the input's). The direct
//! algorithm reads and writes channels-last tensors as they are; the others convert.
//! The bias gradient sums in another order from a channels-last `grad_out`, so it is
//! compared within f32 rounding.

use convinit::Error;
use convinit::ops::{
    Conv2dOptions, ConvAlgorithm, ConvAlgos, MemoryFormat, conv2d, conv2d_backward,
    conv2d_backward_params, to_memory_format,
};
use ndarray::{Array1, Array4};

const FORMATS: [MemoryFormat; 2] = [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast];

/// Every algorithm by name, and auto's choice.
const PATHS: [&str; 9] = [
    "auto",
    "direct",
    "clipped",
    "columns",
    "pointwise",
    "phase",
    "depthwise",
    "winograd2",
    "winograd4",
];

fn value(i: usize, seed: usize) -> f32 {
    (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 0.5
}

fn array(shape: (usize, usize, usize, usize), seed: usize) -> Array4<f32> {
    let (_, b, c, d) = shape;
    Array4::from_shape_fn(shape, |(i, j, k, l)| {
        value(((i * b + j) * c + k) * d + l, seed)
    })
}

/// The first element (in logical order) whose bits differ, if any.
fn differs(a: &Array4<f32>, b: &Array4<f32>) -> Option<(usize, usize, usize, usize)> {
    assert_eq!(a.shape(), b.shape());
    a.indexed_iter()
        .find(|&(i, v)| v.to_bits() != b[i].to_bits())
        .map(|(i, _)| i)
}

/// The layout an array of `shape` asked to be in `format` reports: with one channel or
/// one pixel the two layouts are the same memory, which counts as contiguous.
fn expected(format: MemoryFormat, shape: &[usize]) -> MemoryFormat {
    if shape[1] > 1 && shape[2] * shape[3] > 1 {
        format
    } else {
        MemoryFormat::Contiguous
    }
}

fn close(a: &Array1<f32>, b: &Array1<f32>) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + x.abs().max(y.abs())))
}

/// (N, C, H, W, O, k, stride, padding, dilation, groups).
type Case = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

#[test]
fn every_algorithm_gives_the_channel_major_bits_in_every_layout() {
    // (N, C, H, W, O, k, stride, padding, dilation, groups): strides 1 and 2, output
    // channels below, at and above a vector, one input channel, padding past the
    // kernel, dilation, depthwise and grouped convs, 1x1, one output pixel.
    let cases: [Case; 12] = [
        (3, 16, 14, 14, 32, 3, 2, 1, 1, 1),
        // Whole vectors of channels at stride 1: the kernel writes y and dx itself.
        (2, 16, 6, 5, 16, 3, 1, 1, 1, 1),
        (2, 32, 7, 7, 64, 3, 2, 1, 1, 1),
        (2, 64, 4, 4, 10, 3, 2, 1, 1, 1),
        (3, 1, 12, 12, 16, 5, 2, 2, 1, 1),
        (2, 8, 9, 7, 5, 3, 1, 4, 1, 1),
        (1, 5, 11, 10, 7, 3, 1, 2, 2, 1),
        (2, 16, 10, 10, 16, 3, 1, 1, 1, 16),
        (2, 6, 8, 8, 4, 3, 1, 1, 1, 2),
        (2, 24, 6, 6, 20, 1, 1, 0, 1, 1),
        // 1x1 with few input channels: auto's channels-last plan is direct throughout.
        (2, 3, 5, 6, 10, 1, 1, 0, 1, 1),
        (2, 17, 3, 3, 19, 3, 1, 0, 1, 1),
    ];
    let mut runs = 0;
    for (n, c, h, w, o, k, s, p, d, g) in cases {
        let x = array((n, c, h, w), 1);
        let wt = array((o, c / g, k, k), 2);
        let b = Array1::from_shape_fn(o, |i| value(i, 3));
        let base = Conv2dOptions::new()
            .with_stride((s, s))
            .with_padding((p, p))
            .with_dilation((d, d))
            .with_groups(g);
        for path in PATHS {
            let algorithm = match path {
                "auto" => ConvAlgorithm::Auto,
                name => ConvAlgorithm::Fixed(ConvAlgos::named(name).unwrap()),
            };
            let opts = base.with_algorithm(algorithm);
            let want_y = match conv2d(x.view(), wt.view(), Some(b.view()), &opts) {
                Ok(y) => y,
                // The path cannot run this geometry (said so, never silently).
                Err(Error::Config { .. }) => continue,
                Err(e) => panic!("{path}: {e}"),
            };
            let dy = array(want_y.dim(), 4);
            let want = conv2d_backward(x.view(), wt.view(), true, dy.view(), &opts).unwrap();
            let what = |x_fmt, other| {
                format!(
                    "{path} {:?} x {x_fmt:?} {other:?}",
                    (n, c, h, w, o, k, s, p, d, g)
                )
            };
            for x_fmt in FORMATS {
                let xin = to_memory_format(x.view(), x_fmt).unwrap();
                assert_eq!(MemoryFormat::of(&xin), expected(x_fmt, xin.shape()));
                for y_fmt in FORMATS {
                    // Auto may pick other algorithms for a channels-last output.
                    if path == "auto" && y_fmt == MemoryFormat::ChannelsLast {
                        continue;
                    }
                    let o2 = opts.with_memory_format(y_fmt);
                    let y = conv2d(xin.view(), wt.view(), Some(b.view()), &o2).unwrap();
                    assert_eq!(
                        MemoryFormat::of(&y),
                        expected(y_fmt, y.shape()),
                        "{}",
                        what(x_fmt, y_fmt)
                    );
                    assert_eq!(differs(&y, &want_y), None, "{}", what(x_fmt, y_fmt));
                }
                for dy_fmt in FORMATS {
                    let dyin = to_memory_format(dy.view(), dy_fmt).unwrap();
                    let got =
                        conv2d_backward(xin.view(), wt.view(), true, dyin.view(), &opts).unwrap();
                    assert_eq!(
                        MemoryFormat::of(&got.dx),
                        expected(x_fmt, got.dx.shape()),
                        "{}",
                        what(x_fmt, dy_fmt)
                    );
                    assert_eq!(
                        differs(&got.dx, &want.dx),
                        None,
                        "dx {}",
                        what(x_fmt, dy_fmt)
                    );
                    assert_eq!(
                        differs(&got.dw, &want.dw),
                        None,
                        "dw {}",
                        what(x_fmt, dy_fmt)
                    );
                    assert!(
                        close(got.db.as_ref().unwrap(), want.db.as_ref().unwrap()),
                        "db {}",
                        what(x_fmt, dy_fmt)
                    );
                    let params =
                        conv2d_backward_params(xin.view(), wt.view(), true, dyin.view(), &opts)
                            .unwrap();
                    assert_eq!(
                        differs(&params.dw, &want.dw),
                        None,
                        "params dw {}",
                        what(x_fmt, dy_fmt)
                    );
                    runs += 1;
                }
            }
        }
    }
    assert!(runs >= 80, "only {runs} runs: paths skipped");
}

#[test]
fn to_memory_format_round_trips_any_strides() {
    let x = array((2, 3, 5, 4), 7);
    // A non-contiguous view: every other row.
    let v = x.slice(ndarray::s![.., .., ..;2, ..]);
    for f in FORMATS {
        let y = to_memory_format(v, f).unwrap();
        assert_eq!(y, v);
        assert_eq!(MemoryFormat::of(&y), f);
        let back = to_memory_format(y.view(), MemoryFormat::Contiguous).unwrap();
        assert!(back.is_standard_layout());
        assert_eq!(back, v);
    }
}

/// A net of channels-last convs and ReLUs trains as its channel-major twin: the same
/// output and weight gradients bit for bit (every conv forced to the direct algorithm,
/// which both layouts then run), the bias gradients within rounding; and the ReLUs keep
/// the layout they are given, in place.
#[test]
fn a_channels_last_net_matches_its_channel_major_twin() {
    use convinit::init::Init;
    use convinit::nn::{Conv2d, Conv2dConfig, Flatten, Relu, Sequential};
    use rand::SeedableRng;
    let direct = ConvAlgorithm::Fixed(ConvAlgos::named("direct").unwrap());
    let build = |f: MemoryFormat| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let conv = |c, o, last: bool, rng: &mut rand::rngs::StdRng| {
            let cfg = Conv2dConfig::new(c, o, (3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1))
                .with_algorithm(direct)
                .with_memory_format(if last { f } else { MemoryFormat::Contiguous });
            Conv2d::with_init(cfg, &Init::KAIMING_NORMAL, rng).unwrap()
        };
        Sequential::new()
            .with_retain_outputs(true)
            .with(conv(3, 16, true, &mut rng))
            .with(Relu::new())
            .with(conv(16, 24, true, &mut rng))
            .with(Relu::new())
            .with(conv(24, 4, false, &mut rng))
            .with(Flatten::new(1, -1))
    };
    let x = array((4, 3, 12, 12), 9).into_dyn();
    let mut nets = [
        build(MemoryFormat::Contiguous),
        build(MemoryFormat::ChannelsLast),
    ];
    let outs: Vec<_> = nets
        .iter_mut()
        .map(|net| net.forward(x.view()).unwrap())
        .collect();
    assert_eq!(outs[0], outs[1]);
    let relu = nets[1].output(1).unwrap().into_dimensionality().unwrap();
    assert_eq!(MemoryFormat::of(&relu), MemoryFormat::ChannelsLast);
    for net in &mut nets {
        net.backward(outs[0].mapv(|v| v * 0.5).view()).unwrap();
    }
    for i in [0, 2, 4] {
        let a: &Conv2d = nets[0].get(i).unwrap();
        let b: &Conv2d = nets[1].get(i).unwrap();
        let (wa, wb) = (a.weight_grad(), b.weight_grad());
        assert_eq!(differs(wa, wb), None, "conv {i} weight gradient");
        assert!(
            close(a.bias_grad().unwrap(), b.bias_grad().unwrap()),
            "conv {i} bias"
        );
    }
}
