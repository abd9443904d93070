//! ReLU and leaky ReLU, forward and backward. NaN propagates: `relu(NaN) = NaN`.

use ndarray::{Array, ArrayView, Dimension, Zip};

use crate::error::{Error, Result};

fn check_same<D: Dimension>(
    op: &'static str,
    x: &ArrayView<'_, f32, D>,
    dy: &ArrayView<'_, f32, D>,
) -> Result<()> {
    if x.shape() != dy.shape() {
        return Err(Error::shape(
            op,
            format!(
                "grad_out is {:?} but the input was {:?}",
                dy.shape(),
                x.shape()
            ),
        ));
    }
    Ok(())
}

/// `max(x, 0)` element-wise, as `torch.relu` (NaN stays NaN).
pub fn relu<D: Dimension>(x: ArrayView<'_, f32, D>) -> Array<f32, D> {
    // `v <= 0` is false for NaN, so NaN passes through.
    x.mapv(|v| if v <= 0.0 { 0.0 } else { v })
}

/// Backward of [`relu`]: `dx = dy` where `x > 0` (or NaN), else 0, as PyTorch's
/// `threshold_backward`.
///
/// # Errors
/// [`Error::Shape`] when `dy` and `x` differ in shape.
pub fn relu_backward<D: Dimension>(
    x: ArrayView<'_, f32, D>,
    dy: ArrayView<'_, f32, D>,
) -> Result<Array<f32, D>> {
    check_same("relu", &x, &dy)?;
    Ok(Zip::from(&x)
        .and(&dy)
        .map_collect(|&v, &g| if v <= 0.0 { 0.0 } else { g }))
}

/// `x` where `x > 0`, else `negative_slope * x`, as `torch.nn.functional.leaky_relu`.
/// Any slope is allowed, including 0 and slopes above 1.
pub fn leaky_relu<D: Dimension>(x: ArrayView<'_, f32, D>, negative_slope: f32) -> Array<f32, D> {
    x.mapv(|v| if v > 0.0 { v } else { v * negative_slope })
}

/// Backward of [`leaky_relu`]: `dx = dy` where `x > 0`, else `negative_slope * dy`
/// (PyTorch's `leaky_relu_backward`).
///
/// # Errors
/// [`Error::Shape`] when `dy` and `x` differ in shape.
pub fn leaky_relu_backward<D: Dimension>(
    x: ArrayView<'_, f32, D>,
    dy: ArrayView<'_, f32, D>,
    negative_slope: f32,
) -> Result<Array<f32, D>> {
    check_same("leaky_relu", &x, &dy)?;
    Ok(Zip::from(&x)
        .and(&dy)
        .map_collect(|&v, &g| if v > 0.0 { g } else { g * negative_slope }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn nan_and_infinity_propagate() {
        let x = array![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, 2.0];
        let y = relu(x.view());
        assert!(y[0].is_nan());
        assert_eq!(
            y.slice(ndarray::s![1..]),
            array![f32::INFINITY, 0.0, 0.0, 2.0]
        );
        let y = leaky_relu(x.view(), 0.5);
        assert!(y[0].is_nan());
        assert_eq!(
            y.slice(ndarray::s![1..]),
            array![f32::INFINITY, f32::NEG_INFINITY, -0.5, 2.0]
        );
        let dy = array![1.0f32, 1.0, 1.0, 1.0, f32::NAN];
        let dx = leaky_relu_backward(x.view(), dy.view(), 5.0f32.sqrt()).unwrap();
        assert!(dx[4].is_nan());
        assert_eq!(dx[3], 5.0f32.sqrt());
    }
}
