//! Trains a small conv net on MNIST under several initialisations and compares them.
//!
//! ```sh
//! cargo run --release --example train_mnist -- --data ../shared/data/mnist.pkl.gz --init all
//! ```
//!
//! Options (defaults in brackets): `--data PATH` (the embedded 2 000-image sample),
//! `--init default|kaiming|xavier|lsuv|all` [kaiming], `--epochs N` [3],
//! `--batch-size N` [128], `--lr X` (peak of a warm-up + cosine schedule) [0.2],
//! `--width N` (channels of the first conv; the others are 2x, 4x) [16], `--seed N` [0],
//! `--csv PATH` (per-step telemetry of the last init run, as CSV), `--save DIR` (write
//! each trained model to `DIR/<init>.safetensors`, loadable by PyTorch's
//! `load_state_dict`).
//!
//! The net is the notebook's, grown to 10 outputs: Conv2d(1,w,5,s2,p2) ReLU
//! Conv2d(w,2w,3,s2,p1) ReLU Conv2d(2w,4w,3,s2,p1) ReLU Conv2d(4w,10,3,s2,p1)
//! AdaptiveAvgPool2d(1) Flatten, trained with cross-entropy and SGD (momentum 0.9,
//! weight decay 1e-4) on inputs normalised with the training mean and std. The first
//! three convs' outputs are channels-last (`MemoryFormat::ChannelsLast`; set
//! `CONVINIT_CONTIGUOUS=1` to run them channel-major, for comparison).

use std::process::ExitCode;
use std::time::Instant;

use convinit::data::Mnist;
use convinit::init::Init;
use convinit::nn::{AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Relu, Sequential};
use convinit::ops::MemoryFormat;
use convinit::stats::{normalize, stats};
use convinit::train::{
    EpochReport, FitConfig, LrSchedule, LsuvConfig, Sgd, SgdConfig, Split, Telemetry, fit,
    gather_images, lsuv,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Args {
    data: Option<String>,
    inits: Vec<&'static str>,
    epochs: usize,
    batch_size: usize,
    lr: f32,
    width: usize,
    seed: u64,
    csv: Option<String>,
    save: Option<String>,
}

const INITS: [&str; 4] = ["default", "kaiming", "xavier", "lsuv"];

fn parse() -> Result<Args, String> {
    let mut a = Args {
        data: None,
        inits: vec!["kaiming"],
        epochs: 3,
        batch_size: 128,
        lr: 0.2,
        width: 16,
        seed: 0,
        csv: None,
        save: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| -> Result<f64, String> {
            v.parse().map_err(|_| format!("{flag}: cannot parse {v:?}"))
        };
        match flag.as_str() {
            "--data" => a.data = Some(value()?),
            "--init" => {
                let v = value()?;
                a.inits = match v.as_str() {
                    "all" => INITS.to_vec(),
                    other => vec![
                        *INITS
                            .iter()
                            .find(|&&i| i == other)
                            .ok_or(format!("--init: unknown scheme {other:?}"))?,
                    ],
                };
            }
            "--epochs" => a.epochs = num(value()?)? as usize,
            "--batch-size" => a.batch_size = num(value()?)? as usize,
            "--lr" => a.lr = num(value()?)? as f32,
            "--width" => a.width = num(value()?)? as usize,
            "--seed" => a.seed = num(value()?)? as u64,
            "--csv" => a.csv = Some(value()?),
            "--save" => a.save = Some(value()?),
            "-h" | "--help" => {
                return Err("usage: train_mnist [--data PATH] [--init default|kaiming|xavier|lsuv|all] [--epochs N] [--batch-size N] [--lr X] [--width N] [--seed N] [--csv PATH] [--save DIR]".into());
            }
            other => return Err(format!("unknown option {other:?} (try --help)")),
        }
    }
    if a.epochs == 0 || a.batch_size == 0 || a.width == 0 {
        return Err("--epochs, --batch-size and --width must be positive".into());
    }
    Ok(a)
}

/// The notebook's net with 10 outputs, initialised by `init` (LSUV starts from
/// orthogonal weights, as Mishkin & Matas).
fn build(init: &str, width: usize, rng: &mut StdRng) -> convinit::Result<Sequential> {
    let scheme = match init {
        "default" => Init::PytorchDefault,
        "kaiming" => Init::KAIMING_NORMAL,
        "xavier" => Init::XAVIER_UNIFORM,
        _ => Init::ORTHOGONAL,
    };
    let w = width;
    // The activations between the convs channels-last: the direct conv path then reads
    // and writes them without transposes. The last conv's output is pooled, so it stays
    // channel-major. The same arithmetic either way.
    let layout = if std::env::var_os("CONVINIT_CONTIGUOUS").is_some() {
        MemoryFormat::Contiguous
    } else {
        MemoryFormat::ChannelsLast
    };
    let conv = |c, o, k, p, last: bool, rng: &mut StdRng| {
        let cfg = Conv2dConfig::new(c, o, (k, k))
            .with_stride((2, 2))
            .with_padding((p, p))
            .with_memory_format(if last {
                layout
            } else {
                MemoryFormat::Contiguous
            });
        Conv2d::with_init(cfg, &scheme, rng)
    };
    Ok(Sequential::new()
        .with(conv(1, w, 5, 2, true, rng)?)
        .with(Relu::new())
        .with(conv(w, 2 * w, 3, 1, true, rng)?)
        .with(Relu::new())
        .with(conv(2 * w, 4 * w, 3, 1, true, rng)?)
        .with(Relu::new())
        .with(conv(4 * w, 10, 3, 1, false, rng)?)
        .with(AdaptiveAvgPool2d::new((1, 1))?)
        .with(Flatten::new(1, -1)))
}

struct Run {
    init: &'static str,
    history: Vec<EpochReport>,
    seconds: f64,
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let mnist = match &args.data {
        Some(p) => Mnist::load(p)?,
        None => Mnist::embedded()?,
    };
    let (mean, std) = stats(&mnist.train.0);
    let xt = normalize(&mnist.train.0, mean, std);
    let xv = normalize(&mnist.valid.0, mean, std);
    let train = Split::new(xt.view(), mnist.train.1.view());
    let valid = Split::new(xv.view(), mnist.valid.1.view());
    println!(
        "MNIST: {} train, {} valid images ({}); {} threads",
        train.len(),
        valid.len(),
        args.data.as_deref().unwrap_or("embedded sample"),
        rayon::current_num_threads()
    );

    let mut runs = Vec::new();
    for &init in &args.inits {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(args.seed);
        // Without telemetry nothing reads the layers' outputs after the step: keeping
        // only what backward needs lets each ReLU run in place over its conv's output.
        let record = args.csv.is_some();
        let mut net = build(init, args.width, &mut rng)?.with_retain_outputs(record);
        if init == "lsuv" {
            let idx: Vec<usize> = (0..train.len().min(512)).collect();
            let (xb, _) = gather_images(train.x, train.y, &idx, (1, 28, 28))?;
            lsuv(&mut net, xb.into_dyn().view(), &LsuvConfig::default())?;
        }
        // The optimiser holds the rate (the schedule's peak); the schedule scales it.
        let config = FitConfig::new(args.epochs, args.batch_size)
            .with_seed(args.seed)
            .with_schedule(LrSchedule::WarmupCosine { warmup: 0.1 });
        let mut opt = Sgd::new(
            SgdConfig::new(args.lr)
                .with_momentum(0.9)
                .with_weight_decay(1e-4),
        )?;
        let steps = train.len().div_ceil(args.batch_size) * args.epochs;
        let bar = ProgressBar::new(steps as u64).with_style(ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )?);
        bar.set_prefix(init);
        let mut telemetry = Telemetry::new();
        let history = fit(
            &mut net,
            &mut opt,
            train,
            Some(valid),
            &config,
            |info, net| {
                if info.step % 20 == 0 {
                    bar.set_message(format!("epoch {} loss {:.4}", info.epoch + 1, info.loss));
                }
                bar.inc(1);
                if record {
                    telemetry.record(info.step, net)?;
                }
                Ok(())
            },
        )?;
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        for e in &history {
            println!(
                "{init:>8} epoch {}: train loss {:.4} acc {:.4} | valid loss {:.4} acc {:.4} | {:.1} s",
                e.epoch + 1,
                e.train_loss,
                e.train_accuracy,
                e.valid_loss.unwrap_or(f32::NAN),
                e.valid_accuracy.unwrap_or(f32::NAN),
                e.seconds
            );
        }
        if let Some(dir) = &args.save {
            std::fs::create_dir_all(dir)?;
            let path = std::path::Path::new(dir).join(format!("{init}.safetensors"));
            convinit::io::save_safetensors(&net, &path)?;
            println!("{init:>8} saved to {}", path.display());
        }
        if let Some(path) = &args.csv {
            telemetry.write_csv(std::fs::File::create(path)?)?;
        }
        runs.push(Run {
            init,
            history,
            seconds,
        });
    }

    println!();
    let epochs: Vec<String> = (1..=args.epochs).map(|e| format!("valid@{e:<3}")).collect();
    println!(
        "{:<8} {:>10} {} {:>9}",
        "init",
        "train loss",
        epochs.join(" "),
        "time (s)"
    );
    for r in &runs {
        let accs: Vec<String> = r
            .history
            .iter()
            .map(|e| format!("{:>9.2}%", 100.0 * e.valid_accuracy.unwrap_or(f32::NAN)))
            .collect();
        let last = r.history.last().map_or(f32::NAN, |e| e.train_loss);
        println!(
            "{:<8} {:>10.4} {} {:>9.2}",
            r.init,
            last,
            accs.join(" "),
            r.seconds
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    // The main thread drives every op: as worker 0 of the pool it runs each op's share
    // itself instead of handing the op over and sleeping (see the crate docs, Threads).
    // RAYON_NUM_THREADS still sets the pool's size; if the pool exists already, fine.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("train_mnist: {e}");
            ExitCode::FAILURE
        }
    }
}
