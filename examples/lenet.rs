//! Trains a LeNet-5 with batch norm on MNIST with Adam: the first net people build after
//! the notebook's.
//!
//! ```sh
//! cargo run --release --example lenet -- --data ../shared/data/mnist.pkl.gz
//! ```
//!
//! Options (defaults in brackets): `--data PATH` (the embedded 2 000-image sample),
//! `--epochs N` [3], `--batch-size N` [64], `--lr X` (Adam's learning rate, the peak of
//! a warm-up + cosine schedule) [0.003], `--seed N` [0], `--save PATH` (the trained
//! model as safetensors, buffers included, loadable by PyTorch's `load_state_dict`).
//!
//! The net: Conv2d(1,6,5,p2) BatchNorm2d(6) ReLU MaxPool2d(2) Conv2d(6,16,5)
//! BatchNorm2d(16) ReLU MaxPool2d(2) Flatten Linear(400,120) ReLU Linear(120,84) ReLU
//! Linear(84,10), PyTorch's default initialisation, cross-entropy, inputs normalised with
//! the training mean and std. Validation runs in eval mode (running statistics).

use std::process::ExitCode;
use std::time::Instant;

use convinit::data::Mnist;
use convinit::nn::{
    BatchNorm2d, BatchNorm2dConfig, Conv2d, Conv2dConfig, Flatten, Linear, LinearConfig, MaxPool2d,
    Relu, Sequential,
};
use convinit::ops::MaxPool2dOptions;
use convinit::stats::{normalize, stats};
use convinit::train::{Adam, AdamConfig, EpochReport, FitConfig, LrSchedule, Split, fit};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Args {
    data: Option<String>,
    epochs: usize,
    batch_size: usize,
    lr: f32,
    seed: u64,
    save: Option<String>,
}

/// The options in `args` (without the program name).
fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        data: None,
        epochs: 3,
        batch_size: 64,
        lr: 3e-3,
        seed: 0,
        save: None,
    };
    let mut it = args.iter().cloned();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| -> Result<f64, String> {
            v.parse().map_err(|_| format!("{flag}: cannot parse {v:?}"))
        };
        match flag.as_str() {
            "--data" => a.data = Some(value()?),
            "--epochs" => a.epochs = num(value()?)? as usize,
            "--batch-size" => a.batch_size = num(value()?)? as usize,
            "--lr" => a.lr = num(value()?)? as f32,
            "--seed" => a.seed = num(value()?)? as u64,
            "--save" => a.save = Some(value()?),
            "-h" | "--help" => {
                return Err("usage: lenet [--data PATH] [--epochs N] [--batch-size N] [--lr X] [--seed N] [--save PATH]".into());
            }
            other => return Err(format!("unknown option {other:?} (try --help)")),
        }
    }
    if a.epochs == 0 || a.batch_size == 0 {
        return Err("--epochs and --batch-size must be positive".into());
    }
    Ok(a)
}

/// LeNet-5 with batch norm, PyTorch's default initialisation drawn from `rng`.
pub fn lenet(rng: &mut StdRng) -> convinit::Result<Sequential> {
    let conv = |i, o, p, rng: &mut StdRng| {
        Conv2d::new(Conv2dConfig::new(i, o, (5, 5)).with_padding((p, p)), rng)
    };
    let pool = || MaxPool2d::new(MaxPool2dOptions::new((2, 2)));
    let bn = |c| BatchNorm2d::new(BatchNorm2dConfig::new(c));
    Ok(Sequential::new()
        .with(conv(1, 6, 2, rng)?)
        .with(bn(6)?)
        .with(Relu::new())
        .with(pool()?)
        .with(conv(6, 16, 0, rng)?)
        .with(bn(16)?)
        .with(Relu::new())
        .with(pool()?)
        .with(Flatten::new(1, -1))
        .with(Linear::new(LinearConfig::new(400, 120), rng)?)
        .with(Relu::new())
        .with(Linear::new(LinearConfig::new(120, 84), rng)?)
        .with(Relu::new())
        .with(Linear::new(LinearConfig::new(84, 10), rng)?))
}

/// Trains as `args` (without the program name) say, printing as it goes; returns each
/// epoch's report.
pub fn run(args: &[String]) -> Result<Vec<EpochReport>, Box<dyn std::error::Error>> {
    let args = parse(args)?;
    let mnist = match &args.data {
        Some(p) => Mnist::load(p)?,
        None => Mnist::embedded()?,
    };
    let (mean, std) = stats(&mnist.train.0);
    let xt = normalize(&mnist.train.0, mean, std);
    let xv = normalize(&mnist.valid.0, mean, std);
    let train = Split::new(xt.view(), mnist.train.1.view());
    let valid = Split::new(xv.view(), mnist.valid.1.view());
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut net = lenet(&mut rng)?;
    println!(
        "MNIST: {} train, {} valid images ({}); {} threads\n{net}",
        train.len(),
        valid.len(),
        args.data.as_deref().unwrap_or("embedded sample"),
        rayon::current_num_threads()
    );
    let config = FitConfig::new(args.epochs, args.batch_size)
        .with_seed(args.seed)
        .with_schedule(LrSchedule::WarmupCosine { warmup: 0.1 });
    let mut opt = Adam::new(AdamConfig::adam().with_lr(args.lr))?;
    let steps = train.len().div_ceil(args.batch_size) * args.epochs;
    let bar = ProgressBar::new(steps as u64).with_style(ProgressStyle::with_template(
        "[{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    )?);
    let start = Instant::now();
    let mut last_epoch = 0;
    let history = fit(
        &mut net,
        &mut opt,
        train,
        Some(valid),
        &config,
        |info, _| {
            if info.step % 20 == 0 || info.epoch != last_epoch {
                last_epoch = info.epoch;
                bar.set_message(format!("epoch {} loss {:.4}", info.epoch + 1, info.loss));
            }
            bar.inc(1);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    for e in &history {
        println!(
            "epoch {}: train loss {:.4} acc {:.2}% | valid loss {:.4} acc {:.2}% | {:.1} s",
            e.epoch + 1,
            e.train_loss,
            100.0 * e.train_accuracy,
            e.valid_loss.unwrap_or(f32::NAN),
            100.0 * e.valid_accuracy.unwrap_or(f32::NAN),
            e.seconds
        );
    }
    println!(
        "trained in {:.1} s (validation included)",
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.save {
        convinit::io::save_safetensors(&net, path)?;
        println!("saved to {path}");
    }
    Ok(history)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lenet: {e}");
            ExitCode::FAILURE
        }
    }
}
