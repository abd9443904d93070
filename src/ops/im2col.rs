//! im2col and its adjoint col2im over a range of output positions of one image, sharing
//! one index helper.
//!
//! The column matrix of an image `x` (C, H, W) is `(C * kh * kw, out_h * out_w)`, row
//! `(c * kh + i) * kw + j`, column `oy * out_w + ox`, holding
//! `x[c, oy * sh - ph + i * dh, ox * sw - pw + j * dw]` (zero in the padding). Rows of a
//! group are contiguous, so a grouped conv takes one row block per group. Both functions
//! work on the columns `l0..l1` only, so the conv paths can tile the output positions
//! and keep the column buffer small.
//!
//! These, and the index map [`Im2colMap`], are the lowering of the `Columns` conv
//! algorithm (`conv/columns.rs`); [`valid_range`] also serves the phase planes of
//! `conv/phase.rs`.

use super::geometry::Conv2dGeometry;

/// Output positions `ox` (along one axis, of `out` positions) whose tap `k` lands inside
/// the input of `size`: the range `lo..hi` of `ox` with
/// `0 <= ox * stride + k * dilation - padding < size`.
#[inline]
pub(crate) fn valid_range(
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    size: usize,
    out: usize,
) -> (usize, usize) {
    let off = k * dilation;
    let lo = padding.saturating_sub(off).div_ceil(stride);
    let hi = (size + padding).saturating_sub(off).div_ceil(stride);
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// Walks the pieces of columns `l0..l1` of the column matrix: for every row
/// `(c, i, j)` and every output row `oy` the range touches, calls
/// `f(row, c, j, (lo, hi), iy, (ox0, ox1), col)` with `iy` the input row (`None` in the
/// padding), `lo..hi` the output columns whose tap `j` lands inside the input,
/// `ox0..ox1` the output columns of the piece and `col` its first column relative to
/// `l0`. Index arithmetic is hoisted out of the loops: tiny images have many short
/// pieces.
#[inline]
#[allow(clippy::type_complexity)]
fn for_each_segment(
    geo: &Conv2dGeometry,
    l0: usize,
    l1: usize,
    mut f: impl FnMut(usize, usize, usize, (usize, usize), Option<usize>, (usize, usize), usize),
) {
    let (kh, kw) = geo.kernel;
    let (sh, sw) = geo.options.stride;
    let (ph, pw) = geo.options.padding;
    let (dh, dw) = geo.options.dilation;
    let ow = geo.out_w;
    if ow == 0 || l0 >= l1 {
        return;
    }
    let (oy0, first_ox) = (l0 / ow, l0 % ow);
    let oy1 = (l1 - 1) / ow + 1;
    let mut row = 0;
    for c in 0..geo.in_channels {
        for i in 0..kh {
            for j in 0..kw {
                let valid = valid_range(j, sw, pw, dw, geo.in_w, ow);
                let (mut ox0, mut col) = (first_ox, 0);
                for oy in oy0..oy1 {
                    let ox1 = ow.min(ox0 + (l1 - l0 - col));
                    let iy = (oy * sh + i * dh)
                        .checked_sub(ph)
                        .filter(|&iy| iy < geo.in_h);
                    f(row, c, j, valid, iy, (ox0, ox1), col);
                    col += ox1 - ox0;
                    ox0 = 0;
                }
                row += 1;
            }
        }
    }
}

/// Fills columns `l0..l1` of the column matrix of one image `x` (C, H, W, row-major)
/// into `cols`: row `r` of the matrix goes to `cols[r * ld..r * ld + (l1 - l0)]`. Every
/// one of those elements is written, so `cols` may hold anything before.
pub(crate) fn im2col_range(
    x: &[f32],
    geo: &Conv2dGeometry,
    l0: usize,
    l1: usize,
    cols: &mut [f32],
    ld: usize,
) {
    let (h, w) = (geo.in_h, geo.in_w);
    let (_, sw) = geo.options.stride;
    let (_, pw) = geo.options.padding;
    let (_, dw) = geo.options.dilation;
    debug_assert_eq!(x.len(), geo.in_channels * h * w);
    for_each_segment(geo, l0, l1, |row, c, j, (lo, hi), iy, (ox0, ox1), col| {
        let dst = &mut cols[row * ld + col..row * ld + col + (ox1 - ox0)];
        let Some(iy) = iy else {
            dst.fill(0.0);
            return;
        };
        let xrow = &x[(c * h + iy) * w..(c * h + iy + 1) * w];
        let (lo, hi) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1));
        dst[..lo - ox0].fill(0.0);
        dst[hi - ox0..].fill(0.0);
        if hi > lo {
            let ix0 = lo * sw + j * dw - pw;
            let mid = &mut dst[lo - ox0..hi - ox0];
            if sw == 1 {
                mid.copy_from_slice(&xrow[ix0..ix0 + (hi - lo)]);
            } else {
                for (d, &v) in mid.iter_mut().zip(xrow[ix0..].iter().step_by(sw)) {
                    *d = v;
                }
            }
        }
    });
}

/// The adjoint of [`im2col_range`]: adds columns `l0..l1` of a column matrix, row `r` at
/// `cols[r * ld..]`, into the input positions they were read from (`dx += col2im`),
/// dropping the padding. `dx` is one image (C, H, W).
pub(crate) fn col2im_range(
    cols: &[f32],
    ld: usize,
    geo: &Conv2dGeometry,
    l0: usize,
    l1: usize,
    dx: &mut [f32],
) {
    let (h, w) = (geo.in_h, geo.in_w);
    let (_, sw) = geo.options.stride;
    let (_, pw) = geo.options.padding;
    let (_, dw) = geo.options.dilation;
    debug_assert_eq!(dx.len(), geo.in_channels * h * w);
    for_each_segment(geo, l0, l1, |row, c, j, (lo, hi), iy, (ox0, ox1), col| {
        let Some(iy) = iy else { return };
        let src = &cols[row * ld + col..row * ld + col + (ox1 - ox0)];
        let xrow = &mut dx[(c * h + iy) * w..(c * h + iy + 1) * w];
        let (lo, hi) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1));
        if hi > lo {
            let ix0 = lo * sw + j * dw - pw;
            let mid = &src[lo - ox0..hi - ox0];
            if sw == 1 {
                for (d, &v) in xrow[ix0..ix0 + (hi - lo)].iter_mut().zip(mid) {
                    *d += v;
                }
            } else {
                for (d, &v) in xrow[ix0..].iter_mut().step_by(sw).zip(mid) {
                    *d += v;
                }
            }
        }
    });
}

/// The im2col of a small image as an index map: `idx[r * L + l]` is the offset in the
/// image (C, H, W) that column `l` of row `r` reads, or `u32::MAX` in the padding. Built
/// once per conv; gathering through it beats [`im2col_range`] when output rows are only
/// a few elements long (for 4x4 outputs, 4x fewer cycles per element).
#[derive(Debug, Clone)]
pub(crate) struct Im2colMap {
    idx: Vec<u32>,
    l: usize,
}

impl Im2colMap {
    /// The map of `geo`, or `None` when the image is larger than `max_entries` columns
    /// times rows or its offsets do not fit in `u32`.
    pub(crate) fn new(geo: &Conv2dGeometry, max_entries: usize) -> Option<Self> {
        let (k, l) = (geo.col_rows(), geo.col_cols());
        let image = geo.in_channels * geo.in_h * geo.in_w;
        if k * l > max_entries || u32::try_from(image).is_err() || l == 0 {
            return None;
        }
        let (h, w) = (geo.in_h, geo.in_w);
        let (_, sw) = geo.options.stride;
        let (_, pw) = geo.options.padding;
        let (_, dw) = geo.options.dilation;
        let mut idx = vec![u32::MAX; k * l];
        for_each_segment(geo, 0, l, |row, c, j, (lo, hi), iy, (ox0, ox1), col| {
            let Some(iy) = iy else { return };
            let dst = &mut idx[row * l + col..row * l + col + (ox1 - ox0)];
            for ox in lo.max(ox0)..hi.min(ox1) {
                let ix = ox * sw + j * dw - pw;
                // Fits: checked against `image` above.
                dst[ox - ox0] = ((c * h + iy) * w + ix) as u32;
            }
        });
        Some(Im2colMap { idx, l })
    }

    /// Writes the whole column matrix of image `x`, row `r` at `cols[r * ld..][..L]`.
    pub(crate) fn gather(&self, x: &[f32], cols: &mut [f32], ld: usize) {
        for (r, src) in self.idx.chunks_exact(self.l).enumerate() {
            let dst = &mut cols[r * ld..r * ld + self.l];
            for (d, &i) in dst.iter_mut().zip(src) {
                *d = x.get(i as usize).copied().unwrap_or(0.0);
            }
        }
    }

    /// The adjoint of [`Im2colMap::gather`]: `dx += col2im(cols)`.
    pub(crate) fn scatter_add(&self, cols: &[f32], ld: usize, dx: &mut [f32]) {
        for (r, src) in self.idx.chunks_exact(self.l).enumerate() {
            for (&v, &i) in cols[r * ld..r * ld + self.l].iter().zip(src) {
                if let Some(d) = dx.get_mut(i as usize) {
                    *d += v;
                }
            }
        }
    }
}
