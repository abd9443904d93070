//! 2-d convolution (cross-correlation, as PyTorch) by im2col + GEMM, and its backward.
//!
//! Forward, per image `n` and group `g`: `y[n, g] (Og, L) = W[g] (Og, Cg*kh*kw) x cols[g]`
//! with `cols = im2col(x[n])` and `L = out_h * out_w`. Backward, per image:
//! `dW[g] += dy[n, g] x cols[g]^T`, `dcols[g] = W[g]^T x dy[n, g]`, `dx[n] = col2im(dcols)`,
//! `db[o] += sum(dy[n, o])`. All products go through [`crate::gemm::sgemm`].
//!
//! Determinism: images are independent in the forward pass and in `dx`; the weight and
//! bias gradients are summed per fixed chunk of [`REDUCTION_CHUNK`] images (in image
//! order) and the chunk partials are then added in chunk order, so the result does not
//! depend on how many threads rayon uses.

use ndarray::parallel::prelude::*;
use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, Axis, s};

use super::geometry::{Conv2dGeometry, Conv2dOptions};
use super::im2col::{col2im, im2col};
use crate::error::{Error, Result};
use crate::gemm::sgemm;

/// Images per partial sum of the weight and bias gradients. Fixed (not derived from the
/// thread count) so the floating-point summation order is always the same.
pub const REDUCTION_CHUNK: usize = 8;

const OP: &str = "conv2d";

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::shape(OP, e.to_string())
}

fn check_bias(geo: &Conv2dGeometry, w_shape: &[usize], bias_len: Option<usize>) -> Result<()> {
    match bias_len {
        Some(len) if len != geo.out_channels => Err(Error::shape(
            OP,
            format!(
                "bias has length {len}, weight {w_shape:?} has {} output channels",
                geo.out_channels
            ),
        )),
        _ => Ok(()),
    }
}

/// 2-d convolution of `x` (N, C, H, W) with `weight` (O, C / groups, kh, kw) and an
/// optional `bias` (O), as `torch.nn.functional.conv2d`. Returns (N, O, out_h, out_w)
/// with the sizes from [`super::conv_out_size`].
///
/// Runs the images in parallel with rayon, each with its own im2col workspace; the result
/// is the same for any number of threads.
///
/// # Errors
/// [`Error::Config`] for a zero stride, dilation or groups, or groups not dividing the
/// channels; [`Error::Shape`] when the weight does not match the input's channels, the
/// dilated kernel is larger than the padded input, or the bias length is not `O`.
///
/// # Examples
/// ```
/// use convinit::ops::{conv2d, Conv2dOptions};
/// use ndarray::{Array1, Array4};
///
/// let x = Array4::<f32>::ones((2, 3, 8, 8));
/// let w = Array4::<f32>::ones((4, 3, 3, 3));
/// let b = Array1::<f32>::zeros(4);
/// let opts = Conv2dOptions::new().with_stride((2, 2)).with_padding((1, 1));
/// let y = conv2d(x.view(), w.view(), Some(b.view()), &opts)?;
/// assert_eq!(y.dim(), (2, 4, 4, 4));
/// // An interior output sees the full 3x3x3 window of ones.
/// assert_eq!(y[[0, 0, 1, 1]], 27.0);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn conv2d(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    options: &Conv2dOptions,
) -> Result<Array4<f32>> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    check_bias(&geo, weight.shape(), bias.map(|b| b.len()))?;
    let x = x.as_standard_layout();
    let weight = weight.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let (o, g) = (geo.out_channels, options.groups);
    let (og, rows, l) = (o / g, geo.col_rows(), geo.col_cols());
    let kg = rows / g;
    let w2 = weight
        .view()
        .into_shape_with_order((o, kg))
        .map_err(shape_err)?;
    let image = geo.in_channels * geo.in_h * geo.in_w;

    let mut y = Array4::<f32>::zeros(geo.y_shape());
    y.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .try_for_each_init(
            || vec![0.0f32; rows * l],
            |cols, (n, yn)| -> Result<()> {
                im2col(&xs[n * image..(n + 1) * image], &geo, cols);
                let cols = ArrayView2::from_shape((rows, l), &cols[..]).map_err(shape_err)?;
                let mut y2 = yn.into_shape_with_order((o, l)).map_err(shape_err)?;
                for gi in 0..g {
                    sgemm(
                        1.0,
                        w2.slice(s![gi * og..(gi + 1) * og, ..]),
                        cols.slice(s![gi * kg..(gi + 1) * kg, ..]),
                        0.0,
                        y2.slice_mut(s![gi * og..(gi + 1) * og, ..]),
                    )?;
                }
                if let Some(b) = bias {
                    for (mut row, &bv) in y2.outer_iter_mut().zip(b.iter()) {
                        row.mapv_inplace(|v| v + bv);
                    }
                }
                Ok(())
            },
        )?;
    Ok(y)
}

/// Gradients of [`conv2d`] with respect to its input, weight and bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dGrads {
    /// Gradient of the input, (N, C, H, W).
    pub dx: Array4<f32>,
    /// Gradient of the weight, (O, C / groups, kh, kw).
    pub dw: Array4<f32>,
    /// Gradient of the bias, (O), when the forward pass had one.
    pub db: Option<Array1<f32>>,
}

/// Backward pass of [`conv2d`]: given the forward input `x`, `weight`, whether there was
/// a bias, and the upstream gradient `dy` (N, O, out_h, out_w), returns `dx`, `dw` and
/// (when `with_bias`) `db`.
///
/// `dx` is computed per image in parallel; `dw` and `db` are summed over images in a fixed
/// order (see the module docs), so the result is the same for any number of threads.
///
/// # Errors
/// Everything [`conv2d`] rejects, and [`Error::Shape`] when `dy` is not the shape the
/// forward pass produces.
pub fn conv2d_backward(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    with_bias: bool,
    dy: ArrayView4<'_, f32>,
    options: &Conv2dOptions,
) -> Result<Conv2dGrads> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    if dy.dim() != geo.y_shape() {
        return Err(Error::shape(
            OP,
            format!(
                "grad_out is {:?}, but x {:?} and weight {:?} give an output of {:?}",
                dy.shape(),
                x.shape(),
                weight.shape(),
                geo.y_shape()
            ),
        ));
    }
    let x = x.as_standard_layout();
    let weight = weight.as_standard_layout();
    let dy = dy.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let (o, g) = (geo.out_channels, options.groups);
    let (og, rows, l) = (o / g, geo.col_rows(), geo.col_cols());
    let kg = rows / g;
    let w2 = weight
        .view()
        .into_shape_with_order((o, kg))
        .map_err(shape_err)?;
    let dy3 = dy
        .view()
        .into_shape_with_order((geo.batch, o, l))
        .map_err(shape_err)?;
    let image = geo.in_channels * geo.in_h * geo.in_w;

    let mut dx = Array4::<f32>::zeros(geo.x_shape());
    // One (dW, db) partial per chunk of REDUCTION_CHUNK images, in chunk order.
    let partials = dx
        .axis_chunks_iter_mut(Axis(0), REDUCTION_CHUNK)
        .into_par_iter()
        .enumerate()
        .map(|(ci, mut dx_chunk)| -> Result<(Array2<f32>, Array1<f64>)> {
            let mut dw = Array2::<f32>::zeros((o, kg));
            let mut db = Array1::<f64>::zeros(o);
            let mut cols = Array2::<f32>::zeros((rows, l));
            let mut dcols = Array2::<f32>::zeros((rows, l));
            for (k, mut dxn) in dx_chunk.outer_iter_mut().enumerate() {
                let n = ci * REDUCTION_CHUNK + k;
                im2col(
                    &xs[n * image..(n + 1) * image],
                    &geo,
                    cols.as_slice_mut().expect("fresh array is contiguous"),
                );
                let dyn2 = dy3.index_axis(Axis(0), n);
                for gi in 0..g {
                    let (orange, krange) = (gi * og..(gi + 1) * og, gi * kg..(gi + 1) * kg);
                    let dy_g = dyn2.slice(s![orange.clone(), ..]);
                    // dW[g] += dy[n, g] (Og, L) x cols[g]^T (L, Kg)
                    sgemm(
                        1.0,
                        dy_g,
                        cols.slice(s![krange.clone(), ..]).t(),
                        1.0,
                        dw.slice_mut(s![orange.clone(), ..]),
                    )?;
                    // dcols[g] = W[g]^T (Kg, Og) x dy[n, g] (Og, L)
                    sgemm(
                        1.0,
                        w2.slice(s![orange, ..]).t(),
                        dy_g,
                        0.0,
                        dcols.slice_mut(s![krange, ..]),
                    )?;
                }
                col2im(
                    dcols.as_slice().expect("fresh array is contiguous"),
                    &geo,
                    dxn.as_slice_mut()
                        .expect("a fresh array's image is contiguous"),
                );
                if with_bias {
                    for (acc, row) in db.iter_mut().zip(dyn2.outer_iter()) {
                        *acc += row.iter().map(|&v| f64::from(v)).sum::<f64>();
                    }
                }
            }
            Ok((dw, db))
        })
        .collect::<Result<Vec<_>>>()?;

    let mut dw = Array2::<f32>::zeros((o, kg));
    let mut db = Array1::<f64>::zeros(o);
    for (pw, pb) in &partials {
        dw += pw;
        db += pb;
    }
    let dw = dw.into_shape_with_order(geo.w_shape()).map_err(shape_err)?;
    Ok(Conv2dGrads {
        dx,
        dw,
        db: with_bias.then(|| db.mapv(|v| v as f32)),
    })
}
