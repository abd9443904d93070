//! Weight initialisation, formula for formula as `torch.nn.init`.
//!
//! (Work in progress: only PyTorch's default reset is here so far.)

use ndarray::{ArrayViewMut1, ArrayViewMutD};
use rand::Rng;
use rand_distr::{Distribution, Uniform};

use crate::error::{Error, Result};

/// `fan_in` and `fan_out` of a weight of rank >= 2: `fan_in = shape[1] * prod(shape[2..])`,
/// `fan_out = shape[0] * prod(shape[2..])` (PyTorch's `_calculate_fan_in_and_fan_out`).
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2.
pub fn fans(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::shape(
            "fans",
            format!("fan in and fan out need a weight of rank >= 2, got shape {shape:?}"),
        ));
    }
    let receptive: usize = shape[2..].iter().product();
    Ok((shape[1] * receptive, shape[0] * receptive))
}

/// PyTorch's default reset of `Conv2d` / `Linear`: weight `kaiming_uniform_(a = sqrt 5)`,
/// i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
/// where `fan_in` comes from the weight (so it counts `C_in / groups` for a conv).
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2.
pub fn pytorch_default_reset<R: Rng + ?Sized>(
    mut weight: ArrayViewMutD<'_, f32>,
    bias: Option<ArrayViewMut1<'_, f32>>,
    rng: &mut R,
) -> Result<()> {
    let (fan_in, _) = fans(weight.shape())?;
    // gain = sqrt(2 / (1 + 5)), std = gain / sqrt(fan_in), bound = sqrt(3) * std.
    let gain = (2.0f64 / (1.0 + 5.0)).sqrt();
    let bound = 3.0f64.sqrt() * gain / (fan_in.max(1) as f64).sqrt();
    let dist = Uniform::new_inclusive(-bound as f32, bound as f32)
        .map_err(|e| Error::config("pytorch_default_reset", e.to_string()))?;
    weight.iter_mut().for_each(|w| *w = dist.sample(rng));
    if let Some(mut b) = bias {
        let bb = if fan_in > 0 { 1.0 / (fan_in as f64).sqrt() } else { 0.0 };
        let dist = Uniform::new_inclusive(-bb as f32, bb as f32)
            .map_err(|e| Error::config("pytorch_default_reset", e.to_string()))?;
        b.iter_mut().for_each(|v| *v = dist.sample(rng));
    }
    Ok(())
}
