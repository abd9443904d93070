//! Every conv path, forced through `conv2d_with_plan` / `conv2d_backward_with_plan`,
//! against the naive f64 convolution of `common/naive.rs` on edge shapes: column tiles
//! that cut output rows and images, several images per GEMM, the im2col index map and
//! the row-wise im2col, the pointwise lowering, serial and parallel splits.

mod common;

use common::naive::{self, Case, Params, Shape, assert_close, random_array, to64};
use convinit::ops::{
    Conv2dGeometry, Conv2dOptions, ConvPlan, ForwardAlgo, InputGradAlgo, WeightGradAlgo,
    conv2d_backward, conv2d_backward_params, conv2d_backward_with_plan, conv2d_with_plan,
};
use ndarray::{Array1, Array4};
use rand::SeedableRng;
use rand::rngs::StdRng;

const SHAPES: &[Shape] = &[
    // N = 1, odd sizes, padding larger than the kernel, stride 2.
    (1, 3, 9, 7, 4, (3, 3), (2, 2), (4, 4), (1, 1), 1),
    // Groups and dilation, several images.
    (5, 4, 11, 13, 6, (3, 2), (1, 2), (1, 0), (2, 1), 2),
    // Output rows longer than small tiles.
    (3, 2, 6, 40, 3, (1, 5), (1, 1), (0, 2), (1, 1), 1),
    // 1x1 stride 1 unpadded (pointwise-capable), with groups.
    (4, 6, 5, 9, 4, (1, 1), (1, 1), (0, 0), (1, 1), 2),
    // 1x1 stride 1 unpadded, one image.
    (1, 8, 12, 12, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    // 1x1 with 70 output channels and 1600 positions: a one-image tile's GEMM runs in
    // column blocks (960 columns each) with the bias added per block.
    (2, 3, 40, 40, 70, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    // 1x1 strided and padded (im2col only).
    (2, 3, 7, 8, 5, (1, 1), (2, 3), (1, 2), (1, 1), 1),
    // The first layers' kind: one input channel, 5x5.
    (9, 1, 12, 12, 8, (5, 5), (2, 2), (2, 2), (1, 1), 1),
    // Output 1x1.
    (3, 2, 3, 3, 2, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    // More output channels than one register tile holds (50: 48 + 2 on AVX-512), with
    // dilation, stride and uneven padding, groups of 1 (the direct path).
    (2, 3, 9, 8, 50, (3, 2), (2, 1), (2, 1), (2, 3), 1),
    // Depths past the direct kernel's block of 384 taps: K = 432 forward, 450 for the
    // input gradient (O * 9), 576 output positions for the weight gradient.
    (2, 48, 10, 10, 50, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 2, 24, 24, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    // Empty images: zero height (all padding), and no channels.
    (2, 3, 0, 4, 5, (1, 1), (1, 1), (1, 1), (1, 1), 1),
    (2, 0, 3, 3, 4, (2, 2), (1, 1), (1, 1), (1, 1), 1),
    // No output channels.
    (2, 3, 5, 5, 0, (3, 3), (2, 1), (1, 1), (1, 1), 1),
];

fn plans(geo: &Conv2dGeometry) -> Vec<ConvPlan> {
    let base = ConvPlan::choose(geo, rayon::current_num_threads());
    let mut out = Vec::new();
    let pointwise =
        geo.kernel == (1, 1) && geo.options.stride == (1, 1) && geo.options.padding == (0, 0);
    // A column lowering: its forward, input-gradient and weight-gradient algorithms.
    let columns = (
        ForwardAlgo::Columns,
        InputGradAlgo::Columns,
        WeightGradAlgo::Columns,
    );
    let pw = (
        ForwardAlgo::Pointwise,
        InputGradAlgo::Pointwise,
        WeightGradAlgo::Pointwise,
    );
    let phase = (
        ForwardAlgo::Phase,
        InputGradAlgo::Phase,
        WeightGradAlgo::Phase,
    );
    let lowerings: &[_] = if pointwise {
        &[columns, pw, phase]
    } else {
        &[columns, phase]
    };
    for &lowering in lowerings {
        // 1 column, a few (cutting output rows), one image, several images, all images.
        for tile_cols in [
            1,
            5,
            17,
            geo.out_h * geo.out_w,
            3 * geo.out_h * geo.out_w + 1,
            4096,
        ] {
            for use_map in [false, true] {
                for parallel in [false, true] {
                    for forward in [lowering.0, ForwardAlgo::Direct, ForwardAlgo::Phase] {
                        let direct = forward == ForwardAlgo::Direct;
                        if direct && geo.options.groups != 1 {
                            continue;
                        }
                        let (input_grad, weight_grad) = if direct {
                            (InputGradAlgo::Direct, WeightGradAlgo::Direct)
                        } else {
                            (lowering.1, lowering.2)
                        };
                        out.push(ConvPlan {
                            forward,
                            input_grad,
                            weight_grad,
                            tile_cols: tile_cols.max(1),
                            parallel,
                            use_map,
                            kernel: base.kernel,
                        });
                    }
                }
            }
        }
    }
    out.push(base);
    out
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
    for plan in plans(&geo) {
        let ctx = format!("{s:?} {plan:?}");
        let y = conv2d_with_plan(x.view(), wt.view(), Some(b.view()), &opts, plan).unwrap();
        assert_close("y", &ctx, y.view(), &y_ref);
        let g =
            conv2d_backward_with_plan(x.view(), wt.view(), true, dy.view(), &opts, plan).unwrap();
        assert_close("dx", &ctx, g.dx.view(), &dx_ref);
        assert_close("dw", &ctx, g.dw.view(), &dw_ref);
        assert_close("db", &ctx, g.db.unwrap().view(), &db_ref);
    }
    // Without the input gradient: the same dw and db, bit for bit.
    let full = conv2d_backward(x.view(), wt.view(), true, dy.view(), &opts).unwrap();
    for with_bias in [true, false] {
        let p = conv2d_backward_params(x.view(), wt.view(), with_bias, dy.view(), &opts).unwrap();
        assert_eq!(p.dw, full.dw, "{s:?} params-only dw");
        assert_eq!(
            p.db,
            with_bias.then(|| full.db.clone().unwrap()),
            "{s:?} db"
        );
    }
}

#[test]
fn every_path_matches_naive_on_edge_shapes() {
    let mut rng = StdRng::seed_from_u64(0xc0ffee);
    for &s in SHAPES {
        check_shape(s, &mut rng);
    }
}

#[test]
fn every_path_matches_naive_in_a_pool_of_three() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    pool.install(every_path_matches_naive_on_edge_shapes);
}

#[test]
fn pointwise_plan_rejects_other_geometries() {
    let x = Array4::<f32>::zeros((1, 2, 5, 5));
    let w = Array4::<f32>::zeros((3, 2, 3, 3));
    let opts = Conv2dOptions::new();
    let geo = Conv2dGeometry::new("test", [1, 2, 5, 5], [3, 2, 3, 3], &opts).unwrap();
    let plan = ConvPlan {
        forward: ForwardAlgo::Pointwise,
        input_grad: InputGradAlgo::Pointwise,
        weight_grad: WeightGradAlgo::Pointwise,
        ..ConvPlan::choose(&geo, 1)
    };
    assert!(conv2d_with_plan(x.view(), w.view(), None, &opts, plan).is_err());
    let dy = Array4::<f32>::zeros((1, 3, 3, 3));
    assert!(conv2d_backward_with_plan(x.view(), w.view(), false, dy.view(), &opts, plan).is_err());
    let zero = ConvPlan {
        tile_cols: 0,
        ..ConvPlan::choose(&geo, 1)
    };
    assert!(conv2d_with_plan(x.view(), w.view(), None, &opts, zero).is_err());
}

#[test]
fn chooser_picks_pointwise_for_1x1_stride_1_unpadded() {
    let opts = Conv2dOptions::new();
    let geo = Conv2dGeometry::new("test", [2, 8, 6, 6], [4, 8, 1, 1], &opts).unwrap();
    assert_eq!(ConvPlan::choose(&geo, 1).forward, ForwardAlgo::Pointwise);
    let geo = Conv2dGeometry::new("test", [2, 8, 6, 6], [4, 8, 3, 3], &opts).unwrap();
    assert_eq!(ConvPlan::choose(&geo, 1).forward, ForwardAlgo::Direct);
    // Input and output past half the L3: the forward copies the input into columns
    // rather than read it from memory in place (the backward stays pointwise).
    let l3 = convinit::cpu::CpuInfo::get().l3_bytes;
    let n = l3 / (4 * 64 * 56 * 56) + 1;
    let geo = Conv2dGeometry::new("test", [n, 64, 56, 56], [128, 64, 1, 1], &opts).unwrap();
    let p = ConvPlan::choose(&geo, 1);
    assert_eq!(
        (p.forward, p.input_grad),
        (ForwardAlgo::Columns, InputGradAlgo::Pointwise)
    );
    // Small images in a batch of 16 or more, with the AVX-512 kernel: the input
    // gradient direct, and the forward too from 64 input channels; not where the
    // weight gradient is the pointwise GEMM (128 outputs, 64 inputs), nor in a batch
    // of 8, nor on 28x28 images.
    let avx512 = convinit::gemm::Kernel::selected() == convinit::gemm::Kernel::Avx512;
    let plan = |x: [usize; 4], o: usize| {
        let geo = Conv2dGeometry::new("test", x, [o, x[1], 1, 1], &opts).unwrap();
        let p = ConvPlan::choose(&geo, 1);
        (p.forward, p.input_grad, p.weight_grad)
    };
    let (pw, direct) = (ForwardAlgo::Pointwise, ForwardAlgo::Direct);
    let (pw_dx, direct_dx) = (InputGradAlgo::Pointwise, InputGradAlgo::Direct);
    let dw = WeightGradAlgo::Direct;
    let want = |on: (ForwardAlgo, InputGradAlgo), off: (ForwardAlgo, InputGradAlgo)| {
        let (f, i) = if avx512 { on } else { off };
        (f, i, dw)
    };
    assert_eq!(
        plan([128, 128, 8, 8], 8),
        want((direct, direct_dx), (pw, pw_dx))
    );
    assert_eq!(
        plan([16, 64, 20, 20], 32),
        want((direct, direct_dx), (pw, pw_dx))
    );
    assert_eq!(
        plan([64, 32, 14, 14], 16),
        want((pw, direct_dx), (pw, pw_dx))
    );
    assert_eq!(plan([8, 128, 20, 20], 32), (pw, pw_dx, dw));
    assert_eq!(plan([32, 64, 28, 28], 32), (pw, pw_dx, dw));
    assert_eq!(
        plan([32, 256, 7, 7], 256),
        (pw, pw_dx, WeightGradAlgo::Pointwise)
    );
    // The pointwise weight gradient for fewer input channels over 2^14 positions: any
    // from 256 outputs, 8 from 128; not 4 -> 128, nor 8 x 28x28, nor the small images
    // whose input gradient runs direct.
    let pw_dw = WeightGradAlgo::Pointwise;
    assert_eq!(plan([32, 3, 28, 28], 256).2, pw_dw);
    assert_eq!(plan([8, 8, 56, 56], 128).2, pw_dw);
    assert_eq!(plan([32, 4, 28, 28], 128).2, dw);
    assert_eq!(plan([8, 3, 28, 28], 256).2, dw);
    let small = plan([128, 32, 14, 14], 128);
    assert_eq!(
        small,
        if avx512 {
            (pw, direct_dx, dw)
        } else {
            (pw, pw_dx, pw_dw)
        }
    );
}

/// The direct path keeps each thread's padded buffers between calls and zeroes their
/// borders only when the layout changes: two geometries whose padded images have the
/// same size but a different inside (8 x 9 padded by (1, 0), 9 x 8 padded by (0, 1):
/// 3 x 10 x 9 against 3 x 9 x 10 floats, the padded `dy` likewise), run one after the
/// other on one thread, each must still see zero borders.
#[test]
fn direct_path_scratch_borders_stay_zero_across_layouts() {
    let mut rng = StdRng::seed_from_u64(7);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let shapes: [Shape; 2] = [
        (2, 3, 8, 9, 20, (3, 3), (1, 1), (1, 0), (1, 1), 1),
        (2, 3, 9, 8, 20, (3, 3), (1, 1), (0, 1), (1, 1), 1),
    ];
    pool.install(|| {
        for round in 0..3 {
            for &(n, c, h, w, o, k, stride, padding, dilation, groups) in &shapes {
                let p = Params {
                    stride,
                    padding,
                    dilation,
                    groups,
                };
                // Large values, so stale data in a border would show at once.
                let x: Array4<f32> = random_array(&mut rng, (n, c, h, w)).mapv(|v: f32| v * 100.0);
                let wt: Array4<f32> = random_array(&mut rng, (o, c, k.0, k.1));
                let opts = Conv2dOptions::new()
                    .with_stride(stride)
                    .with_padding(padding);
                let geo =
                    Conv2dGeometry::new("test", [n, c, h, w], [o, c, k.0, k.1], &opts).unwrap();
                let plan = ConvPlan {
                    forward: ForwardAlgo::Direct,
                    input_grad: InputGradAlgo::Direct,
                    weight_grad: WeightGradAlgo::Direct,
                    ..ConvPlan::choose(&geo, 1)
                };
                let ctx = format!("round {round}, {padding:?}");
                let y_ref = naive::conv2d(&to64(&x), &to64(&wt), None, p);
                let y = conv2d_with_plan(x.view(), wt.view(), None, &opts, plan).unwrap();
                assert_close("y", &ctx, y.view(), &y_ref);
                let dy: Array4<f32> =
                    random_array(&mut rng, y_ref.raw_dim()).mapv(|v: f32| v * 100.0);
                let (dx_ref, dw_ref, _) =
                    naive::conv2d_backward(&to64(&x), &to64(&wt), &to64(&dy), p);
                let g =
                    conv2d_backward_with_plan(x.view(), wt.view(), false, dy.view(), &opts, plan)
                        .unwrap();
                assert_close("dx", &ctx, g.dx.view(), &dx_ref);
                assert_close("dw", &ctx, g.dw.view(), &dw_ref);
            }
        }
    });
}

/// `conv2d_into` overwrites every element with each forward algorithm that runs the
/// geometry, empty images (all padding, no channels) and no output channels included:
/// a buffer of NaN comes back as `conv2d_with_plan`'s bits.
#[test]
fn every_forward_algorithm_overwrites_the_into_buffer() {
    use convinit::ops::{ConvAlgorithm, ConvAlgos, conv2d_into};
    let mut rng = StdRng::seed_from_u64(11);
    for &(n, c, h, w, o, k, stride, padding, dilation, groups) in SHAPES {
        let x: Array4<f32> = random_array(&mut rng, (n, c, h, w));
        let wt: Array4<f32> = random_array(&mut rng, (o, c / groups, k.0, k.1));
        let b: Array1<f32> = random_array(&mut rng, o);
        let opts = Conv2dOptions::new()
            .with_stride(stride)
            .with_padding(padding)
            .with_dilation(dilation)
            .with_groups(groups);
        let geo =
            Conv2dGeometry::new("test", [n, c, h, w], [o, c / groups, k.0, k.1], &opts).unwrap();
        for &algo in ForwardAlgo::ALL {
            if !algo.supports(&geo) {
                continue;
            }
            let plan = ConvPlan {
                forward: algo,
                ..ConvPlan::choose(&geo, rayon::current_num_threads())
            };
            let y = conv2d_with_plan(x.view(), wt.view(), Some(b.view()), &opts, plan).unwrap();
            let forced =
                opts.with_algorithm(ConvAlgorithm::Fixed(ConvAlgos::new().with_forward(algo)));
            let mut out = Array4::from_elem(y.raw_dim(), f32::NAN);
            conv2d_into(x.view(), wt.view(), Some(b.view()), &forced, out.view_mut()).unwrap();
            let bits = |a: &Array4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&y), "{:?} {algo:?}", (n, c, h, w, o, k));
        }
    }
}

/// The Winograd defaults of `choose.rs`: F4 for both the forward and the input
/// gradient of 3x3 stride-1 convs with 32 to 256 channels (16 forward; the input
/// gradient also 24 input channels) and enough work
/// (resnet_64, vgg_256), F2 past 256, the F4 weight gradient from 64 channels and 196
/// tiles per reduction chunk, the direct path below 64 channels, on small batches, and for strided or
/// grouped 3x3 convs.
#[test]
fn chooser_picks_winograd_for_large_3x3_stride_1_convs() {
    let p1 = Conv2dOptions::new().with_padding((1, 1));
    let plan = |x: [usize; 4], w: [usize; 4], opts: &Conv2dOptions| {
        ConvPlan::choose(&Conv2dGeometry::new("test", x, w, opts).unwrap(), 2)
    };
    for (x, w, dw) in [
        ([32, 64, 56, 56], [64, 64, 3, 3], WeightGradAlgo::WinogradF4),
        ([8, 256, 28, 28], [256, 256, 3, 3], WeightGradAlgo::Direct),
    ] {
        let p = plan(x, w, &p1);
        assert_eq!(p.forward, ForwardAlgo::WinogradF4, "{x:?}");
        assert_eq!(p.input_grad, InputGradAlgo::WinogradF4, "{x:?}");
        assert_eq!(p.weight_grad, dw, "{x:?}");
    }
    // The Winograd weight gradient: at least 64 channels on both sides and 196 tiles
    // per reduction chunk (4 images of 28x28 here); not on 32 channels or 2-image
    // chunks of 28x28.
    let dw = plan([32, 128, 28, 28], [64, 128, 3, 3], &p1);
    assert_eq!(dw.weight_grad, WeightGradAlgo::WinogradF4);
    assert_eq!(
        plan([32, 128, 28, 28], [32, 128, 3, 3], &p1).weight_grad,
        WeightGradAlgo::Direct
    );
    assert_eq!(
        plan([16, 128, 28, 28], [128, 128, 3, 3], &p1).weight_grad,
        WeightGradAlgo::Direct
    );
    // Past 256 channels summed over, F2 (F4's error nears the tolerance): 512 input
    // channels forward, 128 output channels for the input gradient; and the reverse.
    let wide_in = plan([64, 512, 14, 14], [128, 512, 3, 3], &p1);
    assert_eq!(wide_in.forward, ForwardAlgo::WinogradF2);
    assert_eq!(wide_in.input_grad, InputGradAlgo::WinogradF4);
    let wide_out = plan([64, 128, 14, 14], [512, 128, 3, 3], &p1);
    assert_eq!(wide_out.forward, ForwardAlgo::WinogradF4);
    assert_eq!(wide_out.input_grad, InputGradAlgo::WinogradF2);
    // The forward from 16 input channels (8 on a Zen 4 with the AVX-512 kernel) and
    // 2^17 positions x channels; the input gradient from 32 output channels and 2^18.
    let narrow = plan([32, 16, 28, 28], [16, 16, 3, 3], &p1);
    assert_eq!(narrow.forward, ForwardAlgo::WinogradF4);
    assert_eq!(narrow.input_grad, InputGradAlgo::Direct);
    // ... and 24 input channels (the channels it produces): a first layer of RGB
    // images runs its input gradient on the column lowering, 16 channels direct.
    let rgb = plan([8, 3, 224, 224], [64, 3, 3, 3], &p1);
    assert_eq!(rgb.input_grad, InputGradAlgo::Columns);
    // Under 8 input channels, stride 1: direct with at most 3 outputs per input
    // channel, else the column lowering; strided layers keep the phase lowering.
    assert_eq!(
        plan([64, 4, 28, 28], [8, 4, 3, 3], &p1).input_grad,
        InputGradAlgo::Direct
    );
    assert_eq!(
        plan([64, 2, 28, 28], [16, 2, 3, 3], &p1).input_grad,
        InputGradAlgo::Columns
    );
    assert_eq!(
        plan([64, 4, 28, 28], [8, 4, 3, 3], &p1.with_stride((2, 2))).input_grad,
        InputGradAlgo::Phase
    );
    assert_eq!(
        plan([32, 16, 28, 28], [128, 16, 3, 3], &p1).input_grad,
        InputGradAlgo::Direct
    );
    assert_eq!(
        plan([32, 24, 28, 28], [128, 24, 3, 3], &p1).input_grad,
        InputGradAlgo::WinogradF4
    );
    let zen4 = convinit::cpu::CpuInfo::get().microarch == convinit::cpu::Microarch::Zen4
        && convinit::gemm::Kernel::selected() == convinit::gemm::Kernel::Avx512;
    let narrower = plan([32, 8, 28, 28], [8, 8, 3, 3], &p1);
    let want = if zen4 {
        ForwardAlgo::WinogradF4
    } else {
        ForwardAlgo::Direct
    };
    assert_eq!(narrower.forward, want);
    assert_eq!(
        plan([32, 7, 28, 28], [8, 7, 3, 3], &p1).forward,
        ForwardAlgo::Phase
    );
    // Fewer than 8 input channels: the clipped forward from 20% of the taps in the
    // padding (23% for 7x7, padding 3, 14x14), from 8% with the AVX-512 kernel and 2
    // channels or more (8.4% for 5x5, padding 2, 28x28), else phase.
    let p2 = Conv2dOptions::new().with_padding((2, 2));
    let p3 = Conv2dOptions::new().with_padding((3, 3));
    for c in [1, 3] {
        assert_eq!(
            plan([32, c, 14, 14], [32, c, 7, 7], &p3).forward,
            ForwardAlgo::Clipped
        );
    }
    assert_eq!(
        plan([32, 1, 28, 28], [16, 1, 5, 5], &p2).forward,
        ForwardAlgo::Phase
    );
    let avx512 = convinit::gemm::Kernel::selected() == convinit::gemm::Kernel::Avx512;
    assert_eq!(
        plan([32, 4, 28, 28], [16, 4, 5, 5], &p2).forward,
        if avx512 {
            ForwardAlgo::Clipped
        } else {
            ForwardAlgo::Phase
        }
    );
    // ... and with the AVX-512 kernel, from 2 channels, on output rows under 12
    // whatever the padding (6 wide here); not one channel, nor 22-wide rows.
    let s2 = Conv2dOptions::new().with_stride((2, 2));
    assert_eq!(
        plan([64, 4, 14, 14], [32, 4, 3, 3], &s2).forward,
        if avx512 {
            ForwardAlgo::Clipped
        } else {
            ForwardAlgo::Phase
        }
    );
    assert_eq!(
        plan([64, 1, 14, 14], [16, 1, 3, 3], &s2).forward,
        ForwardAlgo::Phase
    );
    assert_eq!(
        plan([64, 3, 24, 24], [32, 3, 3, 3], &Conv2dOptions::new()).forward,
        ForwardAlgo::Phase
    );
    // Too little work for Winograd: the direct forward, clipped to the image where
    // at least 8% of the taps read padding (9.3% for a 3x3 kernel, padding 1, 14x14)
    // and the weights are small.
    let small = plan([8, 64, 14, 14], [64, 64, 3, 3], &p1);
    assert_eq!(small.forward, ForwardAlgo::Clipped);
    assert_eq!(small.input_grad, InputGradAlgo::Direct);
    let medium = plan([8, 32, 28, 28], [64, 32, 3, 3], &p1);
    assert_eq!(medium.forward, ForwardAlgo::WinogradF4);
    assert_eq!(medium.input_grad, InputGradAlgo::WinogradF4);
    // F4 on outputs of 8x8 or more: 7x7 runs clipped (18% of the taps in the padding).
    assert_eq!(
        plan([64, 64, 8, 8], [64, 64, 3, 3], &p1).forward,
        ForwardAlgo::WinogradF4
    );
    assert_eq!(
        plan([64, 64, 7, 7], [64, 64, 3, 3], &p1).forward,
        ForwardAlgo::Clipped
    );
    // F2 on 6x6 and 7x7 outputs where the direct forward would run (no padding);
    // not on 5x5.
    let valid = Conv2dOptions::new();
    assert_eq!(
        plan([128, 128, 8, 8], [48, 128, 3, 3], &valid).forward,
        ForwardAlgo::WinogradF2
    );
    assert_eq!(
        plan([64, 64, 7, 7], [64, 64, 3, 3], &valid).forward,
        ForwardAlgo::Direct
    );
    // ... F2 (past 256 channels) on any size.
    assert_eq!(
        plan([16, 512, 7, 7], [512, 512, 3, 3], &p1).forward,
        ForwardAlgo::WinogradF2
    );
    // Below that work, F4 still for 2^25 multiply-adds over 64 full 4x4 tiles: one
    // image through a wide layer, a few through 16x16 ones; not on 14x14 outputs (77%
    // of their tiles), nor over 32 tiles.
    assert_eq!(
        plan([1, 16, 56, 56], [128, 16, 3, 3], &p1).forward,
        ForwardAlgo::WinogradF4
    );
    assert_eq!(
        plan([4, 64, 16, 16], [256, 64, 3, 3], &p1).forward,
        ForwardAlgo::WinogradF4
    );
    assert_eq!(
        plan([2, 64, 16, 16], [256, 64, 3, 3], &p1).forward,
        ForwardAlgo::Clipped
    );
    assert_eq!(
        plan([16, 16, 14, 14], [128, 16, 3, 3], &p1).forward,
        ForwardAlgo::Clipped
    );
    // One image on two threads: the direct forward splits its positions over the
    // pool, the clipped one would run on one thread.
    let geo = Conv2dGeometry::new("test", [1, 64, 14, 14], [64, 64, 3, 3], &p1).unwrap();
    assert_eq!(ConvPlan::choose(&geo, 2).forward, ForwardAlgo::Direct);
    assert_eq!(ConvPlan::choose(&geo, 1).forward, ForwardAlgo::Clipped);
    let geo = Conv2dGeometry::new("test", [2, 64, 14, 14], [64, 64, 3, 3], &p1).unwrap();
    assert_eq!(ConvPlan::choose(&geo, 2).forward, ForwardAlgo::Clipped);
    let tiny = plan([2, 16, 14, 14], [16, 16, 3, 3], &p1);
    assert_eq!(tiny.forward, ForwardAlgo::Clipped);
    let s2 = p1.with_stride((2, 2));
    // seed_l3: 31% of the taps in the padding.
    assert_eq!(
        plan([100, 16, 7, 7], [32, 16, 3, 3], &s2).forward,
        ForwardAlgo::Clipped
    );
    // 4.7% of the taps in the padding; and large weights (9.4 MB) with 9.3%.
    assert_eq!(
        plan([8, 16, 28, 28], [32, 16, 3, 3], &s2).forward,
        ForwardAlgo::Direct
    );
    assert_eq!(
        plan([8, 512, 14, 14], [512, 512, 3, 3], &s2).forward,
        ForwardAlgo::Direct
    );
    // Large weights (2.4 MB) with 30.6% of the taps in the padding.
    assert_eq!(
        plan([8, 256, 7, 7], [256, 256, 3, 3], &s2).forward,
        ForwardAlgo::Clipped
    );
    // Packed weights past three L2s (9.4 MB) over at most four 7x7 images (48 KiB of
    // weights per output position): the column forward, which packs them once; eight
    // images, 2.4 MB of weights and channels-last tensors keep the direct forward.
    for n in [1, 4] {
        assert_eq!(
            plan([n, 512, 7, 7], [512, 512, 3, 3], &p1).forward,
            ForwardAlgo::Columns
        );
    }
    // Not where the clipped forward skips the padding's taps (7x7 kernel on 7x7
    // images, padding 3: 43% of them).
    let p3 = Conv2dOptions::new().with_padding((3, 3));
    assert_eq!(
        plan([4, 128, 7, 7], [256, 128, 7, 7], &p3).forward,
        ForwardAlgo::Clipped
    );
    for (x, w, opts) in [
        ([8, 512, 7, 7], [512, 512, 3, 3], p1),
        ([1, 256, 7, 7], [256, 256, 3, 3], p1),
        (
            [1, 512, 7, 7],
            [512, 512, 3, 3],
            p1.with_memory_format(convinit::ops::MemoryFormat::ChannelsLast),
        ),
    ] {
        assert_ne!(plan(x, w, &opts).forward, ForwardAlgo::Columns, "{x:?}");
    }
    // A ResNet shortcut (1x1, stride 2): the column forward in NCHW, direct in
    // channels-last.
    let shortcut = Conv2dOptions::new().with_stride((2, 2));
    let p = plan([32, 64, 56, 56], [128, 64, 1, 1], &shortcut);
    assert_eq!(
        (p.forward, p.input_grad, p.weight_grad),
        (
            ForwardAlgo::Columns,
            InputGradAlgo::Direct,
            WeightGradAlgo::Direct
        )
    );
    let last = shortcut.with_memory_format(convinit::ops::MemoryFormat::ChannelsLast);
    assert_eq!(
        plan([32, 64, 56, 56], [128, 64, 1, 1], &last).forward,
        ForwardAlgo::Direct
    );
    // A kernel nearly the input's size without padding: the direct input gradient
    // would gather mostly zeros from `dy`'s padding (5.4x the column lowering's work
    // for 5x5 onto 7x7); 3x3 onto 7x7 (1.96x) and a padded 7x7 kernel on 5x5 (1x: the
    // column lowering computes the padding's taps too) stay direct.
    let valid = Conv2dOptions::new();
    assert_eq!(
        plan([64, 32, 7, 7], [64, 32, 5, 5], &valid).input_grad,
        InputGradAlgo::Columns
    );
    assert_eq!(
        plan([64, 32, 7, 7], [64, 32, 3, 3], &valid).input_grad,
        InputGradAlgo::Direct
    );
    assert_eq!(
        plan([64, 64, 5, 5], [24, 64, 7, 7], &p3).input_grad,
        InputGradAlgo::Direct
    );
    // ... and with few output channels past twice the work: the column lowering's
    // GEMM sums only `O` terms per element. 7x7 onto 16x16 (2.56x): 8 and 16 outputs
    // (ratio x outputs 20 and 41) direct, 32 (82) columns.
    for (o, want) in [
        (8, InputGradAlgo::Direct),
        (16, InputGradAlgo::Direct),
        (32, InputGradAlgo::Columns),
    ] {
        assert_eq!(
            plan([4, 32, 16, 16], [o, 32, 7, 7], &valid).input_grad,
            want
        );
    }
    let strided = plan([32, 64, 56, 56], [64, 64, 3, 3], &p1.with_stride((2, 2)));
    assert_eq!(strided.forward, ForwardAlgo::Direct);
    let grouped = plan([32, 64, 56, 56], [64, 32, 3, 3], &p1.with_groups(2));
    assert!(!matches!(
        grouped.forward,
        ForwardAlgo::WinogradF2 | ForwardAlgo::WinogradF4
    ));
}

/// The clipped forward reads only the taps inside the image, so padding far larger
/// than the input costs no padded copy: a terabyte of it (which the direct path
/// refuses to allocate, see `hardening`) runs under auto, each window that reaches the
/// single input pixel summing it, every other output the bias.
#[test]
fn clipped_forward_runs_padding_far_past_memory() {
    let side = 1usize << 19;
    let opts = Conv2dOptions::new()
        .with_padding((side, side))
        .with_stride((side, side));
    let x = Array4::<f32>::from_elem((1, 8, 1, 1), 2.0);
    let w = Array4::<f32>::from_elem((3, 8, 1, 1), 0.5);
    let b = Array1::from(vec![0.25, -1.0, 3.0]);
    let geo = Conv2dGeometry::new("far", [1, 8, 1, 1], [3, 8, 1, 1], &opts).unwrap();
    assert_eq!(ConvPlan::choose(&geo, 2).forward, ForwardAlgo::Clipped);
    let y = convinit::ops::conv2d(x.view(), w.view(), Some(b.view()), &opts).unwrap();
    assert_eq!(y.dim(), (1, 3, 3, 3));
    for ((_, o, i, j), &v) in y.indexed_iter() {
        let inside = if (i, j) == (1, 1) { 8.0 } else { 0.0 };
        assert_eq!(v, inside + b[o], "y[{o}, {i}, {j}]");
    }
}
