//! The pooling layers: `MaxPool2d`, `AvgPool2d`, `AdaptiveMaxPool2d` and
//! `AdaptiveAvgPool2d`.

use std::any::Any;

use ndarray::{ArcArrayD, Array4, ArrayD, ArrayView4, ArrayViewD, Ix4};

use super::{Layer, check_grad_shape, not_run, to_rank};
use crate::error::{Error, Result};
use crate::ops::{
    AvgPool2dOptions, MaxPool2dOptions, adaptive_avg_pool2d, adaptive_avg_pool2d_backward,
    adaptive_max_pool2d_backward, adaptive_max_pool2d_with_indices, avg_pool2d,
    avg_pool2d_backward, max_pool2d, max_pool2d_backward, max_pool2d_with_indices,
};

const OP: &str = "AdaptiveAvgPool2d";
const MAX_OP: &str = "MaxPool2d";
const AVG_OP: &str = "AvgPool2d";
const ADAPTIVE_MAX_OP: &str = "AdaptiveMaxPool2d";

/// `nn.AdaptiveAvgPool2d(output_size)` on (N, C, H, W) inputs, with PyTorch's window
/// rule. Keeps only the input shape for backward.
#[derive(Debug, Clone)]
pub struct AdaptiveAvgPool2d {
    output_size: (usize, usize),
    input_shape: Option<(usize, usize, usize, usize)>,
}

impl AdaptiveAvgPool2d {
    /// Pooling to `(oh, ow)`; `(1, 1)` is global average pooling.
    ///
    /// # Errors
    /// [`Error::Config`] when either output size is zero.
    pub fn new(output_size: (usize, usize)) -> Result<Self> {
        if output_size.0 == 0 || output_size.1 == 0 {
            return Err(Error::config(
                OP,
                format!("output size must be positive, got {output_size:?}"),
            ));
        }
        Ok(AdaptiveAvgPool2d {
            output_size,
            input_shape: None,
        })
    }

    /// The output size `(oh, ow)`.
    pub fn output_size(&self) -> (usize, usize) {
        self.output_size
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn name(&self) -> &'static str {
        OP
    }

    fn describe(&self) -> String {
        format!("AdaptiveAvgPool2d(output_size={:?})", self.output_size)
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = to_rank::<Ix4>(OP, "input", "(N, C, H, W)", x)?;
        let y = adaptive_avg_pool2d(x, self.output_size)?;
        self.input_shape = Some(x.dim());
        Ok(y.into_dyn())
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let shape = self.input_shape.ok_or_else(|| not_run(OP))?;
        let (oh, ow) = self.output_size;
        check_grad_shape(OP, grad_out.shape(), &[shape.0, shape.1, oh, ow])?;
        let dy = to_rank::<Ix4>(OP, "grad_out", "(N, C, oh, ow)", grad_out)?;
        Ok(adaptive_avg_pool2d_backward(shape, dy)?.into_dyn())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// What a max-pool layer keeps for backward: the input shape and the argmax indices.
#[derive(Debug, Clone)]
struct Argmax {
    x_shape: (usize, usize, usize, usize),
    indices: Array4<i64>,
}

/// `nn.MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode)` on (N, C, H, W)
/// inputs (see [`max_pool2d_with_indices`] for ties, NaN and the indices). Keeps the
/// argmax indices of the last forward for backward; [`MaxPool2d::indices`] gives them
/// (PyTorch's `return_indices=True`).
#[derive(Debug, Clone)]
pub struct MaxPool2d {
    options: MaxPool2dOptions,
    saved: Option<Argmax>,
}

impl MaxPool2d {
    /// A max pool with these options (`MaxPool2dOptions::new(kernel)` gives PyTorch's
    /// defaults: stride = kernel).
    ///
    /// # Errors
    /// [`Error::Config`] for a zero kernel, stride or dilation, or padding above half the
    /// kernel.
    pub fn new(options: MaxPool2dOptions) -> Result<Self> {
        options.validate(MAX_OP)?;
        Ok(MaxPool2d {
            options,
            saved: None,
        })
    }

    /// The options.
    pub fn options(&self) -> &MaxPool2dOptions {
        &self.options
    }

    /// The argmax indices of the last forward (flat `h * W + w` per plane, as PyTorch's
    /// `return_indices=True`), until [`Layer::clear_saved`].
    pub fn indices(&self) -> Option<&Array4<i64>> {
        self.saved.as_ref().map(|s| &s.indices)
    }
}

/// The functional backward of an argmax pool: input shape, indices, `grad_out`.
type ScatterBackward = fn(
    (usize, usize, usize, usize),
    ArrayView4<'_, i64>,
    ArrayView4<'_, f32>,
) -> Result<Array4<f32>>;

/// Backward of a layer that saved argmax indices.
fn argmax_backward(
    op: &'static str,
    saved: Option<&Argmax>,
    grad_out: ArrayViewD<'_, f32>,
    backward: ScatterBackward,
) -> Result<ArrayD<f32>> {
    let s = saved.ok_or_else(|| not_run(op))?;
    check_grad_shape(op, grad_out.shape(), s.indices.shape())?;
    let dy = to_rank::<Ix4>(op, "grad_out", "(N, C, oh, ow)", grad_out)?;
    Ok(backward(s.x_shape, s.indices.view(), dy)?.into_dyn())
}

impl Layer for MaxPool2d {
    fn name(&self) -> &'static str {
        MAX_OP
    }

    fn describe(&self) -> String {
        let o = &self.options;
        format!(
            "MaxPool2d(kernel_size={:?}, stride={:?}, padding={:?}, dilation={:?}, ceil_mode={})",
            o.kernel,
            o.stride,
            o.padding,
            o.dilation,
            py_bool(o.ceil_mode)
        )
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.saved = None;
        let x = to_rank::<Ix4>(MAX_OP, "input", "(N, C, H, W)", x)?;
        let (y, indices) = max_pool2d_with_indices(x, &self.options)?;
        self.saved = Some(Argmax {
            x_shape: x.dim(),
            indices,
        });
        Ok(y.into_dyn())
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        argmax_backward(MAX_OP, self.saved.as_ref(), grad_out, max_pool2d_backward)
    }

    /// The forward without indices (nothing is kept for a backward).
    fn infer(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        self.saved = None;
        let x = to_rank::<Ix4>(MAX_OP, "input", "(N, C, H, W)", x.view())?;
        Ok(max_pool2d(x, &self.options)?.into_dyn().into_shared())
    }

    fn clear_saved(&mut self) {
        self.saved = None;
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// `nn.AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad,
/// divisor_override)` on (N, C, H, W) inputs, with PyTorch's divisor rules (see
/// [`avg_pool2d`]). Keeps only the input shape for backward.
#[derive(Debug, Clone)]
pub struct AvgPool2d {
    options: AvgPool2dOptions,
    input_shape: Option<(usize, usize, usize, usize)>,
}

impl AvgPool2d {
    /// An average pool with these options (`AvgPool2dOptions::new(kernel)` gives
    /// PyTorch's defaults).
    ///
    /// # Errors
    /// [`Error::Config`] for a zero kernel or stride, padding above half the kernel, or
    /// a zero divisor override.
    pub fn new(options: AvgPool2dOptions) -> Result<Self> {
        options.validate(AVG_OP)?;
        Ok(AvgPool2d {
            options,
            input_shape: None,
        })
    }

    /// The options.
    pub fn options(&self) -> &AvgPool2dOptions {
        &self.options
    }
}

impl Layer for AvgPool2d {
    fn name(&self) -> &'static str {
        AVG_OP
    }

    fn describe(&self) -> String {
        let o = &self.options;
        let divisor = o
            .divisor_override
            .map_or("None".to_string(), |d| d.to_string());
        format!(
            "AvgPool2d(kernel_size={:?}, stride={:?}, padding={:?}, ceil_mode={}, \
             count_include_pad={}, divisor_override={divisor})",
            o.kernel,
            o.stride,
            o.padding,
            py_bool(o.ceil_mode),
            py_bool(o.count_include_pad)
        )
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.input_shape = None;
        let x = to_rank::<Ix4>(AVG_OP, "input", "(N, C, H, W)", x)?;
        let y = avg_pool2d(x, &self.options)?;
        self.input_shape = Some(x.dim());
        Ok(y.into_dyn())
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let shape = self.input_shape.ok_or_else(|| not_run(AVG_OP))?;
        let (oh, ow) = self
            .options
            .output_size((shape.2, shape.3))
            .ok_or_else(|| not_run(AVG_OP))?;
        check_grad_shape(AVG_OP, grad_out.shape(), &[shape.0, shape.1, oh, ow])?;
        let dy = to_rank::<Ix4>(AVG_OP, "grad_out", "(N, C, oh, ow)", grad_out)?;
        Ok(avg_pool2d_backward(shape, dy, &self.options)?.into_dyn())
    }

    fn clear_saved(&mut self) {
        self.input_shape = None;
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// `nn.AdaptiveMaxPool2d(output_size)` on (N, C, H, W) inputs, with PyTorch's window
/// rule; any output size, also larger than the input. Keeps the argmax indices of the
/// last forward for backward; [`AdaptiveMaxPool2d::indices`] gives them.
#[derive(Debug, Clone)]
pub struct AdaptiveMaxPool2d {
    output_size: (usize, usize),
    saved: Option<Argmax>,
}

impl AdaptiveMaxPool2d {
    /// Pooling to `(oh, ow)`; `(1, 1)` is global max pooling.
    ///
    /// # Errors
    /// [`Error::Config`] when either output size is zero.
    pub fn new(output_size: (usize, usize)) -> Result<Self> {
        if output_size.0 == 0 || output_size.1 == 0 {
            return Err(Error::config(
                ADAPTIVE_MAX_OP,
                format!("output size must be positive, got {output_size:?}"),
            ));
        }
        Ok(AdaptiveMaxPool2d {
            output_size,
            saved: None,
        })
    }

    /// The output size `(oh, ow)`.
    pub fn output_size(&self) -> (usize, usize) {
        self.output_size
    }

    /// The argmax indices of the last forward (flat `h * W + w` per plane), until
    /// [`Layer::clear_saved`].
    pub fn indices(&self) -> Option<&Array4<i64>> {
        self.saved.as_ref().map(|s| &s.indices)
    }
}

impl Layer for AdaptiveMaxPool2d {
    fn name(&self) -> &'static str {
        ADAPTIVE_MAX_OP
    }

    fn describe(&self) -> String {
        format!("AdaptiveMaxPool2d(output_size={:?})", self.output_size)
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.saved = None;
        let x = to_rank::<Ix4>(ADAPTIVE_MAX_OP, "input", "(N, C, H, W)", x)?;
        let (y, indices) = adaptive_max_pool2d_with_indices(x, self.output_size)?;
        self.saved = Some(Argmax {
            x_shape: x.dim(),
            indices,
        });
        Ok(y.into_dyn())
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        argmax_backward(
            ADAPTIVE_MAX_OP,
            self.saved.as_ref(),
            grad_out,
            adaptive_max_pool2d_backward,
        )
    }

    fn clear_saved(&mut self) {
        self.saved = None;
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Python's spelling of a boolean, for the PyTorch-style summaries.
fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}
