//! How an initialisation shapes the first steps of training: per-layer activation mean,
//! std and dead-unit fraction, and fast.ai's "colorful dimension" (each layer's
//! activation histogram over the steps), for several schemes side by side, as one SVG.
//!
//! ```sh
//! cargo run --release --example init_report -- --data ../shared/data/mnist.pkl.gz
//! ```
//!
//! Options (defaults in brackets): `--data PATH` (the embedded 2 000-image sample),
//! `--steps N` [150], `--batch-size N` [128], `--lr X` (constant, SGD momentum 0.9)
//! [0.4], `--seed N` [0], `--out PATH` [docs/init_report.svg], `--csv DIR` (also write
//! each init's telemetry and histograms as CSV there).
//!
//! The net is the notebook's (Conv2d 1-8-16-32-10, stride 2, ReLU, average pool); the
//! last row, `default+bn`, is PyTorch's default init with a `BatchNorm2d` between each
//! hidden conv and its ReLU (in training mode, as the batches go). One
//! row of panels per init: the mean and the std of each ReLU's output over the steps, then one heat map per ReLU: x is the step, y the activation value
//! (20 bins over [0, 10]), colour the log of the count. A bright bottom row means many
//! units stuck at zero; mass climbing the plot then collapsing shows the training
//! "blowing up" and recovering.

use std::process::ExitCode;

use convinit::data::Mnist;
use convinit::init::Init;
use convinit::nn::{
    AdaptiveAvgPool2d, BatchNorm2d, BatchNorm2dConfig, Conv2d, Conv2dConfig, Flatten, Relu,
    Sequential,
};
use convinit::stats::{normalize, stats};
use convinit::train::{
    FitConfig, LsuvConfig, Sgd, SgdConfig, Split, Telemetry, fit, gather_images, lsuv,
};
use plotters::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The layers shown: the three ReLUs (and the logits, in the printed summary), by their
/// index in the plain net and in the net with batch norm.
const SHOWN: [(usize, &str); 4] = [(1, "relu 1"), (3, "relu 2"), (5, "relu 3"), (8, "logits")];
const SHOWN_BN: [(usize, &str); 4] = [(2, "relu 1"), (5, "relu 2"), (8, "relu 3"), (11, "logits")];
const RELUS: usize = 3;
/// The schemes compared; `default+bn` is PyTorch's default init with a `BatchNorm2d`
/// between each hidden conv and its ReLU (the fast.ai course's next chapter).
const INITS: [&str; 5] = ["default", "kaiming", "xavier", "lsuv", "default+bn"];

struct Args {
    data: Option<String>,
    steps: usize,
    batch_size: usize,
    lr: f32,
    seed: u64,
    out: String,
    csv: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        data: None,
        steps: 150,
        batch_size: 128,
        lr: 0.4,
        seed: 0,
        out: "docs/init_report.svg".into(),
        csv: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| -> Result<f64, String> {
            v.parse().map_err(|_| format!("{flag}: cannot parse {v:?}"))
        };
        match flag.as_str() {
            "--data" => a.data = Some(value()?),
            "--steps" => a.steps = num(value()?)? as usize,
            "--batch-size" => a.batch_size = num(value()?)? as usize,
            "--lr" => a.lr = num(value()?)? as f32,
            "--seed" => a.seed = num(value()?)? as u64,
            "--out" => a.out = value()?,
            "--csv" => a.csv = Some(value()?),
            "-h" | "--help" => {
                return Err("usage: init_report [--data PATH] [--steps N] [--batch-size N] [--lr X] [--seed N] [--out PATH] [--csv DIR]".into());
            }
            other => return Err(format!("unknown option {other:?} (try --help)")),
        }
    }
    if a.steps == 0 || a.batch_size == 0 {
        return Err("--steps and --batch-size must be positive".into());
    }
    Ok(a)
}

fn build(init: &str, rng: &mut StdRng) -> convinit::Result<Sequential> {
    let scheme = match init {
        "default" | "default+bn" => Init::PytorchDefault,
        "kaiming" => Init::KAIMING_NORMAL,
        "xavier" => Init::XAVIER_UNIFORM,
        _ => Init::ORTHOGONAL,
    };
    let conv = |c, o, k, p, rng: &mut StdRng| {
        let cfg = Conv2dConfig::new(c, o, (k, k))
            .with_stride((2, 2))
            .with_padding((p, p));
        Conv2d::with_init(cfg, &scheme, rng)
    };
    let bn = init.ends_with("+bn");
    let mut net = Sequential::new();
    for (c, o, k, p) in [(1, 8, 5, 2), (8, 16, 3, 1), (16, 32, 3, 1)] {
        net = net.with(conv(c, o, k, p, rng)?);
        if bn {
            net = net.with(BatchNorm2d::new(BatchNorm2dConfig::new(o))?);
        }
        net = net.with(Relu::new());
    }
    Ok(net
        .with(conv(32, 10, 3, 1, rng)?)
        .with(AdaptiveAvgPool2d::new((1, 1))?)
        .with(Flatten::new(1, -1)))
}

/// What one init's run left: its telemetry and the loss per step.
struct Run {
    init: &'static str,
    /// The layers shown (see [`SHOWN`]).
    shown: [(usize, &'static str); 4],
    telemetry: Telemetry,
    losses: Vec<f32>,
}

fn train(args: &Args, init: &'static str, data: Split<'_>) -> convinit::Result<Run> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut net = build(init, &mut rng)?;
    if init == "lsuv" {
        let idx: Vec<usize> = (0..data.len().min(512)).collect();
        let (xb, _) = gather_images(data.x, data.y, &idx, (1, 28, 28))?;
        lsuv(&mut net, xb.into_dyn().view(), &LsuvConfig::default())?;
    }
    let mut opt = Sgd::new(SgdConfig::new(args.lr).with_momentum(0.9))?;
    let config = FitConfig::new(1, args.batch_size).with_seed(args.seed);
    // fast.ai's range; 20 bins instead of 40 keep the SVG small.
    let mut telemetry = Telemetry::new().with_histogram(20, (0.0, 10.0))?;
    let mut losses = Vec::new();
    fit(&mut net, &mut opt, data, None, &config, |info, net| {
        losses.push(info.loss);
        telemetry.record(info.step, net)
    })?;
    Ok(Run {
        init,
        shown: if init.ends_with("+bn") {
            SHOWN_BN
        } else {
            SHOWN
        },
        telemetry,
        losses,
    })
}

/// A viridis-like colour for `t` in [0, 1].
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

fn draw(runs: &[Run], path: &str, steps: usize) -> Result<(), Box<dyn std::error::Error>> {
    let cols = 2 + RELUS;
    let root = SVGBackend::new(path, (300 * cols as u32, 230 * runs.len() as u32 + 40))
        .into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.titled(
        &format!("Activations over the first {steps} training steps (MNIST, SGD)"),
        ("sans-serif", 22),
    )?;
    let rows = body.split_evenly((runs.len(), cols));
    for (r, run) in runs.iter().enumerate() {
        let panel = |c: usize| &rows[r * cols + c];
        let last = run.losses.last().copied().unwrap_or(f32::NAN);
        for c in 0..2 {
            let series: Vec<(&str, Vec<(f64, f64)>)> = run
                .shown
                .iter()
                .take(RELUS)
                .map(|&(layer, label)| {
                    let pts = run
                        .telemetry
                        .layer(layer)
                        .map(|s| {
                            let v = if c == 0 { s.act_mean } else { s.act_std };
                            (s.step as f64, f64::from(v))
                        })
                        .collect();
                    (label, pts)
                })
                .collect();
            let (lo, hi) = series
                .iter()
                .flat_map(|(_, p)| p.iter().map(|&(_, v)| v))
                .filter(|v| v.is_finite())
                .fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
            let hi = if hi - lo < 1e-6 { lo + 1.0 } else { hi };
            let caption = if c == 0 {
                format!("{}: activation mean (final loss {last:.3})", run.init)
            } else {
                format!("{}: activation std", run.init)
            };
            let mut chart = ChartBuilder::on(panel(c))
                .caption(caption, ("sans-serif", 14))
                .margin(6)
                .x_label_area_size(22)
                .y_label_area_size(40)
                .build_cartesian_2d(0f64..steps as f64, lo..hi * 1.05)?;
            chart
                .configure_mesh()
                .x_labels(4)
                .y_labels(5)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style(("sans-serif", 10))
                .draw()?;
            for (k, (label, pts)) in series.into_iter().enumerate() {
                let color = PALETTE[k % PALETTE.len()];
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color));
            }
            if r == 0 && c == 1 {
                chart
                    .configure_series_labels()
                    .label_font(("sans-serif", 10))
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()?;
            }
        }
        // The colorful dimension: one heat map per ReLU.
        let (bins, (low, high)) = run.telemetry.histogram_bins();
        for (k, &(layer, label)) in run.shown.iter().take(RELUS).enumerate() {
            let hists: Vec<_> = run
                .telemetry
                .histograms()
                .iter()
                .filter(|h| h.layer == layer)
                .collect();
            let mut chart = ChartBuilder::on(panel(2 + k))
                .caption(
                    format!("{}: {label} histogram", run.init),
                    ("sans-serif", 14),
                )
                .margin(6)
                .x_label_area_size(22)
                .y_label_area_size(40)
                .build_cartesian_2d(0f64..steps as f64, f64::from(low)..f64::from(high))?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(4)
                .y_labels(5)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style(("sans-serif", 10))
                .draw()?;
            // Steps are summed into at most COLUMNS columns and colours quantised to LEVELS
            // steps; the background is level 0 and each bin's row is run-length encoded
            // over the columns, which keeps the SVG small.
            const COLUMNS: usize = 50;
            const LEVELS: f64 = 12.0;
            let per = hists.len().div_ceil(COLUMNS).max(1);
            let columns: Vec<(f64, f64, Vec<f64>)> = hists
                .chunks(per)
                .map(|chunk| {
                    let x0 = chunk[0].step as f64;
                    let x1 = chunk[chunk.len() - 1].step as f64 + 1.0;
                    let mean = (0..bins)
                        .map(|b| {
                            let sum: u32 = chunk.iter().map(|h| h.counts[b]).sum();
                            f64::from(sum) / chunk.len() as f64
                        })
                        .collect();
                    (x0, x1, mean)
                })
                .collect();
            let max = columns
                .iter()
                .flat_map(|c| c.2.iter())
                .map(|c| c.ln_1p())
                .fold(0.0f64, f64::max)
                .max(1.0);
            let level = |count: f64| (count.ln_1p() / max * LEVELS).round() as u32;
            let width = f64::from(high - low) / bins as f64;
            let area = (0.0, f64::from(low));
            let far = (steps as f64, f64::from(high));
            chart.draw_series([Rectangle::new([area, far], viridis(0.0).filled())])?;
            let mut cells = Vec::new();
            for b in 0..bins {
                let y0 = f64::from(low) + b as f64 * width;
                let mut s = 0;
                while s < columns.len() {
                    let l = level(columns[s].2[b]);
                    let mut e = s + 1;
                    while e < columns.len() && level(columns[e].2[b]) == l {
                        e += 1;
                    }
                    if l > 0 {
                        let color = viridis(f64::from(l) / LEVELS);
                        let (x0, x1) = (columns[s].0, columns[e - 1].1);
                        cells.push(Rectangle::new([(x0, y0), (x1, y0 + width)], color.filled()));
                    }
                    s = e;
                }
            }
            chart.draw_series(cells)?;
        }
    }
    root.present()?;
    Ok(())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let mnist = match &args.data {
        Some(p) => Mnist::load(p)?,
        None => Mnist::embedded()?,
    };
    let (mean, std) = stats(&mnist.train.0);
    let n = mnist.train.0.nrows().min(args.steps * args.batch_size);
    let x = normalize(&mnist.train.0.slice(ndarray::s![..n, ..]), mean, std);
    let y = mnist.train.1.slice(ndarray::s![..n]);
    let data = Split::new(x.view(), y);
    let steps = n.div_ceil(args.batch_size);
    println!(
        "{steps} steps of {} images, lr {}",
        args.batch_size, args.lr
    );

    let mut runs = Vec::new();
    for init in INITS {
        let start = std::time::Instant::now();
        let run = train(&args, init, data)?;
        if let Some(dir) = &args.csv {
            std::fs::create_dir_all(dir)?;
            let dir = std::path::Path::new(dir);
            run.telemetry
                .write_csv(std::fs::File::create(dir.join(format!("{init}.csv")))?)?;
            run.telemetry.write_histograms_csv(std::fs::File::create(
                dir.join(format!("{init}_hist.csv")),
            )?)?;
        }
        println!("{init}: {:.1} s", start.elapsed().as_secs_f64());
        runs.push(run);
    }

    println!();
    println!(
        "{:<10} {:>8} {:>9} {:>10}   near-zero activations (|a| <= 1e-3) at step 0 / last, per ReLU",
        "init", "loss@0", "loss@last", "logit std"
    );
    for r in &runs {
        let dead: Vec<String> = r
            .shown
            .iter()
            .take(RELUS)
            .map(|&(layer, _)| {
                let rows: Vec<_> = r.telemetry.layer(layer).collect();
                let first = rows.first().map_or(f32::NAN, |s| s.act_near_zero);
                let last = rows.last().map_or(f32::NAN, |s| s.act_near_zero);
                format!("{:>4.0}% / {:>3.0}%", 100.0 * first, 100.0 * last)
            })
            .collect();
        let (logits, _) = r.shown[RELUS];
        let logit_std = r
            .telemetry
            .layer(logits)
            .last()
            .map_or(f32::NAN, |s| s.act_std);
        println!(
            "{:<10} {:>8.4} {:>9.4} {:>10.3}   {}",
            r.init,
            r.losses.first().copied().unwrap_or(f32::NAN),
            r.losses.last().copied().unwrap_or(f32::NAN),
            logit_std,
            dead.join("   ")
        );
    }
    if let Some(parent) = std::path::Path::new(&args.out).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    draw(&runs, &args.out, steps)?;
    println!("\nwrote {}", args.out);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("init_report: {e}");
            ExitCode::FAILURE
        }
    }
}
