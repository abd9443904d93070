//! 2-d batch normalisation (`F.batch_norm` on (N, C, H, W)) and its backward.
//!
//! Per channel `c`, over the `M = N * H * W` values of that channel:
//! `y = (x - mean) * invstd * weight + bias`, `invstd = 1 / sqrt(var + eps)`. In training
//! mode `mean` and `var` are the batch's (biased variance), and the running statistics
//! are updated with the unbiased one; in evaluation mode they are the running
//! statistics. The statistics and the backward's channel sums are accumulated in f64
//! (PyTorch's CPU kernel accumulates float in double too), each channel by one task in
//! a fixed order over the tensor's logical layout ([`LANES`] interleaved partial sums,
//! combined in order): the results are the same at any thread count and in any memory
//! layout. The element-wise passes run in f32, as PyTorch's (`y = x * alpha + beta`
//! with per-channel `alpha`, `beta`).

use ndarray::{Array1, Array4, ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMut4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use std::mem::MaybeUninit;

use crate::limits::{Slot, filled_output, try_standard_layout, try_vec_with_capacity};

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

/// Partial sums per channel: element `i` of a plane adds into lane `i % LANES`, in f32
/// over a block of [`BLOCK`] elements, each block's lanes then added into f64 lanes,
/// combined in order at the end. Independent lanes let the compiler vectorise; the order
/// is fixed by the logical index, so the sums do not depend on the thread count. A block
/// adds `BLOCK / LANES` = 8 values per f32 lane: a relative error of a few f32 ulps on
/// each block, far below the f32 rounding of the statistics themselves.
const LANES: usize = 8;
/// Elements per f32 block of [`lane_sums`].
const BLOCK: usize = 64;

/// `(sum(f(x)), sum(g(x)))` over a plane, added into `acc` lane by lane (see [`LANES`]).
#[inline(always)]
fn lane_sums(
    acc: &mut [[f64; LANES]; 2],
    xs: &[f32],
    ys: &[f32],
    f: impl Fn(f32, f32) -> (f32, f32),
) {
    let mut flush = |part: &[[f32; LANES]; 2]| {
        for (a, p) in acc.iter_mut().zip(part) {
            for l in 0..LANES {
                a[l] += f64::from(p[l]);
            }
        }
    };
    let mut xb = xs.chunks(BLOCK);
    let mut yb = ys.chunks(BLOCK);
    for (xb, yb) in (&mut xb).zip(&mut yb) {
        let mut part = [[0.0f32; LANES]; 2];
        let mut xc = xb.chunks_exact(LANES);
        let mut yc = yb.chunks_exact(LANES);
        for (xv, yv) in (&mut xc).zip(&mut yc) {
            for l in 0..LANES {
                let (a, b) = f(xv[l], yv[l]);
                part[0][l] += a;
                part[1][l] += b;
            }
        }
        for (l, (&x, &y)) in xc.remainder().iter().zip(yc.remainder()).enumerate() {
            let (a, b) = f(x, y);
            part[0][l] += a;
            part[1][l] += b;
        }
        flush(&part);
    }
}

/// The lanes combined, in order.
fn total(acc: &[f64; LANES]) -> f64 {
    acc.iter().sum()
}

/// The planes of channel `ci` in a standard-layout (N, C, H, W) slice.
fn channel_planes(
    xs: &[f32],
    (n, c, hw): (usize, usize, usize),
    ci: usize,
) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |ni| &xs[(ni * c + ci) * hw..(ni * c + ci + 1) * hw])
}

/// Sums of `d = x - shift` and `d^2` over one channel, `d` in f32.
fn shifted_sums(xs: &[f32], dims: (usize, usize, usize), ci: usize, shift: f32) -> (f64, f64) {
    let mut acc = [[0.0; LANES]; 2];
    for p in channel_planes(xs, dims, ci) {
        lane_sums(&mut acc, p, p, |x, _| {
            let d = x - shift;
            (d, d * d)
        });
    }
    (total(&acc[0]), total(&acc[1]))
}

/// Mean and sum of squared deviations of one channel, in f64.
///
/// One pass in the common case: the sums of `d = x - shift` and `d^2`, `shift` the
/// mean of the channel's first plane, give `mean = shift + sum(d) / M` and
/// `ss = sum(d^2) - sum(d)^2 / M` (exact algebra; the shift keeps `d` small so the
/// f32 terms lose nothing to cancellation). When the first plane is not
/// representative (`|mean - shift|` above one standard deviation, where the f32
/// squares would carry the offset), a second pass shifts by the mean itself.
fn channel_moments(xs: &[f32], dims: (usize, usize, usize), ci: usize) -> (f64, f64) {
    let m = (dims.0 * dims.2) as f64;
    let first = &xs[ci * dims.2..(ci + 1) * dims.2];
    let shift = (first.iter().map(|&v| f64::from(v)).sum::<f64>() / dims.2 as f64) as f32;
    let (sd, sdd) = shifted_sums(xs, dims, ci, shift);
    let offset = sd / m;
    let ss = (sdd - sd * offset).max(0.0);
    if offset * offset <= ss / m {
        return (f64::from(shift) + offset, ss);
    }
    let mean = f64::from(shift) + offset;
    let (sd, sdd) = shifted_sums(xs, dims, ci, mean as f32);
    (mean, (sdd - sd * sd / m).max(0.0))
}

/// The smallest number of planes a parallel task takes: about 16K elements.
fn min_planes(hw: usize) -> usize {
    (16_384 / hw.max(1)).max(1)
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
    let (y, stats) = forward(x, running_mean, running_var, weight, bias, options, None)?;
    Ok((y.expect("a new output"), stats))
}

/// [`batch_norm2d`] writing into the caller's `out` (the shape of `x`), which a loop
/// reuses from call to call instead of allocating an output each time. `out` is
/// overwritten (its contents do not matter); the output and the running statistics are
/// the same, bit for bit, as [`batch_norm2d`]'s. Returns the statistics used.
///
/// # Errors
/// As [`batch_norm2d`], and [`Error::Shape`] when `out` is not the shape of `x` or not
/// in standard layout (checked before the running statistics change).
pub fn batch_norm2d_into(
    x: ArrayView4<'_, f32>,
    running_mean: Option<ArrayViewMut1<'_, f32>>,
    running_var: Option<ArrayViewMut1<'_, f32>>,
    weight: Option<ArrayView1<'_, f32>>,
    bias: Option<ArrayView1<'_, f32>>,
    options: &BatchNormOptions,
    out: ArrayViewMut4<'_, f32>,
) -> Result<BatchNormStats> {
    super::check_out(OP, "out", out.shape(), x.shape(), out.is_standard_layout())?;
    let (_, stats) = forward(
        x,
        running_mean,
        running_var,
        weight,
        bias,
        options,
        Some(out),
    )?;
    Ok(stats)
}

/// The forward of [`batch_norm2d`] (`out` `None`: a new output, returned) and
/// [`batch_norm2d_into`] (`out` given, checked by the caller).
fn forward(
    x: ArrayView4<'_, f32>,
    running_mean: Option<ArrayViewMut1<'_, f32>>,
    running_var: Option<ArrayViewMut1<'_, f32>>,
    weight: Option<ArrayView1<'_, f32>>,
    bias: Option<ArrayView1<'_, f32>>,
    options: &BatchNormOptions,
    out: Option<ArrayViewMut4<'_, f32>>,
) -> Result<(Option<Array4<f32>>, BatchNormStats)> {
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
    let y = match out {
        Some(out) => Err(out),
        None => Ok(try_vec_with_capacity::<f32>(OP, n * c * h * w, || {
            format!("the output {:?}", x.shape())
        })?),
    };
    let shape = x.shape().to_vec();
    let x = try_standard_layout(OP, x, || format!("a contiguous copy of x {shape:?}"))?;
    let xs = x.as_slice().expect("standard layout");
    let hw = h * w;
    let stats = if options.training {
        let moments: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                if m == 0 {
                    (0.0, 0.0)
                } else {
                    channel_moments(xs, (n, c, hw), ci)
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
    // alpha (computed in f64, applied in f32).
    let coef: Vec<(f32, f32)> = (0..c)
        .map(|ci| {
            let g = weight.map_or(1.0, |w| f64::from(w[ci]));
            let b = bias.map_or(0.0, |b| f64::from(b[ci]));
            let alpha = f64::from(stats.invstd[ci]) * g;
            (alpha as f32, (b - f64::from(stats.mean[ci]) * alpha) as f32)
        })
        .collect();
    match y {
        Ok(y) => {
            // SAFETY: `write_output` writes every element: the planes of `hw` elements
            // cover the output (`n * c` of them, as many as `x` has), each element of
            // each written.
            let fill = |ys: &mut [MaybeUninit<f32>]| write_output(ys, xs, &coef, hw);
            let y = unsafe { filled_output(y, (n, c, h, w), fill) };
            Ok((Some(y), stats))
        }
        Err(mut out) => {
            let ys = out.as_slice_mut().expect("checked standard layout");
            write_output(ys, xs, &coef, hw);
            Ok((None, stats))
        }
    }
}

/// `y = x * alpha + beta` per plane of `hw` elements (plane `p` of channel
/// `p % coef.len()`), every element of `ys` written.
fn write_output<S: Slot<f32>>(ys: &mut [S], xs: &[f32], coef: &[(f32, f32)], hw: usize) {
    if hw == 0 {
        return;
    }
    ys.par_chunks_mut(hw)
        .zip(xs.par_chunks(hw))
        .enumerate()
        .with_min_len(min_planes(hw))
        .for_each(|(plane, (yp, xp))| {
            let (alpha, beta) = coef[plane % coef.len()];
            for (y, &x) in yp.iter_mut().zip(xp) {
                y.set(x * alpha + beta);
            }
        });
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
    let hw = h * w;
    let dx = try_vec_with_capacity::<f32>(OP, n * c * h * w, || {
        format!("the input gradient {:?}", x.shape())
    })?;
    let shape = x.shape().to_vec();
    let x = try_standard_layout(OP, x, || format!("a contiguous copy of x {shape:?}"))?;
    let dy = try_standard_layout(OP, dy, || format!("a contiguous copy of dy {shape:?}"))?;
    let (xs, dys) = (
        x.as_slice().expect("standard layout"),
        dy.as_slice().expect("standard layout"),
    );
    // Per channel: sum(dy) and sum(dy * (x - mean)), in f64.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let mean = stats.mean[ci];
            let mut acc = [[0.0; LANES]; 2];
            for (xp, dp) in
                channel_planes(xs, (n, c, hw), ci).zip(channel_planes(dys, (n, c, hw), ci))
            {
                lane_sums(&mut acc, xp, dp, |x, d| (d, d * (x - mean)));
            }
            (total(&acc[0]), total(&acc[1]))
        })
        .collect();
    // Per channel, in f32: dx = (dy - mean_dy - (x - mean) * k) * scale with the batch
    // statistics, dx = dy * scale with the running ones.
    let coef: Vec<[f32; 4]> = (0..c)
        .map(|ci| {
            let invstd = f64::from(stats.invstd[ci]);
            let scale = weight.map_or(1.0, |w| f64::from(w[ci])) * invstd;
            if stats.batch && m > 0.0 {
                let (s, dot) = sums[ci];
                // xhat * mean(dy * xhat) = (x - mean) * invstd^2 * dot / m.
                let k = dot * invstd * invstd / m;
                [scale as f32, (s / m) as f32, stats.mean[ci], k as f32]
            } else {
                [scale as f32, 0.0, 0.0, 0.0]
            }
        })
        .collect();
    let fill = |gs: &mut [MaybeUninit<f32>]| {
        if hw == 0 {
            return;
        }
        gs.par_chunks_mut(hw)
            .zip(xs.par_chunks(hw))
            .zip(dys.par_chunks(hw))
            .enumerate()
            .with_min_len(min_planes(hw))
            .for_each(|(plane, ((gp, xp), dp))| {
                let [scale, mean_dy, mean, k] = coef[plane % c];
                if stats.batch {
                    for ((g, &x), &d) in gp.iter_mut().zip(xp).zip(dp) {
                        g.write((d - mean_dy - (x - mean) * k) * scale);
                    }
                } else {
                    for (g, &d) in gp.iter_mut().zip(dp) {
                        g.write(d * scale);
                    }
                }
            });
    };
    // SAFETY: `fill` writes every element: the planes of `hw` elements cover the
    // gradient (`n * c` of them, as many as `x` and `dy` have), each element written.
    let dx = unsafe { filled_output(dx, (n, c, h, w), fill) };
    let dweight = weight.map(|_| {
        sums.iter()
            .zip(&stats.invstd)
            .map(|(&(_, dot), &inv)| (dot * f64::from(inv)) as f32)
            .collect()
    });
    let dbias = has_bias.then(|| sums.iter().map(|&(s, _)| s as f32).collect());
    Ok(BatchNormGrads { dx, dweight, dbias })
}
