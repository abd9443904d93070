//! Max pooling: `max_pool2d` with its argmax indices, and the backward that routes each
//! gradient to its argmax (shared with adaptive max pooling).

use std::mem::MaybeUninit;

use ndarray::{Array4, ArrayView4, ArrayViewMut4};
use rayon::prelude::*;

use super::max_window::{MAX_WINDOW_TAPS, Windows, max_plane_windows};
use super::{Span, check_grad, check_input, check_window, fixed_spans, min_planes, out_size};
use crate::error::{Error, Result};
use crate::limits::{
    Slot, checked_len, filled_output, try_output, try_standard_layout, try_vec_with_capacity,
    try_zeros,
};

const OP: &str = "max_pool2d";

/// Kernel, stride, padding, dilation and `ceil_mode` of a 2-d max pool, each pair
/// `(h, w)`: `torch.nn.MaxPool2d`'s arguments.
///
/// [`MaxPool2dOptions::new`] gives PyTorch's defaults: stride = kernel, padding 0,
/// dilation 1, floor mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxPool2dOptions {
    /// Window size `(h, w)`; must be positive.
    pub kernel: (usize, usize),
    /// Step between windows; must be positive. Default: the kernel size.
    pub stride: (usize, usize),
    /// Implicit `-inf` padding on both sides; at most half the kernel. Default `(0, 0)`.
    pub padding: (usize, usize),
    /// Spacing between window taps; must be positive. Default `(1, 1)`.
    pub dilation: (usize, usize),
    /// Round the output size up instead of down (the last window must still start inside
    /// the input or its left padding). Default `false`.
    pub ceil_mode: bool,
}

impl MaxPool2dOptions {
    /// A `kernel` window with PyTorch's defaults: stride = kernel, no padding,
    /// dilation 1, floor mode.
    pub fn new(kernel: (usize, usize)) -> Self {
        MaxPool2dOptions {
            kernel,
            stride: kernel,
            padding: (0, 0),
            dilation: (1, 1),
            ceil_mode: false,
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

    /// Sets the dilation `(h, w)`.
    pub fn with_dilation(mut self, dilation: (usize, usize)) -> Self {
        self.dilation = dilation;
        self
    }

    /// Sets `ceil_mode`.
    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// Checks what can be checked without an input: kernel, stride and dilation
    /// positive, padding at most half the kernel (PyTorch's rule).
    ///
    /// # Errors
    /// [`Error::Config`] naming `op` and the offending value.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        check_window(op, self.kernel, self.stride, self.padding, self.dilation)
    }

    /// The output size `(oh, ow)` for an `(H, W)` input, as PyTorch computes it, or
    /// `None` when the window does not fit.
    pub fn output_size(&self, input: (usize, usize)) -> Option<(usize, usize)> {
        let k = self.kernel;
        let one = |size, i: usize| {
            let pick = |p: (usize, usize)| if i == 0 { p.0 } else { p.1 };
            super::pool_out_size(
                size,
                pick(k),
                pick(self.stride),
                pick(self.padding),
                pick(self.dilation),
                self.ceil_mode,
            )
        };
        Some((one(input.0, 0)?, one(input.1, 1)?))
    }
}

/// `torch.nn.functional.max_pool2d(x, ...)` on (N, C, H, W): the largest value of each
/// window (padding never wins; NaN does).
///
/// # Errors
/// As [`max_pool2d_with_indices`].
pub fn max_pool2d(x: ArrayView4<'_, f32>, options: &MaxPool2dOptions) -> Result<Array4<f32>> {
    window_forward::<false>(x, options, None).map(|(y, _)| y.expect("a new output"))
}

/// [`max_pool2d`] writing into the caller's `out` (N, C, out_h, out_w), which a loop
/// reuses from call to call instead of allocating an output each time. `out` is
/// overwritten (its contents do not matter); the values are the same, bit for bit, as
/// [`max_pool2d`]'s.
///
/// # Errors
/// As [`max_pool2d`], and [`Error::Shape`] when `out` is not the output's shape or not
/// in standard layout.
pub fn max_pool2d_into(
    x: ArrayView4<'_, f32>,
    options: &MaxPool2dOptions,
    out: ArrayViewMut4<'_, f32>,
) -> Result<()> {
    window_forward::<false>(x, options, Some(out)).map(drop)
}

/// [`max_pool2d`] with `return_indices=True`: the output and, for each output, the flat
/// index `h * W + w` of its maximum within its (N, C) plane, as PyTorch returns them.
///
/// As PyTorch's CPU kernel, each window is scanned row by row: a value replaces the
/// maximum when it is larger or NaN, so ties go to the first maximum and a NaN wins
/// (the last NaN of the window). A window with every tap in the padding (possible only
/// with dilation) gives `-inf` and index `-1` (PyTorch gives an index outside the window
/// there); its gradient goes nowhere.
///
/// # Errors
/// [`Error::Config`] for a zero kernel, stride or dilation, or padding above half the
/// kernel; [`Error::Shape`] for zero channels, height or width, or an input too small
/// for the window; [`Error::Alloc`] when a buffer cannot be allocated.
pub fn max_pool2d_with_indices(
    x: ArrayView4<'_, f32>,
    options: &MaxPool2dOptions,
) -> Result<(Array4<f32>, Array4<i64>)> {
    let (y, idx) = window_forward::<true>(x, options, None)?;
    Ok((y.expect("a new output"), idx))
}

/// The forward of [`max_pool2d`] (`IDX = false`: the indices are empty),
/// [`max_pool2d_into`] (`out` given, `IDX = false`: the output is written there and
/// `None` returned) and [`max_pool2d_with_indices`], on the row-vectorised scan of
/// `max_window.rs`.
fn window_forward<const IDX: bool>(
    x: ArrayView4<'_, f32>,
    options: &MaxPool2dOptions,
    out: Option<ArrayViewMut4<'_, f32>>,
) -> Result<(Option<Array4<f32>>, Array4<i64>)> {
    options.validate(OP)?;
    check_input(OP, x.shape())?;
    let o = options;
    let (oh, ow) = out_size(
        OP,
        x.shape(),
        o.kernel,
        o.stride,
        o.padding,
        o.dilation,
        o.ceil_mode,
    )?;
    let (n, c, h, w) = x.dim();
    if let Some(out) = &out {
        super::super::check_out(
            OP,
            "out",
            out.shape(),
            &[n, c, oh, ow],
            out.is_standard_layout(),
        )?;
    }
    let rows = fixed_spans(h, oh, o.kernel.0, o.stride.0, o.padding.0, o.dilation.0);
    let cols = fixed_spans(w, ow, o.kernel.1, o.stride.1, o.padding.1, o.dilation.1);
    if o.kernel.0.saturating_mul(o.kernel.1) > MAX_WINDOW_TAPS {
        // Tap numbers past f32's exact integers: the scalar scan.
        let (y, idx) = max_forward(OP, x, &rows, &cols, o.dilation)?;
        return Ok(match out {
            Some(mut out) => {
                out.assign(&y);
                (None, idx)
            }
            None => (Some(y), idx),
        });
    }
    let win = Windows::new(w, &rows, &cols, o.kernel, o.stride, o.padding, o.dilation);
    let describe = |what: &str| format!("the {what} {:?} of x {:?}", [n, c, oh, ow], x.shape());
    let (hw, ohw) = (h * w, oh * ow);
    let len = checked_len(OP, &[n, c, oh, ow], || describe("output"))?;
    let y = match out {
        Some(out) => Err(out),
        None => Ok(try_vec_with_capacity::<f32>(OP, len, || {
            describe("output")
        })?),
    };
    let idx_shape = if IDX { (n, c, oh, ow) } else { (0, 0, 0, 0) };
    let idx_len = if IDX { len } else { 0 };
    let idx = try_vec_with_capacity::<i64>(OP, idx_len, || describe("indices"))?;
    let x = try_standard_layout(OP, x, || format!("a contiguous copy of x {:?}", x.shape()))?;
    // Per task: the phase rows of one plane and one output row's maxima and tap numbers.
    let scratch_len = win.scratch_len(h);
    try_vec_with_capacity::<f32>(OP, scratch_len, || {
        format!("the padded rows of one plane of x {:?}", x.shape())
    })?;
    let scan = Scan {
        xs: x.as_slice().expect("standard layout"),
        win: &win,
        hw,
        ohw,
        work: min_planes(n * c, ohw * o.kernel.0 * o.kernel.1 + hw),
        scratch_len,
    };
    let y = match y {
        Ok(y) => y,
        Err(mut out) => {
            let ys = out.as_slice_mut().expect("checked standard layout");
            scan.run::<IDX, f32, MaybeUninit<i64>>(ys, &mut []);
            return Ok((None, Array4::zeros((0, 0, 0, 0))));
        }
    };
    let mut idx = Some(idx);
    let mut indices = None;
    // SAFETY: `Scan::run` writes every element of the output (`max_plane_windows`
    // writes its plane in full; the `n * c` planes of `ohw` elements cover it; none
    // when `n` or the output is empty) and, when `IDX`, of the indices in the same way.
    let y = unsafe {
        filled_output(y, (n, c, oh, ow), |ys| {
            let idx = idx.take().expect("filled once");
            // SAFETY: as above.
            indices = Some(filled_output(idx, idx_shape, |is| {
                scan.run::<IDX, _, _>(ys, is)
            }));
        })
    };
    Ok((Some(y), indices.expect("filled")))
}

/// What the scan of every plane needs (see [`window_forward`]).
struct Scan<'a> {
    xs: &'a [f32],
    win: &'a Windows<'a>,
    hw: usize,
    ohw: usize,
    /// The fewest planes a parallel task takes.
    work: usize,
    scratch_len: usize,
}

impl Scan<'_> {
    /// Every plane's maxima into `ys` and, when `IDX`, their indices into `is`: every
    /// element of both written.
    fn run<const IDX: bool, S: Slot<f32>, I: Slot<i64>>(&self, ys: &mut [S], is: &mut [I]) {
        let (hw, ohw, win) = (self.hw, self.ohw, self.win);
        let ow = ohw / win.rows_len().max(1);
        let scratch = || {
            (
                vec![0.0f32; self.scratch_len],
                vec![0.0f32; ow],
                vec![0.0f32; ow],
            )
        };
        if IDX {
            ys.par_chunks_mut(ohw)
                .zip(is.par_chunks_mut(ohw))
                .zip(self.xs.par_chunks(hw))
                .with_min_len(self.work)
                .for_each_init(scratch, |(s, b, t), ((y, idx), x)| {
                    max_plane_windows::<true, S, I>(x, win, s, b, t, y, idx)
                });
        } else {
            ys.par_chunks_mut(ohw)
                .zip(self.xs.par_chunks(hw))
                .with_min_len(self.work)
                .for_each_init(scratch, |(s, b, t), (y, x)| {
                    max_plane_windows::<false, S, I>(x, win, s, b, t, y, &mut [])
                });
        }
    }
}

/// The max-pool forward over precomputed windows (also adaptive max pooling's).
pub(super) fn max_forward(
    op: &'static str,
    x: ArrayView4<'_, f32>,
    rows: &[Span],
    cols: &[Span],
    (dh, dw): (usize, usize),
) -> Result<(Array4<f32>, Array4<i64>)> {
    let (n, c, h, w) = x.dim();
    let (oh, ow) = (rows.len(), cols.len());
    let describe = |what: &str| format!("the {what} {:?} of x {:?}", [n, c, oh, ow], x.shape());
    let mut y: Array4<f32> = try_zeros(op, (n, c, oh, ow), || describe("output"))?;
    let mut idx: Array4<i64> = try_zeros(op, (n, c, oh, ow), || describe("indices"))?;
    let x = try_standard_layout(op, x, || format!("a contiguous copy of x {:?}", x.shape()))?;
    let xs = x.as_slice().expect("standard layout");
    let ys = y.as_slice_mut().expect("new array");
    let is = idx.as_slice_mut().expect("new array");
    let (hw, ohw) = (h * w, oh * ow);
    let taps = (rows.iter().map(|s| s.len()).max().unwrap_or(0))
        * (cols.iter().map(|s| s.len()).max().unwrap_or(0));
    ys.par_chunks_mut(ohw)
        .zip(is.par_chunks_mut(ohw))
        .zip(xs.par_chunks(hw))
        .with_min_len(min_planes(n * c, ohw * taps.max(1)))
        .for_each(|((y, idx), x)| max_plane(x, w, rows, cols, (dh, dw), y, idx));
    Ok((y, idx))
}

/// One plane: `y[i, j]` = the maximum over the taps of `rows[i] x cols[j]`, `idx` its
/// flat index (see [`max_pool2d_with_indices`] for ties, NaN and empty windows).
fn max_plane(
    x: &[f32],
    w: usize,
    rows: &[Span],
    cols: &[Span],
    (dh, dw): (usize, usize),
    y: &mut [f32],
    idx: &mut [i64],
) {
    let ow = cols.len();
    for (i, r) in rows.iter().enumerate() {
        let y = &mut y[i * ow..(i + 1) * ow];
        let idx = &mut idx[i * ow..(i + 1) * ow];
        for (j, c) in cols.iter().enumerate() {
            if r.is_empty() || c.is_empty() {
                y[j] = f32::NEG_INFINITY;
                idx[j] = -1;
                continue;
            }
            let mut best = f32::NEG_INFINITY;
            let mut at = r.start * w + c.start;
            for ih in (r.start..r.end).step_by(dh) {
                let row = &x[ih * w..(ih + 1) * w];
                for iw in (c.start..c.end).step_by(dw) {
                    let v = row[iw];
                    if v > best || v.is_nan() {
                        best = v;
                        at = ih * w + iw;
                    }
                }
            }
            y[j] = best;
            idx[j] = at as i64;
        }
    }
}

/// Backward of [`max_pool2d`]: `dx[n, c, index] += dy` for each output and its index
/// (the `indices` from [`max_pool2d_with_indices`]), in output order, so windows that
/// share a maximum add up. `x_shape` is the forward input's (N, C, H, W); an index of
/// `-1` (a window wholly in the padding) routes nothing.
///
/// # Errors
/// [`Error::Shape`] when `dy` and `indices` differ in shape, their batch or channels
/// differ from `x_shape`, or an index lies outside its `H x W` plane; [`Error::Alloc`]
/// when the input gradient cannot be allocated.
pub fn max_pool2d_backward(
    x_shape: (usize, usize, usize, usize),
    indices: ArrayView4<'_, i64>,
    dy: ArrayView4<'_, f32>,
) -> Result<Array4<f32>> {
    scatter_backward(OP, x_shape, indices, dy)
}

/// Routes `dy` to the indices (max and adaptive max pooling's backward).
pub(super) fn scatter_backward(
    op: &'static str,
    x_shape: (usize, usize, usize, usize),
    indices: ArrayView4<'_, i64>,
    dy: ArrayView4<'_, f32>,
) -> Result<Array4<f32>> {
    if indices.shape() != dy.shape() {
        return Err(Error::shape(
            op,
            format!(
                "indices are {:?} but grad_out is {:?}: they must match",
                indices.shape(),
                dy.shape()
            ),
        ));
    }
    let (_, _, oh, ow) = dy.dim();
    check_grad(op, x_shape, dy.shape(), (oh, ow))?;
    let (n, c, h, w) = x_shape;
    let hw = h * w;
    let mut dx: Array4<f32> = try_output(op, x_shape, || {
        format!(
            "the input gradient {:?} from grad_out {:?}",
            [n, c, h, w],
            dy.shape()
        )
    })?;
    let describe = |what: &'static str| move || format!("a contiguous copy of {what}");
    let dy = try_standard_layout(op, dy, describe("grad_out"))?;
    let indices = try_standard_layout(op, indices, describe("the indices"))?;
    let ohw = oh * ow;
    if hw == 0 || ohw == 0 {
        return Ok(dx);
    }
    // Each plane is checked as it is scattered: the first bad index found (by plane,
    // then position) is the error.
    let bad = dx
        .as_slice_mut()
        .expect("new array")
        .par_chunks_mut(hw)
        .zip(dy.as_slice().expect("standard layout").par_chunks(ohw))
        .zip(indices.as_slice().expect("standard layout").par_chunks(ohw))
        .enumerate()
        .with_min_len(min_planes(n * c, ohw + hw))
        .map(|(plane, ((dx, dy), idx))| {
            // Written before it is added to (see `try_output`).
            dx.fill(0.0);
            for (k, (&g, &i)) in dy.iter().zip(idx).enumerate() {
                match usize::try_from(i) {
                    Ok(i) if i < hw => dx[i] += g,
                    _ if i == -1 => {}
                    _ => return Some((plane * ohw + k, i)),
                }
            }
            None
        })
        .flatten()
        .min();
    if let Some((flat, bad)) = bad {
        let (plane, k) = (flat / ohw, flat % ohw);
        let at = [plane / c, plane % c, k / ow, k % ow];
        return Err(Error::shape(
            op,
            format!(
                "index {bad} at {at:?} is outside the {h} x {w} plane of input {:?}",
                [n, c, h, w]
            ),
        ));
    }
    Ok(dx)
}
