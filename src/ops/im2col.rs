//! im2col and its adjoint col2im for one image, sharing one index helper.
//!
//! The column matrix of an image `x` (C, H, W) is `(C * kh * kw, out_h * out_w)`, row
//! `(c * kh + i) * kw + j`, column `oy * out_w + ox`, holding
//! `x[c, oy * sh - ph + i * dh, ox * sw - pw + j * dw]` (zero in the padding). Rows of a
//! group are contiguous, so a grouped conv takes one row block per group.

use super::geometry::Conv2dGeometry;

/// Input coordinate read by output position `o` through kernel tap `k`, or `None` in the
/// padding: `o * stride + k * dilation - padding`.
#[inline]
fn source(
    o: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    size: usize,
) -> Option<usize> {
    // Cannot overflow: the geometry checked that the dilated kernel fits the padded input.
    let pos = (o * stride + k * dilation).checked_sub(padding)?;
    (pos < size).then_some(pos)
}

/// Fills `cols` (C * kh * kw, out_h * out_w, row-major) from one image `x` (C, H, W,
/// row-major). Every element of `cols` is written, so it may hold anything before.
pub(crate) fn im2col(x: &[f32], geo: &Conv2dGeometry, cols: &mut [f32]) {
    let (h, w) = (geo.in_h, geo.in_w);
    let (kh, kw) = geo.kernel;
    let (oh, ow) = (geo.out_h, geo.out_w);
    let (sh, sw) = geo.options.stride;
    let (ph, pw) = geo.options.padding;
    let (dh, dw) = geo.options.dilation;
    let l = oh * ow;
    debug_assert_eq!(x.len(), geo.in_channels * h * w);
    debug_assert_eq!(cols.len(), geo.col_rows() * l);
    if l == 0 {
        return;
    }
    for (row, out_row) in cols.chunks_exact_mut(l).enumerate() {
        let j = row % kw;
        let i = (row / kw) % kh;
        let c = row / (kw * kh);
        let plane = &x[c * h * w..(c + 1) * h * w];
        for (oy, seg) in out_row.chunks_exact_mut(ow).enumerate() {
            match source(oy, i, sh, ph, dh, h) {
                None => seg.fill(0.0),
                Some(iy) => {
                    let xrow = &plane[iy * w..(iy + 1) * w];
                    for (ox, v) in seg.iter_mut().enumerate() {
                        *v = source(ox, j, sw, pw, dw, w).map_or(0.0, |ix| xrow[ix]);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every element of `cols` into the input position it
/// was read from (`dx += col2im(cols)`), dropping the padding. `dx` is (C, H, W).
pub(crate) fn col2im(cols: &[f32], geo: &Conv2dGeometry, dx: &mut [f32]) {
    let (h, w) = (geo.in_h, geo.in_w);
    let (kh, kw) = geo.kernel;
    let (oh, ow) = (geo.out_h, geo.out_w);
    let (sh, sw) = geo.options.stride;
    let (ph, pw) = geo.options.padding;
    let (dh, dw) = geo.options.dilation;
    let l = oh * ow;
    debug_assert_eq!(dx.len(), geo.in_channels * h * w);
    debug_assert_eq!(cols.len(), geo.col_rows() * l);
    if l == 0 {
        return;
    }
    for (row, col_row) in cols.chunks_exact(l).enumerate() {
        let j = row % kw;
        let i = (row / kw) % kh;
        let c = row / (kw * kh);
        let plane = &mut dx[c * h * w..(c + 1) * h * w];
        for (oy, seg) in col_row.chunks_exact(ow).enumerate() {
            if let Some(iy) = source(oy, i, sh, ph, dh, h) {
                let xrow = &mut plane[iy * w..(iy + 1) * w];
                for (ox, &v) in seg.iter().enumerate() {
                    if let Some(ix) = source(ox, j, sw, pw, dw, w) {
                        xrow[ix] += v;
                    }
                }
            }
        }
    }
}
