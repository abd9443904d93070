//! Pooling, forward and backward: max, average, adaptive max and adaptive average.
//!
//! Every pool runs the same way: the window of each output row and column is worked out
//! once per call ([`Span`], from [`fixed_spans`] for kernel / stride / padding pools and
//! [`adaptive_spans`] for adaptive ones: the one place the geometry is computed), then a
//! plain loop over each (N, C) plane reads the input rows in place. Planes are
//! independent, so they run on rayon above a size threshold and the result does not
//! depend on the thread count.

use crate::error::{Error, Result};

use super::activation::PAR_CHUNK;

mod adaptive;
mod avg;
mod max;
mod max_window;

pub use adaptive::{
    adaptive_avg_pool2d, adaptive_avg_pool2d_backward, adaptive_max_pool2d,
    adaptive_max_pool2d_backward, adaptive_max_pool2d_with_indices,
};
pub use avg::{AvgPool2dOptions, avg_pool2d, avg_pool2d_backward};
pub use max::{
    MaxPool2dOptions, max_pool2d, max_pool2d_backward, max_pool2d_into, max_pool2d_with_indices,
};

/// The input positions one output row (or column) reads: taps `start`, `start + step`,
/// ... below `end`, all inside the input (`start >= end`: none, a window wholly in the
/// padding), and `padded`, the window's length counting padding up to the padded
/// input's end (average pooling's `count_include_pad` divisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub padded: usize,
}

impl Span {
    fn is_empty(self) -> bool {
        self.start >= self.end
    }

    /// Taps inside the input with dilation 1.
    fn len(self) -> usize {
        self.end.saturating_sub(self.start)
    }
}

/// Output size of a pool along one dimension, as PyTorch's `pooling_output_shape`:
/// `floor((size + 2 p - d (k - 1) - 1 [+ s - 1 with ceil_mode]) / s) + 1`, and with
/// `ceil_mode` one less when the last window would start past the input and its left
/// padding (`(out - 1) s >= size + p`). `None` when that is below 1.
pub(crate) fn pool_out_size(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let (size, k, s, p, d) = (
        size as i128,
        kernel as i128,
        stride as i128,
        padding as i128,
        dilation as i128,
    );
    let num = size + 2 * p - d * (k - 1) - 1 + if ceil_mode { s - 1 } else { 0 };
    let mut out = num.div_euclid(s) + 1;
    if ceil_mode && (out - 1) * s >= size + p {
        out -= 1;
    }
    if out < 1 {
        return None;
    }
    usize::try_from(out).ok()
}

/// The windows of `out` positions of a kernel `k`, stride `s`, padding `p`, dilation `d`
/// pool over `size` inputs, PyTorch's CPU kernels' bounds: the window of output `i`
/// starts at `i s - p`, its taps inside the input are the first tap at or after 0 up to
/// `min(i s - p + d (k - 1) + 1, size)`; `padded` is `min(i s - p + k, size + p) -
/// (i s - p)` (used with `d = 1` only).
pub(crate) fn fixed_spans(
    size: usize,
    out: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
) -> Vec<Span> {
    let (size_i, k, s, p, d) = (size as i128, k as i128, s as i128, p as i128, d as i128);
    (0..out as i128)
        .map(|i| {
            let raw = i * s - p;
            let end = (raw + d * (k - 1) + 1).min(size_i);
            let start = if raw < 0 {
                raw + (-raw + d - 1) / d * d
            } else {
                raw
            };
            let padded = (raw + k).min(size_i + p) - raw;
            // `start` may lie past the input for a window wholly in the right padding.
            let start = start.clamp(0, size_i) as usize;
            let end = end.clamp(0, size_i) as usize;
            Span {
                start,
                end,
                padded: padded.max(0) as usize,
            }
        })
        .collect()
}

/// Window `[start, end)` of output index `i` for an input of `size` adaptively pooled to
/// `out`: `start = floor(i size / out)`, `end = ceil((i + 1) size / out)` (PyTorch's).
#[inline]
pub(crate) fn window(i: usize, size: usize, out: usize) -> (usize, usize) {
    let start = i * size / out;
    let end = ((i + 1) * size).div_ceil(out);
    (start, end)
}

/// The windows of adaptive pooling `size` inputs to `out` (see [`window`]).
pub(crate) fn adaptive_spans(size: usize, out: usize) -> Vec<Span> {
    (0..out)
        .map(|i| {
            let (start, end) = window(i, size, out);
            Span {
                start,
                end,
                padded: end - start,
            }
        })
        .collect()
}

/// The fewest planes a rayon task takes: all of them (one task, on the calling thread)
/// when the whole batch is at most a couple of [`PAR_CHUNK`]s of work, else about one
/// chunk's worth. Planes are independent: the split changes no result.
pub(crate) fn min_planes(planes: usize, work_per_plane: usize) -> usize {
    let work_per_plane = work_per_plane.max(1);
    if planes.saturating_mul(work_per_plane) > 2 * PAR_CHUNK {
        (PAR_CHUNK / work_per_plane).max(1)
    } else {
        planes.max(1)
    }
}

/// Checks an (N, C, H, W) pooling input as PyTorch does: channels, height and width
/// nonzero (an empty batch is fine).
pub(crate) fn check_input(op: &'static str, shape: &[usize]) -> Result<()> {
    if shape[1] == 0 || shape[2] == 0 || shape[3] == 0 {
        return Err(Error::shape(
            op,
            format!(
                "x {shape:?} must have nonzero channels, height and width (only the batch \
                 may be empty)"
            ),
        ));
    }
    Ok(())
}

/// Checks a kernel / stride / padding / dilation configuration: each positive, padding
/// at most half the kernel (PyTorch's rule, `pad <= kernel / 2`).
pub(crate) fn check_window(
    op: &'static str,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
) -> Result<()> {
    for (what, v) in [
        ("kernel size", kernel),
        ("stride", stride),
        ("dilation", dilation),
    ] {
        if v.0 == 0 || v.1 == 0 {
            return Err(Error::config(
                op,
                format!("{what} must be positive, got {v:?}"),
            ));
        }
    }
    if padding.0 > kernel.0 / 2 || padding.1 > kernel.1 / 2 {
        return Err(Error::config(
            op,
            format!(
                "padding {padding:?} must be at most half the kernel size {kernel:?} \
                 (pad <= kernel / 2, as PyTorch)"
            ),
        ));
    }
    Ok(())
}

/// The output size of a kernel pool on `x_shape`, or an error naming the shapes.
pub(crate) fn out_size(
    op: &'static str,
    x_shape: &[usize],
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    ceil_mode: bool,
) -> Result<(usize, usize)> {
    let oh = pool_out_size(
        x_shape[2], kernel.0, stride.0, padding.0, dilation.0, ceil_mode,
    );
    let ow = pool_out_size(
        x_shape[3], kernel.1, stride.1, padding.1, dilation.1, ceil_mode,
    );
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok((oh, ow)),
        _ => Err(Error::shape(
            op,
            format!(
                "x {x_shape:?} is too small for kernel {kernel:?}, stride {stride:?}, padding \
                 {padding:?}, dilation {dilation:?}: the output would be empty"
            ),
        )),
    }
}

/// Checks a backward call's `grad_out` against the forward input shape and the output
/// size the forward gave.
pub(crate) fn check_grad(
    op: &'static str,
    x_shape: (usize, usize, usize, usize),
    grad: &[usize],
    out: (usize, usize),
) -> Result<()> {
    let want = [x_shape.0, x_shape.1, out.0, out.1];
    if grad != want {
        return Err(Error::shape(
            op,
            format!(
                "grad_out is {grad:?} but the input {:?} pools to {want:?}",
                [x_shape.0, x_shape.1, x_shape.2, x_shape.3]
            ),
        ));
    }
    // `x_shape` is the caller's: dx must be allocatable (a larger Vec panics).
    let shape = [x_shape.0, x_shape.1, x_shape.2, x_shape.3];
    let elems = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if elems.is_none_or(|e| e > isize::MAX as usize / 4) {
        return Err(Error::shape(
            op,
            format!("input shape {shape:?} is too large to allocate its gradient"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_windows_follow_pytorch() {
        // 7 -> 3: [0, 3), [2, 5), [4, 7) (overlapping).
        let w: Vec<_> = (0..3).map(|i| window(i, 7, 3)).collect();
        assert_eq!(w, [(0, 3), (2, 5), (4, 7)]);
        // 2 -> 5 (output larger than input): every window holds at least one element.
        let w: Vec<_> = (0..5).map(|i| window(i, 2, 5)).collect();
        assert_eq!(w, [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]);
        assert!(w.iter().all(|&(a, b)| b > a));
    }

    #[test]
    fn output_sizes_follow_pytorch() {
        // floor mode: 7 with k2 s2 -> 3; ceil mode -> 4 (last window starts at 6 < 7).
        assert_eq!(pool_out_size(7, 2, 2, 0, 1, false), Some(3));
        assert_eq!(pool_out_size(7, 2, 2, 0, 1, true), Some(4));
        // ceil mode: 6 with k2 s2 p1 -> ceil(7 / 2) + 1 = 5 would start at 8 - 1 = 7,
        // past the input and its left padding (8 >= 6 + 1): dropped, 4.
        assert_eq!(pool_out_size(6, 2, 2, 1, 1, true), Some(4));
        assert_eq!(pool_out_size(9, 3, 2, 1, 1, false), Some(5));
        // dilation: 7 with k3 d2 -> 7 - 5 + 1 = 3.
        assert_eq!(pool_out_size(7, 3, 1, 0, 2, false), Some(3));
        assert_eq!(pool_out_size(2, 3, 1, 0, 1, false), None);
    }

    #[test]
    fn fixed_spans_clip_to_the_input_and_count_padding_to_its_end() {
        // 7 with k3 s2 p1, ceil mode: 4 outputs starting at -1, 1, 3, 5.
        let s = fixed_spans(7, 4, 3, 2, 1, 1);
        let got: Vec<_> = s.iter().map(|s| (s.start, s.end, s.padded)).collect();
        // The last window [5, 8) is clipped to 7 inputs and 8 = 7 + 1 with padding.
        assert_eq!(got, [(0, 2, 3), (1, 4, 3), (3, 6, 3), (5, 7, 3)]);
        // 6 with k2 s2 ceil mode: the last window [6, 8) would run past 6 + 0.
        let s = fixed_spans(7, 4, 2, 2, 0, 1);
        assert_eq!((s[3].start, s[3].end, s[3].padded), (6, 7, 1));
        // Dilation 2, padding 1, k3: taps at -1, 1, 3 -> the first inside is 1.
        let s = fixed_spans(5, 2, 3, 2, 1, 2);
        assert_eq!((s[0].start, s[0].end), (1, 4));
        // k2 d2 p1 on one input: taps -1 and 1, both outside: empty.
        let s = fixed_spans(1, 1, 2, 1, 1, 2);
        assert!(s[0].is_empty());
    }
}
