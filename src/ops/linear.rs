//! Fully connected layer `y = x W^T + b`, forward and backward, through
//! [`crate::gemm::sgemm`].

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::error::{Error, Result};
use crate::gemm::sgemm;
use crate::limits::try_zeros;

const OP: &str = "linear";

fn check(x: &ArrayView2<'_, f32>, w: &ArrayView2<'_, f32>, bias_len: Option<usize>) -> Result<()> {
    if x.ncols() != w.ncols() {
        return Err(Error::shape(
            OP,
            format!(
                "x {:?} has {} features, weight {:?} expects {}",
                x.shape(),
                x.ncols(),
                w.shape(),
                w.ncols()
            ),
        ));
    }
    match bias_len {
        Some(len) if len != w.nrows() => Err(Error::shape(
            OP,
            format!(
                "bias has length {len}, weight {:?} has {} outputs",
                w.shape(),
                w.nrows()
            ),
        )),
        _ => Ok(()),
    }
}

/// `y = x W^T + b` with `x` (N, in), `weight` (out, in), optional `bias` (out); returns
/// (N, out), as `torch.nn.functional.linear`.
///
/// # Errors
/// [`Error::Shape`] when the feature counts or the bias length do not match;
/// [`Error::Alloc`] when the output cannot be allocated (`x` may be a broadcast view).
pub fn linear(
    x: ArrayView2<'_, f32>,
    weight: ArrayView2<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
) -> Result<Array2<f32>> {
    check(&x, &weight, bias.map(|b| b.len()))?;
    let mut y: Array2<f32> = try_zeros(OP, (x.nrows(), weight.nrows()), || {
        let shape = [x.nrows(), weight.nrows()];
        format!(
            "the output {shape:?} of x {:?} and weight {:?}",
            x.shape(),
            weight.shape()
        )
    })?;
    sgemm(1.0, x, weight.t(), 0.0, y.view_mut())?;
    if let Some(b) = bias {
        y += &b;
    }
    Ok(y)
}

/// Gradients of [`linear`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrads {
    /// Gradient of the input, (N, in).
    pub dx: Array2<f32>,
    /// Gradient of the weight, (out, in).
    pub dw: Array2<f32>,
    /// Gradient of the bias, (out), when the forward pass had one.
    pub db: Option<Array1<f32>>,
}

/// Backward of [`linear`]: `dx = dy W`, `dW = dy^T x`, `db = sum over N of dy` (summed
/// in f64, in row order).
///
/// # Errors
/// [`Error::Shape`] when `x` and `weight` do not match or `dy` is not (N, out);
/// [`Error::Alloc`] when a gradient cannot be allocated.
pub fn linear_backward(
    x: ArrayView2<'_, f32>,
    weight: ArrayView2<'_, f32>,
    with_bias: bool,
    dy: ArrayView2<'_, f32>,
) -> Result<LinearGrads> {
    let (dx, dw, db) = backward_impl(x, weight, with_bias, dy, true)?;
    Ok(LinearGrads {
        dx: dx.expect("the input gradient was asked for"),
        dw,
        db,
    })
}

/// [`linear_backward`]'s `dw` and `db` without `dx` (the same values, bit for bit), for
/// a layer whose input needs no gradient.
///
/// # Errors
/// As [`linear_backward`].
pub(crate) fn linear_backward_params(
    x: ArrayView2<'_, f32>,
    weight: ArrayView2<'_, f32>,
    with_bias: bool,
    dy: ArrayView2<'_, f32>,
) -> Result<(Array2<f32>, Option<Array1<f32>>)> {
    let (_, dw, db) = backward_impl(x, weight, with_bias, dy, false)?;
    Ok((dw, db))
}

/// The gradients `(dx when want_dx, dw, db when with_bias)`.
#[allow(clippy::type_complexity)]
fn backward_impl(
    x: ArrayView2<'_, f32>,
    weight: ArrayView2<'_, f32>,
    with_bias: bool,
    dy: ArrayView2<'_, f32>,
    want_dx: bool,
) -> Result<(Option<Array2<f32>>, Array2<f32>, Option<Array1<f32>>)> {
    check(&x, &weight, None)?;
    if dy.dim() != (x.nrows(), weight.nrows()) {
        return Err(Error::shape(
            OP,
            format!(
                "grad_out is {:?}, but x {:?} and weight {:?} give an output of {:?}",
                dy.shape(),
                x.shape(),
                weight.shape(),
                (x.nrows(), weight.nrows())
            ),
        ));
    }
    let dx = if want_dx {
        let mut dx: Array2<f32> = try_zeros(OP, x.raw_dim(), || {
            format!("the input gradient of x {:?}", x.shape())
        })?;
        sgemm(1.0, dy, weight, 0.0, dx.view_mut())?;
        Some(dx)
    } else {
        None
    };
    let mut dw: Array2<f32> = try_zeros(OP, weight.raw_dim(), || {
        format!("the weight gradient of weight {:?}", weight.shape())
    })?;
    sgemm(1.0, dy.t(), x, 0.0, dw.view_mut())?;
    let db = with_bias.then(|| {
        dy.map_axis(Axis(0), |col| {
            col.iter().map(|&v| f64::from(v)).sum::<f64>() as f32
        })
    });
    Ok((dx, dw, db))
}
