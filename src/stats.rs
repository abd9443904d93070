//! Summary statistics and reshaping helpers for image batches, with PyTorch's
//! conventions (the helpers the "why sqrt(5)" notebook uses).
//!
//! # Examples
//! ```
//! use convinit::stats::{normalize, stats, to_images};
//! use ndarray::Array2;
//! # fn main() -> convinit::Result<()> {
//! let x = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32);
//! let (mean, std) = stats(&x);
//! assert_eq!(mean, 5.5);
//! let z = normalize(&x, mean, std);
//! let (m, s) = stats(&z);
//! assert!(m.abs() < 1e-6 && (s - 1.0).abs() < 1e-6);
//! let imgs = to_images(&x)?; // width 4 = 2 x 2
//! assert_eq!(imgs.shape(), &[3, 1, 2, 2]);
//! # Ok(())
//! # }
//! ```

use ndarray::{Array, Array4, ArrayBase, Data, Dimension, Ix2};

use crate::error::{Error, Result};

/// Mean and standard deviation of all elements, like `x.mean(), x.std()` in PyTorch:
/// the standard deviation is the sample one (divides by N - 1).
///
/// Sums are accumulated in `f64` (two passes: the mean, then squared deviations), so
/// the figures are exact to `f64` rounding. An empty array gives `(NaN, NaN)`; a single
/// element gives `(x, NaN)`, as in PyTorch.
///
/// # Examples
/// ```
/// let x = ndarray::arr1(&[1.0f32, 2.0, 3.0, 4.0]);
/// let (mean, std) = convinit::stats::stats(&x);
/// assert_eq!(mean, 2.5);
/// assert!((std - 1.2909944487358056).abs() < 1e-12);
/// ```
pub fn stats<S, D>(x: &ArrayBase<S, D>) -> (f64, f64)
where
    S: Data<Elem = f32>,
    D: Dimension,
{
    let n = x.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = fold(x, 0.0, |acc, v| acc + f64::from(v)) / n as f64;
    let ss = fold(x, 0.0, |acc, v| {
        let d = f64::from(v) - mean;
        acc + d * d
    });
    let std = if n > 1 {
        (ss / (n - 1) as f64).sqrt()
    } else {
        f64::NAN
    };
    (mean, std)
}

fn fold<S, D>(x: &ArrayBase<S, D>, init: f64, f: impl Fn(f64, f32) -> f64) -> f64
where
    S: Data<Elem = f32>,
    D: Dimension,
{
    match x.as_slice_memory_order() {
        Some(s) => s.iter().fold(init, |a, &v| f(a, v)),
        None => x.iter().fold(init, |a, &v| f(a, v)),
    }
}

/// `(x - mean) / std` element-wise, computed in `f32` like PyTorch does with float
/// tensors (`mean` and `std` are rounded to `f32` first).
///
/// # Examples
/// ```
/// let x = ndarray::arr1(&[1.0f32, 3.0]);
/// assert_eq!(convinit::stats::normalize(&x, 2.0, 2.0), ndarray::arr1(&[-0.5f32, 0.5]));
/// ```
pub fn normalize<S, D>(x: &ArrayBase<S, D>, mean: f64, std: f64) -> Array<f32, D>
where
    S: Data<Elem = f32>,
    D: Dimension,
{
    let (m, s) = (mean as f32, std as f32);
    x.mapv(|v| (v - m) / s)
}

/// Reshapes a batch of flattened square images `(N, side * side)` into
/// `(N, 1, side, side)` (NCHW with one channel), copying into C order.
///
/// # Errors
/// [`Error::Shape`] when the width is not a perfect square.
///
/// # Examples
/// ```
/// let x = ndarray::Array2::<f32>::zeros((5, 784));
/// assert_eq!(convinit::stats::to_images(&x).unwrap().shape(), &[5, 1, 28, 28]);
/// assert!(convinit::stats::to_images(&ndarray::Array2::<f32>::zeros((5, 10))).is_err());
/// ```
pub fn to_images<S>(x: &ArrayBase<S, Ix2>) -> Result<Array4<f32>>
where
    S: Data<Elem = f32>,
{
    let (n, w) = x.dim();
    let side = w.isqrt();
    if side * side != w || w == 0 {
        return Err(Error::Shape {
            op: "to_images",
            message: format!("width {w} of ({n}, {w}) is not the area of a square image"),
        });
    }
    let flat: Vec<f32> = x.iter().copied().collect();
    Array4::from_shape_vec((n, 1, side, side), flat).map_err(|e| Error::Shape {
        op: "to_images",
        message: format!("cannot reshape ({n}, {w}): {e}"),
    })
}
