//! The training loop: shuffled mini-batches, cross-entropy, any [`Optimizer`] with an
//! optional learning-rate schedule, and per-epoch loss and accuracy.

use std::time::Instant;

use ndarray::{ArrayD, ArrayView1, ArrayView2, ArrayViewD, Ix2};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::data::{batch_indices, gather_images};
use super::loss::{
    CrossEntropyOptions, Reduction, argmax, check_labels, correct, cross_entropy_with_grad,
    cross_entropy_with_grad_with,
};
use super::optim::Optimizer;
use crate::error::{Error, Result};
use crate::nn::Sequential;
use crate::threads::KeepAwake;

const OP: &str = "fit";

/// How the learning rate moves over the steps of a [`fit`] run, as a function of the
/// optimiser's base rate ([`Optimizer::base_lr`], the rate it was built with).
///
/// The optimiser is the one place that holds the learning rate: with a schedule,
/// [`fit`] sets the optimiser's current rate ([`Optimizer::set_lr`]) before every step to
/// [`LrSchedule::lr`]`(opt.base_lr(), step, total_steps)`; without one
/// ([`LrSchedule::Constant`], the default) it never touches the rate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LrSchedule {
    /// No schedule: every step uses the optimiser's current rate, which [`fit`] leaves
    /// alone.
    #[default]
    Constant,
    /// Linear warm-up from `base / warmup_steps` to `base` over the first `warmup`
    /// fraction of the steps (rounded, at least one step), then cosine annealing to zero
    /// (a one-cycle schedule without the momentum cycle); `base` is the optimiser's base
    /// rate, the peak.
    WarmupCosine {
        /// Fraction of all steps spent warming up, in `[0, 1]`.
        warmup: f32,
    },
}

impl LrSchedule {
    /// The rate at `step` (0-based) of `total` steps for an optimiser whose base rate is
    /// `base`: `base` itself for [`LrSchedule::Constant`]; for
    /// [`LrSchedule::WarmupCosine`], `base * (step + 1) / warm` (in f32, in that order)
    /// during the `warm` warm-up steps, then
    /// `base * 0.5 * (1 + cos(pi * (step - warm) / max(total - warm, 1)))` (in f64, then
    /// f32).
    pub fn lr(&self, base: f32, step: usize, total: usize) -> f32 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::WarmupCosine { warmup } => {
                let peak = base;
                let total = total.max(1);
                let warm = ((f64::from(warmup) * total as f64).round() as usize).clamp(1, total);
                if step < warm {
                    return peak * (step + 1) as f32 / warm as f32;
                }
                let rest = (total - warm).max(1) as f64;
                let t = ((step - warm) as f64 / rest).min(1.0);
                (f64::from(peak) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }

    fn validate(&self) -> Result<()> {
        if let LrSchedule::WarmupCosine { warmup } = *self
            && !(0.0..=1.0).contains(&warmup)
        {
            return Err(Error::config(
                OP,
                format!("schedule {self:?}: warmup = {warmup} must be in [0, 1]"),
            ));
        }
        Ok(())
    }
}

/// Settings of a [`fit`] run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Shape `(C, H, W)` of one image: each row of the training matrix is reshaped to it.
    pub image_shape: (usize, usize, usize),
    /// Seeds the shuffling: the same seed gives the same batches.
    pub seed: u64,
    /// How the optimiser's learning rate moves, relative to its base rate (no schedule
    /// by default: the optimiser's own rate throughout).
    pub schedule: LrSchedule,
    /// The training loss's options (label smoothing, reduction); PyTorch's defaults by
    /// default. Validation figures are always the plain mean cross-entropy.
    pub loss: CrossEntropyOptions,
}

impl FitConfig {
    /// `epochs` passes in batches of `batch_size` over MNIST-shaped `(1, 28, 28)` images,
    /// seed 0, at the optimiser's own learning rate (no schedule).
    pub fn new(epochs: usize, batch_size: usize) -> Self {
        FitConfig {
            epochs,
            batch_size,
            image_shape: (1, 28, 28),
            seed: 0,
            schedule: LrSchedule::Constant,
            loss: CrossEntropyOptions::default(),
        }
    }

    /// Sets the training loss's options.
    pub fn with_loss(mut self, loss: CrossEntropyOptions) -> Self {
        self.loss = loss;
        self
    }

    /// Sets the image shape `(C, H, W)`.
    pub fn with_image_shape(mut self, shape: (usize, usize, usize)) -> Self {
        self.image_shape = shape;
        self
    }

    /// Sets the shuffling seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the learning-rate schedule (relative to the optimiser's base rate).
    pub fn with_schedule(mut self, schedule: LrSchedule) -> Self {
        self.schedule = schedule;
        self
    }
}

/// What happened at one training step, given to the [`fit`] callback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Epoch, 0-based.
    pub epoch: usize,
    /// Step over the whole run, 0-based.
    pub step: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// The training loss of this batch ([`FitConfig::loss`]: by default the mean
    /// cross-entropy; with [`Reduction::Sum`] the sum over the batch).
    pub loss: f32,
    /// Images in this batch.
    pub batch_size: usize,
    /// Learning rate used for this step's update.
    pub lr: f32,
}

/// Loss and accuracy after one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochReport {
    /// Epoch, 0-based.
    pub epoch: usize,
    /// The training loss per example over the epoch's training batches (weighted by
    /// batch size; a [`Reduction::Sum`] batch loss divided by its size), each measured
    /// before its update.
    pub train_loss: f32,
    /// Accuracy over the epoch's training batches, each measured before its update.
    pub train_accuracy: f32,
    /// Validation cross-entropy at the end of the epoch, when a validation set is given.
    pub valid_loss: Option<f32>,
    /// Validation accuracy at the end of the epoch, when a validation set is given.
    pub valid_accuracy: Option<f32>,
    /// Wall time of the epoch (training and validation), in seconds.
    pub seconds: f64,
}

/// Labelled images as rows: `x` (n, C*H*W) and class indices `y` (n).
#[derive(Debug, Clone, Copy)]
pub struct Split<'a> {
    /// One image per row.
    pub x: ArrayView2<'a, f32>,
    /// One class index per row.
    pub y: ArrayView1<'a, i64>,
}

impl<'a> Split<'a> {
    /// A split from its images and labels.
    pub fn new(x: ArrayView2<'a, f32>, y: ArrayView1<'a, i64>) -> Self {
        Split { x, y }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.x.nrows()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.x.nrows() == 0
    }
}

fn logits(out: ArrayD<f32>) -> Result<ndarray::Array2<f32>> {
    let shape = out.shape().to_vec();
    out.into_dimensionality::<Ix2>().map_err(|_| {
        Error::shape(
            OP,
            format!("the network must output logits (N, classes), got {shape:?}"),
        )
    })
}

/// Mean cross-entropy and accuracy of `net` on `data`, in batches of `batch_size`, run
/// through [`Sequential::infer_shared`]: nothing is kept for backward, and the network
/// runs in its current mode (call [`Sequential::eval`] first for batch norm's running
/// statistics and no dropout, as [`fit`] does for its validation).
///
/// Any `batch_size` from 1 up is accepted (one larger than the split is one batch).
///
/// # Errors
/// [`Error::Config`] for a zero batch size; [`Error::InvalidContent`] (format `"labels"`)
/// for a label outside `0..classes`, naming its index in `data.y` and its value (checked
/// over the whole split after the first batch's forward pass, which gives the number of
/// classes); [`Error::Shape`] when the data or the network's output do not fit (the
/// output must be (N, classes)); any layer error.
pub fn evaluate(
    net: &mut Sequential,
    data: Split<'_>,
    image_shape: (usize, usize, usize),
    batch_size: usize,
) -> Result<(f32, f32)> {
    if data.is_empty() {
        return Err(Error::shape(OP, "cannot evaluate on an empty split"));
    }
    let mut loss = 0.0f64;
    let mut right = 0usize;
    for (b, idx) in batch_indices::<StdRng>(data.len(), batch_size, None)?
        .iter()
        .enumerate()
    {
        let _awake = KeepAwake::new();
        let (xb, yb) = gather_images(data.x, data.y, idx, image_shape)?;
        let out = logits(net.infer_shared(xb.into_dyn().into_shared())?)?;
        if b == 0 {
            check_labels("y", data.y, out.ncols())?;
        }
        let (l, _) = cross_entropy_with_grad(out.view(), yb.view())?;
        loss += f64::from(l) * idx.len() as f64;
        right += correct(out.view(), yb.view())?;
    }
    let n = data.len() as f64;
    Ok(((loss / n) as f32, (right as f64 / n) as f32))
}

/// The class of each row of `x`: the index of the largest of the network's logits (first
/// on ties, NaN counts as largest, as [`super::argmax`]). `x` is the network's input
/// (e.g. (N, C, H, W)); the network must output (N, classes). Runs
/// [`Sequential::forward`], so the activations are kept as after any forward pass.
///
/// # Errors
/// [`Error::Shape`] when the output is not (N, classes) or has no classes; any layer
/// error.
pub fn predict(net: &mut Sequential, x: ArrayViewD<'_, f32>) -> Result<Vec<i64>> {
    let out = logits(net.forward(x)?)?;
    argmax(out.view())
}

/// Trains `net` with `opt` on `train` for `config.epochs` epochs and returns one
/// [`EpochReport`] per epoch (with validation figures when `valid` is given).
///
/// Each step: gather a shuffled batch, `zero_grad`, forward, [`super::cross_entropy`]
/// and its gradient, backward ([`Sequential::backward_params`]: the parameter gradients
/// without the batch's own gradient), then `on_step` (which sees the
/// batch's activations in [`Sequential::output`] and the parameter gradients, e.g. for a
/// [`super::Telemetry`] or a progress bar), then, with a schedule, the optimiser's rate set
/// to `config.schedule.lr(opt.base_lr(), step, total_steps)` ([`LrSchedule`]; without one
/// the rate is left alone), then [`Optimizer::step`]. Any optimiser works: [`super::Sgd`],
/// [`super::Adam`], [`super::AdamW`], or a `&mut dyn Optimizer`. The run is deterministic
/// for a seed (and the same for any number of threads, since the ops are).
///
/// # Counts
/// Any `epochs` and `batch_size` from 1 up are accepted as long as the run's step count,
/// `epochs * ceil(n / batch_size)`, fits in a `usize` (it is [`StepInfo::total_steps`]);
/// nothing is allocated in proportion to `epochs` up front (the history grows by one
/// report per epoch). To stop a long run early, return an error from `on_step`: training
/// stops at once and `fit` returns that error (keep what you need, e.g. the
/// [`StepInfo`]s, in the callback's state).
///
/// # Errors
/// [`Error::Config`] for zero epochs or batch size, a step count that overflows `usize`,
/// or a bad schedule; [`Error::InvalidContent`] (format `"labels"`) for a label outside
/// `0..classes` in `train` or `valid`, naming the split (`train.y` / `valid.y`), the
/// label's index in it and its value: both splits' labels are checked after the first
/// forward pass (which gives the number of classes) and before any update;
/// [`Error::Shape`] when the data does not fit `image_shape` or the network does not
/// output (N, classes); any layer or callback error (training stops there).
///
/// # Examples
/// ```
/// use convinit::init::Init;
/// use convinit::nn::{Flatten, Linear, LinearConfig, Sequential};
/// use convinit::train::{fit, FitConfig, Sgd, SgdConfig, Split};
/// use ndarray::{Array1, Array2};
/// use rand::SeedableRng;
///
/// // Two classes of 2x2 "images": bright on the left or on the right.
/// let x = Array2::from_shape_fn((64, 4), |(i, j)| if (j % 2 == 0) == (i % 2 == 0) { 1.0 } else { 0.0 });
/// let y = Array1::from_shape_fn(64, |i| (i % 2) as i64);
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut net = Sequential::new()
///     .with(Flatten::new(1, -1))
///     .with(Linear::with_init(LinearConfig::new(4, 2), &Init::KAIMING_UNIFORM, &mut rng)?);
/// let mut opt = Sgd::new(SgdConfig::new(0.5).with_momentum(0.9))?;
/// let config = FitConfig::new(3, 16).with_image_shape((1, 2, 2));
/// let data = Split::new(x.view(), y.view());
/// let history = fit(&mut net, &mut opt, data, Some(data), &config, |_step, _net| Ok(()))?;
/// assert_eq!(history.len(), 3);
/// assert_eq!(history[2].valid_accuracy, Some(1.0));
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn fit<O, F>(
    net: &mut Sequential,
    opt: &mut O,
    train: Split<'_>,
    valid: Option<Split<'_>>,
    config: &FitConfig,
    mut on_step: F,
) -> Result<Vec<EpochReport>>
where
    O: Optimizer + ?Sized,
    F: FnMut(&StepInfo, &Sequential) -> Result<()>,
{
    if config.epochs == 0 || config.batch_size == 0 {
        return Err(Error::config(
            OP,
            format!(
                "epochs ({}) and batch_size ({}) must be positive",
                config.epochs, config.batch_size
            ),
        ));
    }
    if train.is_empty() {
        return Err(Error::shape(OP, "cannot train on an empty split"));
    }
    config.schedule.validate()?;
    config.loss.validate()?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let per_epoch = train.len().div_ceil(config.batch_size);
    let total_steps = per_epoch.checked_mul(config.epochs).ok_or_else(|| {
        Error::config(
            OP,
            format!(
                "{} epochs of {per_epoch} steps ({} examples in batches of {}) is more steps than a usize counts",
                config.epochs,
                train.len(),
                config.batch_size
            ),
        )
    })?;
    let mut step = 0;
    // Grows one report per epoch: nothing in proportion to `epochs` up front.
    let mut history = Vec::new();
    for epoch in 0..config.epochs {
        let start = Instant::now();
        let (mut loss_sum, mut right) = (0.0f64, 0usize);
        for idx in batch_indices(train.len(), config.batch_size, Some(&mut rng))? {
            // The pool polls for work through the step's few dozen small ops instead of
            // sleeping between them (`train_mnist`: 4.7-4.8 -> 4.3 s).
            let _awake = KeepAwake::new();
            let (xb, yb) = gather_images(train.x, train.y, &idx, config.image_shape)?;
            net.zero_grad();
            // Handed over, not copied: the first layer keeps the batch itself.
            let out = logits(net.forward_shared(xb.into_dyn().into_shared())?)?;
            if step == 0 {
                // Every label, before any update: a bad one is reported with its index
                // in its split, not in a shuffled batch.
                check_labels("train.y", train.y, out.ncols())?;
                if let Some(v) = valid {
                    check_labels("valid.y", v.y, out.ncols())?;
                }
            }
            let (loss, grad) = cross_entropy_with_grad_with(out.view(), yb.view(), &config.loss)?;
            right += correct(out.view(), yb.view())?;
            loss_sum += match config.loss.reduction {
                Reduction::Mean => f64::from(loss) * idx.len() as f64,
                Reduction::Sum => f64::from(loss),
            };
            // The batch needs no gradient: skip the first layer's input gradient.
            net.backward_params(grad.into_dyn())?;
            let lr = match config.schedule {
                LrSchedule::Constant => opt.lr(),
                s => s.lr(opt.base_lr(), step, total_steps),
            };
            let info = StepInfo {
                epoch,
                step,
                total_steps,
                loss,
                batch_size: idx.len(),
                lr,
            };
            on_step(&info, net)?;
            if config.schedule != LrSchedule::Constant {
                opt.set_lr(lr)?;
            }
            opt.step(net)?;
            step += 1;
        }
        let n = train.len() as f64;
        let (valid_loss, valid_accuracy) = match valid {
            Some(v) => {
                // Validation in eval mode (running statistics, no dropout), then back.
                let was_training = net.is_training();
                net.eval();
                let r = evaluate(net, v, config.image_shape, config.batch_size.max(256));
                net.set_training(was_training);
                let (l, a) = r?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        history.push(EpochReport {
            epoch,
            train_loss: (loss_sum / n) as f32,
            train_accuracy: (right as f64 / n) as f32,
            valid_loss,
            valid_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    Ok(history)
}
