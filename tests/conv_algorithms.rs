//! Every conv algorithm of every pass, on every GEMM kernel this CPU runs, against the
//! naive f64 convolution of `common/naive.rs`, on one set of geometries: groups of 1 and
//! more, dilation, stride, rectangular kernels, N = 1, padding larger than the kernel,
//! 1x1 convs the pointwise algorithm takes, depthwise convs (groups = C, channel
//! multiplier 1 to 3, strides 1 to 3, padding 0 to 2, dilation, 5x5 and 3x1 kernels,
//! 1x1 outputs) the depthwise algorithm takes, 3x3 stride-1 convs the Winograd
//! algorithms take (1x1 and 2x2 outputs, partial tiles, padding 0 to 3, many channels,
//! an image cut into several tasks, more tiles than one weight-gradient block). Every algorithm in the pass enums' `ALL`
//! lists runs. The backward runs every (input-gradient,
//! weight-gradient) pair, so both the fused and the separate paths run, the column
//! weight gradient of groups-of-1 convs included. Plans an algorithm cannot run, and
//! kernels the CPU lacks, are configuration errors. The same algorithms forced through
//! the public setting (`ConvAlgorithm::Fixed`) on `conv2d`, `conv2d_backward` and
//! `conv2d_backward_params`, on the same geometries.

mod common;

use common::naive::{Case, Shape, assert_close};
use convinit::Error;
use convinit::gemm::Kernel;
use convinit::ops::{
    Conv2dGeometry, Conv2dOptions, ConvAlgorithm, ConvAlgos, ConvPlan, ForwardAlgo, InputGradAlgo,
    WeightGradAlgo, conv2d, conv2d_backward, conv2d_backward_params, conv2d_backward_with_plan,
    conv2d_into, conv2d_with_plan,
};
use ndarray::Array4;
use rand::SeedableRng;
use rand::rngs::StdRng;

const SHAPES: &[Shape] = &[
    // N = 1, padding larger than the kernel, stride 2.
    (1, 3, 9, 7, 4, (3, 3), (2, 2), (4, 4), (1, 1), 1),
    // Groups, dilation, a rectangular kernel, uneven stride.
    (5, 4, 11, 13, 6, (3, 2), (1, 2), (1, 0), (2, 1), 2),
    // Groups of 1 with enough channels for the direct input gradient, dilated, strided.
    (3, 8, 10, 9, 5, (2, 3), (2, 1), (1, 2), (2, 1), 1),
    // One input channel, 5x5, stride 2: the first layers' kind; long enough output rows
    // for the phase backward.
    (9, 1, 28, 28, 8, (5, 5), (2, 2), (2, 2), (1, 1), 1),
    // Depthwise (groups = C): multiplier 1, 3x3, stride 1, padding 1.
    (2, 6, 8, 8, 6, (3, 3), (1, 1), (1, 1), (1, 1), 6),
    // Depthwise, multiplier 2, 5x5, stride 2, padding 2, odd sizes, N = 1.
    (1, 3, 11, 9, 6, (5, 5), (2, 2), (2, 2), (1, 1), 3),
    // Depthwise, a 3x1 kernel, dilation 2, stride (2, 1), no padding, odd sizes.
    (3, 4, 13, 7, 4, (3, 1), (2, 1), (0, 0), (2, 2), 4),
    // Depthwise, multiplier 2, dilation (2, 1), stride (1, 2), padding (1, 2).
    (2, 5, 9, 10, 10, (3, 3), (1, 2), (1, 2), (2, 1), 5),
    // Depthwise, multiplier 3, stride 3 (three column phases), padding 1, N = 1.
    (1, 2, 10, 11, 6, (2, 3), (3, 3), (1, 1), (1, 1), 2),
    // Depthwise, large enough for the chooser's parallel split, batch not a multiple of
    // the reduction chunk.
    (11, 8, 17, 15, 16, (3, 3), (2, 2), (1, 1), (1, 1), 8),
    // Depthwise 1x1 outputs: the kernel covers the input, multiplier 2; and padding 1
    // around a 1x1 input, stride 2.
    (2, 3, 3, 3, 6, (3, 3), (1, 1), (0, 0), (1, 1), 3),
    (1, 2, 1, 1, 2, (3, 3), (2, 2), (1, 1), (1, 1), 2),
    // Depthwise, stride 1, padding larger than the kernel, multiplier 2, N = 1.
    (1, 3, 5, 4, 6, (2, 2), (1, 1), (3, 3), (1, 1), 3),
    // Depthwise 1x1 kernel, stride 1, unpadded (the pointwise path runs it too).
    (2, 4, 5, 6, 8, (1, 1), (1, 1), (0, 0), (1, 1), 4),
    // 1x1 stride 1 unpadded (pointwise-capable), grouped and not, N = 1.
    (4, 6, 5, 9, 4, (1, 1), (1, 1), (0, 0), (1, 1), 2),
    (1, 8, 12, 12, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    // 1x1 strided and padded (not pointwise).
    (2, 3, 7, 8, 5, (1, 1), (2, 3), (1, 2), (1, 1), 1),
    // More output channels than one AVX-512 register tile.
    (2, 3, 9, 8, 50, (3, 2), (2, 1), (2, 1), (2, 3), 1),
    // A 3x5 kernel with stride (2, 1), groups of 1 with enough channels for the direct
    // input gradient, and grouped.
    (2, 8, 9, 11, 6, (3, 5), (2, 1), (1, 2), (1, 1), 1),
    (3, 4, 10, 9, 6, (3, 5), (2, 1), (0, 2), (1, 1), 2),
    // Padding larger than the kernel: k = 2, pad = 3, N = 1; and with dilation 2.
    (1, 3, 5, 4, 4, (2, 2), (1, 1), (3, 3), (1, 1), 1),
    (2, 8, 6, 5, 3, (2, 2), (1, 2), (3, 3), (2, 2), 1),
    // Dilation 2 in both directions with groups.
    (3, 6, 9, 8, 6, (3, 3), (1, 1), (1, 0), (2, 2), 3),
    // 1x1 outputs: the kernel covers the (padded) input, groups of 1 and grouped, N = 1.
    (2, 8, 5, 5, 3, (5, 5), (1, 1), (0, 0), (1, 1), 1),
    (1, 4, 3, 3, 4, (3, 3), (2, 2), (0, 0), (1, 1), 2),
    (2, 2, 1, 1, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    // Winograd (3x3, stride 1, groups of 1): a 1x1 output, unpadded; a 2x2 output.
    (2, 3, 3, 3, 4, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    (1, 2, 4, 4, 3, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    // Odd sizes leaving partial tiles for F2 and F4 (11 x 9 outputs), padding 1.
    (3, 5, 11, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    // Many channels (C = 40, O = 33), padding 2, N = 1.
    (1, 40, 13, 10, 33, (3, 3), (1, 1), (2, 2), (1, 1), 1),
    // Padding 3 (the input gradient crops dy), and padding (0, 2).
    (2, 6, 7, 8, 5, (3, 3), (1, 1), (3, 3), (1, 1), 1),
    (2, 3, 6, 9, 4, (3, 3), (1, 1), (0, 2), (1, 1), 1),
    // An image of more tiles than one Winograd task takes: cut into bands of tile rows.
    (1, 4, 100, 90, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    // More F4 tiles (51 x 48) than one block of the Winograd weight gradient.
    (1, 2, 201, 190, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1),
];

/// Every algorithm of each pass: a new variant is tested here as soon as it is in its
/// enum's `ALL` list (and `runs` says which geometries it takes).
const FORWARD: &[ForwardAlgo] = ForwardAlgo::ALL;
const INPUT_GRAD: &[InputGradAlgo] = InputGradAlgo::ALL;
const WEIGHT_GRAD: &[WeightGradAlgo] = WeightGradAlgo::ALL;

fn pointwise(geo: &Conv2dGeometry) -> bool {
    geo.kernel == (1, 1) && geo.options.stride == (1, 1) && geo.options.padding == (0, 0)
}

/// Whether an algorithm named `debug` (`"Direct"`, ...) runs `geo`, as documented.
fn runs(name: &str, geo: &Conv2dGeometry) -> bool {
    match name {
        "Direct" | "Clipped" => geo.options.groups == 1,
        "Pointwise" => pointwise(geo),
        "Depthwise" => geo.options.groups == geo.in_channels,
        "Columns" | "Phase" => true,
        "WinogradF2" | "WinogradF4" => {
            geo.kernel == (3, 3)
                && geo.options.stride == (1, 1)
                && geo.options.dilation == (1, 1)
                && geo.options.groups == 1
        }
        _ => panic!("no rule for the algorithm {name}: add it to `runs`"),
    }
}

fn kernels() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|k| k.is_supported())
        .collect()
}

fn check_shape(s: Shape, rng: &mut StdRng) {
    let Case {
        x,
        w: wt,
        b,
        dy,
        opts,
        geo,
        y_ref,
        dx_ref,
        dw_ref,
        db_ref,
    } = Case::new(s, rng);
    let base = ConvPlan::choose(&geo, rayon::current_num_threads());
    for kernel in kernels() {
        // The chosen knobs, and small tiles that cut output rows, by rows and by map.
        let knobs = [
            ConvPlan { kernel, ..base },
            ConvPlan {
                kernel,
                tile_cols: 7,
                use_map: !base.use_map,
                parallel: !base.parallel,
                ..base
            },
        ];
        for knob in knobs {
            for &forward in FORWARD {
                let plan = ConvPlan { forward, ..knob };
                let ctx = format!("{s:?} {plan:?}");
                let y = conv2d_with_plan(x.view(), wt.view(), Some(b.view()), &opts, plan);
                if !runs(&format!("{forward:?}"), &geo) {
                    assert!(matches!(y, Err(Error::Config { .. })), "{ctx}: {y:?}");
                    continue;
                }
                assert_close("y", &ctx, y.unwrap().view(), &y_ref);
            }
            for &input_grad in INPUT_GRAD {
                for &weight_grad in WEIGHT_GRAD {
                    let plan = ConvPlan {
                        input_grad,
                        weight_grad,
                        ..knob
                    };
                    let ctx = format!("{s:?} {plan:?}");
                    let ok = runs(&format!("{:?}", base.forward), &geo)
                        && runs(&format!("{input_grad:?}"), &geo)
                        && runs(&format!("{weight_grad:?}"), &geo);
                    let g = conv2d_backward_with_plan(
                        x.view(),
                        wt.view(),
                        true,
                        dy.view(),
                        &opts,
                        plan,
                    );
                    if !ok {
                        assert!(matches!(g, Err(Error::Config { .. })), "{ctx}: {g:?}");
                        continue;
                    }
                    let g = g.unwrap();
                    assert_close("dx", &ctx, g.dx.view(), &dx_ref);
                    assert_close("dw", &ctx, g.dw.view(), &dw_ref);
                    assert_close("db", &ctx, g.db.unwrap().view(), &db_ref);
                }
            }
        }
    }
}

#[test]
fn every_algorithm_and_kernel_matches_naive() {
    let mut rng = StdRng::seed_from_u64(0xa160);
    for &s in SHAPES {
        check_shape(s, &mut rng);
    }
}

/// Every algorithm name of any pass (`"direct"`, `"columns"`, ...), once.
fn algorithm_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = FORWARD.iter().map(|a| a.name()).collect();
    names.extend(INPUT_GRAD.iter().map(|a| a.name()));
    names.extend(WEIGHT_GRAD.iter().map(|a| a.name()));
    names.extend(ForwardAlgo::ALL.iter().map(|a| a.name()));
    names.sort_unstable();
    names.dedup();
    names
}

/// Each algorithm forced on every pass that has it, through the public setting, against
/// the naive reference; a forced algorithm the geometry cannot run fails every pass with
/// a configuration error that names it.
fn check_setting(s: Shape, rng: &mut StdRng) {
    let Case {
        x,
        w: wt,
        b,
        dy,
        opts: base,
        geo,
        y_ref,
        dx_ref,
        dw_ref,
        db_ref,
    } = Case::new(s, rng);
    for name in algorithm_names() {
        let algos = ConvAlgos::named(name).unwrap();
        let opts = base.with_algorithm(ConvAlgorithm::Fixed(algos));
        let ctx = format!("{s:?} forced {name}");
        let y = conv2d(x.view(), wt.view(), Some(b.view()), &opts);
        let g = conv2d_backward(x.view(), wt.view(), true, dy.view(), &opts);
        let pg = conv2d_backward_params(x.view(), wt.view(), true, dy.view(), &opts);
        if !runs(
            &format!("{:?}", ForwardAlgo::from_name(name).unwrap()),
            &geo,
        ) {
            for e in [y.err(), g.err(), pg.err()] {
                let e = e.unwrap_or_else(|| panic!("{ctx}: ran"));
                assert!(matches!(e, Error::Config { .. }), "{ctx}: {e:?}");
                assert!(e.to_string().contains(name), "{ctx}: {e}");
            }
            continue;
        }
        let y = y.unwrap();
        assert_close("y", &ctx, y.view(), &y_ref);
        // Every algorithm writes each output element: a buffer of NaN comes back as
        // the same bits.
        let mut out = Array4::from_elem(y.raw_dim(), f32::NAN);
        conv2d_into(x.view(), wt.view(), Some(b.view()), &opts, out.view_mut()).unwrap();
        assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{ctx}: conv2d_into into NaN"
        );
        let g = g.unwrap();
        assert_close("dx", &ctx, g.dx.view(), &dx_ref);
        assert_close("dw", &ctx, g.dw.view(), &dw_ref);
        assert_close("db", &ctx, g.db.unwrap().view(), &db_ref);
        let pg = pg.unwrap();
        assert_close("params-only dw", &ctx, pg.dw.view(), &dw_ref);
        assert_close("params-only db", &ctx, pg.db.unwrap().view(), &db_ref);
    }
}

#[test]
fn every_forced_setting_matches_naive() {
    let mut rng = StdRng::seed_from_u64(0x5e77);
    for &s in SHAPES {
        check_setting(s, &mut rng);
    }
}

#[test]
fn chooser_plans_run_and_name_the_selected_kernel() {
    for &(n, c, h, w, o, k, stride, padding, dilation, groups) in SHAPES {
        let opts = Conv2dOptions::new()
            .with_stride(stride)
            .with_padding(padding)
            .with_dilation(dilation)
            .with_groups(groups);
        let geo = Conv2dGeometry::new("t", [n, c, h, w], [o, c / groups, k.0, k.1], &opts).unwrap();
        let plan = ConvPlan::choose(&geo, 2);
        assert_eq!(plan.kernel, Kernel::selected());
        assert_eq!(plan, ConvPlan::choose(&geo, 2), "choose is pure");
        assert!(
            !ConvPlan::choose(&geo, 1).parallel,
            "one thread never splits"
        );
        for name in [
            format!("{:?}", plan.forward),
            format!("{:?}", plan.input_grad),
            format!("{:?}", plan.weight_grad),
        ] {
            assert!(runs(&name, &geo), "{name} chosen for {geo:?}");
        }
    }
}

#[test]
fn a_kernel_this_cpu_lacks_is_a_config_error() {
    let x = Array4::<f32>::zeros((1, 2, 5, 5));
    let w = Array4::<f32>::zeros((3, 2, 3, 3));
    let dy = Array4::<f32>::zeros((1, 3, 3, 3));
    let opts = Conv2dOptions::new();
    let geo = Conv2dGeometry::new("test", [1, 2, 5, 5], [3, 2, 3, 3], &opts).unwrap();
    let base = ConvPlan::choose(&geo, 1);
    for kernel in Kernel::ALL {
        let plan = ConvPlan { kernel, ..base };
        let y = conv2d_with_plan(x.view(), w.view(), None, &opts, plan);
        let g = conv2d_backward_with_plan(x.view(), w.view(), false, dy.view(), &opts, plan);
        if kernel.is_supported() {
            assert!(y.is_ok() && g.is_ok(), "{kernel:?}");
        } else {
            for e in [y.unwrap_err(), g.unwrap_err()] {
                assert!(matches!(e, Error::Config { .. }), "{kernel:?}: {e:?}");
                assert!(e.to_string().contains(kernel.name()), "{e}");
            }
        }
    }
}
