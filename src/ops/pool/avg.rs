//! Average pooling with a fixed window: `avg_pool2d` and its backward.

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use super::{Span, check_grad, check_input, check_window, fixed_spans, min_planes, out_size};
use crate::error::{Error, Result};
use crate::limits::{try_standard_layout, try_zeros};

const OP: &str = "avg_pool2d";

/// Kernel, stride, padding, `ceil_mode`, `count_include_pad` and `divisor_override` of a
/// 2-d average pool: `torch.nn.AvgPool2d`'s arguments.
///
/// [`AvgPool2dOptions::new`] gives PyTorch's defaults: stride = kernel, padding 0, floor
/// mode, `count_include_pad` true, no divisor override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AvgPool2dOptions {
    /// Window size `(h, w)`; must be positive.
    pub kernel: (usize, usize),
    /// Step between windows; must be positive. Default: the kernel size.
    pub stride: (usize, usize),
    /// Implicit zero padding on both sides; at most half the kernel. Default `(0, 0)`.
    pub padding: (usize, usize),
    /// Round the output size up instead of down (the last window must still start inside
    /// the input or its left padding). Default `false`.
    pub ceil_mode: bool,
    /// Divide by the window size counting the padding (up to the padded input's end:
    /// a window that `ceil_mode` runs past it counts only what lies inside), instead of
    /// the input elements in the window. Default `true`.
    pub count_include_pad: bool,
    /// Divide every window's sum by this instead; nonzero. Default `None`.
    pub divisor_override: Option<i64>,
}

impl AvgPool2dOptions {
    /// A `kernel` window with PyTorch's defaults.
    pub fn new(kernel: (usize, usize)) -> Self {
        AvgPool2dOptions {
            kernel,
            stride: kernel,
            padding: (0, 0),
            ceil_mode: false,
            count_include_pad: true,
            divisor_override: None,
        }
    }

    /// Sets the stride `(h, w)`.
    pub fn with_stride(mut self, stride: (usize, usize)) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the padding `(h, w)`.
    pub fn with_padding(mut self, padding: (usize, usize)) -> Self {
        self.padding = padding;
        self
    }

    /// Sets `ceil_mode`.
    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// Sets `count_include_pad`.
    pub fn with_count_include_pad(mut self, count_include_pad: bool) -> Self {
        self.count_include_pad = count_include_pad;
        self
    }

    /// Sets `divisor_override`.
    pub fn with_divisor_override(mut self, divisor: Option<i64>) -> Self {
        self.divisor_override = divisor;
        self
    }

    /// Checks what can be checked without an input: kernel and stride positive, padding
    /// at most half the kernel, a divisor override nonzero (PyTorch's rules).
    ///
    /// # Errors
    /// [`Error::Config`] naming `op` and the offending value.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        check_window(op, self.kernel, self.stride, self.padding, (1, 1))?;
        if self.divisor_override == Some(0) {
            return Err(Error::config(
                op,
                "divisor_override must be nonzero, got Some(0)",
            ));
        }
        Ok(())
    }

    /// The output size `(oh, ow)` for an `(H, W)` input, as PyTorch computes it, or
    /// `None` when the window does not fit.
    pub fn output_size(&self, input: (usize, usize)) -> Option<(usize, usize)> {
        let (k, s, p, c) = (self.kernel, self.stride, self.padding, self.ceil_mode);
        Some((
            super::pool_out_size(input.0, k.0, s.0, p.0, 1, c)?,
            super::pool_out_size(input.1, k.1, s.1, p.1, 1, c)?,
        ))
    }

    /// The divisor of a window with rows `r` and columns `c`.
    fn divisor(&self, r: Span, c: Span) -> i64 {
        match self.divisor_override {
            Some(d) => d,
            None if self.count_include_pad => (r.padded * c.padded) as i64,
            None => (r.len() * c.len()) as i64,
        }
    }

    fn spans(&self, h: usize, w: usize, (oh, ow): (usize, usize)) -> (Vec<Span>, Vec<Span>) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        (
            fixed_spans(h, oh, k.0, s.0, p.0, 1),
            fixed_spans(w, ow, k.1, s.1, p.1, 1),
        )
    }
}

/// `torch.nn.functional.avg_pool2d(x, ...)` on (N, C, H, W): each window's sum (in f32,
/// row by row, as PyTorch's CPU kernel) divided by the divisor: `divisor_override` if
/// set, else the window's size counting padding up to the padded input's end
/// (`count_include_pad`), else the input elements in it.
///
/// # Errors
/// [`Error::Config`] for a zero kernel or stride, padding above half the kernel, or a
/// zero divisor override; [`Error::Shape`] for zero channels, height or width, or an
/// input too small for the window; [`Error::Alloc`] when a buffer cannot be allocated.
pub fn avg_pool2d(x: ArrayView4<'_, f32>, options: &AvgPool2dOptions) -> Result<Array4<f32>> {
    options.validate(OP)?;
    check_input(OP, x.shape())?;
    let o = options;
    let (oh, ow) = out_size(
        OP,
        x.shape(),
        o.kernel,
        o.stride,
        o.padding,
        (1, 1),
        o.ceil_mode,
    )?;
    let (n, c, h, w) = x.dim();
    let (rows, cols) = o.spans(h, w, (oh, ow));
    let mut y: Array4<f32> = try_zeros(OP, (n, c, oh, ow), || {
        format!("the output {:?} of x {:?}", [n, c, oh, ow], x.shape())
    })?;
    let x = try_standard_layout(OP, x, || format!("a contiguous copy of x {:?}", x.shape()))?;
    let (hw, ohw) = (h * w, oh * ow);
    let taps = o.kernel.0.saturating_mul(o.kernel.1).min(hw);
    y.as_slice_mut()
        .expect("new array")
        .par_chunks_mut(ohw)
        .zip(x.as_slice().expect("standard layout").par_chunks(hw))
        .with_min_len(min_planes(n * c, ohw * taps))
        .for_each(|(y, x)| {
            for (i, &r) in rows.iter().enumerate() {
                for (j, &cs) in cols.iter().enumerate() {
                    let out = &mut y[i * ow + j];
                    if r.is_empty() || cs.is_empty() {
                        *out = 0.0;
                        continue;
                    }
                    let mut sum = 0.0f32;
                    for ih in r.start..r.end {
                        for &v in &x[ih * w + cs.start..ih * w + cs.end] {
                            sum += v;
                        }
                    }
                    *out = sum / o.divisor(r, cs) as f32;
                }
            }
        });
    Ok(y)
}

/// Backward of [`avg_pool2d`] with the same options: each `dy` element divided by its
/// window's divisor is added to every input element of the window (in output order,
/// overlapping windows adding up). `x_shape` is the forward input's (N, C, H, W).
///
/// # Errors
/// As [`avg_pool2d`] for the options and `x_shape`; [`Error::Shape`] when `dy` is not
/// the shape the forward gave; [`Error::Alloc`] when the input gradient cannot be
/// allocated.
pub fn avg_pool2d_backward(
    x_shape: (usize, usize, usize, usize),
    dy: ArrayView4<'_, f32>,
    options: &AvgPool2dOptions,
) -> Result<Array4<f32>> {
    options.validate(OP)?;
    let (n, c, h, w) = x_shape;
    let shape = [n, c, h, w];
    check_input(OP, &shape)?;
    let o = options;
    let (oh, ow) = out_size(
        OP,
        &shape,
        o.kernel,
        o.stride,
        o.padding,
        (1, 1),
        o.ceil_mode,
    )?;
    check_grad(OP, x_shape, dy.shape(), (oh, ow))?;
    let (rows, cols) = o.spans(h, w, (oh, ow));
    let mut dx: Array4<f32> = try_zeros(OP, x_shape, || {
        format!(
            "the input gradient {shape:?} from grad_out {:?}",
            dy.shape()
        )
    })?;
    let dy = try_standard_layout(OP, dy, || {
        format!("a contiguous copy of grad_out {:?}", dy.shape())
    })?;
    let (hw, ohw) = (h * w, oh * ow);
    let taps = o.kernel.0.saturating_mul(o.kernel.1).min(hw);
    dx.as_slice_mut()
        .expect("new array")
        .par_chunks_mut(hw)
        .zip(dy.as_slice().expect("standard layout").par_chunks(ohw))
        .with_min_len(min_planes(n * c, ohw * taps))
        .for_each(|(dx, dy)| {
            for (i, &r) in rows.iter().enumerate() {
                for (j, &cs) in cols.iter().enumerate() {
                    if r.is_empty() || cs.is_empty() {
                        continue;
                    }
                    let share = dy[i * ow + j] / o.divisor(r, cs) as f32;
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
