//! The "why sqrt(5)" example, run in the test suite: every key of its JSON is present,
//! the data figures are exact, and every random figure falls where PyTorch's own runs of
//! the notebook fall (`tools/why_sqrt5_torch.py`, 300 seeds, committed as
//! `tools/why_sqrt5_spread_*.json`).
//!
//! On the embedded sample this always runs; on the full `mnist.pkl.gz` it runs when
//! `../shared/data/mnist.pkl.gz` exists, fails when it is missing under `CI=true`, and
//! says SKIPPED on stderr otherwise (`common/shared.rs`).

#[allow(dead_code)]
#[path = "../examples/why_sqrt5.rs"]
mod why_sqrt5;

#[path = "common/shared.rs"]
mod shared;

use std::collections::BTreeMap;

/// The keys the issue names, each with `.mean` / `.std` where it is a statistic.
const KEYS: &[&str] = &[
    "data.train_mean",
    "data.train_std",
    "data.valid_norm.mean",
    "data.valid_norm.std",
    "l1_default.weight.mean",
    "l1_default.weight.std",
    "l1_default.bias.mean",
    "l1_default.bias.std",
    "l1_default.out.mean",
    "l1_default.out.std",
    "l1_kaiming_normal_a1.weight.mean",
    "l1_kaiming_normal_a1.weight.std",
    "l1_kaiming_normal_a1.out.mean",
    "l1_kaiming_normal_a1.out.std",
    "l1_kaiming_normal_a0.weight.mean",
    "l1_kaiming_normal_a0.weight.std",
    "f1_kaiming_normal_a0.out.mean",
    "f1_kaiming_normal_a0.out.std",
    "f1_default.out.mean",
    "f1_default.out.std",
    "gain.1",
    "gain.0",
    "gain.0.01",
    "gain.0.1",
    "gain.sqrt5",
    "uniform.std",
    "l1_kaiming2_a0.weight.mean",
    "l1_kaiming2_a0.weight.std",
    "f1_kaiming2_a0.out.mean",
    "f1_kaiming2_a0.out.std",
    "l1_kaiming2_sqrt5.weight.mean",
    "l1_kaiming2_sqrt5.weight.std",
    "f1_kaiming2_sqrt5.out.mean",
    "f1_kaiming2_sqrt5.out.std",
    "net_default.out.mean",
    "net_default.out.std",
    "net_kaiming.out.mean",
    "net_kaiming.out.std",
    "net_kaiming.loss",
    "net_kaiming.grad0.mean",
    "net_kaiming.grad0.std",
];

fn run(args: &[&str]) -> BTreeMap<String, f64> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    why_sqrt5::run(&args).expect("the example runs")
}

/// Checks every figure against PyTorch's spread over 300 seeds. Deterministic figures
/// (data statistics, gains) must match to 1e-5 relative plus 1e-6 absolute (PyTorch
/// sums in f32, we sum in f64); random ones must fall inside
/// PyTorch's [min, max] widened by a quarter of its width on each side (300 draws bound
/// the distribution's bulk; the widening covers the tail a single other draw may land
/// in, while a wrong formula — a missing sqrt 3, a swapped fan, a gain of 1 for ReLU —
/// moves a figure by far more than that).
fn check_against_spread(figures: &BTreeMap<String, f64>, spread_json: &str) {
    let spread: serde_json::Value = serde_json::from_str(spread_json).unwrap();
    let spread = &spread["spread"];
    let mut bad = Vec::new();
    for key in KEYS {
        let v = figures[*key];
        let s = &spread[*key];
        let (lo, hi) = (s["min"].as_f64().unwrap(), s["max"].as_f64().unwrap());
        let ok = if hi - lo <= 1e-9 * hi.abs().max(1.0) {
            (v - lo).abs() <= 1e-6 + 1e-5 * lo.abs()
        } else {
            let w = 0.25 * (hi - lo);
            v >= lo - w && v <= hi + w
        };
        println!("{key:<36} ours {v:>11.6}  torch [{lo:.6}, {hi:.6}]");
        if !ok {
            bad.push(format!("{key}: {v} not in [{lo}, {hi}]"));
        }
    }
    assert!(
        bad.is_empty(),
        "figures outside PyTorch's spread:\n{}",
        bad.join("\n")
    );
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn embedded_sample_every_key_and_where_pytorch_falls() {
    let figures = run(&["--json"]);
    for key in KEYS {
        assert!(figures.contains_key(*key), "missing key {key}");
        assert!(figures[*key].is_finite(), "{key} is not finite");
    }
    check_against_spread(
        &figures,
        include_str!("../tools/why_sqrt5_spread_sample.json"),
    );
    // The JSON the example prints parses back to the same figures.
    let json = why_sqrt5::to_json(&figures);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in KEYS {
        // (serde_json's default float parser may be off by one ulp)
        let back = parsed[*key].as_f64().unwrap();
        assert!(
            (back - figures[*key]).abs() <= 1e-14 * figures[*key].abs(),
            "{key}"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn other_seeds_fall_there_too() {
    for seed in ["1", "7"] {
        let figures = run(&["--json", "--seed", seed]);
        check_against_spread(
            &figures,
            include_str!("../tools/why_sqrt5_spread_sample.json"),
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "embedded-sample"),
    ignore = "needs the embedded-sample feature"
)]
fn same_seed_same_figures() {
    assert_eq!(
        run(&["--json", "--seed", "5"]),
        run(&["--json", "--seed", "5"])
    );
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    for args in [
        vec!["--seed"],
        vec!["--seed", "x"],
        vec!["--data"],
        vec!["--bogus"],
        vec!["--data", "/nonexistent/mnist.pkl.gz"],
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        assert!(why_sqrt5::run(&args).is_err(), "{args:?} should fail");
    }
}

#[test]
fn full_data_where_pytorch_falls() {
    // Fails under CI=true when missing; elsewhere a visible SKIPPED line.
    let Some(path) = shared::shared_data("mnist.pkl.gz") else {
        return;
    };
    let figures = run(&["--json", "--data", path.to_str().unwrap()]);
    // The data figures the issue quotes, to 5 places.
    assert!((figures["data.valid_norm.mean"] - -0.00585).abs() < 5e-6);
    assert!((figures["data.valid_norm.std"] - 0.99243).abs() < 5e-6);
    assert!((figures["data.train_mean"] - 0.130449722).abs() < 1e-8);
    assert!((figures["data.train_std"] - 0.307289837).abs() < 1e-8);
    check_against_spread(
        &figures,
        include_str!("../tools/why_sqrt5_spread_full.json"),
    );
}
