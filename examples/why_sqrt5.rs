//! "Why sqrt(5)?" — the fast.ai notebook as a program.
//!
//! What does an initialisation do to the statistics of a conv net, and why is PyTorch's
//! default `kaiming_uniform_(a = sqrt 5)` a poor one for ReLU networks? Each step prints
//! its figure beside where PyTorch's own runs of the same step fall (the spread over 300
//! seeds, computed by `tools/why_sqrt5_torch.py`, for the full `mnist.pkl.gz` and for the
//! embedded sample).
//!
//! ```sh
//! cargo run --release --example why_sqrt5                      # embedded sample
//! cargo run --release --example why_sqrt5 -- --data mnist.pkl.gz --seed 3
//! cargo run --release --example why_sqrt5 -- --json            # one JSON object
//! ```

use std::collections::BTreeMap;
use std::f64::consts::SQRT_2;

use convinit::data::Mnist;
use convinit::init::{self, FanMode, Init, Nonlinearity};
use convinit::nn::{AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Layer, Relu, Sequential};
use convinit::ops::{leaky_relu, mse, mse_backward};
use convinit::stats::{normalize, stats, to_images};
use ndarray::{Array1, ArrayViewD, ArrayViewMut, Axis, Dimension, s};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// PyTorch's spread (300 seeds) for the full data and for the embedded sample.
const SPREAD_FULL: &str = include_str!("../tools/why_sqrt5_spread_full.json");
const SPREAD_SAMPLE: &str = include_str!("../tools/why_sqrt5_spread_sample.json");

/// Command-line options.
#[derive(Debug, Default)]
struct Options {
    data: Option<String>,
    seed: u64,
    json: bool,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => o.data = Some(it.next().ok_or("--data needs a PATH")?.clone()),
            "--seed" => {
                let v = it.next().ok_or("--seed needs a number")?;
                o.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: not a number: {v}"))?;
            }
            "--json" => o.json = true,
            "-h" | "--help" => {
                return Err(
                    "usage: why_sqrt5 [--data PATH(.pkl|.pkl.gz|IDX dir)] [--seed N] [--json]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(o)
}

/// The walkthrough's figures, in order, with the narration printed between them.
struct Report {
    json: bool,
    figures: BTreeMap<String, f64>,
    /// PyTorch's spread for this data set, if it is one we have figures for.
    spread: Option<serde_json::Value>,
}

impl Report {
    fn say(&self, text: &str) {
        if !self.json {
            println!("\n{text}");
        }
    }

    fn figure(&mut self, key: &str, value: f64) {
        if !self.json {
            let torch = self
                .spread
                .as_ref()
                .and_then(|s| s.get(key))
                .map(|v| {
                    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                    if f("max") == f("min") {
                        format!("{:>10.5}", f("mean"))
                    } else {
                        format!("{:>10.5}  [{:.5}, {:.5}]", f("mean"), f("min"), f("max"))
                    }
                })
                .unwrap_or_else(|| "(no reference for this data)".into());
            println!("  {key:<34} {value:>10.5}   PyTorch {torch}");
        }
        self.figures.insert(key.to_string(), value);
    }

    fn stats<D: Dimension>(
        &mut self,
        key: &str,
        x: &ndarray::ArrayBase<impl ndarray::Data<Elem = f32>, D>,
    ) {
        let (m, s) = stats(x);
        self.figure(&format!("{key}.mean"), m);
        self.figure(&format!("{key}.std"), s);
    }
}

/// The gain of a leaky ReLU with slope `a`, as the notebook derives it.
fn gain(a: f64) -> f64 {
    init::calculate_gain(Nonlinearity::LeakyRelu(a))
}

/// The notebook's own `kaiming2`: uniform with fan_in from the receptive field,
/// bound = sqrt(3) * gain(a) / sqrt(fan_in).
fn kaiming2<D: Dimension>(
    w: ArrayViewMut<'_, f32, D>,
    a: f64,
    rng: &mut StdRng,
) -> convinit::Result<()> {
    let shape = w.shape();
    let rec_fs: usize = shape[2..].iter().product();
    let fan_in = shape[1] * rec_fs;
    let bound = 3f64.sqrt() * gain(a) / (fan_in as f64).sqrt();
    init::uniform(w, -bound, bound, rng)
}

/// The notebook's 4-conv network.
fn seed_net(init: &Init, rng: &mut StdRng) -> convinit::Result<Sequential> {
    let conv = |c_in, c_out, k, p| {
        Conv2dConfig::new(c_in, c_out, (k, k))
            .with_stride((2, 2))
            .with_padding((p, p))
    };
    Ok(Sequential::new()
        .with(Conv2d::with_init(conv(1, 8, 5, 2), init, rng)?)
        .with(Relu::new())
        .with(Conv2d::with_init(conv(8, 16, 3, 1), init, rng)?)
        .with(Relu::new())
        .with(Conv2d::with_init(conv(16, 32, 3, 1), init, rng)?)
        .with(Relu::new())
        .with(Conv2d::with_init(conv(32, 1, 3, 1), init, rng)?)
        .with(AdaptiveAvgPool2d::new((1, 1))?)
        .with(Flatten::new(0, -1)))
}

/// Runs the whole walkthrough; returns every figure by its JSON key.
pub fn run(args: &[String]) -> Result<BTreeMap<String, f64>, Box<dyn std::error::Error>> {
    let opts = parse_args(args)?;
    let data = match &opts.data {
        Some(p) => Mnist::load(p)?,
        None => Mnist::embedded()?,
    };
    let spread_src = match data.train.0.nrows() {
        50_000 => Some(SPREAD_FULL),
        2_000 if opts.data.is_none() => Some(SPREAD_SAMPLE),
        _ => None,
    };
    let spread = match spread_src {
        Some(src) => serde_json::from_str::<serde_json::Value>(src)?
            .get("spread")
            .cloned(),
        None => None,
    };
    let mut r = Report {
        json: opts.json,
        figures: BTreeMap::new(),
        spread,
    };
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let source = opts.data.as_deref().unwrap_or("the embedded sample");
    r.say(&format!(
        "Why sqrt(5)? MNIST from {source}: train {:?}, valid {:?}; seed {}.\n\
         Each figure is ours, then PyTorch's mean [min, max] over 300 seeds of the same step.",
        data.train.0.dim(),
        data.valid.0.dim(),
        opts.seed
    ));

    // 1. Data statistics and normalisation.
    r.say("1. Normalise with the training set's mean and std (std with N-1, as torch).");
    let (m, sd) = stats(&data.train.0);
    r.figure("data.train_mean", m);
    r.figure("data.train_std", sd);
    let valid = to_images(&normalize(&data.valid.0, m, sd))?;
    r.stats("data.valid_norm", &valid);
    let n200 = valid.len_of(Axis(0)).min(200);
    let n100 = valid.len_of(Axis(0)).min(100);
    let x200 = valid.slice(s![..n200, .., .., ..]).into_dyn();
    let x100 = valid.slice(s![..n100, .., .., ..]).into_dyn();

    // 2. A default Conv2d(1, 32, 5).
    r.say(
        "2. A default Conv2d(1, 32, 5): PyTorch draws the weight from kaiming_uniform_(a = sqrt 5),\n   \
         i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = 1 * 5 * 5 = 25: std 0.2 / sqrt 3 = 0.115.\n   \
         On normalised inputs the output std is far below 1.",
    );
    let cfg = Conv2dConfig::new(1, 32, (5, 5));
    let mut l1 = Conv2d::new(cfg, &mut rng)?;
    r.stats("l1_default.weight", l1.weight());
    r.stats(
        "l1_default.bias",
        l1.bias().ok_or("Conv2d::new made no bias")?,
    );
    let out = l1.forward(x200.view())?;
    r.stats("l1_default.out", &out);

    // 3. kaiming_normal with a = 1 (a linear layer's gain), then a = 0 under leaky ReLU.
    r.say(
        "3. kaiming_normal_(a = 1): gain sqrt(2 / (1 + 1)) = 1, std = 1 / sqrt(25) = 0.2;\n   \
         the output std comes out near 1, as intended for a layer with no nonlinearity.",
    );
    init::kaiming_normal(
        l1.weight_mut().view_mut(),
        FanMode::FanIn,
        Nonlinearity::LeakyRelu(1.0),
        &mut rng,
    )?;
    r.stats("l1_kaiming_normal_a1.weight", l1.weight());
    let out = l1.forward(x200.view())?;
    r.stats("l1_kaiming_normal_a1.out", &out);

    r.say(
        "   kaiming_normal_(a = 0) and f1(x) = leaky_relu(l1(x), 0): gain sqrt 2 keeps the\n   \
         post-ReLU std near 1 (its mean is about 0.5: half the values are clipped to zero).",
    );
    init::kaiming_normal(
        l1.weight_mut().view_mut(),
        FanMode::FanIn,
        Nonlinearity::LeakyRelu(0.0),
        &mut rng,
    )?;
    r.stats("l1_kaiming_normal_a0.weight", l1.weight());
    let f1 = |l: &mut Conv2d, x: ArrayViewD<f32>| -> convinit::Result<_> {
        leaky_relu(l.forward(x)?.view(), 0.0)
    };
    let out = f1(&mut l1, x100.view())?;
    r.stats("f1_kaiming_normal_a0.out", &out);

    r.say("   A fresh default Conv2d under f1: the std collapses to about 0.4.");
    let mut l1 = Conv2d::new(cfg, &mut rng)?;
    let out = f1(&mut l1, x100.view())?;
    r.stats("f1_default.out", &out);

    // 4. Gains and the uniform distribution's std.
    r.say(
        "4. The gain of a leaky ReLU with slope a is sqrt(2 / (1 + a^2)): a = sqrt 5 gives\n   \
         sqrt(1/3) = 0.577, not the sqrt 2 a ReLU needs.",
    );
    for (key, a) in [
        ("gain.1", 1.0),
        ("gain.0", 0.0),
        ("gain.0.01", 0.01),
        ("gain.0.1", 0.1),
        ("gain.sqrt5", 5f64.sqrt()),
    ] {
        r.figure(key, gain(a));
    }
    r.say("   U(-1, 1) has std 1/sqrt 3 = 0.57735, hence the sqrt 3 in every uniform bound:");
    let mut u = Array1::<f32>::zeros(100_000);
    init::uniform(u.view_mut(), -1.0, 1.0, &mut rng)?;
    r.figure("uniform.std", stats(&u).1);

    // 5. The notebook's own kaiming2, with fan_in from the receptive field.
    r.say(
        "5. The notebook's kaiming2 (uniform, bound = sqrt 3 * gain(a) / sqrt(fan_in)), fan_in =\n   \
         C_in * receptive field: a = 0 keeps the std near 1, a = sqrt 5 reproduces PyTorch's default.",
    );
    kaiming2(l1.weight_mut().view_mut(), 0.0, &mut rng)?;
    r.stats("l1_kaiming2_a0.weight", l1.weight());
    let out = f1(&mut l1, x100.view())?;
    r.stats("f1_kaiming2_a0.out", &out);
    kaiming2(l1.weight_mut().view_mut(), 5f64.sqrt(), &mut rng)?;
    r.stats("l1_kaiming2_sqrt5.weight", l1.weight());
    let out = f1(&mut l1, x100.view())?;
    r.stats("f1_kaiming2_sqrt5.out", &out);

    // 6. The 4-conv network, default init then kaiming_uniform + zero bias.
    r.say(
        "6. The 4-conv network (Conv2d+ReLU x3, Conv2d(32, 1), AdaptiveAvgPool2d(1), flatten)\n   \
         on the first 100 images, MSE against their labels, then backward. With the default\n   \
         init the output barely varies (std ~0.01) and the first layer's gradients are tiny;\n   \
         kaiming_uniform + zero bias keeps signal and gradients alive.",
    );
    let n_y = n100;
    let y = data.valid.1.slice(s![..n_y]).mapv(|v| v as f32);
    for (name, scheme) in [
        ("net_default", Init::PytorchDefault),
        ("net_kaiming", Init::KAIMING_UNIFORM),
    ] {
        let mut net = seed_net(&scheme, &mut rng)?;
        let out = net.forward(x100.view())?;
        r.stats(&format!("{name}.out"), &out);
        let loss = mse(out.view(), y.view())?;
        r.figure(&format!("{name}.loss"), f64::from(loss));
        let grad = mse_backward(out.view(), y.view())?;
        net.backward(grad.view())?;
        let conv0 = net.get::<Conv2d>(0).ok_or("layer 0 is not a Conv2d")?;
        r.stats(&format!("{name}.grad0"), conv0.weight_grad());
    }
    r.say(&format!(
        "Gain with a = sqrt 5 is {:.4} against sqrt 2 = {SQRT_2:.4}: the default init shrinks\n\
         every ReLU layer's signal by about 2.4x, which is why sqrt(5) is a poor choice here.",
        gain(5f64.sqrt())
    ));
    Ok(r.figures)
}

/// Prints the figures as one JSON object (keys sorted).
pub fn to_json(figures: &BTreeMap<String, f64>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = figures
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[allow(dead_code)] // the test includes this file as a module and calls `run` directly
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(figures) => {
            if args.iter().any(|a| a == "--json") {
                println!("{}", to_json(&figures));
            }
        }
        Err(e) => {
            eprintln!("why_sqrt5: {e}");
            std::process::exit(1);
        }
    }
}
