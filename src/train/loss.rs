//! Softmax cross-entropy on logits and classification accuracy.
//!
//! `cross_entropy(logits, target)` is `torch.nn.functional.cross_entropy` with its
//! defaults: log-softmax over the classes (log-sum-exp shifted by the row maximum, so
//! large logits do not overflow), the negative log-likelihood of each target class, and
//! the mean over the batch. Its gradient with respect to the logits is
//! `(softmax(logits) - one_hot(target)) / N`.
//!
//! The `_with` functions take [`CrossEntropyOptions`]: `label_smoothing` and
//! `reduction` as `F.cross_entropy`'s. [`softmax`] gives the probabilities per row.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis, Zip};

use crate::error::{Error, Result};
use crate::limits::{try_vec_with_capacity, try_zeros};

const OP: &str = "cross_entropy";

/// Checks `logits` (N, K) against `target` (N) of class indices in `0..K`; returns N.
fn check(
    op: &'static str,
    logits: &ArrayView2<'_, f32>,
    target: &ArrayView1<'_, i64>,
) -> Result<usize> {
    let (n, k) = logits.dim();
    if target.len() != n {
        return Err(Error::shape(
            op,
            format!(
                "logits {:?} need a target of shape [{n}], got {:?}",
                logits.shape(),
                target.shape()
            ),
        ));
    }
    if n == 0 || k == 0 {
        return Err(Error::shape(
            op,
            format!(
                "logits {:?}: the batch and the classes must be non-empty",
                logits.shape()
            ),
        ));
    }
    check_labels(&format!("{op} target"), target.view(), k)?;
    Ok(n)
}

/// `Err(InvalidContent)` for the first label of `labels` that is not a class index in
/// `0..classes`. The error's format is `"labels"`, and its message names `what`, the
/// index and the value.
pub(crate) fn check_labels(what: &str, labels: ArrayView1<'_, i64>, classes: usize) -> Result<()> {
    match labels
        .iter()
        .enumerate()
        .find(|&(_, &t)| t < 0 || t as u64 >= classes as u64)
    {
        Some((i, &t)) => Err(Error::InvalidContent {
            format: "labels",
            message: format!("{what}[{i}] = {t} is not a class index in 0..{classes}"),
        }),
        None => Ok(()),
    }
}

/// How [`cross_entropy_with`] reduces the per-row losses, as PyTorch's `reduction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The mean over the batch (PyTorch's default, `"mean"`).
    #[default]
    Mean,
    /// The sum over the batch (`"sum"`).
    Sum,
}

/// Options of [`cross_entropy_with`] and friends, as `F.cross_entropy`'s keyword
/// arguments; the default is PyTorch's (no smoothing, mean).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CrossEntropyOptions {
    /// Label smoothing `ls` in `[0, 1]`: the target becomes `(1 - ls) * one_hot + ls / K`,
    /// so a row's loss is `(1 - ls) * nll + ls * mean over the K classes of -log p`.
    /// Default 0.
    pub label_smoothing: f32,
    /// Mean or sum over the batch. Default [`Reduction::Mean`].
    pub reduction: Reduction,
}

impl CrossEntropyOptions {
    /// PyTorch's defaults: no smoothing, mean over the batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the label smoothing.
    pub fn with_label_smoothing(mut self, label_smoothing: f32) -> Self {
        self.label_smoothing = label_smoothing;
        self
    }

    /// Sets the reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Checks that `label_smoothing` is in `[0, 1]`.
    ///
    /// # Errors
    /// [`Error::Config`] naming `cross_entropy` and the value.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(Error::config(
                OP,
                format!(
                    "label_smoothing = {} must be in [0, 1]",
                    self.label_smoothing
                ),
            ));
        }
        Ok(())
    }
}

/// Per row: the maximum logit and `log(sum(exp(logit - max)))`, in f64.
fn row_lse(row: ArrayView1<'_, f32>) -> (f64, f64) {
    let max = row.fold(
        f32::NEG_INFINITY,
        |m, &v| if v > m || v.is_nan() { v } else { m },
    );
    let max = f64::from(max);
    let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    (max, sum.ln())
}

/// Mean softmax cross-entropy of `logits` (N, K) against class indices `target` (N), as
/// `torch.nn.functional.cross_entropy(logits, target)`.
///
/// Computed in f64 with the log-sum-exp trick, so logits in the hundreds are fine. A NaN
/// logit makes the loss NaN.
///
/// # Errors
/// [`Error::Shape`] when `target` is not (N) or N or K is zero; [`Error::InvalidContent`]
/// (format `"labels"`) when a target is outside `0..K`: a data error, whose message names
/// the target's index and value.
///
/// # Examples
/// ```
/// use convinit::train::cross_entropy;
/// use ndarray::array;
/// // Two equally likely classes: the loss is ln 2 whatever the target.
/// let logits = array![[3.0f32, 3.0], [0.0, 0.0]];
/// let loss = cross_entropy(logits.view(), array![0i64, 1].view())?;
/// assert!((loss - 2f32.ln()).abs() < 1e-6);
/// assert!(cross_entropy(logits.view(), array![0i64, 2].view()).is_err());
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn cross_entropy(logits: ArrayView2<'_, f32>, target: ArrayView1<'_, i64>) -> Result<f32> {
    cross_entropy_with(logits, target, &CrossEntropyOptions::default())
}

/// The loss of one row whose maximum logit is `max` and `lse = log(sum(exp(v - max)))`.
fn row_loss(row: ArrayView1<'_, f32>, t: usize, max: f64, lse: f64, ls: f64) -> f64 {
    let nll = max + lse - f64::from(row[t]);
    if ls == 0.0 {
        return nll;
    }
    let mean: f64 = row.iter().map(|&v| f64::from(v)).sum::<f64>() / row.len() as f64;
    (1.0 - ls) * nll + ls * (max + lse - mean)
}

/// Softmax cross-entropy with options, as
/// `F.cross_entropy(logits, target, label_smoothing=.., reduction=..)`: per row
/// `(1 - ls) * (-log p[target]) + ls * mean_k(-log p[k])`, then the mean or the sum
/// over the batch. In f64 as [`cross_entropy`], which is this with the default options.
///
/// # Errors
/// As [`cross_entropy`]; [`Error::Config`] for a label smoothing outside `[0, 1]`.
///
/// # Examples
/// ```
/// use convinit::train::{CrossEntropyOptions, Reduction, cross_entropy_with};
/// use ndarray::array;
/// let logits = array![[0.0f32, 0.0], [0.0, 0.0]];
/// let sum = CrossEntropyOptions::new().with_reduction(Reduction::Sum);
/// let loss = cross_entropy_with(logits.view(), array![0i64, 1].view(), &sum)?;
/// assert!((loss - 2.0 * 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn cross_entropy_with(
    logits: ArrayView2<'_, f32>,
    target: ArrayView1<'_, i64>,
    options: &CrossEntropyOptions,
) -> Result<f32> {
    options.validate()?;
    let n = check(OP, &logits, &target)?;
    let ls = f64::from(options.label_smoothing);
    let total: f64 = logits
        .outer_iter()
        .zip(target.iter())
        .map(|(row, &t)| {
            let (max, lse) = row_lse(row);
            row_loss(row, t as usize, max, lse, ls)
        })
        .sum();
    Ok(match options.reduction {
        Reduction::Mean => (total / n as f64) as f32,
        Reduction::Sum => total as f32,
    })
}

/// Gradient of [`cross_entropy`] with respect to the logits:
/// `(softmax(logits) - one_hot(target)) / N`, shaped (N, K).
///
/// # Errors
/// As [`cross_entropy_with_grad`].
pub fn cross_entropy_backward(
    logits: ArrayView2<'_, f32>,
    target: ArrayView1<'_, i64>,
) -> Result<Array2<f32>> {
    Ok(cross_entropy_with_grad(logits, target)?.1)
}

/// Gradient of [`cross_entropy_with`] with respect to the logits:
/// `(softmax(logits) - (1 - ls) * one_hot(target) - ls / K) * s`, with `s = 1 / N` for
/// the mean and 1 for the sum.
///
/// # Errors
/// As [`cross_entropy_with_grad_with`].
pub fn cross_entropy_backward_with(
    logits: ArrayView2<'_, f32>,
    target: ArrayView1<'_, i64>,
    options: &CrossEntropyOptions,
) -> Result<Array2<f32>> {
    Ok(cross_entropy_with_grad_with(logits, target, options)?.1)
}

/// [`cross_entropy`] and [`cross_entropy_backward`] in one pass over the logits (what a
/// training step needs).
///
/// # Errors
/// As [`cross_entropy`], and [`Error::Alloc`] when the gradient (N, K) cannot be
/// allocated (e.g. for a broadcast view of very many logits).
pub fn cross_entropy_with_grad(
    logits: ArrayView2<'_, f32>,
    target: ArrayView1<'_, i64>,
) -> Result<(f32, Array2<f32>)> {
    cross_entropy_with_grad_with(logits, target, &CrossEntropyOptions::default())
}

/// [`cross_entropy_with`] and [`cross_entropy_backward_with`] in one pass over the
/// logits.
///
/// # Errors
/// As [`cross_entropy_with`], and [`Error::Alloc`] when the gradient (N, K) cannot be
/// allocated.
pub fn cross_entropy_with_grad_with(
    logits: ArrayView2<'_, f32>,
    target: ArrayView1<'_, i64>,
    options: &CrossEntropyOptions,
) -> Result<(f32, Array2<f32>)> {
    options.validate()?;
    let n = check(OP, &logits, &target)?;
    let ls = f64::from(options.label_smoothing);
    let inv_n = match options.reduction {
        Reduction::Mean => 1.0 / n as f64,
        Reduction::Sum => 1.0,
    };
    let spread = ls / logits.ncols() as f64;
    let mut grad: Array2<f32> = try_zeros(OP, logits.raw_dim(), || {
        format!("the gradient of logits {:?}", logits.shape())
    })?;
    let mut total = 0.0f64;
    Zip::from(grad.axis_iter_mut(Axis(0)))
        .and(logits.axis_iter(Axis(0)))
        .and(&target)
        .for_each(|mut g, row, &t| {
            let (max, lse) = row_lse(row);
            let t = t as usize;
            total += row_loss(row, t, max, lse, ls);
            for (k, (gk, &v)) in g.iter_mut().zip(row.iter()).enumerate() {
                let p = (f64::from(v) - max - lse).exp();
                let d = if ls == 0.0 {
                    if k == t { p - 1.0 } else { p }
                } else if k == t {
                    p - (1.0 - ls) - spread
                } else {
                    p - spread
                };
                *gk = (d * inv_n) as f32;
            }
        });
    Ok(((total * inv_n) as f32, grad))
}

/// The softmax of each row of `logits` (N, K): `exp(v - max) / sum(exp(v - max))`,
/// computed in f64 from the log-sum-exp (so large logits do not overflow), as
/// `torch.softmax(logits, dim=1)`. A row with a NaN is all NaN.
///
/// # Errors
/// [`Error::Alloc`] when the (N, K) result cannot be allocated.
///
/// # Examples
/// ```
/// use convinit::train::softmax;
/// use ndarray::array;
/// let p = softmax(array![[1000.0f32, 1000.0], [0.0, 3f32.ln()]].view())?;
/// assert_eq!(p.row(0).to_vec(), [0.5, 0.5]);
/// assert!((p[[1, 1]] - 0.75).abs() < 1e-6);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn softmax(logits: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
    let mut out: Array2<f32> = try_zeros("softmax", logits.raw_dim(), || {
        format!("the softmax of logits {:?}", logits.shape())
    })?;
    Zip::from(out.axis_iter_mut(Axis(0)))
        .and(logits.axis_iter(Axis(0)))
        .for_each(|mut o, row| {
            let (max, lse) = row_lse(row);
            for (o, &v) in o.iter_mut().zip(row.iter()) {
                *o = (f64::from(v) - max - lse).exp() as f32;
            }
        });
    Ok(out)
}

/// The index of the largest logit in each row (the first one on ties; NaN counts as
/// largest, as `torch.argmax`).
///
/// # Errors
/// [`Error::Shape`] when there are no classes (K = 0); [`Error::Alloc`] when the N
/// indices cannot be allocated.
pub fn argmax(logits: ArrayView2<'_, f32>) -> Result<Vec<i64>> {
    if logits.ncols() == 0 {
        return Err(Error::shape(
            "argmax",
            format!("logits {:?} have no classes", logits.shape()),
        ));
    }
    let mut classes = try_vec_with_capacity("argmax", logits.nrows(), || {
        format!("the class of each row of logits {:?}", logits.shape())
    })?;
    classes.extend(logits.outer_iter().map(|row| {
        let mut best = 0;
        for (k, &v) in row.iter().enumerate() {
            let b = row[best];
            if (v > b || v.is_nan()) && !b.is_nan() {
                best = k;
            }
        }
        best as i64
    }));
    Ok(classes)
}

/// The fraction of rows whose largest logit is the target class, in `[0, 1]`.
///
/// # Errors
/// As [`cross_entropy`] (shape mismatch, empty batch, [`Error::InvalidContent`] for a target
/// out of range), and as [`argmax`].
///
/// # Examples
/// ```
/// use convinit::train::accuracy;
/// use ndarray::array;
/// let logits = array![[0.1f32, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]];
/// assert_eq!(accuracy(logits.view(), array![1i64, 0, 0, 0].view())?, 0.75);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn accuracy(logits: ArrayView2<'_, f32>, target: ArrayView1<'_, i64>) -> Result<f32> {
    let n = check("accuracy", &logits, &target)?;
    Ok(correct(logits, target)? as f32 / n as f32)
}

/// The number of rows whose largest logit is the target class (unchecked targets: a
/// target out of range simply never matches).
pub(crate) fn correct(logits: ArrayView2<'_, f32>, target: ArrayView1<'_, i64>) -> Result<usize> {
    Ok(argmax(logits)?
        .iter()
        .zip(target.iter())
        .filter(|(p, t)| p == t)
        .count())
}
