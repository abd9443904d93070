//! Flatten a run of dimensions into one, as `torch.flatten`, and its backward (a reshape).

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::{Error, Result};
use crate::limits::try_to_owned;

const OP: &str = "flatten";

/// Resolves PyTorch-style (possibly negative) `start_dim` and `end_dim` for a rank.
/// A rank-0 input is treated as rank 1, as PyTorch does.
fn resolve(shape: &[usize], start_dim: isize, end_dim: isize) -> Result<(usize, usize)> {
    let rank = shape.len().max(1) as isize;
    let norm = |d: isize| {
        let r = if d < 0 { d + rank } else { d };
        (0..rank).contains(&r).then_some(r as usize)
    };
    match (norm(start_dim), norm(end_dim)) {
        (Some(s), Some(e)) if s <= e => Ok((s, e)),
        _ => Err(Error::shape(
            OP,
            format!(
                "start_dim {start_dim} and end_dim {end_dim} are not an ordered pair of \
                 dimensions of an input of shape {shape:?}"
            ),
        )),
    }
}

/// The shape [`flatten`] gives an input of shape `shape`.
///
/// # Errors
/// [`Error::Shape`] when `start_dim` or `end_dim` is out of range for `shape`, or
/// `start_dim` comes after `end_dim`.
pub fn flatten_shape(shape: &[usize], start_dim: isize, end_dim: isize) -> Result<Vec<usize>> {
    let (s, e) = resolve(shape, start_dim, end_dim)?;
    if shape.is_empty() {
        return Ok(vec![1]);
    }
    let mut out = shape[..s].to_vec();
    // `flatten_backward` takes the shape from the caller: the product may overflow.
    let merged = shape[s..=e]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::shape(
                OP,
                format!("flattening dims {s}..={e} of {shape:?} overflows usize"),
            )
        })?;
    out.push(merged);
    out.extend_from_slice(&shape[e + 1..]);
    Ok(out)
}

/// Merges dimensions `start_dim..=end_dim` of `x` (negative values count from the end),
/// as `torch.flatten(x, start_dim, end_dim)`; `nn.Flatten`'s defaults are `1, -1`.
/// Copies into standard (row-major) order.
///
/// # Errors
/// As [`flatten_shape`]; [`Error::Alloc`] when the copy cannot be allocated (`x` may be
/// a broadcast view far larger than memory).
pub fn flatten(x: ArrayViewD<'_, f32>, start_dim: isize, end_dim: isize) -> Result<ArrayD<f32>> {
    let shape = flatten_shape(x.shape(), start_dim, end_dim)?;
    try_to_owned(OP, x.view(), || format!("a copy of x {:?}", x.shape()))?
        .into_shape_with_order(IxDyn(&shape))
        .map_err(|e| Error::shape(OP, e.to_string()))
}

/// Backward of [`flatten`]: reshapes `dy` back to the input shape `x_shape`.
///
/// # Errors
/// [`Error::Shape`] when `dy` does not have the shape [`flatten`] gives `x_shape`;
/// [`Error::Alloc`] when the copy cannot be allocated.
pub fn flatten_backward(
    x_shape: &[usize],
    dy: ArrayViewD<'_, f32>,
    start_dim: isize,
    end_dim: isize,
) -> Result<ArrayD<f32>> {
    let expected = flatten_shape(x_shape, start_dim, end_dim)?;
    if dy.shape() != expected.as_slice() {
        return Err(Error::shape(
            OP,
            format!(
                "grad_out is {:?} but flattening {x_shape:?} gives {expected:?}",
                dy.shape()
            ),
        ));
    }
    try_to_owned(OP, dy.view(), || {
        format!("a copy of grad_out {:?}", dy.shape())
    })?
    .into_shape_with_order(IxDyn(x_shape))
    .map_err(|e| Error::shape(OP, e.to_string()))
}
