//! Mean squared error, as the notebook's `mse`:
//! `(output.squeeze(-1) - target).pow(2).mean()`.

use ndarray::{Array, ArrayView, Dimension, Zip};

use crate::error::{Error, Result};

const OP: &str = "mse";

/// Checks `pred` is (N) or (N, 1) and `target` is (N); returns N.
fn check(pred: &[usize], target: &[usize]) -> Result<usize> {
    let n = match pred {
        [n] | [n, 1] => *n,
        _ => {
            return Err(Error::shape(
                OP,
                format!("pred must be (N) or (N, 1), got {pred:?} (target {target:?})"),
            ));
        }
    };
    if target != [n] {
        return Err(Error::shape(
            OP,
            format!("pred {pred:?} needs a target of shape [{n}], got {target:?}"),
        ));
    }
    if n == 0 {
        return Err(Error::shape(
            OP,
            format!("the mean over an empty pred {pred:?} is undefined"),
        ));
    }
    Ok(n)
}

/// `mean((pred - target)^2)` with `pred` (N) or (N, 1) and `target` (N); the squares are
/// summed in f64.
///
/// # Errors
/// [`Error::Shape`] when the shapes are not (N) or (N, 1) against (N), or N is zero.
///
/// # Examples
/// ```
/// use ndarray::array;
/// let pred = array![[1.0f32], [3.0]];
/// let target = array![0.0f32, 1.0];
/// assert_eq!(convinit::ops::mse(pred.view(), target.view())?, 2.5);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn mse<D1: Dimension, D2: Dimension>(
    pred: ArrayView<'_, f32, D1>,
    target: ArrayView<'_, f32, D2>,
) -> Result<f32> {
    let n = check(pred.shape(), target.shape())?;
    let sum: f64 = pred
        .iter()
        .zip(target.iter())
        .map(|(&p, &t)| {
            let d = f64::from(p) - f64::from(t);
            d * d
        })
        .sum();
    Ok((sum / n as f64) as f32)
}

/// Gradient of [`mse`] with respect to `pred`: `2 * (pred - target) / N`, shaped like
/// `pred`.
///
/// # Errors
/// As [`mse`].
pub fn mse_backward<D1: Dimension, D2: Dimension>(
    pred: ArrayView<'_, f32, D1>,
    target: ArrayView<'_, f32, D2>,
) -> Result<Array<f32, D1>> {
    let n = check(pred.shape(), target.shape())?;
    let scale = 2.0 / n as f32;
    let target = target
        .to_shape(pred.raw_dim())
        .map_err(|e| Error::shape(OP, e.to_string()))?;
    Ok(Zip::from(&pred)
        .and(&target)
        .map_collect(|&p, &t| scale * (p - t)))
}
