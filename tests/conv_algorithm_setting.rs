//! The public algorithm setting (`Conv2dOptions::algorithm`, `Conv2dConfig::with_algorithm`):
//! `Auto` runs `ConvPlan::choose`'s plan bit for bit; `Fixed` runs auto's plan with the
//! forced passes replaced, and a forced algorithm or kernel that cannot run is a
//! configuration error naming it and why; `Autotune` returns, bit for bit, what the plan
//! it cached gives when run directly, for every pass and on pools of 1 and 3 threads; the
//! `Conv2d` layer honours each setting in forward, backward and backward_params. (Every
//! forced algorithm against the naive reference: `tests/conv_algorithms.rs`.)

mod common;

use common::naive::{self, Case, Params, Shape, assert_close, to64};
use convinit::Error;
use convinit::gemm::Kernel;
use convinit::nn::{Conv2d, Conv2dConfig, Layer};
use convinit::ops::{
    Conv2dOptions, ConvAlgorithm, ConvAlgos, ConvPass, ConvPlan, ForwardAlgo, InputGradAlgo,
    WeightGradAlgo, autotuned_plan, clear_autotune_cache, conv2d, conv2d_backward,
    conv2d_backward_params, conv2d_backward_with_plan, conv2d_with_plan,
};
use ndarray::Array4;
use rand::SeedableRng;
use rand::rngs::StdRng;

const SHAPES: &[Shape] = &[
    // Groups of 1, enough channels for the direct path.
    (3, 8, 10, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    // One input channel, strided (phase forward, phase backward).
    (4, 1, 28, 28, 8, (5, 5), (2, 2), (2, 2), (1, 1), 1),
    // Grouped, dilated: no direct path.
    (2, 6, 9, 11, 4, (3, 2), (1, 2), (1, 0), (2, 1), 2),
    // 1x1, stride 1, unpadded: every algorithm but the depthwise one runs it.
    (2, 8, 6, 7, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    // Depthwise (groups = C), multiplier 2, strided, odd sizes: the depthwise path.
    (3, 4, 11, 9, 8, (3, 3), (2, 2), (1, 1), (1, 1), 4),
    // Depthwise, multiplier 1, 5x5, dilation 2, padding 2, N = 1.
    (1, 6, 12, 13, 6, (5, 5), (1, 1), (2, 2), (2, 2), 6),
];

/// A seeded case of `s` (the naive references come with it, unused here).
fn case(s: Shape, rng: &mut StdRng) -> Case {
    Case::new(s, rng)
}

/// The three passes on `opts`, every result compared bit for bit with the same passes
/// run directly on the plans `plans(pass)`.
fn assert_runs_plans(c: &Case, opts: &Conv2dOptions, plans: impl Fn(ConvPass) -> ConvPlan) {
    let ctx = format!("{:?} {:?}", c.geo, opts.algorithm);
    let y = conv2d(c.x.view(), c.w.view(), Some(c.b.view()), opts).unwrap();
    let g = conv2d_backward(c.x.view(), c.w.view(), true, c.dy.view(), opts).unwrap();
    let p = conv2d_backward_params(c.x.view(), c.w.view(), true, c.dy.view(), opts).unwrap();
    let y_plan = conv2d_with_plan(
        c.x.view(),
        c.w.view(),
        Some(c.b.view()),
        opts,
        plans(ConvPass::Forward),
    )
    .unwrap();
    let g_plan = conv2d_backward_with_plan(
        c.x.view(),
        c.w.view(),
        true,
        c.dy.view(),
        opts,
        plans(ConvPass::Backward),
    )
    .unwrap();
    let p_plan = conv2d_backward_with_plan(
        c.x.view(),
        c.w.view(),
        true,
        c.dy.view(),
        opts,
        plans(ConvPass::BackwardParams),
    )
    .unwrap();
    assert_eq!(y, y_plan, "y, {ctx}");
    assert_eq!(g, g_plan, "backward, {ctx}");
    assert_eq!(p.dw, p_plan.dw, "params-only dw, {ctx}");
    assert_eq!(p.db, p_plan.db, "params-only db, {ctx}");
}

#[test]
fn auto_is_the_default_and_runs_the_chosen_plan() {
    assert_eq!(Conv2dOptions::default().algorithm, ConvAlgorithm::Auto);
    assert_eq!(
        Conv2dConfig::new(1, 2, (3, 3)).algorithm,
        ConvAlgorithm::Auto
    );
    assert_eq!(
        Conv2dConfig::new(1, 2, (3, 3)).options(),
        Conv2dOptions::default()
    );
    let mut rng = StdRng::seed_from_u64(1);
    for &s in SHAPES {
        let c = case(s, &mut rng);
        let auto = ConvPlan::choose(&c.geo, rayon::current_num_threads());
        assert_runs_plans(&c, &c.opts, |_| auto);
        // An empty `Fixed` is auto.
        let none = c
            .opts
            .with_algorithm(ConvAlgorithm::Fixed(ConvAlgos::new()));
        assert_runs_plans(&c, &none, |_| auto);
    }
}

#[test]
fn fixed_replaces_the_forced_passes_only() {
    let mut rng = StdRng::seed_from_u64(2);
    for &s in SHAPES {
        let c = case(s, &mut rng);
        let auto = ConvPlan::choose(&c.geo, rayon::current_num_threads());
        let mut settings = vec![
            ConvAlgos::new().with_forward(ForwardAlgo::Columns),
            ConvAlgos::new().with_input_grad(InputGradAlgo::Phase),
            ConvAlgos::new()
                .with_weight_grad(WeightGradAlgo::Columns)
                .with_input_grad(InputGradAlgo::Columns),
            ConvAlgos::named("phase").unwrap(),
            ConvAlgos::named("columns").unwrap(),
        ];
        if ForwardAlgo::Depthwise.supports(&c.geo) {
            // Depthwise on every pass, and mixed with a column path (not fused).
            settings.extend([
                ConvAlgos::named("depthwise").unwrap(),
                ConvAlgos::new()
                    .with_input_grad(InputGradAlgo::Depthwise)
                    .with_weight_grad(WeightGradAlgo::Columns),
                ConvAlgos::new()
                    .with_forward(ForwardAlgo::Phase)
                    .with_weight_grad(WeightGradAlgo::Depthwise),
            ]);
        }
        for algos in settings {
            let plan = algos.apply_to(auto);
            assert_eq!(plan.forward, algos.forward.unwrap_or(auto.forward));
            assert_eq!(plan.input_grad, algos.input_grad.unwrap_or(auto.input_grad));
            assert_eq!(
                plan.weight_grad,
                algos.weight_grad.unwrap_or(auto.weight_grad)
            );
            assert_eq!(
                (plan.tile_cols, plan.use_map, plan.parallel, plan.kernel),
                (auto.tile_cols, auto.use_map, auto.parallel, auto.kernel)
            );
            let opts = c.opts.with_algorithm(ConvAlgorithm::Fixed(algos));
            assert_runs_plans(&c, &opts, |_| plan);
        }
        // Each kernel this CPU runs, on auto's algorithms.
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
            let algos = ConvAlgos::new().with_kernel(kernel);
            let opts = c.opts.with_algorithm(ConvAlgorithm::Fixed(algos));
            assert_runs_plans(&c, &opts, |_| ConvPlan { kernel, ..auto });
        }
    }
}

#[test]
fn a_forced_algorithm_that_cannot_run_names_itself_and_why() {
    let mut rng = StdRng::seed_from_u64(3);
    // Grouped: no direct path.
    let grouped = case(SHAPES[2], &mut rng);
    // 3x3 kernel: no pointwise path.
    let k3 = case(SHAPES[0], &mut rng);
    let cases = [
        (
            &grouped,
            ConvAlgos::new().with_forward(ForwardAlgo::Direct),
            "direct",
            "groups of 1",
        ),
        (
            &grouped,
            ConvAlgos::new().with_input_grad(InputGradAlgo::Direct),
            "direct",
            "groups of 1",
        ),
        (
            &grouped,
            ConvAlgos::new().with_weight_grad(WeightGradAlgo::Direct),
            "direct",
            "groups of 1",
        ),
        (
            &k3,
            ConvAlgos::named("pointwise").unwrap(),
            "pointwise",
            "1x1 kernel",
        ),
        (
            &k3,
            ConvAlgos::new().with_weight_grad(WeightGradAlgo::Pointwise),
            "pointwise",
            "1x1 kernel",
        ),
        // Groups of 1 with 8 channels, or 2 groups of 3: no depthwise path.
        (
            &k3,
            ConvAlgos::named("depthwise").unwrap(),
            "depthwise",
            "one input channel per group",
        ),
        (
            &grouped,
            ConvAlgos::new().with_input_grad(InputGradAlgo::Depthwise),
            "depthwise",
            "one input channel per group",
        ),
        (
            &grouped,
            ConvAlgos::new().with_weight_grad(WeightGradAlgo::Depthwise),
            "depthwise",
            "one input channel per group",
        ),
    ];
    for (c, algos, name, why) in cases {
        let opts = c.opts.with_algorithm(ConvAlgorithm::Fixed(algos));
        let errors = [
            conv2d(c.x.view(), c.w.view(), None, &opts).unwrap_err(),
            conv2d_backward(c.x.view(), c.w.view(), true, c.dy.view(), &opts).unwrap_err(),
            conv2d_backward_params(c.x.view(), c.w.view(), true, c.dy.view(), &opts).unwrap_err(),
        ];
        for e in errors {
            assert!(matches!(e, Error::Config { .. }), "{algos:?}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(name) && msg.contains(why), "{algos:?}: {msg}");
        }
    }
    // A kernel this CPU lacks: rejected by the options' validation, before any shape.
    for kernel in Kernel::ALL.into_iter().filter(|k| !k.is_supported()) {
        let algos = ConvAlgos::new().with_kernel(kernel);
        let opts = k3.opts.with_algorithm(ConvAlgorithm::Fixed(algos));
        let e = conv2d(k3.x.view(), k3.w.view(), None, &opts).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{kernel:?}: {e:?}");
        assert!(e.to_string().contains(kernel.name()), "{e}");
        let cfg = Conv2dConfig::new(8, 6, (3, 3)).with_algorithm(ConvAlgorithm::Fixed(algos));
        assert!(matches!(cfg.validate(), Err(Error::Config { .. })));
    }
}

#[test]
fn algorithm_names_round_trip() {
    for &a in ForwardAlgo::ALL {
        assert_eq!(ForwardAlgo::from_name(a.name()), Some(a));
    }
    for &a in InputGradAlgo::ALL {
        assert_eq!(InputGradAlgo::from_name(a.name()), Some(a));
    }
    for &a in WeightGradAlgo::ALL {
        assert_eq!(WeightGradAlgo::from_name(a.name()), Some(a));
    }
    assert_eq!(
        ForwardAlgo::from_name(" Direct "),
        Some(ForwardAlgo::Direct)
    );
    assert_eq!(ForwardAlgo::from_name("winograd"), None);
    assert_eq!(ConvAlgos::named("winograd"), None);
}

/// A `Conv2d` layer with `algorithm`, and the same weight and bias.
fn layer(c: &Case, algorithm: ConvAlgorithm) -> Conv2d {
    let (o, cg, kh, kw) = c.geo.w_shape();
    let opts = &c.geo.options;
    let cfg = Conv2dConfig::new(cg * opts.groups, o, (kh, kw))
        .with_stride(opts.stride)
        .with_padding(opts.padding)
        .with_dilation(opts.dilation)
        .with_groups(opts.groups)
        .with_algorithm(algorithm);
    assert_eq!(cfg.options(), c.opts.with_algorithm(algorithm));
    Conv2d::from_parts(cfg, c.w.clone(), Some(c.b.clone())).unwrap()
}

/// The layer's forward, backward and backward_params against the ops on `plans(pass)`.
fn assert_layer_runs_plans(
    c: &Case,
    algorithm: ConvAlgorithm,
    plans: impl Fn(ConvPass) -> ConvPlan,
) {
    let ctx = format!("{:?} {algorithm:?}", c.geo);
    let mut l = layer(c, algorithm);
    let y = l.forward(c.x.view().into_dyn()).unwrap();
    let dx = l.backward(c.dy.view().into_dyn()).unwrap();
    let y_plan = conv2d_with_plan(
        c.x.view(),
        c.w.view(),
        Some(c.b.view()),
        &c.opts,
        plans(ConvPass::Forward),
    )
    .unwrap();
    let g_plan = conv2d_backward_with_plan(
        c.x.view(),
        c.w.view(),
        true,
        c.dy.view(),
        &c.opts,
        plans(ConvPass::Backward),
    )
    .unwrap();
    assert_eq!(y, y_plan.into_dyn(), "layer forward, {ctx}");
    assert_eq!(dx, g_plan.dx.into_dyn(), "layer dx, {ctx}");
    assert_eq!(l.weight_grad(), &g_plan.dw, "layer dw, {ctx}");
    assert_eq!(l.bias_grad(), g_plan.db.as_ref(), "layer db, {ctx}");
    let mut l = layer(c, algorithm);
    l.forward(c.x.view().into_dyn()).unwrap();
    l.backward_params(c.dy.clone().into_dyn()).unwrap();
    let p_plan = conv2d_backward_with_plan(
        c.x.view(),
        c.w.view(),
        true,
        c.dy.view(),
        &c.opts,
        plans(ConvPass::BackwardParams),
    )
    .unwrap();
    assert_eq!(l.weight_grad(), &p_plan.dw, "layer params-only dw, {ctx}");
    assert_eq!(
        l.bias_grad(),
        p_plan.db.as_ref(),
        "layer params-only db, {ctx}"
    );
}

#[test]
fn the_layer_honours_auto_and_fixed() {
    let mut rng = StdRng::seed_from_u64(4);
    for &s in SHAPES {
        let c = case(s, &mut rng);
        let auto = ConvPlan::choose(&c.geo, rayon::current_num_threads());
        assert_layer_runs_plans(&c, ConvAlgorithm::Auto, |_| auto);
        for algos in [
            ConvAlgos::named("columns").unwrap(),
            ConvAlgos::named("phase").unwrap(),
        ] {
            assert_layer_runs_plans(&c, ConvAlgorithm::Fixed(algos), |_| algos.apply_to(auto));
        }
    }
    // A forced algorithm the layer's geometry cannot run fails its forward.
    let c = case(SHAPES[0], &mut rng);
    let mut l = layer(
        &c,
        ConvAlgorithm::Fixed(ConvAlgos::named("pointwise").unwrap()),
    );
    let e = l.forward(c.x.view().into_dyn()).unwrap_err();
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("pointwise"),
        "{e}"
    );
}

/// The autotuned plan of `c` on this pool for `pass`: it exists after a call, runs every
/// pass, and is one of the candidates (auto's knobs, its own algorithms).
fn tuned(c: &Case, pass: ConvPass) -> ConvPlan {
    let threads = rayon::current_num_threads();
    let plan = autotuned_plan(&c.geo, threads, pass)
        .unwrap_or_else(|| panic!("no autotuned plan for {pass:?} of {:?}", c.geo));
    let auto = ConvPlan::choose(&c.geo, threads);
    assert_eq!(
        (plan.tile_cols, plan.use_map, plan.parallel, plan.kernel),
        (auto.tile_cols, auto.use_map, auto.parallel, auto.kernel),
        "{pass:?}"
    );
    assert!(plan.forward.supports(&c.geo));
    assert!(plan.input_grad.supports(&c.geo));
    assert!(plan.weight_grad.supports(&c.geo));
    plan
}

fn check_autotune(rng: &mut StdRng) {
    let threads = rayon::current_num_threads();
    for &s in SHAPES {
        let c = case(s, rng);
        let opts = c.opts.with_algorithm(ConvAlgorithm::Autotune);
        for pass in [
            ConvPass::Forward,
            ConvPass::Backward,
            ConvPass::BackwardParams,
        ] {
            assert_eq!(
                autotuned_plan(&c.geo, threads, pass),
                None,
                "{pass:?} before any call"
            );
        }
        // The first calls tune; their results are what the tuned plans give.
        let y = conv2d(c.x.view(), c.w.view(), Some(c.b.view()), &opts).unwrap();
        let g = conv2d_backward(c.x.view(), c.w.view(), true, c.dy.view(), &opts).unwrap();
        let p = conv2d_backward_params(c.x.view(), c.w.view(), true, c.dy.view(), &opts).unwrap();
        let y_plan = conv2d_with_plan(
            c.x.view(),
            c.w.view(),
            Some(c.b.view()),
            &c.opts,
            tuned(&c, ConvPass::Forward),
        )
        .unwrap();
        let g_plan = conv2d_backward_with_plan(
            c.x.view(),
            c.w.view(),
            true,
            c.dy.view(),
            &c.opts,
            tuned(&c, ConvPass::Backward),
        )
        .unwrap();
        let p_plan = conv2d_backward_with_plan(
            c.x.view(),
            c.w.view(),
            true,
            c.dy.view(),
            &c.opts,
            tuned(&c, ConvPass::BackwardParams),
        )
        .unwrap();
        assert_eq!(y, y_plan, "autotuned y, {:?}", c.geo);
        assert_eq!(g, g_plan, "autotuned backward, {:?}", c.geo);
        assert_eq!(
            (&p.dw, &p.db),
            (&p_plan.dw, &p_plan.db),
            "autotuned params, {:?}",
            c.geo
        );
        // And they are right: the naive f64 reference, within its stated tolerance.
        let (n, _, _, _) = c.geo.x_shape();
        let o = &c.geo.options;
        let params = Params {
            stride: o.stride,
            padding: o.padding,
            dilation: o.dilation,
            groups: o.groups,
        };
        let y_ref = naive::conv2d(&to64(&c.x), &to64(&c.w), Some(&to64(&c.b)), params);
        let (dx_ref, dw_ref, db_ref) =
            naive::conv2d_backward(&to64(&c.x), &to64(&c.w), &to64(&c.dy), params);
        let ctx = format!("autotuned, N = {n}, {:?}", c.geo);
        assert_close("y", &ctx, y.view(), &y_ref);
        assert_close("dx", &ctx, g.dx.view(), &dx_ref);
        assert_close("dw", &ctx, g.dw.view(), &dw_ref);
        assert_close("db", &ctx, g.db.unwrap().view(), &db_ref);
        // Later calls run the cached plans: the same bits, the same plans.
        let plans = [
            ConvPass::Forward,
            ConvPass::Backward,
            ConvPass::BackwardParams,
        ]
        .map(|pass| tuned(&c, pass));
        assert_eq!(
            conv2d(c.x.view(), c.w.view(), Some(c.b.view()), &opts).unwrap(),
            y_plan
        );
        assert_eq!(
            conv2d_backward(c.x.view(), c.w.view(), true, c.dy.view(), &opts).unwrap(),
            g_plan
        );
        assert_eq!(
            plans,
            [
                ConvPass::Forward,
                ConvPass::Backward,
                ConvPass::BackwardParams
            ]
            .map(|pass| tuned(&c, pass))
        );
        // The layer with Autotune runs the same cached plans.
        let [f, b, pp] = plans;
        assert_layer_runs_plans(&c, ConvAlgorithm::Autotune, |pass| match pass {
            ConvPass::Forward => f,
            ConvPass::Backward => b,
            _ => pp,
        });
    }
}

/// One test for everything that reads the process-wide cache, since it also clears it.
#[test]
fn autotune_returns_what_its_plan_gives() {
    let mut rng = StdRng::seed_from_u64(5);
    check_autotune(&mut rng);
    // Another pool size is another key: tuned again, on its own.
    let default = rayon::current_num_threads();
    for threads in [1, 3].into_iter().filter(|&t| t != default) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| check_autotune(&mut StdRng::seed_from_u64(5)));
    }
    let c = case(SHAPES[0], &mut rng);
    let threads = rayon::current_num_threads();
    assert!(autotuned_plan(&c.geo, threads, ConvPass::Forward).is_some());
    clear_autotune_cache();
    assert_eq!(autotuned_plan(&c.geo, threads, ConvPass::Forward), None);
    // Errors are the call's, not the tuner's: a wrong dy shape.
    let opts = c.opts.with_algorithm(ConvAlgorithm::Autotune);
    let bad = Array4::<f32>::zeros((1, 1, 1, 1));
    let e = conv2d_backward(c.x.view(), c.w.view(), true, bad.view(), &opts).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert_eq!(autotuned_plan(&c.geo, threads, ConvPass::Backward), None);
}

#[test]
fn pointwise_plans_follow_the_layout_and_the_channels() {
    use convinit::ops::{Conv2dGeometry, MemoryFormat};
    let plan = |c, o, format| {
        let opts = Conv2dOptions::new().with_memory_format(format);
        let geo = Conv2dGeometry::new("test", [2, c, 5, 5], [o, c, 1, 1], &opts).unwrap();
        let p = ConvPlan::choose(&geo, 2);
        (p.forward, p.input_grad, p.weight_grad)
    };
    let (contiguous, cl) = (MemoryFormat::Contiguous, MemoryFormat::ChannelsLast);
    // Channel-major: the GEMM forward and input gradient; the weight gradient a GEMM too
    // once both sides are wide, else the direct path's.
    assert_eq!(
        plan(64, 128, contiguous),
        (
            ForwardAlgo::Pointwise,
            InputGradAlgo::Pointwise,
            WeightGradAlgo::Pointwise
        )
    );
    assert_eq!(plan(64, 64, contiguous).2, WeightGradAlgo::Direct);
    assert_eq!(plan(32, 128, contiguous).2, WeightGradAlgo::Direct);
    // Channels-last: the direct path for every pass, even with few input channels.
    for c in [3, 64] {
        assert_eq!(
            plan(c, 128, cl),
            (
                ForwardAlgo::Direct,
                InputGradAlgo::Direct,
                WeightGradAlgo::Direct
            ),
            "{c} channels"
        );
    }
}
