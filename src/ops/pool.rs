//! Adaptive average pooling 2d with PyTorch's window rule, forward and backward.
//!
//! Output row `i` of `out` averages input rows `floor(i * H / out) .. ceil((i + 1) * H / out)`
//! (likewise for columns). Windows may overlap, and when `out > H` each still holds at
//! least one element.

use ndarray::parallel::prelude::*;
use ndarray::{Array4, ArrayView3, ArrayView4, ArrayViewMut3, Axis, s};

use super::activation::PAR_CHUNK;
use crate::error::{Error, Result};
use crate::limits::try_zeros;

const OP: &str = "adaptive_avg_pool2d";

/// Window `[start, end)` of output index `i` for an input of `size` pooled to `out`.
#[inline]
fn window(i: usize, size: usize, out: usize) -> (usize, usize) {
    let start = i * size / out;
    let end = ((i + 1) * size).div_ceil(out);
    (start, end)
}

fn validate(x_shape: &[usize], output_size: (usize, usize)) -> Result<()> {
    if output_size.0 == 0 || output_size.1 == 0 {
        return Err(Error::config(
            OP,
            format!("output size must be positive, got {output_size:?} for x {x_shape:?}"),
        ));
    }
    if x_shape[2] == 0 || x_shape[3] == 0 {
        return Err(Error::shape(
            OP,
            format!("x {x_shape:?} has an empty spatial dimension"),
        ));
    }
    let fits = |a: usize, b: usize| a.checked_add(1).and_then(|a| a.checked_mul(b)).is_some();
    if !fits(output_size.0, x_shape[2]) || !fits(output_size.1, x_shape[3]) {
        return Err(Error::config(
            OP,
            format!("output size {output_size:?} is too large for x {x_shape:?}"),
        ));
    }
    let total = [x_shape[0], x_shape[1], output_size.0, output_size.1]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&t| t <= isize::MAX as usize / 4);
    if total.is_none() {
        return Err(Error::config(
            OP,
            format!("output size {output_size:?} for x {x_shape:?} is too large to allocate"),
        ));
    }
    Ok(())
}

/// Adaptive average pooling of `x` (N, C, H, W) to (N, C, oh, ow), as
/// `torch.nn.functional.adaptive_avg_pool2d` (each window summed in f64).
///
/// # Errors
/// [`Error::Config`] for a zero output size; [`Error::Shape`] for an input with `H` or
/// `W` zero; [`Error::Alloc`] when the output cannot be allocated.
pub fn adaptive_avg_pool2d(
    x: ArrayView4<'_, f32>,
    output_size: (usize, usize),
) -> Result<Array4<f32>> {
    validate(x.shape(), output_size)?;
    let (n, c, h, w) = x.dim();
    let (oh, ow) = output_size;
    let mut y: Array4<f32> = try_zeros(OP, (n, c, oh, ow), || {
        format!("the output {:?} of x {:?}", [n, c, oh, ow], x.shape())
    })?;
    per_image(
        c * h * w,
        y.axis_iter_mut(Axis(0)),
        x.axis_iter(Axis(0)),
        |mut y, x| {
            for ((ci, i, j), out) in y.indexed_iter_mut() {
                let (h0, h1) = window(i, h, oh);
                let (w0, w1) = window(j, w, ow);
                let sum: f64 = x
                    .slice(s![ci, h0..h1, w0..w1])
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum();
                *out = (sum / ((h1 - h0) * (w1 - w0)) as f64) as f32;
            }
        },
    );
    Ok(y)
}

/// Runs `f` on every image of `a` with the matching image of `b`, on rayon when the
/// batch holds more than a couple of [`PAR_CHUNK`]s (`per_image` elements per image).
/// Images are independent, so the result does not depend on the thread count.
fn per_image<'a, 'b>(
    per_image: usize,
    a: ndarray::iter::AxisIterMut<'a, f32, ndarray::Ix3>,
    b: ndarray::iter::AxisIter<'b, f32, ndarray::Ix3>,
    f: impl Fn(ArrayViewMut3<'a, f32>, ArrayView3<'b, f32>) + Sync + Send,
) {
    let images = a.len();
    if images.saturating_mul(per_image) > 2 * PAR_CHUNK {
        let min = (PAR_CHUNK / per_image.max(1)).max(1);
        a.into_par_iter()
            .zip(b.into_par_iter())
            .with_min_len(min)
            .for_each(|(a, b)| f(a, b));
    } else {
        a.zip(b).for_each(|(a, b)| f(a, b));
    }
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
    let (dn, dc, oh, ow) = dy.dim();
    let shape = [n, c, h, w];
    validate(&shape, (oh, ow))?;
    // `x_shape` is the caller's: dx must be allocatable (a larger Vec panics).
    let elems = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if elems.is_none_or(|e| e > isize::MAX as usize / 4) {
        return Err(Error::shape(
            OP,
            format!("input shape {shape:?} is too large to allocate its gradient"),
        ));
    }
    if (dn, dc) != (n, c) {
        return Err(Error::shape(
            OP,
            format!(
                "grad_out is {:?} but the input was {shape:?}: batch and channels must match",
                dy.shape()
            ),
        ));
    }
    let mut dx: Array4<f32> = try_zeros(OP, x_shape, || {
        format!(
            "the input gradient {shape:?} from grad_out {:?}",
            dy.shape()
        )
    })?;
    per_image(
        c * h * w,
        dx.axis_iter_mut(Axis(0)),
        dy.axis_iter(Axis(0)),
        |mut dx, dy| {
            for ((ci, i, j), &g) in dy.indexed_iter() {
                let (h0, h1) = window(i, h, oh);
                let (w0, w1) = window(j, w, ow);
                let share = g / ((h1 - h0) * (w1 - w0)) as f32;
                dx.slice_mut(s![ci, h0..h1, w0..w1])
                    .mapv_inplace(|v| v + share);
            }
        },
    );
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn windows_follow_pytorch() {
        // 7 -> 3: [0, 3), [2, 5), [4, 7) (overlapping).
        let w: Vec<_> = (0..3).map(|i| window(i, 7, 3)).collect();
        assert_eq!(w, [(0, 3), (2, 5), (4, 7)]);
        // 2 -> 5 (output larger than input): every window holds at least one element.
        let w: Vec<_> = (0..5).map(|i| window(i, 2, 5)).collect();
        assert_eq!(w, [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]);
        assert!(w.iter().all(|&(a, b)| b > a));
    }

    #[test]
    fn nan_propagates() {
        let mut x = Array4::<f32>::ones((1, 1, 4, 4));
        x[[0, 0, 0, 0]] = f32::NAN;
        let y = adaptive_avg_pool2d(x.view(), (2, 2)).unwrap();
        assert!(y[[0, 0, 0, 0]].is_nan());
        assert_eq!(y[[0, 0, 1, 1]], 1.0);
    }
}
