//! Adaptive pooling with PyTorch's window rule: average and max, forward and backward.
//!
//! Output row `i` of `out` reads input rows `floor(i * H / out) .. ceil((i + 1) * H / out)`
//! (likewise for columns; [`super::adaptive_spans`]). Windows may overlap, and when
//! `out > H` each still holds at least one element.

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use super::max::{max_forward, scatter_backward};
use super::{Span, adaptive_spans, check_grad, check_input, min_planes};
use crate::error::{Error, Result};
use crate::limits::{try_standard_layout, try_zeros};

const OP: &str = "adaptive_avg_pool2d";
const MAX_OP: &str = "adaptive_max_pool2d";

fn validate(op: &'static str, x_shape: &[usize], output_size: (usize, usize)) -> Result<()> {
    if output_size.0 == 0 || output_size.1 == 0 {
        return Err(Error::config(
            op,
            format!("output size must be positive, got {output_size:?} for x {x_shape:?}"),
        ));
    }
    if x_shape[2] == 0 || x_shape[3] == 0 {
        return Err(Error::shape(
            op,
            format!("x {x_shape:?} has an empty spatial dimension"),
        ));
    }
    let fits = |a: usize, b: usize| a.checked_add(1).and_then(|a| a.checked_mul(b)).is_some();
    if !fits(output_size.0, x_shape[2]) || !fits(output_size.1, x_shape[3]) {
        return Err(Error::config(
            op,
            format!("output size {output_size:?} is too large for x {x_shape:?}"),
        ));
    }
    let total = [x_shape[0], x_shape[1], output_size.0, output_size.1]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&t| t <= isize::MAX as usize / 4);
    if total.is_none() {
        return Err(Error::config(
            op,
            format!("output size {output_size:?} for x {x_shape:?} is too large to allocate"),
        ));
    }
    Ok(())
}

/// The largest window's number of elements.
fn taps(rows: &[Span], cols: &[Span]) -> usize {
    let longest = |s: &[Span]| s.iter().map(|s| s.end - s.start).max().unwrap_or(0);
    longest(rows) * longest(cols)
}

/// Adaptive average pooling of `x` (N, C, H, W) to (N, C, oh, ow), as
/// `torch.nn.functional.adaptive_avg_pool2d` (each window summed in f64, row by row).
///
/// # Errors
/// [`Error::Config`] for a zero output size; [`Error::Shape`] for an input with `H` or
/// `W` zero; [`Error::Alloc`] when the output cannot be allocated.
pub fn adaptive_avg_pool2d(
    x: ArrayView4<'_, f32>,
    output_size: (usize, usize),
) -> Result<Array4<f32>> {
    validate(OP, x.shape(), output_size)?;
    let (n, c, h, w) = x.dim();
    let (oh, ow) = output_size;
    let mut y: Array4<f32> = try_zeros(OP, (n, c, oh, ow), || {
        format!("the output {:?} of x {:?}", [n, c, oh, ow], x.shape())
    })?;
    let x = try_standard_layout(OP, x, || format!("a contiguous copy of x {:?}", x.shape()))?;
    let (rows, cols) = (adaptive_spans(h, oh), adaptive_spans(w, ow));
    let (hw, ohw) = (h * w, oh * ow);
    y.as_slice_mut()
        .expect("new array")
        .par_chunks_mut(ohw)
        .zip(x.as_slice().expect("standard layout").par_chunks(hw))
        .with_min_len(min_planes(n * c, ohw * taps(&rows, &cols)))
        .for_each(|(y, x)| {
            for (i, r) in rows.iter().enumerate() {
                for (j, cs) in cols.iter().enumerate() {
                    let mut sum = 0.0f64;
                    for ih in r.start..r.end {
                        for &v in &x[ih * w + cs.start..ih * w + cs.end] {
                            sum += f64::from(v);
                        }
                    }
                    y[i * ow + j] = (sum / (r.len() * cs.len()) as f64) as f32;
                }
            }
        });
    Ok(y)
}

/// Backward of [`adaptive_avg_pool2d`]: each `dy` element is spread evenly over its
/// window, `dx[window] += dy / window_len` (overlapping windows add up). `x_shape` is
/// the forward input's shape (N, C, H, W); the output size is read from `dy`.
///
/// # Errors
/// [`Error::Config`] for a zero output size in `dy`; [`Error::Shape`] when `dy`'s batch
/// or channels differ from `x_shape`, or `H` or `W` is zero; [`Error::Alloc`] when the
/// input gradient cannot be allocated.
pub fn adaptive_avg_pool2d_backward(
    x_shape: (usize, usize, usize, usize),
    dy: ArrayView4<'_, f32>,
) -> Result<Array4<f32>> {
    let (n, c, h, w) = x_shape;
    let (_, _, oh, ow) = dy.dim();
    let shape = [n, c, h, w];
    validate(OP, &shape, (oh, ow))?;
    check_grad(OP, x_shape, dy.shape(), (oh, ow))?;
    let mut dx: Array4<f32> = try_zeros(OP, x_shape, || {
        format!(
            "the input gradient {shape:?} from grad_out {:?}",
            dy.shape()
        )
    })?;
    let dy = try_standard_layout(OP, dy, || {
        format!("a contiguous copy of grad_out {:?}", dy.shape())
    })?;
    let (rows, cols) = (adaptive_spans(h, oh), adaptive_spans(w, ow));
    let (hw, ohw) = (h * w, oh * ow);
    dx.as_slice_mut()
        .expect("new array")
        .par_chunks_mut(hw)
        .zip(dy.as_slice().expect("standard layout").par_chunks(ohw))
        .with_min_len(min_planes(n * c, ohw * taps(&rows, &cols)))
        .for_each(|(dx, dy)| {
            for (i, r) in rows.iter().enumerate() {
                for (j, cs) in cols.iter().enumerate() {
                    let share = dy[i * ow + j] / (r.len() * cs.len()) as f32;
                    for ih in r.start..r.end {
                        for v in &mut dx[ih * w + cs.start..ih * w + cs.end] {
                            *v += share;
                        }
                    }
                }
            }
        });
    Ok(dx)
}

/// `torch.nn.functional.adaptive_max_pool2d(x, output_size)` on (N, C, H, W): the
/// largest value of each adaptive window (any output size, also larger than the
/// input). Ties go to the first maximum in row-by-row order and NaN wins, as PyTorch's
/// CPU kernel.
///
/// # Errors
/// As [`adaptive_max_pool2d_with_indices`].
pub fn adaptive_max_pool2d(
    x: ArrayView4<'_, f32>,
    output_size: (usize, usize),
) -> Result<Array4<f32>> {
    adaptive_max_pool2d_with_indices(x, output_size).map(|(y, _)| y)
}

/// [`adaptive_max_pool2d`] with `return_indices=True`: the output and the flat index
/// `h * W + w` of each maximum within its (N, C) plane.
///
/// # Errors
/// [`Error::Config`] for a zero output size; [`Error::Shape`] for zero channels, height
/// or width; [`Error::Alloc`] when a buffer cannot be allocated.
pub fn adaptive_max_pool2d_with_indices(
    x: ArrayView4<'_, f32>,
    output_size: (usize, usize),
) -> Result<(Array4<f32>, Array4<i64>)> {
    validate(MAX_OP, x.shape(), output_size)?;
    check_input(MAX_OP, x.shape())?;
    let (_, _, h, w) = x.dim();
    let rows = adaptive_spans(h, output_size.0);
    let cols = adaptive_spans(w, output_size.1);
    max_forward(MAX_OP, x, &rows, &cols, (1, 1))
}

/// Backward of [`adaptive_max_pool2d`]: `dx[n, c, index] += dy` for each output and its
/// index from [`adaptive_max_pool2d_with_indices`] (windows sharing a maximum add up).
///
/// # Errors
/// [`Error::Shape`] when `dy` and `indices` differ in shape, their batch or channels
/// differ from `x_shape`, or an index lies outside its `H x W` plane; [`Error::Alloc`]
/// when the input gradient cannot be allocated.
pub fn adaptive_max_pool2d_backward(
    x_shape: (usize, usize, usize, usize),
    indices: ArrayView4<'_, i64>,
    dy: ArrayView4<'_, f32>,
) -> Result<Array4<f32>> {
    scatter_backward(MAX_OP, x_shape, indices, dy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn nan_propagates() {
        let mut x = Array4::<f32>::ones((1, 1, 4, 4));
        x[[0, 0, 0, 0]] = f32::NAN;
        let y = adaptive_avg_pool2d(x.view(), (2, 2)).unwrap();
        assert!(y[[0, 0, 0, 0]].is_nan());
        assert_eq!(y[[0, 0, 1, 1]], 1.0);
    }
}
