//! The max-pool forward for kernel / stride / padding / dilation windows: a scan that
//! runs along whole output rows, so the compiler vectorises it.
//!
//! Each (N, C) plane is first copied into its *phase rows*: every input row, padded
//! with `-inf` on both sides, split by column modulo the stride (`phase q` holds padded
//! columns `q, q + s, q + 2 s, ...`). Tap `(dr, dc)` of outputs `j = 0, 1, ...` of an
//! output row then reads consecutive elements of one phase row, and the scan of a window
//! (row by row, left to right: PyTorch's order) becomes, for each tap in that order,
//! `best[j] = v[j] if v[j] > best[j] or v[j] is NaN`, over the whole output row at once.
//! That is the scalar kernel's rule for every output, so the values, the ties (first
//! maximum) and NaN (the last NaN wins) are the same; the padding's `-inf` never
//! replaces anything. Input rows outside the plane are skipped (they would be all
//! padding). An output whose taps are all `-inf` or padding (no tap ever replaced the
//! start value) takes the scalar rule's answer: `-inf` at its first tap inside the
//! input, or index `-1` when it has none.

use super::Span;
use crate::limits::Slot;

/// Per-call constants of the scan: the window geometry and the phase-row layout.
pub(super) struct Windows<'a> {
    /// Input width.
    w: usize,
    /// Output rows' and columns' windows (for the rows' input range and the fix-up).
    rows: &'a [Span],
    cols: &'a [Span],
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    /// The phases the taps read (at most `kw` of the stride's `sw`), in order.
    phases: Vec<usize>,
    /// Per kernel column `dc`: its phase's slot in `phases` and its offset in the row.
    taps: Vec<(usize, usize)>,
    /// Length of each phase row: enough for the last output's last tap.
    plen: usize,
}

impl<'a> Windows<'a> {
    /// The scan's constants for an input `w` wide, output windows `rows` x `cols`
    /// (from `fixed_spans` with the same kernel, stride, padding and dilation).
    pub fn new(
        w: usize,
        rows: &'a [Span],
        cols: &'a [Span],
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
    ) -> Self {
        let (kw, sw, dw) = (kernel.1, stride.1, dilation.1);
        let mut phases: Vec<usize> = (0..kw).map(|dc| dc * dw % sw).collect();
        phases.sort_unstable();
        phases.dedup();
        let taps = (0..kw)
            .map(|dc| {
                let off = dc * dw;
                let slot = phases
                    .binary_search(&(off % sw))
                    .expect("every tap's phase is listed");
                (slot, off / sw)
            })
            .collect();
        let plen = cols.len() + (kw - 1) * dw / sw + 1;
        Windows {
            w,
            rows,
            cols,
            kernel,
            stride,
            padding,
            dilation,
            phases,
            taps,
            plen,
        }
    }

    /// Output rows.
    pub fn rows_len(&self) -> usize {
        self.rows.len()
    }

    /// Elements of the phase-row buffer of one plane of `h` rows: at most
    /// `h * kw * (ow + kw * dw / sw + 1)`, about the input plane's size or less.
    pub fn scratch_len(&self, h: usize) -> usize {
        h * self.phases.len() * self.plen
    }
}

/// Most taps per window the scan takes: its tap numbers are f32 lanes, exact up to
/// 2^24. Larger windows run on the scalar scan of `max.rs`.
pub(super) const MAX_WINDOW_TAPS: usize = 1 << 24;

/// "No tap replaced the start value" in the tap-number lanes.
const NONE: f32 = -1.0;

/// All ones when `v` replaces the maximum `best` (`v > best` or `v` is NaN), else zero.
/// As a bit mask, not a `bool`, with [`select`]: the compiler turns an `if` on a `bool`
/// into a conditional store per lane, a branch that random data mispredicts half the
/// time (measured: 2.3x slower on normal data than on patterned data); the masks
/// become compares and blends.
#[inline(always)]
fn mask(v: f32, best: f32) -> u32 {
    0u32.wrapping_sub(u32::from((v > best) | v.is_nan()))
}

/// `a` where `mask` is all ones, `b` where it is zero.
#[inline(always)]
fn select(mask: u32, a: f32, b: f32) -> f32 {
    f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// One plane: writes every element of `y` (oh x ow) and, when `IDX`, of `idx` (the flat
/// input index of each maximum). `scratch` holds at least [`Windows::scratch_len`]
/// elements, `best` and `best_t` at least `ow`; all three are overwritten.
pub(super) fn max_plane_windows<const IDX: bool, S: Slot<f32>, I: Slot<i64>>(
    x: &[f32],
    win: &Windows<'_>,
    scratch: &mut [f32],
    best: &mut [f32],
    best_t: &mut [f32],
    y: &mut [S],
    idx: &mut [I],
) {
    let w = win.w;
    let h = x.len() / w;
    let (kh, kw) = win.kernel;
    let (sh, sw) = win.stride;
    let (ph, pw) = win.padding;
    let (dh, dw) = win.dilation;
    let (oh, ow) = (win.rows.len(), win.cols.len());
    let plen = win.plen;
    let np = win.phases.len();
    // Phase rows: slot `k` of input row `r` at `scratch[(r * np + k) * plen..]` holds
    // the padded columns `phases[k] + pos * sw`, `-inf` outside the input.
    let scratch = &mut scratch[..h * np * plen];
    for (r, row) in x.chunks_exact(w).enumerate() {
        let slots = &mut scratch[r * np * plen..(r + 1) * np * plen];
        for (&q, out) in win.phases.iter().zip(slots.chunks_exact_mut(plen)) {
            // Positions `pos` whose column `pos * sw + q - pw` lies in `[0, w)`.
            let lo = pw.saturating_sub(q).div_ceil(sw).min(plen);
            let hi = (w + pw).saturating_sub(q).div_ceil(sw).clamp(lo, plen);
            out[..lo].fill(f32::NEG_INFINITY);
            out[hi..].fill(f32::NEG_INFINITY);
            if lo == hi {
                continue;
            }
            let first = lo * sw + q - pw;
            if sw == 1 {
                out[lo..hi].copy_from_slice(&row[first..first + hi - lo]);
            } else {
                let row = &row[first..first + (hi - lo - 1) * sw + 1];
                for (k, o) in out[lo..hi].iter_mut().enumerate() {
                    *o = row[k * sw];
                }
            }
        }
    }
    let (best, best_t) = (&mut best[..ow], &mut best_t[..ow]);
    for i in 0..oh {
        best.fill(f32::NEG_INFINITY);
        if IDX {
            best_t.fill(NONE);
        }
        for dr in 0..kh {
            let Some(r) = (i * sh + dr * dh).checked_sub(ph).filter(|&r| r < h) else {
                continue;
            };
            for (dc, &(slot, base)) in win.taps.iter().enumerate() {
                let start = (r * np + slot) * plen + base;
                let v = &scratch[start..start + ow];
                if IDX {
                    // The tap number as an f32 (exact below 2^24): one lane type with
                    // the values, so the two selects vectorise together.
                    let t = (dr * kw + dc) as f32;
                    for ((b, bt), &v) in best.iter_mut().zip(best_t.iter_mut()).zip(v) {
                        let take = mask(v, *b);
                        *b = select(take, v, *b);
                        *bt = select(take, t, *bt);
                    }
                } else {
                    for (b, &v) in best.iter_mut().zip(v) {
                        *b = select(mask(v, *b), v, *b);
                    }
                }
            }
        }
        for (out, &b) in y[i * ow..(i + 1) * ow].iter_mut().zip(best.iter()) {
            out.set(b);
        }
        if IDX {
            let idx = &mut idx[i * ow..(i + 1) * ow];
            let r = win.rows[i];
            for (j, (&t, out)) in best_t.iter().zip(idx.iter_mut()).enumerate() {
                out.set(if t == NONE {
                    // Every tap -inf or padding: the scalar rule's first tap inside the
                    // input, or none.
                    let c = win.cols[j];
                    if r.start >= r.end || c.start >= c.end {
                        -1
                    } else {
                        (r.start * w + c.start) as i64
                    }
                } else {
                    let t = t as usize;
                    let (dr, dc) = (t / kw, t % kw);
                    let ih = i * sh + dr * dh - ph;
                    let iw = j * sw + dc * dw - pw;
                    (ih * w + iw) as i64
                });
            }
        }
    }
}
