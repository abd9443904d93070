//! 2-d batch normalisation (`F.batch_norm` on (N, C, H, W)) and its backward.
//!
//! Per channel `c`, over the `M = N * H * W` values of that channel:
//! `y = (x - mean) * invstd * weight + bias`, `invstd = 1 / sqrt(var + eps)`. In training
//! mode `mean` and `var` are the batch's (biased variance), and the running statistics
//! are updated with the unbiased one; in evaluation mode they are the running
//! statistics. The statistics and the backward's channel sums are accumulated in f64
//! (PyTorch's CPU kernel accumulates float in double too), each channel by one task in
//! the tensor's logical order: the results are the same at any thread count and in any
//! memory layout.

use ndarray::{Array1, Array4, ArrayView1, ArrayView4, ArrayViewMut1, Axis, Zip};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::limits::try_zeros;

const OP: &str = "batch_norm2d";

/// The mode and constants of [`batch_norm2d`] (PyTorch's `training`, `momentum`, `eps`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormOptions {
    /// Normalise with the batch statistics (and update the running ones, when given);
    /// else with the running statistics.
    pub training: bool,
    /// The weight of the new batch statistic in the running average:
    /// `running = (1 - momentum) * running + momentum * batch`. PyTorch's default 0.1.
    pub momentum: f64,
    /// Added to the variance before the square root. PyTorch's default 1e-5.
    pub eps: f64,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions {
            training: true,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// The per-channel statistics a forward pass normalised with (the batch's in training
/// mode, the running ones in evaluation mode): what [`batch_norm2d_backward`] needs
/// beside the input (PyTorch's `save_mean` / `save_invstd`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormStats {
    /// The mean of each channel.
    pub mean: Array1<f32>,
    /// `1 / sqrt(var + eps)` of each channel.
    pub invstd: Array1<f32>,
    /// Whether these are the batch's statistics (the backward then differentiates
    /// through them).
    pub batch: bool,
}

/// The gradients of [`batch_norm2d_backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormGrads {
    /// Gradient of the input (N, C, H, W).
    pub dx: Array4<f32>,
    /// Gradient of the weight (C), when there is one.
    pub dweight: Option<Array1<f32>>,
    /// Gradient of the bias (C), when there is one.
    pub dbias: Option<Array1<f32>>,
}

fn check_channel_vec(what: &str, v: usize, c: usize) -> Result<()> {
    if v != c {
        return Err(Error::shape(
            OP,
            format!("{what} has length {v}, the input has {c} channels"),
        ));
    }
    Ok(())
}

/// Checks the options: `eps` finite and at least 0, `momentum` finite in [0, 1].
fn check_options(o: &BatchNormOptions) -> Result<()> {
    if !(o.eps.is_finite() && o.eps >= 0.0) {
        return Err(Error::config(
            OP,
            format!("eps must be finite and >= 0, got {}", o.eps),
        ));
    }
    if !(o.momentum.is_finite() && (0.0..=1.0).contains(&o.momentum)) {
        return Err(Error::config(
            OP,
            format!("momentum must be in [0, 1], got {}", o.momentum),
        ));
    }
    Ok(())
}

/// Sum and sum of squared deviations of one channel, in f64, in logical order.
fn channel_moments(xc: ndarray::ArrayView3<'_, f32>) -> (f64, f64) {
    let m = xc.len() as f64;
    let mean = xc.iter().map(|&v| f64::from(v)).sum::<f64>() / m;
    let ss = xc
        .iter()
        .map(|&v| {
            let d = f64::from(v) - mean;
            d * d
        })
        .sum::<f64>();
    (mean, ss)
}

/// Batch normalisation of `x` (N, C, H, W), as `F.batch_norm(x, running_mean,
/// running_var, weight, bias, training, momentum, eps)`.
///
/// In training mode (`options.training`) each channel is normalised with its batch mean
/// and biased variance, and the running statistics, when given, become
/// `(1 - momentum) * running + momentum * batch` (the variance's batch value unbiased,
/// `* M / (M - 1)`). In evaluation mode the running statistics are used and left
/// unchanged. Returns the output and the statistics used, for the backward pass.
///
/// # Errors
/// [`Error::Config`] naming `batch_norm2d` for a negative or non-finite `eps`, a
/// `momentum` outside [0, 1], evaluation mode without running statistics, or training
/// mode with one value per channel (`M = N * H * W = 1`: "Expected more than 1 value per
/// channel when training", as PyTorch); [`Error::Shape`] when a weight, bias or running
/// statistic's length is not the channel count, or only one running statistic is given;
/// [`Error::Alloc`] when the output cannot be allocated.
pub fn batch_norm2d(
    x: ArrayView4<'_, f32>,
    running_mean: Option<ArrayViewMut1<'_, f32>>,
    running_var: Option<ArrayViewMut1<'_, f32>>,
    weight: Option<ArrayView1<'_, f32>>,
    bias: Option<ArrayView1<'_, f32>>,
    options: &BatchNormOptions,
) -> Result<(Array4<f32>, BatchNormStats)> {
    check_options(options)?;
    let (n, c, h, w) = x.dim();
    for (what, len) in [
        ("weight", weight.map(|v| v.len())),
        ("bias", bias.map(|v| v.len())),
        ("running_mean", running_mean.as_ref().map(|v| v.len())),
        ("running_var", running_var.as_ref().map(|v| v.len())),
    ] {
        if let Some(len) = len {
            check_channel_vec(what, len, c)?;
        }
    }
    let running = match (running_mean, running_var) {
        (Some(m), Some(v)) => Some((m, v)),
        (None, None) => None,
        _ => {
            return Err(Error::shape(
                OP,
                "running_mean and running_var must be given together",
            ));
        }
    };
    let m = n * h * w;
    if options.training && m == 1 {
        return Err(Error::config(
            OP,
            format!(
                "Expected more than 1 value per channel when training, got input size \
                 {:?}",
                x.shape()
            ),
        ));
    }
    // Reserved before the statistics are computed: an input too large for its output
    // fails at once.
    let mut y = try_zeros::<f32, _>(OP, (n, c, h, w), || format!("the output {:?}", x.shape()))?;
    let stats = if options.training {
        let moments: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                if m == 0 {
                    (0.0, 0.0)
                } else {
                    channel_moments(x.index_axis(Axis(1), ci))
                }
            })
            .collect();
        if let Some((mut rm, mut rv)) = running.filter(|_| m > 0) {
            let mo = options.momentum;
            for (ci, &(mean, ss)) in moments.iter().enumerate() {
                let unbiased = ss / (m - 1) as f64;
                rm[ci] = ((1.0 - mo) * f64::from(rm[ci]) + mo * mean) as f32;
                rv[ci] = ((1.0 - mo) * f64::from(rv[ci]) + mo * unbiased) as f32;
            }
        }
        let mean = moments.iter().map(|&(mu, _)| mu as f32).collect();
        let invstd = moments
            .iter()
            .map(|&(_, ss)| {
                let var = if m == 0 { 0.0 } else { ss / m as f64 };
                (1.0 / (var + options.eps).sqrt()) as f32
            })
            .collect();
        BatchNormStats {
            mean,
            invstd,
            batch: true,
        }
    } else {
        let Some((rm, rv)) = running else {
            return Err(Error::config(
                OP,
                "evaluation mode (training = false) needs running_mean and running_var",
            ));
        };
        BatchNormStats {
            mean: rm.to_owned(),
            invstd: rv.mapv(|v| (1.0 / (f64::from(v) + options.eps).sqrt()) as f32),
            batch: false,
        }
    };
    // Per channel: y = x * alpha + beta, alpha = invstd * weight, beta = bias - mean *
    // alpha, in f64.
    let coef: Vec<(f64, f64)> = (0..c)
        .map(|ci| {
            let g = weight.map_or(1.0, |w| f64::from(w[ci]));
            let b = bias.map_or(0.0, |b| f64::from(b[ci]));
            let alpha = f64::from(stats.invstd[ci]) * g;
            (alpha, b - f64::from(stats.mean[ci]) * alpha)
        })
        .collect();
    y.axis_iter_mut(Axis(1))
        .into_par_iter()
        .zip(x.axis_iter(Axis(1)).into_par_iter())
        .zip(coef.par_iter())
        .for_each(|((mut yc, xc), &(alpha, beta))| {
            Zip::from(&mut yc)
                .and(&xc)
                .for_each(|y, &x| *y = (f64::from(x) * alpha + beta) as f32);
        });
    Ok((y, stats))
}

/// The gradients of [`batch_norm2d`] given the input `x`, the weight (when affine), the
/// statistics the forward returned and the output gradient `dy`.
///
/// With batch statistics (training mode) the gradient flows through them:
/// `dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))` with
/// `xhat = (x - mean) * invstd`; with running statistics `dx = weight * invstd * dy`.
/// Always `dweight = sum(dy * xhat)` and `dbias = sum(dy)` per channel (`has_bias` says
/// whether to return the latter). Channel sums in f64.
///
/// # Errors
/// [`Error::Shape`] when `dy` is not the shape of `x`, or the weight or statistics do
/// not have one value per channel; [`Error::Alloc`] when a gradient cannot be allocated.
pub fn batch_norm2d_backward(
    x: ArrayView4<'_, f32>,
    weight: Option<ArrayView1<'_, f32>>,
    has_bias: bool,
    stats: &BatchNormStats,
    dy: ArrayView4<'_, f32>,
) -> Result<BatchNormGrads> {
    let (n, c, h, w) = x.dim();
    if dy.dim() != x.dim() {
        return Err(Error::shape(
            OP,
            format!("dy is {:?}, x is {:?}", dy.shape(), x.shape()),
        ));
    }
    if let Some(wt) = weight {
        check_channel_vec("weight", wt.len(), c)?;
    }
    check_channel_vec("the saved mean", stats.mean.len(), c)?;
    check_channel_vec("the saved invstd", stats.invstd.len(), c)?;
    let m = (n * h * w) as f64;
    let mut dx = try_zeros::<f32, _>(OP, (n, c, h, w), || {
        format!("the input gradient {:?}", x.shape())
    })?;
    // Per channel: sum(dy) and sum(dy * (x - mean)), in f64.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let mean = f64::from(stats.mean[ci]);
            let (xc, dc) = (x.index_axis(Axis(1), ci), dy.index_axis(Axis(1), ci));
            // Logical order (not `Zip`'s memory order): the same sums in any layout.
            let mut s = 0.0f64;
            let mut dot = 0.0f64;
            for (&x, &d) in xc.iter().zip(dc.iter()) {
                let d = f64::from(d);
                s += d;
                dot += d * (f64::from(x) - mean);
            }
            (s, dot)
        })
        .collect();
    dx.axis_iter_mut(Axis(1))
        .into_par_iter()
        .zip(x.axis_iter(Axis(1)).into_par_iter())
        .zip(dy.axis_iter(Axis(1)).into_par_iter())
        .enumerate()
        .for_each(|(ci, ((mut gc, xc), dc))| {
            let invstd = f64::from(stats.invstd[ci]);
            let g = weight.map_or(1.0, |w| f64::from(w[ci]));
            let scale = g * invstd;
            if stats.batch && m > 0.0 {
                let mean = f64::from(stats.mean[ci]);
                let (s, dot) = sums[ci];
                let mean_dy = s / m;
                // xhat * mean(dy * xhat) = (x - mean) * invstd^2 * dot / m.
                let k = dot * invstd * invstd / m;
                Zip::from(&mut gc).and(&xc).and(&dc).for_each(|g, &x, &d| {
                    let centred = f64::from(x) - mean;
                    *g = ((f64::from(d) - mean_dy - centred * k) * scale) as f32;
                });
            } else {
                Zip::from(&mut gc)
                    .and(&dc)
                    .for_each(|g, &d| *g = (f64::from(d) * scale) as f32);
            }
        });
    let dweight = weight.map(|_| {
        sums.iter()
            .zip(&stats.invstd)
            .map(|(&(_, dot), &inv)| (dot * f64::from(inv)) as f32)
            .collect()
    });
    let dbias = has_bias.then(|| sums.iter().map(|&(s, _)| s as f32).collect());
    Ok(BatchNormGrads { dx, dweight, dbias })
}
