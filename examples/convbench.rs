//! Benchmark any conv2d: every algorithm the crate has, side by side, on your shapes.
//!
//! ```sh
//! cargo run --release --example convbench -- --shape dw=32,64,56,56,64,3,3,1,1,1,1,1,1,64 \
//!     --named resnet_64 [--path all] [--pass both] [--threads T] [--reps R] [--json | --csv]
//! ```
//!
//! Per shape and path: the median, min and max time of each pass, GFLOP/s and the
//! fraction of the FMA peak measured on the same number of threads, the plan that ran
//! (what `auto` chose, what `autotune` picked), and the largest absolute error of the
//! output and of every gradient against a naive f64 conv (skipped above a budget of
//! multiply-adds, `--max-ref-macs`). A path that cannot run a shape says so in its row.
//! `--json` output has a "conv2d" section in the format of `examples/bench --json`, so
//! `tools/bench_compare.py` compares it with `tools/torch_bench.py`'s figures.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Instant;

use convinit::buffers::recycle;
use convinit::gemm::Kernel;
use convinit::ops::{
    Conv2dGeometry, Conv2dOptions, ConvAlgorithm, ConvAlgos, ConvPass, ConvPlan, ForwardAlgo,
    InputGradAlgo, MemoryFormat, WeightGradAlgo, autotuned_plan, conv2d, conv2d_backward,
    to_memory_format,
};
use ndarray::{Array, Array1, Array4, Dimension, ShapeBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

/// The conv2d shapes and the `--shape` grammar, shared with examples/bench.
#[path = "common/shapes.rs"]
mod shapes;
use shapes::{ConvShape, NAMED_SHAPES, named, parse_shape};

/// The FMA peak measure, shared with examples/bench.
#[path = "common/peak.rs"]
mod peak;

/// The naive f64 conv every path is checked against.
#[path = "common/reference.rs"]
mod reference;

const USAGE: &str = "\
usage: convbench [--shape [NAME=]SPEC]... [--named NAME[,NAME..]|all]... [options]
  SPEC: N,C,H,W,O,k,stride,pad or N,C,H,W,O,kh,kw,sh,sw,ph,pw,dh,dw,groups
        (the grammar of tools/torch_bench.py --shape); a shape without NAME= is named
        by its SPEC
  --named       shapes of examples/bench: NAMES, or all
  --path P,..   auto, autotune, the algorithms (ALGOS), naive, or all (default: all)
  --pass        fwd, bwd or both (default: both)
  --threads T   rayon pool size, also of the FMA peak (default: the CPUs available)
  --reps R      timed runs per pass after a warm-up (default: 7; naive: at most 3)
  --memory-format contiguous|channels-last
                the layout of x, dy and the outputs (default: contiguous)
  --json        one JSON object (with a \"conv2d\" section as examples/bench --json)
  --csv         one CSV line per shape, path and pass
  --max-ref-macs M
                skip the naive f64 reference (errors and the naive path) above M
                forward multiply-adds (default: 2e9)";

/// Forward multiply-adds above which the naive f64 reference is skipped by default.
const DEFAULT_REF_MACS: f64 = 2e9;

/// Timed runs of the naive path at most (it is slow): its computation as the reference
/// is the first, and more run while they took less than [`NAIVE_SECS`] in all.
const NAIVE_REPS: usize = 3;

/// See [`NAIVE_REPS`].
const NAIVE_SECS: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Fwd,
    Bwd,
    Both,
}

impl Pass {
    fn fwd(self) -> bool {
        self != Pass::Bwd
    }

    fn bwd(self) -> bool {
        self != Pass::Fwd
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

/// One way to run the conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `ConvAlgorithm::Auto`.
    Auto,
    /// `ConvAlgorithm::Autotune`.
    Autotune,
    /// Every pass that has the algorithm of this name forced to it (`ConvAlgos::named`).
    Algo(&'static str),
    /// The naive f64 reference itself.
    Naive,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Auto => "auto",
            Path::Autotune => "autotune",
            Path::Algo(name) => name,
            Path::Naive => "naive",
        }
    }
}

/// Every algorithm name of any pass, in the order of `ForwardAlgo::ALL` and then the
/// others': the crate's paths, so a new algorithm shows up here by itself.
fn algorithm_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    let all = ForwardAlgo::ALL
        .iter()
        .map(|a| a.name())
        .chain(InputGradAlgo::ALL.iter().map(|a| a.name()))
        .chain(WeightGradAlgo::ALL.iter().map(|a| a.name()));
    for name in all {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Every path, in the order `all` runs them.
fn all_paths() -> Vec<Path> {
    let mut paths = vec![Path::Auto, Path::Autotune];
    paths.extend(algorithm_names().into_iter().map(Path::Algo));
    paths.push(Path::Naive);
    paths
}

/// Parses `--path`'s value: names separated by commas, `all` for every path.
fn parse_paths(value: &str) -> Result<Vec<Path>, String> {
    let mut out = Vec::new();
    for word in value.split(',').map(str::trim) {
        let found: Vec<Path> = if word.eq_ignore_ascii_case("all") {
            all_paths()
        } else {
            let path = all_paths()
                .into_iter()
                .find(|p| p.name().eq_ignore_ascii_case(word));
            match path {
                Some(p) => vec![p],
                None => {
                    let names: Vec<&str> = all_paths().iter().map(|p| p.name()).collect();
                    return Err(format!(
                        "--path: unknown path '{word}'; one of {} or all",
                        names.join(", ")
                    ));
                }
            }
        };
        for p in found {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct Options {
    shapes: Vec<(String, ConvShape)>,
    paths: Vec<Path>,
    pass: Pass,
    threads: usize,
    reps: usize,
    format: Format,
    ref_macs: f64,
    memory_format: MemoryFormat,
}

/// The command line (without the program name); `Ok(None)` for `--help`.
fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        shapes: Vec::new(),
        paths: Vec::new(),
        pass: Pass::Both,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        reps: 7,
        format: Format::Table,
        ref_macs: DEFAULT_REF_MACS,
        memory_format: MemoryFormat::Contiguous,
    };
    let mut format = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let positive = |flag: &str, v: &str| -> Result<usize, String> {
            match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{flag}: '{v}' is not a positive integer")),
            }
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--shape" => o.shapes.push(parse_shape(value("--shape")?)?),
            "--named" => {
                for name in value("--named")?.split(',').map(str::trim) {
                    if name == "all" {
                        for (n, _) in NAMED_SHAPES {
                            o.shapes
                                .push((n.to_string(), named(n).expect("a named shape")));
                        }
                    } else {
                        let s = named(name).ok_or_else(|| {
                            let names: Vec<&str> = NAMED_SHAPES.iter().map(|(n, _)| *n).collect();
                            format!(
                                "--named: unknown shape '{name}'; one of {} or all",
                                names.join(", ")
                            )
                        })?;
                        o.shapes.push((name.to_string(), s));
                    }
                }
            }
            "--path" => o.paths.extend(parse_paths(value("--path")?)?),
            "--pass" => {
                o.pass = match value("--pass")? {
                    "fwd" => Pass::Fwd,
                    "bwd" => Pass::Bwd,
                    "both" => Pass::Both,
                    v => return Err(format!("--pass: '{v}' is not fwd, bwd or both")),
                }
            }
            "--threads" => o.threads = positive("--threads", value("--threads")?)?,
            "--reps" => o.reps = positive("--reps", value("--reps")?)?,
            "--memory-format" => {
                o.memory_format = match value("--memory-format")? {
                    "contiguous" => MemoryFormat::Contiguous,
                    "channels-last" | "channels_last" => MemoryFormat::ChannelsLast,
                    v => {
                        return Err(format!(
                            "--memory-format: '{v}' is not contiguous or channels-last"
                        ));
                    }
                }
            }
            "--max-ref-macs" => {
                let v = value("--max-ref-macs")?;
                o.ref_macs = match v.trim().parse::<f64>() {
                    Ok(m) if m >= 0.0 => m,
                    _ => return Err(format!("--max-ref-macs: '{v}' is not a number >= 0")),
                }
            }
            "--json" | "--csv" => {
                let f = if arg == "--json" {
                    Format::Json
                } else {
                    Format::Csv
                };
                if format.is_some_and(|g| g != f) {
                    return Err("--json and --csv exclude each other".into());
                }
                format = Some(f);
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    if o.shapes.is_empty() {
        return Err("no shape: give --shape [NAME=]SPEC or --named NAME|all (try --help)".into());
    }
    let mut seen = BTreeSet::new();
    for (name, _) in &o.shapes {
        if !seen.insert(name.as_str()) {
            return Err(format!("shape name '{name}' is given twice"));
        }
    }
    if o.paths.is_empty() {
        o.paths = all_paths();
    }
    o.format = format.unwrap_or(Format::Table);
    Ok(Some(o))
}

/// Median, min and max of some timings, in seconds.
#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Stats {
        v.sort_by(f64::total_cmp);
        Stats {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// The timings of the passes asked for.
#[derive(Debug, Default)]
struct Timing {
    fwd: Option<Stats>,
    bwd: Option<Stats>,
    /// Each run's forward plus its backward: the forward-then-backward time.
    fwd_bwd: Option<Stats>,
}

impl Timing {
    /// The stats of `(forward, backward)` seconds per round.
    fn of(pass: Pass, samples: &[(f64, f64)]) -> Timing {
        let pick = |f: fn(&(f64, f64)) -> f64| Stats::of(samples.iter().map(f).collect());
        Timing {
            fwd: pass.fwd().then(|| pick(|s| s.0)),
            bwd: pass.bwd().then(|| pick(|s| s.1)),
            fwd_bwd: (pass == Pass::Both).then(|| pick(|s| s.0 + s.1)),
        }
    }
}

/// One round of the passes asked for: `(forward, backward)` seconds (0 for a pass not
/// run).
fn round_secs(pass: Pass, fwd: &mut impl FnMut(), bwd: &mut impl FnMut()) -> (f64, f64) {
    let t = Instant::now();
    if pass.fwd() {
        fwd();
    }
    let tf = t.elapsed().as_secs_f64();
    if pass.bwd() {
        bwd();
    }
    (tf, t.elapsed().as_secs_f64() - tf)
}

/// Times `fwd` and / or `bwd`: runs them until at least three rounds and 50 ms have
/// passed (sub-millisecond kernels need that to reach steady state), then `reps` timed
/// rounds.
fn time_passes(pass: Pass, reps: usize, mut fwd: impl FnMut(), mut bwd: impl FnMut()) -> Timing {
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < 3 || start.elapsed().as_secs_f64() < 0.05 {
        round_secs(pass, &mut fwd, &mut bwd);
        rounds += 1;
    }
    let samples: Vec<(f64, f64)> = (0..reps)
        .map(|_| round_secs(pass, &mut fwd, &mut bwd))
        .collect();
    Timing::of(pass, &samples)
}

/// The algorithms that ran each pass (`-` for a pass not run or not known).
#[derive(Debug, Clone, Copy)]
struct PlanDesc {
    forward: &'static str,
    input_grad: &'static str,
    weight_grad: &'static str,
    kernel: &'static str,
}

impl PlanDesc {
    fn of(fwd: Option<ConvPlan>, bwd: Option<ConvPlan>) -> PlanDesc {
        PlanDesc {
            forward: fwd.map_or("-", |p| p.forward.name()),
            input_grad: bwd.map_or("-", |p| p.input_grad.name()),
            weight_grad: bwd.map_or("-", |p| p.weight_grad.name()),
            kernel: fwd.or(bwd).map_or("-", |p| p.kernel.name()),
        }
    }

    fn short(&self) -> String {
        format!("{}/{}/{}", self.forward, self.input_grad, self.weight_grad)
    }

    fn json(&self) -> Value {
        json!({
            "forward": self.forward,
            "input_grad": self.input_grad,
            "weight_grad": self.weight_grad,
            "kernel": self.kernel,
        })
    }
}

/// Largest absolute errors against the reference (`None`: not run or not checked).
#[derive(Debug, Default, Clone, Copy)]
struct Errors {
    y: Option<f64>,
    dx: Option<f64>,
    dw: Option<f64>,
    db: Option<f64>,
}

/// What one path did on one shape.
#[derive(Debug)]
enum Outcome {
    Ran {
        plan: Option<PlanDesc>,
        timing: Timing,
        errors: Errors,
    },
    /// The path cannot run this geometry (the crate's configuration error).
    CannotRun(String),
    /// Not run, and why.
    Skipped(String),
    /// An unexpected error.
    Failed(String),
}

/// The naive reference's results for one shape, and the seconds they took
/// `(forward, backward)`.
struct Reference {
    y: Option<Array4<f64>>,
    grads: Option<(Array4<f64>, Array4<f64>, Array1<f64>)>,
    secs: (f64, f64),
}

/// One shape's operands.
struct Inputs {
    x: Array4<f32>,
    w: Array4<f32>,
    b: Array1<f32>,
    dy: Array4<f32>,
}

fn uniform<D: Dimension, Sh: ShapeBuilder<Dim = D>>(shape: Sh, rng: &mut StdRng) -> Array<f32, D> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// The options and plans of a conv path (not the naive one).
fn conv_options(path: Path, base: &Conv2dOptions) -> Conv2dOptions {
    match path {
        Path::Autotune => base.with_algorithm(ConvAlgorithm::Autotune),
        Path::Algo(name) => base.with_algorithm(ConvAlgorithm::Fixed(
            ConvAlgos::named(name).expect("the name of an algorithm"),
        )),
        Path::Auto | Path::Naive => *base,
    }
}

/// Runs and times one conv path of the crate.
fn run_conv(
    path: Path,
    s: &ConvShape,
    inp: &Inputs,
    refs: &Reference,
    o: &Options,
) -> Result<Outcome, String> {
    let opts = conv_options(path, &shape_options(s, o));
    let geo = Conv2dGeometry::new("convbench", s.x_dim().into(), s.w_dim().into(), &opts)
        .map_err(|e| e.to_string())?;
    let threads = rayon::current_num_threads();
    let (x, w, b, dy) = (inp.x.view(), inp.w.view(), inp.b.view(), inp.dy.view());
    let refused = |e: convinit::Error| match e {
        convinit::Error::Config { .. } => Ok(Outcome::CannotRun(e.to_string())),
        e => Err(e.to_string()),
    };
    // One untimed call of each pass: whether the path runs, its errors, and (autotune)
    // the tuning.
    let mut errors = Errors::default();
    if o.pass.fwd() {
        let y = match conv2d(x, w, Some(b), &opts) {
            Ok(y) => y,
            Err(e) => return refused(e),
        };
        errors.y = refs.y.as_ref().map(|r| reference::max_abs_err(y.view(), r));
    }
    if o.pass.bwd() {
        let g = match conv2d_backward(x, w, true, dy, &opts) {
            Ok(g) => g,
            Err(e) => return refused(e),
        };
        if let Some((dx, dw, db)) = &refs.grads {
            errors.dx = Some(reference::max_abs_err(g.dx.view(), dx));
            errors.dw = Some(reference::max_abs_err(g.dw.view(), dw));
            errors.db = g.db.map(|g| reference::max_abs_err(g.view(), db));
        }
    }
    let auto = ConvPlan::choose(&geo, threads);
    let (fwd_plan, bwd_plan) = match (path, opts.algorithm) {
        (Path::Autotune, _) => (
            autotuned_plan(&geo, threads, ConvPass::Forward),
            autotuned_plan(&geo, threads, ConvPass::Backward),
        ),
        (_, ConvAlgorithm::Fixed(algos)) => {
            (Some(algos.apply_to(auto)), Some(algos.apply_to(auto)))
        }
        _ => (Some(auto), Some(auto)),
    };
    let plan = PlanDesc::of(
        fwd_plan.filter(|_| o.pass.fwd()),
        bwd_plan.filter(|_| o.pass.bwd()),
    );
    // Outputs and gradients go back to the buffer cache, as in examples/bench (the next
    // call reuses their memory instead of faulting in fresh pages).
    let timing = time_passes(
        o.pass,
        o.reps,
        || {
            if let Ok(y) = conv2d(x, w, Some(b), &opts) {
                recycle(black_box(y));
            }
        },
        || {
            if let Ok(g) = conv2d_backward(x, w, true, dy, &opts) {
                let g = black_box(g);
                recycle(g.dx);
                recycle(g.dw);
            }
        },
    );
    Ok(Outcome::Ran {
        plan: Some(plan),
        timing,
        errors,
    })
}

/// Everything measured on one shape.
struct ShapeResult {
    name: String,
    shape: ConvShape,
    auto_plan: PlanDesc,
    /// Why the errors were not checked, if they were not.
    unchecked: Option<String>,
    rows: Vec<(Path, Outcome)>,
}

/// The shape's options in the layout `--memory-format` asks for.
fn shape_options(s: &ConvShape, o: &Options) -> Conv2dOptions {
    s.options().with_memory_format(o.memory_format)
}

/// `a` in the layout `--memory-format` asks for (the same values).
fn laid_out(a: Array4<f32>, o: &Options) -> Array4<f32> {
    match o.memory_format {
        MemoryFormat::Contiguous => a,
        f => to_memory_format(a.view(), f).expect("a benchmark tensor fits in memory"),
    }
}

fn bench_shape(name: &str, s: &ConvShape, o: &Options, rng: &mut StdRng) -> ShapeResult {
    let inp = Inputs {
        x: laid_out(uniform(s.x_dim(), rng), o),
        w: uniform(s.w_dim(), rng),
        b: uniform(s.o, rng),
        dy: laid_out(uniform(s.y_dim(), rng), o),
    };
    let macs = s.macs();
    let unchecked = (macs > o.ref_macs).then(|| {
        format!(
            "not checked: {macs:.3e} forward multiply-adds, over the naive f64 reference's \
             budget of {:.1e} (--max-ref-macs)",
            o.ref_macs
        )
    });
    let naive_fwd = || reference::forward(s, inp.x.view(), inp.w.view(), Some(inp.b.view()));
    let naive_bwd = || reference::backward(s, inp.x.view(), inp.w.view(), inp.dy.view());
    let mut refs = Reference {
        y: None,
        grads: None,
        secs: (0.0, 0.0),
    };
    if unchecked.is_none() {
        let t = Instant::now();
        refs.y = o.pass.fwd().then(naive_fwd);
        refs.secs.0 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        refs.grads = o.pass.bwd().then(naive_bwd);
        refs.secs.1 = t.elapsed().as_secs_f64();
    }
    let geo = Conv2dGeometry::new(
        "convbench",
        s.x_dim().into(),
        s.w_dim().into(),
        &shape_options(s, o),
    )
    .expect("a parsed shape is a valid geometry");
    let auto = ConvPlan::choose(&geo, rayon::current_num_threads());
    let mut rows = Vec::new();
    for &path in &o.paths {
        let outcome = match path {
            Path::Naive => match &unchecked {
                Some(why) => Outcome::Skipped(why.replacen("not checked", "skipped", 1)),
                None => {
                    // The reference's own computation is the first timed round.
                    let mut samples = vec![refs.secs];
                    let mut spent = refs.secs.0 + refs.secs.1;
                    let mut f = || drop(black_box(naive_fwd()));
                    let mut b = || drop(black_box(naive_bwd()));
                    while samples.len() < o.reps.min(NAIVE_REPS) && spent < NAIVE_SECS {
                        let r = round_secs(o.pass, &mut f, &mut b);
                        spent += r.0 + r.1;
                        samples.push(r);
                    }
                    Outcome::Ran {
                        plan: None,
                        timing: Timing::of(o.pass, &samples),
                        errors: Errors::default(),
                    }
                }
            },
            _ => run_conv(path, s, &inp, &refs, o).unwrap_or_else(Outcome::Failed),
        };
        rows.push((path, outcome));
    }
    ShapeResult {
        name: name.to_string(),
        shape: s.clone(),
        auto_plan: PlanDesc::of(Some(auto), Some(auto)),
        unchecked,
        rows,
    }
}

/// The run's context: threads, peak, kernel, CPU.
struct Context {
    threads: usize,
    reps: usize,
    peak: f64,
    kernel: &'static str,
    /// The kernel runs narrow rows on 256-bit vectors (`Kernel::half_vectors`).
    half_vectors: bool,
    cpu: String,
    /// `--memory-format`, as it is spelled there.
    layout: &'static str,
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn round(x: f64, places: i32) -> f64 {
    let p = 10f64.powi(places);
    (x * p).round() / p
}

/// Flops of a pass: forward 2 per multiply-add, backward 4 (input and weight
/// gradients), both 6.
fn flops(s: &ConvShape, pass: &str) -> f64 {
    let per_mac = match pass {
        "fwd" => 2.0,
        "bwd" => 4.0,
        _ => 6.0,
    };
    per_mac * s.macs()
}

/// The (pass name, stats) of a timing, in order.
fn passes(t: &Timing) -> Vec<(&'static str, Stats)> {
    [("fwd", t.fwd), ("bwd", t.bwd), ("fwd+bwd", t.fwd_bwd)]
        .into_iter()
        .filter_map(|(n, s)| s.map(|s| (n, s)))
        .collect()
}

fn fmt_err(e: Option<f64>) -> String {
    e.map_or("-".into(), |e| format!("{e:.1e}"))
}

/// The error column of one pass's row.
fn error_cell(pass: &str, e: &Errors) -> String {
    match pass {
        "fwd" => e.y.map_or(String::new(), |_| format!("y {}", fmt_err(e.y))),
        "bwd" if e.dx.is_some() => format!(
            "dx {} dW {} db {}",
            fmt_err(e.dx),
            fmt_err(e.dw),
            fmt_err(e.db)
        ),
        _ => String::new(),
    }
}

/// Columns padded to their widest cell; `right` marks right-aligned columns.
fn aligned(rows: &[Vec<String>], right: &[bool]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            // The last cell of a short row spans the columns after it.
            rows.iter()
                .filter(|r| c + 1 < r.len() || r.len() == cols)
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let last = c + 1 == r.len();
            let pad = width[c].saturating_sub(cell.chars().count());
            if c > 0 {
                line.push_str("  ");
            }
            if right.get(c).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if !last {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn print_table(ctx: &Context, results: &[ShapeResult]) {
    println!(
        "convbench: {} thread{}, FMA peak {:.1} GFLOP/s, GEMM kernel {}{}, {} reps, {} tensors, {}",
        ctx.threads,
        if ctx.threads == 1 { "" } else { "s" },
        ctx.peak,
        ctx.kernel,
        if ctx.half_vectors {
            " (256-bit tiles for narrow rows)"
        } else {
            ""
        },
        ctx.reps,
        ctx.layout,
        ctx.cpu
    );
    for r in results {
        println!();
        println!(
            "{}: {} ({:.3} GMAC); auto plan fwd/dx/dW: {}",
            r.name,
            r.shape.describe(),
            r.shape.macs() / 1e9,
            r.auto_plan.short()
        );
        println!(
            "  errors: {}",
            r.unchecked
                .as_deref()
                .unwrap_or("largest |ours - naive f64 conv|")
        );
        let mut rows = vec![
            [
                "path",
                "pass",
                "median ms",
                "min ms",
                "max ms",
                "GFLOP/s",
                "peak",
                "fwd/dx/dW",
                "max abs error",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for (path, outcome) in &r.rows {
            match outcome {
                Outcome::Ran {
                    plan,
                    timing,
                    errors,
                } => {
                    for (pass, st) in passes(timing) {
                        let gflops = flops(&r.shape, pass) / st.median / 1e9;
                        rows.push(vec![
                            path.name().into(),
                            pass.into(),
                            format!("{:.3}", st.median * 1e3),
                            format!("{:.3}", st.min * 1e3),
                            format!("{:.3}", st.max * 1e3),
                            format!("{gflops:.1}"),
                            format!("{:.0}%", 100.0 * gflops / ctx.peak),
                            plan.map_or("f64 reference".into(), |p| p.short()),
                            error_cell(pass, errors),
                        ]);
                    }
                }
                Outcome::CannotRun(why) => {
                    // The geometry is in the heading: keep the crate's reason alone.
                    let reason = why.rsplit_once(": ").map_or(why.as_str(), |(_, r)| r);
                    rows.push(vec![path.name().into(), format!("cannot run: {reason}")])
                }
                Outcome::Skipped(why) => rows.push(vec![path.name().into(), why.clone()]),
                Outcome::Failed(why) => {
                    rows.push(vec![path.name().into(), format!("failed: {why}")])
                }
            }
        }
        let right = [false, false, true, true, true, true, true, false, false];
        for line in aligned(&rows, &right).lines() {
            println!("  {line}");
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn print_csv(ctx: &Context, results: &[ShapeResult]) {
    println!(
        "shape,spec,path,pass,status,median_ms,min_ms,max_ms,gflops,peak_fraction,forward,\
         input_grad,weight_grad,kernel,err_y,err_dx,err_dw,err_db,note"
    );
    for r in results {
        let spec = r
            .shape
            .given
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        for (path, outcome) in &r.rows {
            let head = [
                csv_field(&r.name),
                csv_field(&spec),
                path.name().to_string(),
            ];
            let line = |fields: Vec<String>| {
                println!("{},{}", head.join(","), fields.join(","));
            };
            let opt = |e: Option<f64>| e.map_or(String::new(), |e| format!("{e:e}"));
            match outcome {
                Outcome::Ran {
                    plan,
                    timing,
                    errors,
                } => {
                    for (pass, st) in passes(timing) {
                        let gflops = flops(&r.shape, pass) / st.median / 1e9;
                        let p = plan.map_or(["", "", "", ""], |p| {
                            [p.forward, p.input_grad, p.weight_grad, p.kernel]
                        });
                        let e = match pass {
                            "fwd" => [errors.y, None, None, None],
                            "bwd" => [None, errors.dx, errors.dw, errors.db],
                            _ => [None; 4],
                        };
                        let mut f = vec![
                            pass.to_string(),
                            "ok".into(),
                            format!("{:.4}", st.median * 1e3),
                            format!("{:.4}", st.min * 1e3),
                            format!("{:.4}", st.max * 1e3),
                            format!("{gflops:.1}"),
                            format!("{:.3}", gflops / ctx.peak),
                        ];
                        f.extend(p.iter().map(|s| s.to_string()));
                        f.extend(e.iter().map(|&e| opt(e)));
                        f.push(csv_field(r.unchecked.as_deref().unwrap_or("")));
                        line(f);
                    }
                }
                Outcome::CannotRun(why) | Outcome::Skipped(why) | Outcome::Failed(why) => {
                    let status = match outcome {
                        Outcome::CannotRun(_) => "cannot_run",
                        Outcome::Skipped(_) => "skipped",
                        _ => "failed",
                    };
                    let mut f = vec![String::new(), status.into()];
                    f.extend(std::iter::repeat_n(String::new(), 13));
                    f.push(csv_field(why));
                    line(f);
                }
            }
        }
    }
}

fn stats_json(s: &ConvShape, pass: &str, st: Stats, peak: f64) -> Value {
    let gflops = flops(s, pass) / st.median / 1e9;
    json!({
        "median_ms": round(st.median * 1e3, 4),
        "min_ms": round(st.min * 1e3, 4),
        "max_ms": round(st.max * 1e3, 4),
        "gflops": round(gflops, 1),
        "peak_fraction": round(gflops / peak, 3),
    })
}

/// The "conv2d" entry of a shape in `examples/bench --json`'s format, from `path`'s
/// timing.
fn bench_entry(s: &ConvShape, path: Path, t: &Timing) -> Value {
    let mut e = Map::new();
    e.insert("shape".into(), json!(s.given));
    e.insert("path".into(), json!(path.name()));
    if let Some(f) = t.fwd {
        e.insert("fwd_ms".into(), json!(round(f.median * 1e3, 4)));
    }
    if let Some(fb) = t.fwd_bwd {
        e.insert("fwd_bwd_ms".into(), json!(round(fb.median * 1e3, 4)));
    }
    if let Some(b) = t.bwd {
        e.insert("bwd_ms".into(), json!(round(b.median * 1e3, 4)));
    }
    if let Some(f) = t.fwd {
        e.insert(
            "fwd_gflops".into(),
            json!(round(flops(s, "fwd") / f.median / 1e9, 1)),
        );
    }
    if let Some(fb) = t.fwd_bwd {
        e.insert(
            "fwd_bwd_gflops".into(),
            json!(round(flops(s, "fwd+bwd") / fb.median / 1e9, 1)),
        );
    }
    Value::Object(e)
}

fn to_json(ctx: &Context, results: &[ShapeResult]) -> Value {
    let mut conv2d = Map::new();
    let mut shapes = Vec::new();
    for r in results {
        // The "conv2d" entry: auto's figures, else the first crate path that ran.
        let primary = r
            .rows
            .iter()
            .filter(|(p, _)| *p != Path::Naive)
            .filter_map(|(p, o)| match o {
                Outcome::Ran { timing, .. } => Some((*p, timing)),
                _ => None,
            })
            .min_by_key(|(p, _)| *p != Path::Auto);
        if let Some((p, t)) = primary {
            conv2d.insert(r.name.clone(), bench_entry(&r.shape, p, t));
        }
        let rows: Vec<Value> = r
            .rows
            .iter()
            .map(|(path, outcome)| match outcome {
                Outcome::Ran {
                    plan,
                    timing,
                    errors,
                } => {
                    let mut row = Map::new();
                    row.insert("path".into(), json!(path.name()));
                    row.insert("status".into(), json!("ok"));
                    row.insert("plan".into(), plan.map_or(Value::Null, |p| p.json()));
                    for (pass, st) in passes(timing) {
                        row.insert(
                            pass.replace('+', "_"),
                            stats_json(&r.shape, pass, st, ctx.peak),
                        );
                    }
                    row.insert(
                        "max_abs_err".into(),
                        json!({"y": errors.y, "dx": errors.dx, "dw": errors.dw, "db": errors.db}),
                    );
                    Value::Object(row)
                }
                Outcome::CannotRun(why) => {
                    json!({"path": path.name(), "status": "cannot_run", "note": why})
                }
                Outcome::Skipped(why) => {
                    json!({"path": path.name(), "status": "skipped", "note": why})
                }
                Outcome::Failed(why) => {
                    json!({"path": path.name(), "status": "failed", "note": why})
                }
            })
            .collect();
        shapes.push(json!({
            "name": r.name,
            "shape": r.shape.given,
            "long_form": r.shape.long_form(),
            "out_hw": [r.shape.out.0, r.shape.out.1],
            "macs": r.shape.macs(),
            "auto_plan": r.auto_plan.json(),
            "reference": r.unchecked.as_deref().unwrap_or("checked against a naive f64 conv"),
            "paths": rows,
        }));
    }
    json!({
        "crate": format!("convinit {}", env!("CARGO_PKG_VERSION")),
        "tool": "convbench",
        "cpu": ctx.cpu,
        "threads": ctx.threads,
        "memory_format": ctx.layout,
        "reps": ctx.reps,
        "kernel": ctx.kernel,
        "half_vectors": ctx.half_vectors,
        "fma_peak_gflops": round(ctx.peak, 1),
        "conv2d": conv2d,
        "shapes": shapes,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{}", usage());
            return;
        }
        Err(e) => {
            eprintln!("convbench: {e}");
            std::process::exit(2);
        }
    };
    // The calling thread is worker 0: the timed calls and their outputs run on the main
    // thread, whose glibc arena keeps a freed block for the next call (from a pool
    // thread's arena, dw_64 read 10-18 ms after resnet_128s2 against 3.0-3.3 alone; 2
    // threads, Intel Xeon).
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .use_current_thread()
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "convbench: cannot build a pool of {} threads: {e}",
                o.threads
            );
            std::process::exit(1);
        }
    };
    let ctx = Context {
        threads: o.threads,
        reps: o.reps,
        peak: peak::fma_peak(o.threads),
        kernel: Kernel::selected().name(),
        half_vectors: Kernel::selected().half_vectors(),
        cpu: cpu_name(),
        layout: match o.memory_format {
            MemoryFormat::ChannelsLast => "channels-last",
            _ => "contiguous",
        },
    };
    let results: Vec<ShapeResult> = pool.install(|| {
        let mut rng = StdRng::seed_from_u64(0);
        o.shapes
            .iter()
            .map(|(name, s)| bench_shape(name, s, &o, &mut rng))
            .collect()
    });
    match o.format {
        Format::Table => print_table(&ctx, &results),
        Format::Csv => print_csv(&ctx, &results),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&ctx, &results)).unwrap_or_default()
        ),
    }
    let failed = results
        .iter()
        .flat_map(|r| &r.rows)
        .any(|(_, o)| matches!(o, Outcome::Failed(_)));
    if failed {
        std::process::exit(1);
    }
}

/// [`USAGE`] with the names of the named shapes and of the algorithms filled in.
fn usage() -> String {
    let names: Vec<&str> = NAMED_SHAPES.iter().map(|(n, _)| *n).collect();
    USAGE
        .replace("NAMES", &names.join(", "))
        .replace("ALGOS", &algorithm_names().join(", "))
}

/// The tests' naive conv, plain loops over the definition: the reference's reference.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../tests/common/naive.rs"]
mod test_naive;

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn parse(s: &str) -> Result<Options, String> {
        parse_args(&args(s)).map(|o| o.expect("not --help"))
    }

    const SHORT: [&str; 8] = ["N", "C", "H", "W", "O", "k", "stride", "pad"];
    const LONG: [&str; 14] = [
        "N", "C", "H", "W", "O", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "groups",
    ];

    #[test]
    fn short_form() {
        let (name, s) = parse_shape("32,64,56,56,64,3,2,1").unwrap();
        assert_eq!(name, "32,64,56,56,64,3,2,1");
        assert_eq!(s.x_dim(), (32, 64, 56, 56));
        assert_eq!(s.w_dim(), (64, 64, 3, 3));
        assert_eq!(
            (s.stride, s.padding, s.dilation, s.groups),
            ((2, 2), (1, 1), (1, 1), 1)
        );
        assert_eq!(s.out, (28, 28));
        assert_eq!(s.given, vec![32, 64, 56, 56, 64, 3, 2, 1]);
        assert_eq!(
            s.long_form(),
            [32, 64, 56, 56, 64, 3, 3, 2, 2, 1, 1, 1, 1, 1]
        );
        assert_eq!(s.macs(), (32 * 64 * 28 * 28 * 64 * 9) as f64);
    }

    #[test]
    fn long_form_with_a_name() {
        let (name, s) = parse_shape(" seg = 2, 12, 31, 17, 6, 3, 5, 2, 1, 4, 2, 2, 3, 3 ").unwrap();
        assert_eq!(name, "seg");
        assert_eq!(s.x_dim(), (2, 12, 31, 17));
        assert_eq!(s.w_dim(), (6, 4, 3, 5));
        assert_eq!(
            (s.kernel, s.stride, s.padding, s.dilation, s.groups),
            ((3, 5), (2, 1), (4, 2), (2, 3), 3)
        );
        // (31 + 8 - 2 * 2 - 1) / 2 + 1 = 18, (17 + 4 - 3 * 4 - 1) / 1 + 1 = 9.
        assert_eq!(s.out, (18, 9));
        assert_eq!(s.given.len(), 14);
        assert_eq!(s.long_form().to_vec(), s.given);
        // The NAME= prefix works for the short form too.
        let (name, s2) = parse_shape("l1=100,1,28,28,8,5,2,2").unwrap();
        assert_eq!(name, "l1");
        assert_eq!(s2, named("seed_l1").unwrap());
    }

    #[test]
    fn every_malformed_field_is_named() {
        let short = ["1", "2", "8", "8", "4", "3", "1", "1"];
        for (i, field) in SHORT.iter().enumerate() {
            for bad in ["abc", "-1", "1.5", ""] {
                let mut f = short;
                f[i] = bad;
                let arg = format!("x={}", f.join(","));
                let e = parse_shape(&arg).unwrap_err();
                let want = format!("shape '{arg}': field {} ({field}) is '{bad}', not a", i + 1);
                assert!(e.starts_with(&want), "{e}");
            }
        }
        let long = [
            "2", "4", "9", "9", "4", "3", "3", "1", "1", "1", "1", "1", "1", "2",
        ];
        for (i, field) in LONG.iter().enumerate() {
            let mut f = long;
            f[i] = "abc";
            let arg = f.join(",");
            let e = parse_shape(&arg).unwrap_err();
            let want = format!("shape '{arg}': field {} ({field}) is 'abc', not a", i + 1);
            assert!(e.starts_with(&want), "{e}");
        }
        // The example of the brief, word for word.
        assert_eq!(
            parse_shape("x=1,2,8,8,abc,3,1,1").unwrap_err(),
            "shape 'x=1,2,8,8,abc,3,1,1': field 5 (O) is 'abc', not a positive integer"
        );
        assert!(
            parse_shape("1,2,8,8,4,3,1,x")
                .unwrap_err()
                .contains("not a non-negative integer")
        );
    }

    #[test]
    fn wrong_field_counts() {
        for n in [1, 7, 9, 13, 15] {
            let arg = vec!["2"; n].join(",");
            let e = parse_shape(&arg).unwrap_err();
            assert!(
                e.contains(&format!("{n} fields, want 8")) && e.contains("or 14"),
                "{e}"
            );
        }
        assert!(parse_shape("a=").unwrap_err().contains("no fields"));
        assert!(
            parse_shape("=1,2,8,8,4,3,1,1")
                .unwrap_err()
                .contains("name before '=' is empty")
        );
    }

    #[test]
    fn zero_values() {
        for (i, field) in SHORT.iter().enumerate() {
            let mut f = ["1", "2", "8", "8", "4", "3", "1", "1"];
            f[i] = "0";
            let r = parse_shape(&f.join(","));
            if *field == "pad" {
                assert_eq!(r.unwrap().1.padding, (0, 0));
            } else {
                let e = r.unwrap_err();
                assert!(
                    e.contains(&format!("field {} ({field}) is 0, must be positive", i + 1)),
                    "{e}"
                );
            }
        }
        for (i, field) in LONG.iter().enumerate() {
            let mut f = [
                "2", "4", "9", "9", "4", "3", "3", "1", "1", "1", "1", "1", "1", "2",
            ];
            f[i] = "0";
            let r = parse_shape(&f.join(","));
            if matches!(*field, "ph" | "pw") {
                assert!(r.is_ok(), "{field}");
            } else {
                let e = r.unwrap_err();
                assert!(
                    e.contains(&format!("field {} ({field}) is 0", i + 1)),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn groups_must_divide_the_channels_and_the_kernel_fit() {
        let e = parse_shape("g=2,6,9,9,8,3,3,1,1,1,1,1,1,4").unwrap_err();
        assert!(e.contains("groups 4 must divide C = 6 and O = 8"), "{e}");
        let e = parse_shape("2,8,9,9,6,3,3,1,1,1,1,1,1,4").unwrap_err();
        assert!(e.contains("groups 4 must divide C = 8 and O = 6"), "{e}");
        assert!(parse_shape("2,8,9,9,8,3,3,1,1,1,1,1,1,4").is_ok());
        let e = parse_shape("big=1,1,4,4,1,5,1,0").unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        // Padding makes it fit; dilation makes it not.
        assert_eq!(parse_shape("1,1,4,4,1,5,1,1").unwrap().1.out, (2, 2));
        assert!(
            parse_shape("1,1,4,4,1,2,2,1,1,0,0,4,4,1")
                .unwrap_err()
                .contains("does not fit")
        );
    }

    #[test]
    fn the_named_table() {
        let mut names = BTreeSet::new();
        for (name, fields) in NAMED_SHAPES {
            assert!(names.insert(*name), "{name} twice");
            let s = named(name).unwrap();
            assert_eq!(&s.given, fields);
        }
        let dw = named("dw_64").unwrap();
        assert_eq!(
            dw.long_form(),
            [32, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, 1, 1, 64]
        );
        assert_eq!(dw.w_dim(), (64, 1, 3, 3));
        let pw = named("pw_64x128").unwrap();
        assert_eq!(
            pw.long_form(),
            [32, 64, 56, 56, 128, 1, 1, 1, 1, 0, 0, 1, 1, 1]
        );
        assert_eq!(
            named("resnet_64").unwrap().given,
            vec![32, 64, 56, 56, 64, 3, 1, 1]
        );
        assert!(named("nope").is_none());
    }

    #[test]
    fn arguments() {
        let o = parse("--shape a=1,2,8,8,4,3,1,1 --shape 1,2,8,8,4,3,1,1 --named seed_l1,dw_64")
            .unwrap();
        let names: Vec<&str> = o.shapes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "1,2,8,8,4,3,1,1", "seed_l1", "dw_64"]);
        assert_eq!(o.paths, all_paths());
        assert_eq!((o.pass, o.format, o.reps), (Pass::Both, Format::Table, 7));
        assert_eq!(o.ref_macs, DEFAULT_REF_MACS);
        assert_eq!(o.memory_format, MemoryFormat::Contiguous);

        let o = parse(
            "--named all --path auto,direct --path phase --pass fwd --threads 3 --reps 2 --csv",
        )
        .unwrap();
        assert_eq!(o.shapes.len(), NAMED_SHAPES.len());
        assert_eq!(
            o.paths,
            [Path::Auto, Path::Algo("direct"), Path::Algo("phase")]
        );
        assert_eq!(
            (o.pass, o.threads, o.reps, o.format),
            (Pass::Fwd, 3, 2, Format::Csv)
        );
        let o = parse("--named vgg_256 --pass bwd --json --max-ref-macs 1e6").unwrap();
        assert_eq!(
            (o.pass, o.format, o.ref_macs),
            (Pass::Bwd, Format::Json, 1e6)
        );
        let o = parse("--named seed_l2 --memory-format channels-last").unwrap();
        assert_eq!(o.memory_format, MemoryFormat::ChannelsLast);

        // `all` is every path: auto, autotune, each algorithm, naive.
        let all: Vec<&str> = all_paths().iter().map(|p| p.name()).collect();
        assert_eq!(
            all,
            [
                "auto",
                "autotune",
                "direct",
                "clipped",
                "columns",
                "pointwise",
                "phase",
                "depthwise",
                "winograd2",
                "winograd4",
                "naive"
            ]
        );
        for name in algorithm_names() {
            assert!(ConvAlgos::named(name).is_some(), "{name}");
        }
        assert!(parse_args(&args("--help")).unwrap().is_none());
    }

    #[test]
    fn bad_arguments() {
        let cases = [
            ("", "no shape"),
            ("--path auto", "no shape"),
            ("--named nope", "unknown shape 'nope'"),
            ("--named seed_l1 --path fft", "unknown path 'fft'"),
            ("--named seed_l1 --pass up", "'up' is not fwd, bwd or both"),
            (
                "--named seed_l1 --threads 0",
                "--threads: '0' is not a positive integer",
            ),
            (
                "--named seed_l1 --reps x",
                "--reps: 'x' is not a positive integer",
            ),
            ("--named seed_l1 --json --csv", "exclude each other"),
            ("--named seed_l1 --max-ref-macs -1", "not a number >= 0"),
            (
                "--named seed_l1 --memory-format nhwc",
                "'nhwc' is not contiguous or channels-last",
            ),
            (
                "--named seed_l1 --frobnicate",
                "unknown argument '--frobnicate'",
            ),
            ("--named seed_l1 --reps", "--reps needs a value"),
            ("--named seed_l1,seed_l1", "given twice"),
            (
                "--shape seed_l1=1,2,8,8,4,3,1,1 --named seed_l1",
                "given twice",
            ),
            ("--shape x=1,2,8,8,4,3,1", "7 fields"),
        ];
        for (a, want) in cases {
            let e = parse(a).unwrap_err();
            assert!(e.contains(want), "{a:?}: {e}");
        }
    }

    #[test]
    fn the_conv2d_section_has_bench_keys() {
        let s = named("seed_l2").unwrap();
        let st = Stats {
            median: 0.002,
            min: 0.001,
            max: 0.003,
        };
        let t = Timing {
            fwd: Some(st),
            bwd: Some(st),
            fwd_bwd: Some(Stats {
                median: 0.004,
                ..st
            }),
        };
        let e = bench_entry(&s, Path::Auto, &t);
        assert_eq!(e["shape"], json!([100, 8, 14, 14, 16, 3, 2, 1]));
        assert_eq!(e["fwd_ms"], json!(2.0));
        assert_eq!(e["fwd_bwd_ms"], json!(4.0));
        let gf = round(2.0 * s.macs() / 0.002 / 1e9, 1);
        assert_eq!(e["fwd_gflops"], json!(gf));
        let fwd_only = bench_entry(
            &s,
            Path::Algo("direct"),
            &Timing {
                fwd: Some(st),
                ..Timing::default()
            },
        );
        assert!(fwd_only.get("fwd_bwd_ms").is_none());
        assert_eq!(fwd_only["path"], json!("direct"));
    }

    #[test]
    fn the_reference_is_the_definition() {
        // A conv whose every output is known in closed form: all-ones input and weight,
        // 3x3 padded by 1: an interior output sums C / groups * 9 ones.
        let (_, s) = parse_shape("1,4,5,5,2,3,3,1,1,1,1,1,1,2").unwrap();
        let x = Array4::<f32>::ones(s.x_dim());
        let w = Array4::<f32>::ones(s.w_dim());
        let y = reference::forward(&s, x.view(), w.view(), None);
        assert_eq!(y[[0, 1, 2, 2]], 18.0);
        assert_eq!(y[[0, 0, 0, 0]], 8.0);
        let dy = Array4::<f32>::ones(s.y_dim());
        let (dx, dw, db) = reference::backward(&s, x.view(), w.view(), dy.view());
        // The centre input feeds 9 outputs of the one output channel of its group.
        assert_eq!(dx[[0, 0, 2, 2]], 9.0);
        // The centre tap sees every one of the 25 inputs.
        assert_eq!(dw[[0, 0, 1, 1]], 25.0);
        assert_eq!(db[1], 25.0);
        // And it agrees with the crate's conv within f32 rounding.
        let ours = conv2d(x.view(), w.view(), None, &s.options()).unwrap();
        assert_eq!(reference::max_abs_err(ours.view(), &y), 0.0);
        let mut bad = ours.clone();
        bad[[0, 0, 0, 0]] = f32::NAN;
        assert!(reference::max_abs_err(bad.view(), &y).is_nan());
    }

    /// The reference (loops over the in-range outputs of each tap, parallel) against the
    /// tests' plainest loops, on random strides, paddings (often larger than the
    /// kernel), dilations and groups: the same sums in another order, so within 1e-12.
    #[test]
    fn the_reference_matches_the_plain_loops() {
        let mut rng = StdRng::seed_from_u64(14);
        for _ in 0..60 {
            let g = rng.random_range(1..=3);
            let k = (rng.random_range(1..=4), rng.random_range(1..=4));
            let st = (rng.random_range(1..=3), rng.random_range(1..=3));
            let p = (rng.random_range(0..=4), rng.random_range(0..=4));
            let d = (rng.random_range(1..=2), rng.random_range(1..=2));
            let min = |k: usize, d: usize, p: usize| (d * (k - 1) + 1).saturating_sub(2 * p).max(1);
            let h = min(k.0, d.0, p.0) + rng.random_range(0..=5);
            let w = min(k.1, d.1, p.1) + rng.random_range(0..=5);
            let fields = [
                rng.random_range(1..=3),
                g * rng.random_range(1..=3),
                h,
                w,
                g * rng.random_range(1..=3),
                k.0,
                k.1,
                st.0,
                st.1,
                p.0,
                p.1,
                d.0,
                d.1,
                g,
            ];
            let s = ConvShape::from_fields("random", &fields).unwrap();
            let x: Array4<f32> = uniform(s.x_dim(), &mut rng);
            let wt: Array4<f32> = uniform(s.w_dim(), &mut rng);
            let b: Array1<f32> = uniform(s.o, &mut rng);
            let dy: Array4<f32> = uniform(s.y_dim(), &mut rng);
            let params = test_naive::Params {
                stride: s.stride,
                padding: s.padding,
                dilation: s.dilation,
                groups: s.groups,
            };
            use test_naive::to64;
            let want = test_naive::conv2d(&to64(&x), &to64(&wt), Some(&to64(&b)), params);
            let (wdx, wdw, wdb) =
                test_naive::conv2d_backward(&to64(&x), &to64(&wt), &to64(&dy), params);
            let y = reference::forward(&s, x.view(), wt.view(), Some(b.view()));
            let (dx, dw, db) = reference::backward(&s, x.view(), wt.view(), dy.view());
            let close = |a: &[f64], b: &[f64]| {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-12)
            };
            let v = |a: &ndarray::ArrayD<f64>| a.iter().copied().collect::<Vec<f64>>();
            assert!(
                close(&v(&y.into_dyn()), &v(&want.into_dyn())),
                "y {fields:?}"
            );
            assert!(
                close(&v(&dx.into_dyn()), &v(&wdx.into_dyn())),
                "dx {fields:?}"
            );
            assert!(
                close(&v(&dw.into_dyn()), &v(&wdw.into_dyn())),
                "dw {fields:?}"
            );
            assert!(
                close(db.as_slice().unwrap(), wdb.as_slice().unwrap()),
                "db {fields:?}"
            );
        }
    }
}
