//! `convinit::init` against PyTorch's formulas and reference values.
//!
//! - Gains, fans and default bounds: against the `init_stats` fixtures made by PyTorch
//!   (`tests/fixtures/init_*.safetensors`, metadata only), to 1e-12, plus our own tables.
//! - Every initialiser statistically, on tensors of 18 432 to 262 144 values.
//!
//! ## Statistical tolerances
//! All tolerances are 6 standard errors of the statistic for the sample size `n`, so a
//! correct implementation fails with probability ~2e-9 per check (and the RNGs are
//! seeded, so the outcome is fixed), while the mistakes we guard against (fan_in and
//! fan_out swapped, a missing sqrt(3), the wrong gain) move the statistic by 10 to 100%,
//! i.e. by hundreds of standard errors:
//! - sample mean: standard error `sigma / sqrt(n)`;
//! - sample std: standard error about `sigma * sqrt((kurtosis - 1) / (4 n))`, i.e.
//!   `sigma / sqrt(2 n)` for a normal (kurtosis 3) and `sigma * sqrt(0.8 / (4 n))` for a
//!   uniform (kurtosis 1.8). A truncated normal has kurtosis below 3, so the normal's
//!   value is a conservative bound for it;
//! - a proportion `p`: standard error `sqrt(p (1 - p) / n)`.
//!
//! Uniform draws are also checked to reach their bound: the chance that none of `n`
//! draws from U(-b, b) lands within `b * 1e-3` of either end is `(1 - 1e-3)^n`, below
//! 1e-8 for every `n` used here; this is what catches a bound that is too small.

use std::collections::HashMap;

use convinit::Error;
use convinit::init::{
    self, BiasInit, FanMode, Init, Nonlinearity, calculate_gain, default_bounds, fans, kaiming_std,
    special, xavier_std,
};
use ndarray::{Array1, Array2, ArrayD, IxDyn, ShapeBuilder};
use rand::SeedableRng;
use rand::rngs::StdRng;
use safetensors::SafeTensors;

// ---------------------------------------------------------------------------------------
// Helpers

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// The string metadata of a fixture.
fn fixture_meta(name: &str) -> HashMap<String, String> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
    meta.metadata().clone().expect("__metadata__")
}

fn meta_f64(meta: &HashMap<String, String>, key: &str) -> f64 {
    meta[key]
        .parse()
        .unwrap_or_else(|e| panic!("{key} = {:?}: {e}", meta[key]))
}

/// Sample statistics, accumulated in f64.
#[derive(Debug)]
struct Stats {
    n: usize,
    mean: f64,
    std: f64,
    min: f64,
    max: f64,
}

fn stats<'a>(values: impl IntoIterator<Item = &'a f32>) -> Stats {
    let v: Vec<f64> = values.into_iter().map(|&x| x as f64).collect();
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
    Stats {
        n,
        mean,
        std: var.sqrt(),
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Kurtosis (E[(x - mu)^4] / sigma^4) of a uniform and of a normal distribution.
const KURT_UNIFORM: f64 = 1.8;
const KURT_NORMAL: f64 = 3.0;

/// The sample mean is within 6 standard errors (`sigma / sqrt(n)`) of `mu`.
fn check_mean(s: &Stats, mu: f64, sigma: f64, what: &str) {
    let tol = 6.0 * sigma / (s.n as f64).sqrt();
    assert!(
        (s.mean - mu).abs() <= tol,
        "{what}: mean {} vs {mu} (tolerance {tol})",
        s.mean
    );
}

/// The sample std is within 6 standard errors (`sigma * sqrt((kurt - 1) / (4n))`) of
/// `sigma`.
fn check_std(s: &Stats, sigma: f64, kurtosis: f64, what: &str) {
    let tol = 6.0 * sigma * ((kurtosis - 1.0) / (4.0 * s.n as f64)).sqrt();
    assert!(
        (s.std - sigma).abs() <= tol,
        "{what}: std {} vs {sigma} (tolerance {tol})",
        s.std
    );
}

/// All of U(-bound, bound)'s checks: inside the bound, reaching it, mean 0, std
/// bound / sqrt(3).
fn check_symmetric_uniform(values: &[f32], bound: f64, what: &str) {
    let s = stats(values);
    let b32 = bound as f32 as f64;
    assert!(
        s.min >= -b32 && s.max <= b32,
        "{what}: [{}, {}] exceeds ±{bound}",
        s.min,
        s.max
    );
    assert!(
        s.max >= bound * (1.0 - 1e-3) && s.min <= -bound * (1.0 - 1e-3),
        "{what}: [{}, {}] does not reach ±{bound}",
        s.min,
        s.max
    );
    let sigma = bound / 3f64.sqrt();
    check_mean(&s, 0.0, sigma, what);
    check_std(&s, sigma, KURT_UNIFORM, what);
}

/// All of N(0, sigma^2)'s checks: mean, std, and the share beyond 2 sigma (4.55%), which
/// tells a normal from a uniform of the same std (that has none).
fn check_centered_normal(values: &[f32], sigma: f64, what: &str) {
    let s = stats(values);
    check_mean(&s, 0.0, sigma, what);
    check_std(&s, sigma, KURT_NORMAL, what);
    let n = values.len() as f64;
    let p = 0.045_500_263_896_358_42; // P(|Z| > 2) = erfc(sqrt 2)
    let share = values
        .iter()
        .filter(|&&v| (v as f64).abs() > 2.0 * sigma)
        .count() as f64
        / n;
    let tol = 6.0 * (p * (1.0 - p) / n).sqrt();
    assert!(
        (share - p).abs() <= tol,
        "{what}: {share} beyond 2 sigma vs {p} (tolerance {tol})"
    );
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:e}, want {want:e} (diff {:e}, tolerance {tol:e})",
        (got - want).abs()
    );
}

fn assert_config(r: convinit::Result<()>, op: &str, needle: &str) {
    match r {
        Err(Error::Config { op: o, message }) => {
            assert_eq!(o, op, "wrong op in {message:?}");
            assert!(
                message.contains(needle),
                "{op}: {message:?} does not mention {needle:?}"
            );
        }
        other => panic!("{op}: expected Error::Config mentioning {needle:?}, got {other:?}"),
    }
}

fn assert_shape_err<T: std::fmt::Debug>(r: convinit::Result<T>, op: &str) {
    match r {
        Err(Error::Shape { op: o, message }) => assert_eq!(o, op, "wrong op in {message:?}"),
        other => panic!("{op}: expected Error::Shape, got {other:?}"),
    }
}

/// A 256 x 1024 weight (fan_in 1024, fan_out 256): the two fan modes differ by 2x in std.
const BIG: (usize, usize) = (256, 1024);
/// A conv weight (128, 64, 3, 3): fan_in 576, fan_out 1152, 73 728 values.
const CONV: [usize; 4] = [128, 64, 3, 3];

// ---------------------------------------------------------------------------------------
// Gains, fans and default bounds

#[test]
fn fixtures_fans_gains_and_default_bounds_match_pytorch() {
    for (file, shape) in [
        ("init_conv_32x1x5x5.safetensors", vec![32usize, 1, 5, 5]),
        ("init_linear_50x784.safetensors", vec![50, 784]),
    ] {
        let meta = fixture_meta(file);
        assert_eq!(meta["op"], "init_stats");
        let parsed: Vec<usize> = meta["shape"]
            .split(',')
            .map(|d| d.parse().unwrap())
            .collect();
        assert_eq!(parsed, shape, "{file}: shape");
        let (fan_in, fan_out) = fans(&shape).unwrap();
        assert_eq!(fan_in.to_string(), meta["fan_in"], "{file}: fan_in");
        assert_eq!(fan_out.to_string(), meta["fan_out"], "{file}: fan_out");

        let mut checked = 0;
        for (key, value) in &meta {
            let Some(name) = key.strip_prefix("gain.") else {
                continue;
            };
            let nl = match name.strip_prefix("leaky_relu(") {
                Some(rest) => Nonlinearity::LeakyRelu(rest.trim_end_matches(')').parse().unwrap()),
                None => Nonlinearity::from_name(name).unwrap(),
            };
            let want: f64 = value.parse().unwrap();
            assert_close(calculate_gain(nl), want, 1e-12, &format!("{file}: {key}"));
            checked += 1;
        }
        // linear, conv2d, sigmoid, tanh, relu, selu, leaky_relu and three explicit slopes.
        assert_eq!(checked, 10, "{file}: number of gain entries");

        let (wb, bb) = default_bounds(&shape).unwrap();
        let want_wb = meta_f64(&meta, "default_weight_bound");
        let want_bb = meta_f64(&meta, "default_bias_bound");
        assert_close(wb, want_wb, 1e-12, &format!("{file}: default_weight_bound"));
        assert_close(bb, want_bb, 1e-12, &format!("{file}: default_bias_bound"));
        // The default weight bound is kaiming_uniform's with a = sqrt 5.
        let k = kaiming_std(&shape, FanMode::FanIn, Nonlinearity::LeakyRelu(5f64.sqrt())).unwrap();
        assert_close(
            3f64.sqrt() * k,
            want_wb,
            1e-12,
            &format!("{file}: kaiming a=sqrt5"),
        );
    }
}

#[test]
fn gain_table_for_every_nonlinearity() {
    let s2 = 2f64.sqrt();
    let table = [
        ("linear", 1.0),
        ("conv1d", 1.0),
        ("conv2d", 1.0),
        ("conv3d", 1.0),
        ("conv_transpose1d", 1.0),
        ("conv_transpose2d", 1.0),
        ("conv_transpose3d", 1.0),
        ("sigmoid", 1.0),
        ("tanh", 5.0 / 3.0),
        ("relu", s2),
        ("leaky_relu", (2.0 / 1.0001f64).sqrt()),
        ("selu", 0.75),
    ];
    for (name, want) in table {
        let nl = Nonlinearity::from_name(name).unwrap();
        assert_close(calculate_gain(nl), want, 1e-15, name);
    }
    for (slope, want) in [
        (0.0, s2),
        (0.01, 1.414_142_856_997_835_4),
        (0.2, 1.386_750_490_563_072_8),
        (1.0, 1.0),
        (-0.5, (2.0f64 / 1.25).sqrt()),
        (5f64.sqrt(), 1.0 / 3f64.sqrt()),
    ] {
        assert_close(
            calculate_gain(Nonlinearity::LeakyRelu(slope)),
            want,
            1e-15,
            &format!("leaky_relu({slope})"),
        );
    }
    assert_eq!(
        Nonlinearity::LEAKY_RELU_DEFAULT,
        Nonlinearity::LeakyRelu(0.01)
    );
    assert_config(
        Nonlinearity::from_name("gelu").map(|_| ()),
        "calculate_gain",
        "gelu",
    );
}

#[test]
fn fans_table_any_rank() {
    let table: [(&[usize], (usize, usize)); 7] = [
        (&[50, 784], (784, 50)),
        (&[7, 3], (3, 7)),
        (&[16, 4, 5], (20, 80)),         // conv1d (C_out, C_in, k)
        (&[32, 1, 5, 5], (25, 800)),     // conv2d
        (&[128, 16, 3, 3], (144, 1152)), // conv2d, C_in = 64, groups = 4
        (&[8, 2, 3, 4, 5], (120, 480)),  // conv3d
        (&[4, 0, 3, 3], (0, 36)),        // zero-element weight
    ];
    for (shape, want) in table {
        assert_eq!(fans(shape).unwrap(), want, "{shape:?}");
    }
    assert_shape_err(fans(&[10]), "fans");
    assert_shape_err(fans(&[]), "fans");
    assert_shape_err(fans(&[2, usize::MAX, 3]), "fans");
    assert_shape_err(default_bounds(&[10]), "fans");
}

#[test]
fn kaiming_and_xavier_std_formulas() {
    let (s2, s5) = (2f64.sqrt(), 5f64.sqrt());
    let shape = [CONV[0], CONV[1], CONV[2], CONV[3]];
    // std = gain / sqrt(fan); PyTorch's `a` is the slope of LeakyRelu.
    let cases = [
        (FanMode::FanIn, Nonlinearity::Relu, s2 / 24.0),
        (FanMode::FanOut, Nonlinearity::Relu, s2 / 1152f64.sqrt()),
        (FanMode::FanIn, Nonlinearity::LeakyRelu(0.0), s2 / 24.0),
        (
            FanMode::FanIn,
            Nonlinearity::LeakyRelu(0.2),
            (2.0 / 1.04f64).sqrt() / 24.0,
        ),
        (
            FanMode::FanIn,
            Nonlinearity::LeakyRelu(s5),
            (1.0 / 3f64).sqrt() / 24.0,
        ),
        (
            FanMode::FanIn,
            Nonlinearity::LEAKY_RELU_DEFAULT,
            (2.0 / 1.0001f64).sqrt() / 24.0,
        ),
        (
            FanMode::FanOut,
            Nonlinearity::Tanh,
            5.0 / 3.0 / 1152f64.sqrt(),
        ),
        (FanMode::FanIn, Nonlinearity::Selu, 0.75 / 24.0),
    ];
    for (mode, nl, want) in cases {
        let got = kaiming_std(&shape, mode, nl).unwrap();
        assert_close(got, want, 1e-15, &format!("kaiming {mode:?} {nl:?}"));
    }
    assert_close(
        xavier_std(&[50, 784], 1.0).unwrap(),
        (2.0f64 / 834.0).sqrt(),
        1e-15,
        "xavier",
    );
    assert_close(
        xavier_std(&shape, 5.0 / 3.0).unwrap(),
        5.0 / 3.0 * (2.0f64 / 1728.0).sqrt(),
        1e-15,
        "xavier conv",
    );
    // Zero fans (zero-element weights): zero std, never NaN or inf.
    assert_eq!(
        kaiming_std(&[5, 0], FanMode::FanIn, Nonlinearity::Relu).unwrap(),
        0.0
    );
    assert_eq!(
        kaiming_std(&[0, 5], FanMode::FanOut, Nonlinearity::Relu).unwrap(),
        0.0
    );
    assert_eq!(xavier_std(&[0, 0], 1.0).unwrap(), 0.0);
    assert_shape_err(
        kaiming_std(&[5], FanMode::FanIn, Nonlinearity::Relu),
        "kaiming_std",
    );
    assert_shape_err(xavier_std(&[5], 1.0), "xavier_std");
}

// ---------------------------------------------------------------------------------------
// Each initialiser, statistically

#[test]
fn kaiming_uniform_statistics_both_modes() {
    let s2 = 2f64.sqrt();
    for (mode, fan) in [(FanMode::FanIn, 1024.0), (FanMode::FanOut, 256.0)] {
        let mut w = Array2::<f32>::zeros(BIG);
        init::kaiming_uniform(w.view_mut(), mode, Nonlinearity::Relu, &mut rng(1)).unwrap();
        let bound = 3f64.sqrt() * s2 / f64::sqrt(fan);
        check_symmetric_uniform(w.as_slice().unwrap(), bound, &format!("256x1024 {mode:?}"));
    }
    for (mode, fan) in [(FanMode::FanIn, 576.0), (FanMode::FanOut, 1152.0)] {
        let mut w = ArrayD::<f32>::zeros(IxDyn(&CONV));
        let nl = Nonlinearity::LeakyRelu(0.2);
        init::kaiming_uniform(w.view_mut(), mode, nl, &mut rng(2)).unwrap();
        let bound = 3f64.sqrt() * (2.0 / 1.04f64).sqrt() / f64::sqrt(fan);
        check_symmetric_uniform(
            w.as_slice().unwrap(),
            bound,
            &format!("conv a=0.2 {mode:?}"),
        );
    }
}

#[test]
fn kaiming_takes_its_slope_from_leaky_relu_only() {
    // PyTorch: bound = sqrt(3) * calculate_gain('leaky_relu', a) / sqrt(fan_in). The draws
    // are exactly those of uniform(-bound, bound) / normal(0, std) from the same seed, so a
    // slope that is dropped or taken from elsewhere changes every value.
    let fan_in = 36.0f64;
    for a in [0.0, 0.01, 0.2, 5f64.sqrt(), -1.5] {
        let gain = calculate_gain(Nonlinearity::LeakyRelu(a));
        let std = gain / fan_in.sqrt();
        let nl = Nonlinearity::LeakyRelu(a);
        let (mut k, mut u) = (Array2::<f32>::zeros((8, 36)), Array2::<f32>::zeros((8, 36)));
        init::kaiming_uniform(k.view_mut(), FanMode::FanIn, nl, &mut rng(40)).unwrap();
        let bound = 3f64.sqrt() * std;
        init::uniform(u.view_mut(), -bound, bound, &mut rng(40)).unwrap();
        assert_eq!(k, u, "uniform a = {a}");
        init::kaiming_normal(k.view_mut(), FanMode::FanIn, nl, &mut rng(41)).unwrap();
        init::normal(u.view_mut(), 0.0, std, &mut rng(41)).unwrap();
        assert_eq!(k, u, "normal a = {a}");
        // Through Init, the same.
        let mut d = ArrayD::<f32>::zeros(IxDyn(&[8, 36]));
        Init::KaimingUniform {
            mode: FanMode::FanIn,
            nonlinearity: nl,
        }
        .apply(d.view_mut(), None, &mut rng(40))
        .unwrap();
        init::uniform(u.view_mut(), -bound, bound, &mut rng(40)).unwrap();
        assert_eq!(d, u.into_dyn(), "Init a = {a}");
    }
    // PyTorch's default Conv2d / Linear weight is kaiming_uniform_(a = sqrt 5).
    let (mut k, mut p) = (Array2::<f32>::zeros((8, 36)), Array2::<f32>::zeros((8, 36)));
    let sqrt5 = Nonlinearity::LeakyRelu(5f64.sqrt());
    init::kaiming_uniform(k.view_mut(), FanMode::FanIn, sqrt5, &mut rng(42)).unwrap();
    init::pytorch_default_reset(p.view_mut().into_dyn(), None, &mut rng(42)).unwrap();
    assert_eq!(k, p);
}

#[test]
fn kaiming_normal_statistics_both_modes() {
    for (mode, fan) in [(FanMode::FanIn, 1024.0), (FanMode::FanOut, 256.0)] {
        let mut w = Array2::<f32>::zeros(BIG);
        init::kaiming_normal(w.view_mut(), mode, Nonlinearity::Relu, &mut rng(3)).unwrap();
        let sigma = 2f64.sqrt() / f64::sqrt(fan);
        check_centered_normal(w.as_slice().unwrap(), sigma, &format!("256x1024 {mode:?}"));
    }
    for (mode, fan) in [(FanMode::FanIn, 576.0), (FanMode::FanOut, 1152.0)] {
        let mut w = ArrayD::<f32>::zeros(IxDyn(&CONV));
        init::kaiming_normal(w.view_mut(), mode, Nonlinearity::Tanh, &mut rng(4)).unwrap();
        let sigma = 5.0 / 3.0 / f64::sqrt(fan);
        check_centered_normal(w.as_slice().unwrap(), sigma, &format!("conv tanh {mode:?}"));
    }
}

#[test]
fn xavier_statistics() {
    for gain in [1.0, 5.0 / 3.0] {
        let sigma = gain * (2.0f64 / 1280.0).sqrt();
        let mut w = Array2::<f32>::zeros(BIG);
        init::xavier_uniform(w.view_mut(), gain, &mut rng(5)).unwrap();
        check_symmetric_uniform(w.as_slice().unwrap(), 3f64.sqrt() * sigma, "xavier_uniform");
        init::xavier_normal(w.view_mut(), gain, &mut rng(6)).unwrap();
        check_centered_normal(w.as_slice().unwrap(), sigma, "xavier_normal");
    }
    let mut w = ArrayD::<f32>::zeros(IxDyn(&CONV));
    init::xavier_normal(w.view_mut(), 1.0, &mut rng(7)).unwrap();
    check_centered_normal(
        w.as_slice().unwrap(),
        (2.0f64 / 1728.0).sqrt(),
        "xavier conv",
    );
}

#[test]
fn uniform_and_normal_statistics() {
    let mut w = Array2::<f32>::zeros(BIG);
    for (low, high) in [(-0.3, 0.7), (0.0, 1.0)] {
        init::uniform(w.view_mut(), low, high, &mut rng(8)).unwrap();
        let s = stats(w.iter());
        let width = high - low;
        assert!(
            s.min >= low && s.max <= high,
            "U({low}, {high}): [{}, {}]",
            s.min,
            s.max
        );
        assert!(s.min <= low + width * 1e-3 && s.max >= high - width * 1e-3);
        let sigma = width / 12f64.sqrt();
        check_mean(&s, (low + high) / 2.0, sigma, "uniform");
        check_std(&s, sigma, KURT_UNIFORM, "uniform");
    }
    init::uniform(w.view_mut(), 0.25, 0.25, &mut rng(8)).unwrap();
    assert!(w.iter().all(|&v| v == 0.25), "U(a, a) fills a");

    init::normal(w.view_mut(), 0.5, 2.0, &mut rng(9)).unwrap();
    let s = stats(w.iter());
    check_mean(&s, 0.5, 2.0, "normal");
    check_std(&s, 2.0, KURT_NORMAL, "normal");
    init::normal(w.view_mut(), -1.5, 0.0, &mut rng(9)).unwrap();
    assert!(w.iter().all(|&v| v == -1.5), "N(m, 0) fills m");
}

/// Mean and std of N(mu, sigma^2) truncated to [a, b]:
/// with alpha = (a - mu) / sigma, beta = (b - mu) / sigma, Z = Phi(beta) - Phi(alpha),
/// mean = mu + sigma (phi(alpha) - phi(beta)) / Z,
/// var = sigma^2 [1 + (alpha phi(alpha) - beta phi(beta)) / Z - ((phi(alpha) - phi(beta)) / Z)^2].
fn truncated_moments(mu: f64, sigma: f64, a: f64, b: f64) -> (f64, f64) {
    let pdf = |x: f64| (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let (al, be) = ((a - mu) / sigma, (b - mu) / sigma);
    let z = special::norm_cdf(be) - special::norm_cdf(al);
    let d = (pdf(al) - pdf(be)) / z;
    let var = sigma * sigma * (1.0 + (al * pdf(al) - be * pdf(be)) / z - d * d);
    (mu + sigma * d, var.sqrt())
}

#[test]
fn trunc_normal_statistics() {
    // Reference moments from mpmath (30 digits) cross-check the formula above.
    let (m, s) = truncated_moments(0.0, 1.0, -2.0, 2.0);
    assert_close(m, 0.0, 1e-15, "moments mean");
    assert_close(s, 0.879_625_661_034_239_8, 1e-12, "moments std");
    let (m, s) = truncated_moments(0.5, 1.0, -1.0, 3.0);
    assert_close(m, 0.620_810_499_281_598_8, 1e-12, "moments mean");
    assert_close(s, 0.853_553_264_930_237_6, 1e-12, "moments std");

    for (mean, std, a, b) in [
        (0.0, 1.0, -2.0, 2.0),
        (0.5, 1.0, -1.0, 3.0),
        (0.0, 0.02, -0.04, 0.04),
    ] {
        let mut w = Array2::<f32>::zeros(BIG);
        init::trunc_normal(w.view_mut(), mean, std, a, b, &mut rng(10)).unwrap();
        let st = stats(w.iter());
        let what = format!("trunc_normal({mean}, {std}, {a}, {b})");
        assert!(
            st.min >= a as f32 as f64 && st.max <= b as f32 as f64,
            "{what}: [{}, {}]",
            st.min,
            st.max
        );
        // The truncated density at either end is at least phi(2.5) / Z = 0.019 per unit
        // std (the (0.5, 1, -1, 3) case's upper end), so a draw lands within 1% of the
        // width of a given bound with probability > 7e-4: all 262 144 missing it has
        // probability below e^-180.
        let width = b - a;
        assert!(
            st.min <= a + width * 1e-2 && st.max >= b - width * 1e-2,
            "{what}: [{}, {}]",
            st.min,
            st.max
        );
        let (tm, ts) = truncated_moments(mean, std, a, b);
        check_mean(&st, tm, ts, &what);
        check_std(&st, ts, KURT_NORMAL, &what);
    }

    // Far in a tail, the inverse-CDF method degrades (PyTorch warns) but stays in [a, b].
    let mut w = Array2::<f32>::zeros((16, 16));
    init::trunc_normal(w.view_mut(), 0.0, 1.0, 10.0, 12.0, &mut rng(11)).unwrap();
    assert!(
        w.iter()
            .all(|&v| v.is_finite() && (10.0..=12.0).contains(&v))
    );
    init::trunc_normal(w.view_mut(), 0.0, 1.0, -40.0, -39.0, &mut rng(11)).unwrap();
    assert!(
        w.iter()
            .all(|&v| v.is_finite() && (-40.0..=-39.0).contains(&v))
    );
}

/// max |(M M^T or M^T M) - gain^2 I| over the entries, in f64.
fn orthogonality_error(w: &Array2<f32>, gain: f64) -> f64 {
    let w = w.mapv(|v| v as f64);
    let (r, c) = w.dim();
    let g = if r <= c { w.dot(&w.t()) } else { w.t().dot(&w) };
    let n = g.nrows();
    let mut err = 0.0f64;
    for i in 0..n {
        for j in 0..n {
            let want = if i == j { gain * gain } else { 0.0 };
            err = err.max((g[[i, j]] - want).abs());
        }
    }
    err
}

#[test]
fn orthogonal_rows_and_columns() {
    for (shape, gain) in [
        (vec![256usize, 1024], 1.0),
        (vec![1024, 256], 1.0),
        (vec![64, 64], 2.0),
        (vec![64, 16, 3, 3], 1.0),
        (vec![200, 8, 1, 1], 0.5),
        (vec![1, 10], 1.0),
        (vec![10, 1], -1.0),
    ] {
        let mut w = ArrayD::<f32>::zeros(IxDyn(&shape));
        init::orthogonal(w.view_mut(), gain, &mut rng(12)).unwrap();
        let rows = shape[0];
        let m = w
            .into_shape_with_order((rows, shape.iter().product::<usize>() / rows))
            .unwrap();
        let err = orthogonality_error(&m.to_owned(), gain);
        assert!(
            err <= 1e-5 * gain * gain,
            "{shape:?} gain {gain}: error {err:e}"
        );
        // Not a trivial answer: the entries vary.
        let s = stats(m.iter());
        assert!(s.std > 0.0 || m.len() == 1, "{shape:?}: constant matrix");
    }
}

#[test]
fn constant_zeros_ones_exact() {
    let mut w = Array2::<f32>::from_elem((7, 9), 3.0);
    init::zeros(w.view_mut());
    assert!(w.iter().all(|&v| v == 0.0));
    init::ones(w.view_mut());
    assert!(w.iter().all(|&v| v == 1.0));
    init::constant(w.view_mut(), 0.1).unwrap();
    assert!(w.iter().all(|&v| v == 0.1f32));
    init::constant(w.view_mut(), -2.5).unwrap();
    assert!(w.iter().all(|&v| v == -2.5));
    let mut d = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 4]));
    Init::Ones.apply(d.view_mut(), None, &mut rng(0)).unwrap();
    assert!(d.iter().all(|&v| v == 1.0));
    Init::Constant(0.3)
        .apply(d.view_mut(), None, &mut rng(0))
        .unwrap();
    assert!(d.iter().all(|&v| v == 0.3f32));
    Init::Zeros.apply(d.view_mut(), None, &mut rng(0)).unwrap();
    assert!(d.iter().all(|&v| v == 0.0));
}

#[test]
fn default_reset_grouped_conv_uses_c_over_groups() {
    // Conv2d(64, 128, kernel 3, groups 4): weight (128, 16, 3, 3), fan_in = 16 * 9 = 144,
    // so both bounds are 1/12 (with C_in = 64 instead, they would be 1/24).
    let mut w = ArrayD::<f32>::zeros(IxDyn(&[128, 16, 3, 3]));
    let mut b = Array1::<f32>::zeros(128);
    init::pytorch_default_reset(w.view_mut(), Some(b.view_mut()), &mut rng(14)).unwrap();
    let bound = 1.0 / 12.0;
    assert_eq!(default_bounds(w.shape()).unwrap().1, bound);
    check_symmetric_uniform(w.as_slice().unwrap(), bound, "grouped conv weight");
    // 128 biases: all inside; P(all within half the bound) = 2^-128.
    let sb = stats(b.iter());
    assert!(
        sb.min >= -bound && sb.max <= bound,
        "bias [{}, {}]",
        sb.min,
        sb.max
    );
    assert!(
        sb.max.max(-sb.min) > bound / 2.0,
        "bias does not spread to 1/12"
    );

    // Linear(784, 50): weight and bias U(-1/28, 1/28).
    let mut w = ArrayD::<f32>::zeros(IxDyn(&[50, 784]));
    let mut b = Array1::<f32>::zeros(50);
    init::pytorch_default_reset(w.view_mut(), Some(b.view_mut()), &mut rng(15)).unwrap();
    check_symmetric_uniform(w.as_slice().unwrap(), 1.0 / 28.0, "linear weight");
    assert!(b.iter().all(|&v| (v as f64).abs() <= 1.0 / 28.0) && b.iter().any(|&v| v != 0.0));

    // Init::PytorchDefault is exactly the same draw, weight then bias.
    let (mut w2, mut b2) = (
        ArrayD::<f32>::zeros(IxDyn(&[50, 784])),
        Array1::<f32>::zeros(50),
    );
    Init::PytorchDefault
        .apply(w2.view_mut(), Some(b2.view_mut()), &mut rng(15))
        .unwrap();
    assert_eq!(w, w2);
    assert_eq!(b, b2);
}

// ---------------------------------------------------------------------------------------
// Init, BiasInit and defaults

fn all_schemes() -> Vec<Init> {
    vec![
        Init::PytorchDefault,
        Init::KAIMING_UNIFORM,
        Init::KAIMING_NORMAL,
        Init::KaimingNormal {
            mode: FanMode::FanOut,
            nonlinearity: Nonlinearity::Relu,
        },
        Init::XAVIER_UNIFORM,
        Init::XAVIER_NORMAL,
        Init::UNIFORM,
        Init::NORMAL,
        Init::TRUNC_NORMAL,
        Init::Constant(0.5),
        Init::Zeros,
        Init::Ones,
        Init::ORTHOGONAL,
    ]
}

#[test]
fn defaults_are_pytorchs() {
    assert_eq!(Init::default(), Init::PytorchDefault);
    assert_eq!(FanMode::default(), FanMode::FanIn);
    assert_eq!(BiasInit::default(), BiasInit::Zeros);
    let relu_like = Init::KaimingUniform {
        mode: FanMode::FanIn,
        nonlinearity: Nonlinearity::Relu,
    };
    // kaiming_uniform_() with PyTorch's defaults (a = 0, fan_in, leaky_relu) has gain
    // sqrt 2, i.e. draws exactly what the relu version draws.
    let mut w1 = ArrayD::<f32>::zeros(IxDyn(&[20, 30]));
    let mut w2 = w1.clone();
    Init::KAIMING_UNIFORM
        .apply(w1.view_mut(), None, &mut rng(16))
        .unwrap();
    relu_like.apply(w2.view_mut(), None, &mut rng(16)).unwrap();
    assert_eq!(w1, w2);
    assert_eq!(Init::XAVIER_UNIFORM, Init::XavierUniform { gain: 1.0 });
    assert_eq!(Init::XAVIER_NORMAL, Init::XavierNormal { gain: 1.0 });
    assert_eq!(
        Init::UNIFORM,
        Init::Uniform {
            low: 0.0,
            high: 1.0
        }
    );
    assert_eq!(
        Init::NORMAL,
        Init::Normal {
            mean: 0.0,
            std: 1.0
        }
    );
    assert_eq!(
        Init::TRUNC_NORMAL,
        Init::TruncNormal {
            mean: 0.0,
            std: 1.0,
            a: -2.0,
            b: 2.0
        }
    );
    assert_eq!(Init::ORTHOGONAL, Init::Orthogonal { gain: 1.0 });
}

#[test]
fn bias_rule_per_scheme() {
    for scheme in all_schemes() {
        let mut w = ArrayD::<f32>::zeros(IxDyn(&[16, 8, 3, 3]));
        let mut b = Array1::<f32>::from_elem(16, 7.0);
        scheme
            .apply(w.view_mut(), Some(b.view_mut()), &mut rng(17))
            .unwrap();
        if scheme == Init::PytorchDefault {
            assert_eq!(scheme.bias_init(), BiasInit::PytorchDefault);
            let bound = 1.0 / 72f64.sqrt();
            assert!(b.iter().all(|&v| (v as f64).abs() <= bound), "{b}");
            assert!(b.iter().any(|&v| v != 0.0));
        } else {
            assert_eq!(scheme.bias_init(), BiasInit::Zeros, "{scheme:?}");
            assert!(b.iter().all(|&v| v == 0.0), "{scheme:?}: bias {b}");
        }
    }
    // Explicit bias rules.
    let w0 = ArrayD::<f32>::zeros(IxDyn(&[16, 8]));
    type Check = fn(&Array1<f32>) -> bool;
    let cases: [(BiasInit, Check); 5] = [
        (BiasInit::Unchanged, |b| b.iter().all(|&v| v == 7.0)),
        (BiasInit::Constant(0.1), |b| b.iter().all(|&v| v == 0.1f32)),
        (BiasInit::Zeros, |b| b.iter().all(|&v| v == 0.0)),
        (
            BiasInit::Uniform {
                low: 1.0,
                high: 2.0,
            },
            |b| b.iter().all(|&v| (1.0..=2.0).contains(&v)) && b.iter().any(|&v| v != b[0]),
        ),
        (
            BiasInit::Normal {
                mean: -3.0,
                std: 0.0,
            },
            |b| b.iter().all(|&v| v == -3.0),
        ),
    ];
    for (rule, ok) in cases {
        let mut w = w0.clone();
        let mut b = Array1::<f32>::from_elem(16, 7.0);
        Init::XAVIER_UNIFORM
            .apply_with_bias(w.view_mut(), Some(b.view_mut()), rule, &mut rng(18))
            .unwrap();
        assert!(ok(&b), "{rule:?}: {b}");
        assert!(
            w.iter().any(|&v| v != 0.0),
            "{rule:?}: weight not initialised"
        );
    }
    // The PyTorch bias rule works under any weight scheme, with fan_in from the weight.
    let mut w = ArrayD::<f32>::zeros(IxDyn(&[16, 4, 5, 5]));
    let mut b = Array1::<f32>::zeros(16);
    Init::Zeros
        .apply_with_bias(
            w.view_mut(),
            Some(b.view_mut()),
            BiasInit::PytorchDefault,
            &mut rng(19),
        )
        .unwrap();
    assert!(b.iter().all(|&v| (v as f64).abs() <= 0.1) && b.iter().any(|&v| v != 0.0));
}

// ---------------------------------------------------------------------------------------
// Determinism

fn draw(scheme: Init, seed: u64) -> (ArrayD<f32>, Array1<f32>) {
    let mut w = ArrayD::<f32>::zeros(IxDyn(&[32, 16, 3, 3]));
    let mut b = Array1::<f32>::zeros(32);
    scheme
        .apply_with_bias(
            w.view_mut(),
            Some(b.view_mut()),
            BiasInit::PytorchDefault,
            &mut rng(seed),
        )
        .unwrap();
    (w, b)
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn seeded_draws_are_bit_identical_at_any_thread_count() {
    for scheme in all_schemes() {
        let first = draw(scheme, 2024);
        let bits = |(w, b): &(ArrayD<f32>, Array1<f32>)| -> Vec<u32> {
            w.iter().chain(b.iter()).map(|v| v.to_bits()).collect()
        };
        assert_eq!(
            bits(&first),
            bits(&draw(scheme, 2024)),
            "{scheme:?}: second call"
        );
        for threads in [1, 2] {
            let pooled = in_pool(threads, || draw(scheme, 2024));
            assert_eq!(bits(&first), bits(&pooled), "{scheme:?}: {threads} threads");
        }
        let other = draw(scheme, 2025);
        // The bias always differs (PyTorch rule); the weight too unless it is constant.
        assert_ne!(first.1, other.1, "{scheme:?}: bias ignores the seed");
        let constant_weight = matches!(scheme, Init::Constant(_) | Init::Zeros | Init::Ones);
        assert_eq!(
            first.0 == other.0,
            constant_weight,
            "{scheme:?}: weight vs seed"
        );
    }
}

#[test]
fn memory_layout_does_not_change_the_values() {
    let mut c = Array2::<f32>::zeros((30, 40));
    let mut f = Array2::<f32>::zeros((30, 40).f());
    init::kaiming_normal(
        c.view_mut(),
        FanMode::FanIn,
        Nonlinearity::Relu,
        &mut rng(20),
    )
    .unwrap();
    init::kaiming_normal(
        f.view_mut(),
        FanMode::FanIn,
        Nonlinearity::Relu,
        &mut rng(20),
    )
    .unwrap();
    assert_eq!(c, f);
    init::orthogonal(c.view_mut(), 1.0, &mut rng(21)).unwrap();
    init::orthogonal(f.view_mut(), 1.0, &mut rng(21)).unwrap();
    assert_eq!(c, f);
}

// ---------------------------------------------------------------------------------------
// Error paths and edge cases

#[test]
fn bad_parameters_are_config_errors_naming_function_and_values() {
    let mut w = Array2::<f32>::from_elem((4, 5), 7.0);
    let mut r = rng(22);
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    assert_config(
        init::uniform(w.view_mut(), 1.0, 0.0, &mut r),
        "uniform",
        "low = 1, high = 0",
    );
    assert_config(
        init::uniform(w.view_mut(), nan, 0.0, &mut r),
        "uniform",
        "low = NaN",
    );
    assert_config(
        init::uniform(w.view_mut(), 0.0, inf, &mut r),
        "uniform",
        "high = inf",
    );
    assert_config(
        init::uniform(w.view_mut(), 1e40, 2e40, &mut r),
        "uniform",
        "low = 1",
    );
    assert_config(
        init::uniform(w.view_mut(), -3e38, 3e38, &mut r),
        "uniform",
        "overflows f32",
    );
    assert_config(
        init::normal(w.view_mut(), 0.0, -1.0, &mut r),
        "normal",
        "std = -1",
    );
    assert_config(
        init::normal(w.view_mut(), nan, 1.0, &mut r),
        "normal",
        "mean = NaN",
    );
    assert_config(
        init::normal(w.view_mut(), 0.0, inf, &mut r),
        "normal",
        "std = inf",
    );
    let tn = "trunc_normal";
    assert_config(
        init::trunc_normal(w.view_mut(), 0.0, 1.0, 2.0, -2.0, &mut r),
        tn,
        "a = 2, b = -2",
    );
    assert_config(
        init::trunc_normal(w.view_mut(), 0.0, 1.0, 1.0, 1.0, &mut r),
        tn,
        "a = 1, b = 1",
    );
    assert_config(
        init::trunc_normal(w.view_mut(), 0.0, 0.0, -2.0, 2.0, &mut r),
        tn,
        "std = 0",
    );
    assert_config(
        init::trunc_normal(w.view_mut(), 0.0, -1.0, -2.0, 2.0, &mut r),
        tn,
        "std = -1",
    );
    assert_config(
        init::trunc_normal(w.view_mut(), 0.0, 1.0, -inf, 2.0, &mut r),
        tn,
        "a = -inf",
    );
    assert_config(
        init::trunc_normal(w.view_mut(), nan, 1.0, -2.0, 2.0, &mut r),
        tn,
        "mean = NaN",
    );
    assert_config(init::constant(w.view_mut(), nan), "constant", "value = NaN");
    assert_config(
        init::constant(w.view_mut(), -inf),
        "constant",
        "value = -inf",
    );
    assert_config(
        init::kaiming_uniform(
            w.view_mut(),
            FanMode::FanIn,
            Nonlinearity::LeakyRelu(nan),
            &mut r,
        ),
        "kaiming_uniform",
        "slope a = NaN",
    );
    assert_config(
        init::kaiming_normal(
            w.view_mut(),
            FanMode::FanOut,
            Nonlinearity::LeakyRelu(inf),
            &mut r,
        ),
        "kaiming_normal",
        "slope a = inf",
    );
    assert_config(
        Init::KaimingUniform {
            mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::LeakyRelu(-inf),
        }
        .apply(w.view_mut().into_dyn(), None, &mut r),
        "kaiming_uniform",
        "slope a = -inf",
    );
    assert_config(
        init::xavier_uniform(w.view_mut(), -1.0, &mut r),
        "xavier_uniform",
        "gain = -1",
    );
    assert_config(
        init::xavier_normal(w.view_mut(), nan, &mut r),
        "xavier_normal",
        "gain = NaN",
    );
    assert_config(
        init::orthogonal(w.view_mut(), inf, &mut r),
        "orthogonal",
        "gain = inf",
    );
    // Through Init, and a bad bias rule, which is checked before the weight is touched.
    let wd = || ArrayD::<f32>::from_elem(IxDyn(&[4, 5]), 7.0);
    let mut d = wd();
    assert_config(
        Init::Uniform {
            low: 2.0,
            high: 1.0,
        }
        .apply(d.view_mut(), None, &mut r),
        "uniform",
        "low = 2, high = 1",
    );
    let mut b = Array1::<f32>::from_elem(4, 7.0);
    assert_config(
        Init::XAVIER_NORMAL.apply_with_bias(
            d.view_mut(),
            Some(b.view_mut()),
            BiasInit::Normal {
                mean: 0.0,
                std: -2.0,
            },
            &mut r,
        ),
        "BiasInit::Normal",
        "std = -2",
    );
    assert_config(
        Init::Zeros.apply_with_bias(d.view_mut(), None, BiasInit::Constant(nan), &mut r),
        "BiasInit::Constant",
        "value = NaN",
    );
    assert_config(
        Init::Zeros.apply_with_bias(
            d.view_mut(),
            None,
            BiasInit::Uniform {
                low: 0.0,
                high: -1.0,
            },
            &mut r,
        ),
        "BiasInit::Uniform",
        "low = 0, high = -1",
    );
    // Nothing was written by any failed call.
    assert!(w.iter().all(|&v| v == 7.0), "weight modified on error");
    assert!(
        d == wd() && b.iter().all(|&v| v == 7.0),
        "Init modified tensors on error"
    );
}

#[test]
fn rank_below_two_is_a_shape_error_where_fans_are_needed() {
    let mut r = rng(23);
    let relu = Nonlinearity::Relu;
    for shape in [vec![10usize], vec![], vec![0]] {
        let mut v = ArrayD::<f32>::from_elem(IxDyn(&shape), 7.0);
        let m = FanMode::FanIn;
        assert_shape_err(
            init::kaiming_uniform(v.view_mut(), m, relu, &mut r),
            "kaiming_uniform",
        );
        assert_shape_err(
            init::kaiming_normal(v.view_mut(), m, relu, &mut r),
            "kaiming_normal",
        );
        assert_shape_err(
            init::xavier_uniform(v.view_mut(), 1.0, &mut r),
            "xavier_uniform",
        );
        assert_shape_err(
            init::xavier_normal(v.view_mut(), 1.0, &mut r),
            "xavier_normal",
        );
        assert_shape_err(init::orthogonal(v.view_mut(), 1.0, &mut r), "orthogonal");
        assert_shape_err(
            init::pytorch_default_reset(v.view_mut(), None, &mut r),
            "pytorch_default_reset",
        );
        assert_shape_err(
            Init::PytorchDefault.apply(v.view_mut(), None, &mut r),
            "pytorch_default_reset",
        );
        assert_shape_err(
            Init::XAVIER_UNIFORM.apply(v.view_mut(), None, &mut r),
            "xavier_uniform",
        );
        // The PyTorch bias rule needs the weight's fans even when the weight scheme does not.
        assert_shape_err(
            Init::UNIFORM.apply_with_bias(v.view_mut(), None, BiasInit::PytorchDefault, &mut r),
            "pytorch_default_reset",
        );
        assert!(v.iter().all(|&x| x == 7.0), "{shape:?}: modified on error");
    }
    // Schemes without fans accept any rank, as PyTorch.
    let mut v = Array1::<f32>::zeros(10);
    init::uniform(v.view_mut(), -1.0, 1.0, &mut r).unwrap();
    init::normal(v.view_mut(), 0.0, 1.0, &mut r).unwrap();
    init::trunc_normal(v.view_mut(), 0.0, 1.0, -2.0, 2.0, &mut r).unwrap();
    Init::Ones
        .apply(v.view_mut().into_dyn(), None, &mut r)
        .unwrap();
}

#[test]
fn zero_element_weights_are_a_no_op() {
    let mut r = rng(24);
    let relu = Nonlinearity::Relu;
    for shape in [vec![0usize, 5], vec![5, 0], vec![4, 0, 3, 3], vec![0, 0]] {
        let mut w = ArrayD::<f32>::zeros(IxDyn(&shape));
        for mode in [FanMode::FanIn, FanMode::FanOut] {
            init::kaiming_uniform(w.view_mut(), mode, relu, &mut r).unwrap();
            init::kaiming_normal(w.view_mut(), mode, relu, &mut r).unwrap();
        }
        init::xavier_uniform(w.view_mut(), 1.0, &mut r).unwrap();
        init::xavier_normal(w.view_mut(), 1.0, &mut r).unwrap();
        init::orthogonal(w.view_mut(), 1.0, &mut r).unwrap();
        // PyTorch's reset: `if fan_in != 0` guards the bias, so it stays as it was.
        let mut b = Array1::<f32>::from_elem(3, 7.0);
        init::pytorch_default_reset(w.view_mut(), Some(b.view_mut()), &mut r).unwrap();
        if fans(&shape).unwrap().0 == 0 {
            assert!(b.iter().all(|&v| v == 7.0), "{shape:?}: bias touched");
        } else {
            assert!(
                b.iter().all(|&v| v != 7.0),
                "{shape:?}: bias not initialised"
            );
        }
        let (wb, bb) = default_bounds(&shape).unwrap();
        assert!(
            wb.is_finite() && bb.is_finite(),
            "{shape:?}: bounds {wb}, {bb}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// erf, erfc, erfinv, norm_cdf

#[test]
fn erf_and_erfc_match_known_values() {
    // (x, erf(x), erfc(x)) from mpmath at 50 digits, rounded to f64.
    let table = [
        (1e-9, 1.128_379_167_095_512_7e-9, 0.999_999_998_871_620_8),
        (0.1, 0.112_462_916_018_284_9, 0.887_537_083_981_715),
        (0.5, 0.520_499_877_813_046_5, 0.479_500_122_186_953_5),
        (0.84375, 0.767_225_661_232_341_6, 0.232_774_338_767_658_38),
        (1.0, 0.842_700_792_949_714_9, 0.157_299_207_050_285_13),
        (1.25, 0.922_900_128_256_458_3, 0.077_099_871_743_541_77),
        (1.5, 0.966_105_146_475_310_8, 0.033_894_853_524_689_274),
        (2.0, 0.995_322_265_018_952_7, 0.004_677_734_981_047_266),
        (2.857, 0.999_946_641_739_913_1, 5.335_826_008_684_637_4e-5),
        (3.0, 0.999_977_909_503_001_4, 2.209_049_699_858_544e-5),
        (4.5, 0.999_999_999_803_383_9, 1.966_160_441_542_887_6e-10),
        (-2.5, -0.999_593_047_982_555, 1.999_593_047_982_555),
        (6.5, 1.0, 3.842_148_327_120_647_5e-20),
    ];
    for (x, e, c) in table {
        assert_close(
            special::erf(x),
            e,
            1e-15 * e.abs().max(1e-300),
            &format!("erf({x})"),
        );
        assert_close(special::erfc(x), c, 1e-14 * c, &format!("erfc({x})"));
        assert_eq!(special::erf(-x), -special::erf(x), "erf is odd");
    }
    assert_eq!(special::erf(0.0), 0.0);
    assert_eq!(special::erf(f64::INFINITY), 1.0);
    assert_eq!(special::erf(f64::NEG_INFINITY), -1.0);
    assert!(special::erf(f64::NAN).is_nan());
    assert_close(
        special::norm_cdf(1.0),
        0.841_344_746_068_542_9,
        1e-15,
        "cdf(1)",
    );
    assert_close(
        special::norm_cdf(-2.0),
        0.022_750_131_948_179_21,
        1e-16,
        "cdf(-2)",
    );
}

#[test]
fn erfinv_matches_known_values() {
    // (y, erfinv(y)) from mpmath at 50 digits for the exact f64 y, rounded to f64.
    let table = [
        (1e-10, 8.862_269_254_527_581e-11),
        (0.1, 0.088_855_990_494_257_69),
        (0.5, 0.476_936_276_204_469_9),
        (-0.3, -0.272_462_714_726_754_3),
        (0.9, 1.163_087_153_676_674_3),
        (0.99, 1.821_386_367_718_449_4),
        (0.999999, 3.458_910_737_275_499),
        (0.9999999999, 4.572_824_958_544_925),
        (-0.999999999999999, -5.675_915_739_744_713),
        (1.0 - f64::EPSILON / 2.0, 5.863_584_748_755_167_6),
        (-0.954_499_736_103_641_6, -std::f64::consts::SQRT_2),
    ];
    for (y, want) in table {
        let got = special::erfinv(y);
        assert_close(got, want, 1e-13 * want.abs(), &format!("erfinv({y})"));
    }
    assert_eq!(special::erfinv(0.0), 0.0);
    assert_eq!(special::erfinv(1.0), f64::INFINITY);
    assert_eq!(special::erfinv(-1.0), f64::NEG_INFINITY);
    assert!(special::erfinv(1.0 + 1e-15).is_nan());
    assert!(special::erfinv(f64::NAN).is_nan());
    // erf(erfinv(y)) = y across (-1, 1): within 2 ulp of y, and near +-1 the complement
    // 1 - |y| is recovered to 1e-12 relative through erfc.
    for k in -999..=999 {
        let y = k as f64 / 1000.0;
        let x = special::erfinv(y);
        assert_close(
            special::erf(x),
            y,
            4.0 * f64::EPSILON,
            &format!("erf(erfinv({y}))"),
        );
    }
    for e in 1..=52 {
        let c = 2f64.powi(-e);
        let x = special::erfinv(1.0 - c);
        assert_close(
            special::erfc(x),
            c,
            1e-12 * c,
            &format!("erfc(erfinv(1 - 2^-{e}))"),
        );
    }
}

#[test]
fn orthogonal_first_vector_is_the_normalised_draw_like_pytorch() {
    // PyTorch draws A = N(0, 1) of shape (rows, cols) in row-major order, transposes it if
    // rows < cols, and makes R's diagonal positive. Then Q's first column is A's first
    // column (first row if transposed) divided by its norm, whatever Householder sign
    // convention the QR uses. A missing sign(diag R) step, a different draw order or a
    // transpose mix-up all break this.
    use ndarray_rand::RandomExt;
    use rand_distr::StandardNormal;
    for (rows, cols, gain) in [(12usize, 5usize, 1.0), (5, 12, 2.0), (7, 7, 1.0)] {
        let mut w = Array2::<f32>::zeros((rows, cols));
        init::orthogonal(w.view_mut(), gain, &mut rng(30)).unwrap();
        // The same draws, in row-major order.
        let a = Array2::<f64>::random_using((rows, cols), StandardNormal, &mut rng(30));
        let (first, got) = if rows < cols {
            (a.row(0).to_owned(), w.row(0).mapv(|v| v as f64))
        } else {
            (a.column(0).to_owned(), w.column(0).mapv(|v| v as f64))
        };
        let norm = first.dot(&first).sqrt();
        for (g, x) in got.iter().zip(first.iter()) {
            assert_close(*g, gain * x / norm, 1e-6 * gain, &format!("{rows}x{cols}"));
        }
    }
}
