//! ReLU, leaky ReLU, tanh and sigmoid, forward and backward. NaN propagates:
//! `relu(NaN) = NaN`. The tanh and sigmoid backwards take the forward's output, as
//! PyTorch's (`tanh_backward(grad, output)`, `sigmoid_backward(grad, output)`).
//!
//! Element-wise work runs on rayon in chunks of [`PAR_CHUNK`] elements once an array is
//! large enough; every element is computed on its own, so the result does not depend on
//! the thread count.

use ndarray::parallel::prelude::*;
use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, ShapeBuilder, Zip};
use rayon::iter::{IndexedParallelIterator, IntoParallelRefIterator, ParallelExtend};
use rayon::slice::{ParallelSlice, ParallelSliceMut};

use super::lanes;
use crate::error::{Error, Result};
use crate::gemm::Kernel;
use crate::limits::try_vec_with_capacity;

/// Elements per rayon task in the element-wise ops; arrays of up to twice this many
/// elements run on the calling thread (splitting them costs more than it saves).
pub(crate) const PAR_CHUNK: usize = 1 << 15;

fn parallel(len: usize) -> bool {
    len > 2 * PAR_CHUNK
}

/// `out[i] = f(x[i])`; both slices have the same length.
pub(crate) fn map_slice(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    debug_assert_eq!(x.len(), out.len());
    let run = |out: &mut [f32], x: &[f32]| lanes::map(Kernel::selected(), out, x, &f);
    if parallel(x.len()) {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK))
            .for_each(|(o, x)| run(o, x));
    } else {
        run(out, x);
    }
}

/// `f` applied to every element of `x`, in a new standard-layout array (as
/// `x.mapv(f)`), its buffer reserved fallibly: `x` may be a broadcast view far larger
/// than the memory behind it.
///
/// # Errors
/// [`Error::Alloc`] naming `op` and the shape when the output cannot be allocated.
pub(crate) fn map_array<D: Dimension>(
    op: &'static str,
    x: ArrayView<'_, f32, D>,
    f: impl Fn(f32) -> f32 + Sync + Send,
) -> Result<Array<f32, D>> {
    let mut out = try_vec_with_capacity(op, x.len(), || format!("the output, x {:?}", x.shape()))?;
    // A contiguous `x` in another order (channels-last, say) keeps its layout: the
    // values are mapped in memory order and given `x`'s strides.
    let strides = same_strides(&x);
    let xs = match strides {
        Some(_) => x.as_slice_memory_order(),
        None => x.as_slice(),
    };
    match xs {
        // Rayon writes the indexed results straight into the reserved capacity.
        Some(xs) if parallel(xs.len()) => out.par_extend(xs.par_iter().map(|&v| f(v))),
        Some(xs) => out.extend(xs.iter().map(|&v| f(v))),
        None => out.extend(x.iter().map(|&v| f(v))),
    }
    let y = match strides {
        Some(st) => Array::from_shape_vec(x.raw_dim().strides(st), out),
        None => Array::from_shape_vec(x.raw_dim(), out),
    };
    Ok(y.expect("length matches the shape"))
}

/// `x`'s strides when it is contiguous in memory, not in standard layout, and its
/// strides are all non-negative (an array with them holds its elements in the same order).
fn same_strides<D: Dimension>(x: &ArrayView<'_, f32, D>) -> Option<D> {
    if x.is_standard_layout() || x.as_slice_memory_order().is_none() {
        return None;
    }
    let mut st = x.raw_dim();
    for (d, &s) in st.slice_mut().iter_mut().zip(x.strides()) {
        *d = usize::try_from(s).ok()?;
    }
    Some(st)
}

/// `f(x, dy)` element by element (paired by index, whatever the two layouts), in a new
/// standard-layout array reserved fallibly; `x` and `dy` have the same shape.
///
/// # Errors
/// [`Error::Alloc`] naming `op` and the shape when the output cannot be allocated.
pub(crate) fn zip_map_array<D: Dimension>(
    op: &'static str,
    x: ArrayView<'_, f32, D>,
    dy: ArrayView<'_, f32, D>,
    f: impl Fn(f32, f32) -> f32 + Sync + Send,
) -> Result<Array<f32, D>> {
    debug_assert_eq!(x.shape(), dy.shape());
    let mut out = try_vec_with_capacity(op, x.len(), || {
        format!("the input gradient, grad_out {:?}", dy.shape())
    })?;
    match (x.as_slice(), dy.as_slice()) {
        (Some(xs), Some(gs)) if parallel(xs.len()) => {
            out.par_extend(xs.par_iter().zip(gs.par_iter()).map(|(&v, &g)| f(v, g)))
        }
        (Some(xs), Some(gs)) => out.extend(xs.iter().zip(gs).map(|(&v, &g)| f(v, g))),
        _ => out.extend(x.iter().zip(dy.iter()).map(|(&v, &g)| f(v, g))),
    }
    Ok(Array::from_shape_vec(x.raw_dim(), out).expect("length matches the shape"))
}

/// `y = f(y)` in place, any layout.
pub(crate) fn update_array<D: Dimension>(
    mut y: ArrayViewMut<'_, f32, D>,
    f: impl Fn(f32) -> f32 + Sync + Send,
) {
    let run = |s: &mut [f32]| lanes::update(Kernel::selected(), s, &f);
    match y.as_slice_memory_order_mut() {
        Some(s) if parallel(s.len()) => s.par_chunks_mut(PAR_CHUNK).for_each(run),
        Some(s) => run(s),
        None => y.mapv_inplace(&f),
    }
}

/// `dy = f(x, dy)` in place, element by element; `x` and `dy` have the same shape.
pub(crate) fn update_array_with<D: Dimension>(
    mut dy: ArrayViewMut<'_, f32, D>,
    x: ArrayView<'_, f32, D>,
    f: impl Fn(f32, f32) -> f32 + Sync + Send,
) {
    debug_assert_eq!(dy.shape(), x.shape());
    let run = |g: &mut [f32], x: &[f32]| lanes::update_with(Kernel::selected(), g, x, &f);
    let same_layout = dy.strides() == x.strides();
    if let (true, Some(xs)) = (same_layout, x.as_slice_memory_order())
        && let Some(gs) = dy.as_slice_memory_order_mut()
    {
        if parallel(gs.len()) {
            gs.par_chunks_mut(PAR_CHUNK)
                .zip(xs.par_chunks(PAR_CHUNK))
                .for_each(|(g, x)| run(g, x));
        } else {
            run(gs, xs);
        }
        return;
    }
    Zip::from(dy).and(&x).for_each(|g, &v| *g = f(v, *g));
}

/// The ReLU of one value (`v <= 0` is false for NaN, so NaN passes through).
#[inline]
pub(crate) fn relu_value(v: f32) -> f32 {
    if v <= 0.0 { 0.0 } else { v }
}

/// The ReLU gradient: `g` where the input was positive (or NaN), else 0. `v` may be the
/// input or the output of the ReLU: `x <= 0` exactly when `relu(x) <= 0`.
#[inline]
pub(crate) fn relu_grad_value(v: f32, g: f32) -> f32 {
    if v <= 0.0 { 0.0 } else { g }
}

/// The leaky ReLU of one value.
#[inline]
pub(crate) fn leaky_relu_value(v: f32, negative_slope: f32) -> f32 {
    if v > 0.0 { v } else { v * negative_slope }
}

/// The leaky ReLU gradient: `g` where `v > 0`, else `negative_slope * g`. `v` may be the
/// input, or (for a slope that is not negative) the output: then `x > 0` exactly when
/// `leaky_relu(x) > 0`.
#[inline]
pub(crate) fn leaky_relu_grad_value(v: f32, g: f32, negative_slope: f32) -> f32 {
    if v > 0.0 { g } else { g * negative_slope }
}

/// The tanh of one value.
#[inline]
pub(crate) fn tanh_value(v: f32) -> f32 {
    v.tanh()
}

/// The tanh gradient from the output `y`: `g * (1 - y * y)`, as PyTorch's CPU kernel.
#[inline]
pub(crate) fn tanh_grad_value(y: f32, g: f32) -> f32 {
    g * (1.0 - y * y)
}

/// The logistic sigmoid of one value, `1 / (1 + exp(-v))` in f32 as PyTorch's CPU kernel
/// (0 for very negative `v`, 1 for very positive).
#[inline]
pub(crate) fn sigmoid_value(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// The sigmoid gradient from the output `y`: `g * (1 - y) * y`, as PyTorch's CPU kernel.
#[inline]
pub(crate) fn sigmoid_grad_value(y: f32, g: f32) -> f32 {
    g * (1.0 - y) * y
}

/// As [`check_same`], for the backwards that take the forward's output.
fn check_same_output<D: Dimension>(
    op: &'static str,
    y: &ArrayView<'_, f32, D>,
    dy: &ArrayView<'_, f32, D>,
) -> Result<()> {
    if y.shape() != dy.shape() {
        return Err(Error::shape(
            op,
            format!(
                "grad_out is {:?} but the output was {:?}",
                dy.shape(),
                y.shape()
            ),
        ));
    }
    Ok(())
}

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

/// `max(x, 0)` element-wise, as `torch.relu` (NaN stays NaN), in a new standard-layout
/// array.
///
/// # Errors
/// [`Error::Alloc`] when the output cannot be allocated (a broadcast `x` far larger than
/// the memory behind it).
pub fn relu<D: Dimension>(x: ArrayView<'_, f32, D>) -> Result<Array<f32, D>> {
    map_array("relu", x, relu_value)
}

/// Backward of [`relu`]: `dx = dy` where `x > 0` (or NaN), else 0, as PyTorch's
/// `threshold_backward`.
///
/// # Errors
/// [`Error::Shape`] when `dy` and `x` differ in shape; [`Error::Alloc`] when the
/// gradient cannot be allocated.
pub fn relu_backward<D: Dimension>(
    x: ArrayView<'_, f32, D>,
    dy: ArrayView<'_, f32, D>,
) -> Result<Array<f32, D>> {
    check_same("relu", &x, &dy)?;
    zip_map_array("relu", x, dy, relu_grad_value)
}

/// `x` where `x > 0`, else `negative_slope * x`, as `torch.nn.functional.leaky_relu`.
/// Any slope is allowed, including 0 and slopes above 1.
///
/// # Errors
/// [`Error::Alloc`] when the output cannot be allocated.
pub fn leaky_relu<D: Dimension>(
    x: ArrayView<'_, f32, D>,
    negative_slope: f32,
) -> Result<Array<f32, D>> {
    map_array("leaky_relu", x, |v| leaky_relu_value(v, negative_slope))
}

/// Backward of [`leaky_relu`]: `dx = dy` where `x > 0`, else `negative_slope * dy`
/// (PyTorch's `leaky_relu_backward`).
///
/// # Errors
/// [`Error::Shape`] when `dy` and `x` differ in shape; [`Error::Alloc`] when the
/// gradient cannot be allocated.
pub fn leaky_relu_backward<D: Dimension>(
    x: ArrayView<'_, f32, D>,
    dy: ArrayView<'_, f32, D>,
    negative_slope: f32,
) -> Result<Array<f32, D>> {
    check_same("leaky_relu", &x, &dy)?;
    zip_map_array("leaky_relu", x, dy, |v, g| {
        leaky_relu_grad_value(v, g, negative_slope)
    })
}

/// `tanh(x)` element-wise, as `torch.tanh`, in a new standard-layout array.
///
/// # Errors
/// [`Error::Alloc`] when the output cannot be allocated.
pub fn tanh<D: Dimension>(x: ArrayView<'_, f32, D>) -> Result<Array<f32, D>> {
    map_array("tanh", x, tanh_value)
}

/// Backward of [`tanh`] from its **output** `y`: `dx = dy * (1 - y^2)`, as PyTorch's
/// `tanh_backward(grad_output, output)`.
///
/// # Errors
/// [`Error::Shape`] when `dy` and `y` differ in shape; [`Error::Alloc`] when the
/// gradient cannot be allocated.
pub fn tanh_backward<D: Dimension>(
    y: ArrayView<'_, f32, D>,
    dy: ArrayView<'_, f32, D>,
) -> Result<Array<f32, D>> {
    check_same_output("tanh", &y, &dy)?;
    zip_map_array("tanh", y, dy, tanh_grad_value)
}

/// The logistic sigmoid `1 / (1 + exp(-x))` element-wise, as `torch.sigmoid`, in a new
/// standard-layout array.
///
/// # Errors
/// [`Error::Alloc`] when the output cannot be allocated.
pub fn sigmoid<D: Dimension>(x: ArrayView<'_, f32, D>) -> Result<Array<f32, D>> {
    map_array("sigmoid", x, sigmoid_value)
}

/// Backward of [`sigmoid`] from its **output** `y`: `dx = dy * (1 - y) * y`, as
/// PyTorch's `sigmoid_backward(grad_output, output)`.
///
/// # Errors
/// [`Error::Shape`] when `dy` and `y` differ in shape; [`Error::Alloc`] when the
/// gradient cannot be allocated.
pub fn sigmoid_backward<D: Dimension>(
    y: ArrayView<'_, f32, D>,
    dy: ArrayView<'_, f32, D>,
) -> Result<Array<f32, D>> {
    check_same_output("sigmoid", &y, &dy)?;
    zip_map_array("sigmoid", y, dy, sigmoid_grad_value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn tanh_and_sigmoid_saturate_and_keep_nan() {
        let x = array![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -200.0,
            200.0,
            0.0
        ];
        let t = tanh(x.view()).unwrap();
        assert!(t[0].is_nan());
        assert_eq!(t.slice(ndarray::s![1..]), array![1.0, -1.0, -1.0, 1.0, 0.0]);
        let s = sigmoid(x.view()).unwrap();
        assert!(s[0].is_nan());
        assert_eq!(s.slice(ndarray::s![1..]), array![1.0, 0.0, 0.0, 1.0, 0.5]);
        // Saturated outputs have zero gradient; the middle has the largest.
        let dy = ndarray::Array1::from_elem(6, 1.0f32);
        let dt = tanh_backward(t.view(), dy.view()).unwrap();
        assert_eq!(dt.slice(ndarray::s![1..]), array![0.0, 0.0, 0.0, 0.0, 1.0]);
        let ds = sigmoid_backward(s.view(), dy.view()).unwrap();
        assert_eq!(ds.slice(ndarray::s![1..]), array![0.0, 0.0, 0.0, 0.0, 0.25]);
        let e = tanh_backward(t.view(), array![1.0f32].view()).unwrap_err();
        assert!(e.to_string().contains("the output was [6]"), "{e}");
        assert!(sigmoid_backward(s.view(), array![1.0f32].view()).is_err());
    }

    #[test]
    fn nan_and_infinity_propagate() {
        let x = array![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, 2.0];
        let y = relu(x.view()).unwrap();
        assert!(y[0].is_nan());
        assert_eq!(
            y.slice(ndarray::s![1..]),
            array![f32::INFINITY, 0.0, 0.0, 2.0]
        );
        let y = leaky_relu(x.view(), 0.5).unwrap();
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
