//! The depthwise algorithm: one input channel per group (`groups == C`, `O = m * C` for
//! a channel multiplier `m`), as the first half of a MobileNet block. Each output
//! channel reads one input plane, so there is no reduction over channels for a GEMM to
//! do: every pass is a plain loop whose inner loop runs along a contiguous output row,
//! which the compiler vectorises.
//!
//! Each input plane is copied once into a zero-padded scratch plane laid out by stride
//! phase ([`Padded`]): padded row `r` holds its columns `p, p + sw, p + 2 sw, ...` side
//! by side for each phase `p < sw`, so the run a tap reads for one output row,
//! `xpad[r][j * sw + dc]` for `j < out_w`, is contiguous whatever the stride (for stride
//! 1 the layout is the plain padded plane).
//!
//! - [`forward`]: per (image, input channel), for each of the `m` output channels and
//!   output rows, `y_row = bias + sum_tap w[tap] * run(tap)`, a block of up to 32
//!   outputs kept in registers across the taps. Planes are disjoint, so any split over
//!   threads gives the same bits.
//! - [`input_grad`]: for stride 1, a gather ([`Gather`]): the forward's row kernel over
//!   `dy` zero-padded by the dilated kernel's extent, the kernel flipped and the `m`
//!   output channels as more taps, each `dx` row written once. Strided convs take the
//!   transposed scatter, `dxpad_run(tap) += w[tap] * dy_row`, into a padded plane of
//!   the input's layout, whose interior is then copied to `dx`.
//! - [`weight_grad`]: per input channel, over the chunk's images in order: for each
//!   output channel and tap, a block of columns of `sum_rows dy_row * run(tap)` summed
//!   over the image's rows in order in registers, then added to that tap's row-long
//!   accumulator (so the products vectorise along the row with no horizontal
//!   reduction); each accumulator is summed in column order, in f64, at the end. The
//!   order is fixed by the shape, so the result does not depend on the thread count;
//!   the channels run in parallel, each writing its own rows of `dW`.
//! - [`gradients`]: both, per input channel, in one task.
//!
//! The plane kernels are compiled for the instruction set of the plan's GEMM kernel
//! (`isa`): the same source, `mul` then `add` (never fused), so every version gives the
//! same bits.
//!
//! The bias gradient is the shared `bias_partial` of `conv/mod.rs`, as for every
//! algorithm.

use std::cell::RefCell;

use ndarray::parallel::prelude::*;
use ndarray::{Array2, ArrayView1, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::slice::ParallelSliceMut;

use super::common::{OP, Operands, resize, shape_err, with_scratch, zeroed_partial};
use crate::error::{Error, Result};
use crate::gemm::Kernel;
use crate::ops::geometry::Conv2dGeometry;

/// One input channel per group: `groups == C` (then `O` is a multiple of `C`, as groups
/// divide both), any kernel, stride, padding and dilation.
pub(super) fn supports(geo: &Conv2dGeometry) -> bool {
    geo.options.groups == geo.in_channels && geo.out_channels.is_multiple_of(geo.in_channels)
}

/// Scratch of one worker: the padded input plane, the padded input-gradient plane, and
/// the weight gradient's row accumulators.
#[derive(Default)]
struct Scratch {
    xpad: Vec<f32>,
    dxpad: Vec<f32>,
    acc: Vec<f32>,
}

thread_local! {
    /// Each thread's scratch, reused across calls (fresh planes per call cost page
    /// faults and zeroing). Taken out while in use, so a re-entrant call starts afresh.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// The layout of one zero-padded plane split by column stride phase: `hp` rows of
/// `sw` phases of `wq` columns each.
#[derive(Debug, Clone, Copy)]
struct Padded {
    hp: usize,
    sw: usize,
    wq: usize,
    /// Floats per padded row, `sw * wq`.
    row: usize,
    ph: usize,
    pw: usize,
    w: usize,
}

impl Padded {
    /// The layout for `geo`. The padded sizes fit in `usize` (the geometry checked
    /// them); a row that saturates fails in [`Padded::reserve`].
    fn new(geo: &Conv2dGeometry) -> Padded {
        let (ph, pw) = geo.options.padding;
        let sw = geo.options.stride.1;
        let wq = (geo.in_w + 2 * pw).div_ceil(sw);
        Padded {
            hp: geo.in_h + 2 * ph,
            sw,
            wq,
            row: sw.saturating_mul(wq),
            ph,
            pw,
            w: geo.in_w,
        }
    }

    /// Resizes `buf` to one padded plane, fallibly (far padding may not fit in memory).
    fn reserve(&self, buf: &mut Vec<f32>, geo: &Conv2dGeometry) -> Result<()> {
        resize(
            buf,
            &[self.hp, self.row],
            "a padded plane of the depthwise path",
            geo,
        )
    }

    /// Where padded column `col` of padded row `r` lives.
    #[inline]
    fn at(&self, r: usize, col: usize) -> usize {
        r * self.row + (col % self.sw) * self.wq + col / self.sw
    }

    /// The padded columns of phase `p` that hold input columns: `(first index in the
    /// phase, first input column)`, each next one `sw` input columns on.
    #[inline]
    fn phase_start(&self, p: usize) -> (usize, usize) {
        // The first padded column >= pw congruent to p modulo sw.
        let c0 = self.pw + (p + self.sw - self.pw % self.sw) % self.sw;
        ((c0 - p) / self.sw, c0 - self.pw)
    }

    /// Writes the plane `x` (H x W) into `buf` (one padded plane), zeros around it.
    fn fill(&self, x: &[f32], buf: &mut [f32]) {
        buf.fill(0.0);
        for (h, xr) in x.chunks_exact(self.w).enumerate() {
            let r = (h + self.ph) * self.row;
            if self.sw == 1 {
                copy_row(&mut buf[r + self.pw..r + self.pw + self.w], xr);
                continue;
            }
            for p in 0..self.sw {
                let (q0, c0) = self.phase_start(p);
                let dst = &mut buf[r + p * self.wq + q0..r + (p + 1) * self.wq];
                for (d, &v) in dst.iter_mut().zip(xr.iter().skip(c0).step_by(self.sw)) {
                    *d = v;
                }
            }
        }
    }

    /// Copies the interior of `buf` (one padded plane) into `dx` (H x W).
    fn extract(&self, buf: &[f32], dx: &mut [f32]) {
        for (h, dr) in dx.chunks_exact_mut(self.w).enumerate() {
            let r = (h + self.ph) * self.row;
            if self.sw == 1 {
                copy_row(dr, &buf[r + self.pw..r + self.pw + self.w]);
                continue;
            }
            for p in 0..self.sw {
                let (q0, c0) = self.phase_start(p);
                let src = &buf[r + p * self.wq + q0..r + (p + 1) * self.wq];
                for (d, &v) in dr.iter_mut().skip(c0).step_by(self.sw).zip(src) {
                    *d = v;
                }
            }
        }
    }
}

/// `dst = src` in blocks of 16 floats: inline moves, where `copy_from_slice` calls
/// `memcpy` once per short row (10% of the backward of dw_64).
#[inline]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (d, s) in (&mut d).zip(&mut s) {
        let d: &mut [f32; 16] = d.try_into().expect("16 floats");
        *d = *<&[f32; 16]>::try_from(s).expect("16 floats");
    }
    for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = s;
    }
}

/// The taps of one conv in a padded plane: the run tap `t` reads for output row `i`
/// starts at `i * step + off[t]`.
struct Taps {
    /// Floats between the runs of consecutive output rows, `sh * row`.
    step: usize,
    /// Per tap, its offset from the run of tap 0 (kernel row and column).
    off: Vec<usize>,
    ow: usize,
}

impl Taps {
    fn new(geo: &Conv2dGeometry, pad: &Padded) -> Taps {
        let (kh, kw) = geo.kernel;
        let (sh, _) = geo.options.stride;
        let (dh, dw) = geo.options.dilation;
        let off = (0..kh * kw)
            .map(|t| pad.at((t / kw) * dh, (t % kw) * dw))
            .collect();
        Taps {
            step: sh * pad.row,
            off,
            ow: geo.out_w,
        }
    }

    /// The start of the run of tap `t` for output row `i`.
    #[inline(always)]
    fn start(&self, i: usize, t: usize) -> usize {
        i * self.step + self.off[t]
    }

    fn len(&self) -> usize {
        self.off.len()
    }
}

/// The column blocks of a row of `n`, as `(first column, width, lanes to skip)`: blocks
/// of 32, 16 and 8 columns (fixed-size loops the compiler turns into vector
/// operations), then the last `< 8` columns as one more block of 8 ending at `n` whose
/// first lanes (columns already done) the caller skips when `overlap` (for callers
/// that do not read what the block before wrote: a vector load over a just-stored
/// block stalls store forwarding, which doubled the input gradient's time), else one
/// column at a time. Every column sees the same arithmetic whichever block it falls in.
#[inline(always)]
fn blocks(n: usize, overlap: bool) -> impl Iterator<Item = (usize, usize, usize)> {
    let mut j = 0;
    std::iter::from_fn(move || {
        let rest = n - j;
        let (at, width, skip) = match rest {
            0 => return None,
            32.. => (j, 32, 0),
            16.. => (j, 16, 0),
            8.. => (j, 8, 0),
            _ if overlap && n >= 8 => (n - 8, 8, 8 - rest),
            _ => (j, 1, 0),
        };
        j = at + width;
        Some((at, width, skip))
    })
}

/// `dst = src` but its first `skip` lanes: a whole-block store (no `memcpy` call) when
/// `skip` is 0.
#[inline(always)]
fn store<const B: usize>(dst: &mut [f32], src: &[f32; B], skip: usize) {
    let dst: &mut [f32; B] = dst.try_into().expect("B floats");
    if skip == 0 {
        *dst = *src;
    } else {
        for (d, &v) in dst.iter_mut().zip(src).skip(skip) {
            *d = v;
        }
    }
}

/// `y[j] += a * x[j]` along a row. Each element sees the same `mul` then `add` (never
/// fused) whatever block it falls in.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[inline(always)]
    fn block<const B: usize>(y: &mut [f32], a: f32, x: &[f32], j: usize, skip: usize) {
        let mut yb: [f32; B] = y[j..j + B].try_into().expect("B floats");
        let xb: &[f32; B] = x[j..j + B].try_into().expect("B floats");
        for (y, &x) in yb.iter_mut().zip(xb) {
            *y += a * x;
        }
        store(&mut y[j..j + B], &yb, skip);
    }
    let x = &x[..y.len()];
    for (j, width, skip) in blocks(y.len(), false) {
        match width {
            32 => block::<32>(y, a, x, j, skip),
            16 => block::<16>(y, a, x, j, skip),
            8 => block::<8>(y, a, x, j, skip),
            _ => block::<1>(y, a, x, j, skip),
        }
    }
}

/// One output row of the forward pass: `yr[j] = b + sum_t w[t] * xpad[off[t] + j]`,
/// the taps in order, in blocks of columns kept in registers across the taps.
#[inline(always)]
fn conv_row(yr: &mut [f32], b: f32, wo: &[f32], xpad: &[f32], off: &[usize]) {
    #[inline(always)]
    fn block<const B: usize>(
        yr: &mut [f32],
        b: f32,
        wo: &[f32],
        xpad: &[f32],
        off: &[usize],
        j: usize,
        skip: usize,
    ) {
        let mut acc = [b; B];
        for (&wt, &o) in wo.iter().zip(off) {
            let s = o + j;
            let xb: &[f32; B] = xpad[s..s + B].try_into().expect("B floats");
            for (a, &x) in acc.iter_mut().zip(xb) {
                *a += wt * x;
            }
        }
        store(&mut yr[j..j + B], &acc, skip);
    }
    for (j, width, skip) in blocks(yr.len(), true) {
        match width {
            32 => block::<32>(yr, b, wo, xpad, off, j, skip),
            16 => block::<16>(yr, b, wo, xpad, off, j, skip),
            8 => block::<8>(yr, b, wo, xpad, off, j, skip),
            _ => block::<1>(yr, b, wo, xpad, off, j, skip),
        }
    }
}

/// The weight-gradient terms of one tap over one image: `acc[j] += sum_i dy[i][j] *
/// xpad[i * step + j]`, the rows in order, in blocks of columns kept in registers
/// across the rows.
#[inline(always)]
fn tap_grad(acc: &mut [f32], dy: &[f32], xpad: &[f32], step: usize) {
    #[inline(always)]
    fn block<const B: usize>(
        acc: &mut [f32],
        dy: &[f32],
        xpad: &[f32],
        step: usize,
        j: usize,
        skip: usize,
    ) {
        let ow = acc.len();
        let mut sum = [0.0f32; B];
        for (i, dyr) in dy.chunks_exact(ow).enumerate() {
            let s = i * step + j;
            let xb: &[f32; B] = xpad[s..s + B].try_into().expect("B floats");
            let db: &[f32; B] = dyr[j..j + B].try_into().expect("B floats");
            for ((a, &x), &d) in sum.iter_mut().zip(xb).zip(db) {
                *a += d * x;
            }
        }
        let ab: &mut [f32; B] = (&mut acc[j..j + B]).try_into().expect("B floats");
        if skip == 0 {
            for (a, &v) in ab.iter_mut().zip(&sum) {
                *a += v;
            }
        } else {
            for (a, &v) in ab.iter_mut().zip(&sum).skip(skip) {
                *a += v;
            }
        }
    }
    for (j, width, skip) in blocks(acc.len(), true) {
        match width {
            32 => block::<32>(acc, dy, xpad, step, j, skip),
            16 => block::<16>(acc, dy, xpad, step, j, skip),
            8 => block::<8>(acc, dy, xpad, step, j, skip),
            _ => block::<1>(acc, dy, xpad, step, j, skip),
        }
    }
}

/// The forward of one input plane: `yp` holds its `m` output planes, `w` their weights
/// (`m * kk`), `bias` their biases.
#[inline(always)]
fn forward_plane(xpad: &[f32], yp: &mut [f32], w: &[f32], bias: Option<&[f32]>, k: &Kern) {
    let kk = k.taps.len();
    for (j, yo) in yp.chunks_exact_mut(k.l).enumerate() {
        let wo = &w[j * kk..(j + 1) * kk];
        let b = bias.map_or(0.0, |b| b[j]);
        for (i, yr) in yo.chunks_exact_mut(k.taps.ow).enumerate() {
            let base = &xpad[i * k.taps.step..];
            conv_row(yr, b, wo, base, &k.taps.off);
        }
    }
}

/// The input gradient of one input plane into `dxpad` (one padded plane, zeroed): the
/// transposed scatter of its `m` output planes of `dy`.
#[inline(always)]
fn input_grad_plane(dxpad: &mut [f32], dy: &[f32], w: &[f32], k: &Kern) {
    let (kk, ow) = (k.taps.len(), k.taps.ow);
    for (j, dyo) in dy.chunks_exact(k.l).enumerate() {
        let wo = &w[j * kk..(j + 1) * kk];
        for (i, dyr) in dyo.chunks_exact(ow).enumerate() {
            for (t, &wt) in wo.iter().enumerate() {
                let s0 = k.taps.start(i, t);
                axpy(&mut dxpad[s0..s0 + ow], wt, dyr);
            }
        }
    }
}

/// The input gradient of one input plane of a stride-1 conv, as a gather: each row of
/// `dx` is [`conv_row`] over the `m` zero-padded planes of `dy` in `dypad` (rows of `wq`
/// floats), the taps at the offsets `off` with the weights `w` (`m * kk`, in order).
#[inline(always)]
fn input_grad_gather_plane(dx: &mut [f32], dypad: &[f32], w: &[f32], off: &[usize], g: &Gather) {
    for (h, dr) in dx.chunks_exact_mut(g.w).enumerate() {
        conv_row(dr, 0.0, w, &dypad[h * g.wq..], off);
    }
}

/// The weight-gradient terms of one input plane of one image into `acc` (`m * kk` rows
/// of `ow`): per output channel and tap, the rows in order.
#[inline(always)]
fn weight_grad_plane(acc: &mut [f32], dy: &[f32], xpad: &[f32], k: &Kern) {
    let (kk, ow) = (k.taps.len(), k.taps.ow);
    for (j, dyo) in dy.chunks_exact(k.l).enumerate() {
        for t in 0..kk {
            let a = &mut acc[(j * kk + t) * ow..(j * kk + t + 1) * ow];
            tap_grad(a, dyo, &xpad[k.taps.off[t]..], k.taps.step);
        }
    }
}

/// The input gradient of a stride-1 conv as a gather (the forward's row kernel over `dy`
/// padded and the kernel flipped) rather than a scatter: each `dx` row is written once
/// from registers instead of read and written back once per tap. `dy`'s `m` planes
/// for one input channel sit zero-padded in `m` planes of `hq` rows of `wq`: `dy[i][j]`
/// at row `i + (kh - 1) * dh`, column `j + (kw - 1) * dw`; `dx[h][w]` reads tap
/// `(a, b)` of output channel `j` at `h * wq + off[j * kk + a * kw + b] + w`.
struct Gather {
    hq: usize,
    wq: usize,
    top: usize,
    left: usize,
    /// `dx`'s row length, `W`.
    w: usize,
    off: Vec<usize>,
}

impl Gather {
    /// The layout for `geo` with multiplier `m`, or `None` for a strided conv (which
    /// keeps the scatter).
    fn new(geo: &Conv2dGeometry, m: usize) -> Option<Gather> {
        if geo.options.stride != (1, 1) {
            return None;
        }
        let (kh, kw) = geo.kernel;
        let (ph, pw) = geo.options.padding;
        let (dh, dw) = geo.options.dilation;
        let (top, left) = ((kh - 1) * dh, (kw - 1) * dw);
        let hq = (geo.in_h + ph + top).max(top + geo.out_h);
        let wq = (geo.in_w + pw + left).max(left + geo.out_w);
        // Saturating: a layout too large for memory fails in `resize` before any use
        // (and when it fits, every offset is within it, so exact).
        let plane = hq.saturating_mul(wq);
        let mut off = Vec::with_capacity(m * kh * kw);
        for j in 0..m {
            for a in 0..kh {
                for b in 0..kw {
                    let row = (ph + (kh - 1 - a) * dh).saturating_mul(wq);
                    let o = j.saturating_mul(plane).saturating_add(row);
                    off.push(o.saturating_add(pw + (kw - 1 - b) * dw));
                }
            }
        }
        Some(Gather {
            hq,
            wq,
            top,
            left,
            w: geo.in_w,
            off,
        })
    }

    /// Writes the `m` planes of `dy` (each `oh x ow`) zero-padded into `buf`.
    fn fill(&self, dy: &[f32], ow: usize, m: usize, buf: &mut [f32]) {
        buf.fill(0.0);
        let plane = self.hq * self.wq;
        let l = dy.len() / m.max(1);
        for j in 0..m {
            for (i, dr) in dy[j * l..(j + 1) * l].chunks_exact(ow).enumerate() {
                let s = j * plane + (i + self.top) * self.wq + self.left;
                copy_row(&mut buf[s..s + ow], dr);
            }
        }
    }
}

/// What the plane kernels need of the conv: the taps and the output positions per
/// plane.
struct Kern<'a> {
    taps: &'a Taps,
    l: usize,
}

/// The plane kernels compiled for each instruction set the plan's GEMM kernel names:
/// the same source (and the same bits: `mul` then `add`, never fused) with wider
/// vectors where the CPU has them.
macro_rules! isa_versions {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[inline]
            pub(super) fn $name(kernel: Kernel, $($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f")]
                    fn avx512($($arg: $ty),*) {
                        super::$name($($arg),*)
                    }
                    #[target_feature(enable = "avx2")]
                    fn avx2($($arg: $ty),*) {
                        super::$name($($arg),*)
                    }
                    match kernel {
                        // SAFETY: the dispatch checked that this CPU runs the plan's
                        // kernel (`check_plan`), so it has the kernel's target features.
                        Kernel::Avx512 => return unsafe { avx512($($arg),*) },
                        Kernel::Avx2 => return unsafe { avx2($($arg),*) },
                        Kernel::Fallback => {}
                    }
                }
                let _ = kernel;
                super::$name($($arg),*)
            }
        )*
    };
}

/// [`forward_plane`], [`input_grad_plane`] and [`weight_grad_plane`] on the plan's
/// instruction set.
mod isa {
    use super::{Gather, Kern, Kernel};
    isa_versions! {
        forward_plane(xpad: &[f32], yp: &mut [f32], w: &[f32], bias: Option<&[f32]>, k: &Kern<'_>);
        input_grad_plane(dxpad: &mut [f32], dy: &[f32], w: &[f32], k: &Kern<'_>);
        input_grad_gather_plane(dx: &mut [f32], dypad: &[f32], w: &[f32], off: &[usize], g: &Gather);
        weight_grad_plane(acc: &mut [f32], dy: &[f32], xpad: &[f32], k: &Kern<'_>);
    }
}

fn contiguous<'a>(v: ArrayView1<'a, f32>, what: &str) -> Result<&'a [f32]> {
    v.to_slice()
        .ok_or_else(|| Error::shape(OP, format!("{what} is not contiguous")))
}

/// Forward into `y` (N, O, L): one task per (image, input channel), on the rayon pool
/// when the plan says so.
pub(super) fn forward(
    ops: &Operands<'_>,
    bias: Option<ArrayView1<'_, f32>>,
    mut y: ArrayViewMut3<'_, f32>,
) -> Result<()> {
    let geo = ops.geo;
    let pad = Padded::new(geo);
    let taps = Taps::new(geo, &pad);
    let c = geo.in_channels;
    let m = geo.out_channels / c;
    let (hw, l) = (geo.in_h * geo.in_w, geo.col_cols());
    let x = contiguous_2d(ops.x.view(), "the input")?;
    let w = contiguous_2d(ops.w.view(), "the weights")?;
    let bias = match bias {
        Some(b) => Some(contiguous(b, "the bias")?),
        None => None,
    };
    let kk = taps.len();
    let y = y
        .as_slice_mut()
        .ok_or_else(|| Error::shape(OP, "the output is not contiguous"))?;
    let k = Kern { taps: &taps, l };
    let kernel = ops.plan.kernel;
    let run = |s: &mut Scratch, (p, yp): (usize, &mut [f32])| -> Result<()> {
        // Plane p: image p / C, input channel p % C, output channels ci * m..(ci + 1) * m.
        let ci = p % c;
        let os = ci * m..(ci + 1) * m;
        pad.reserve(&mut s.xpad, geo)?;
        pad.fill(&x[p * hw..(p + 1) * hw], &mut s.xpad);
        let wo = &w[os.start * kk..os.end * kk];
        let bo = bias.map(|b| &b[os]);
        isa::forward_plane(kernel, &s.xpad, yp, wo, bo, &k);
        Ok(())
    };
    if l == 0 {
        return Ok(());
    }
    if ops.plan.parallel {
        y.par_chunks_mut(m * l)
            .enumerate()
            .try_for_each(|task| with_scratch(&SCRATCH, |s| run(s, task)))
    } else {
        with_scratch(&SCRATCH, |s| {
            y.chunks_mut(m * l).enumerate().try_for_each(|t| run(s, t))
        })
    }
}

/// A standard-layout 2-d view as one slice.
fn contiguous_2d<'a>(v: ndarray::ArrayView2<'a, f32>, what: &str) -> Result<&'a [f32]> {
    v.to_slice()
        .ok_or_else(|| Error::shape(OP, format!("{what} is not contiguous")))
}

/// The input gradient of images `n0..n0 + nb` into `dxc` (their rows of dx, zeroed).
pub(super) fn input_grad(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
    dxc: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    backward_chunk(ops, dy, chunk, Some(dxc), false).map(drop)
}

/// The weight gradient `(O, kh * kw)` of images `n0..n0 + nb`.
pub(super) fn weight_grad(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
) -> Result<Array2<f32>> {
    backward_chunk(ops, dy, chunk, None, true)
}

/// Both gradients of images `n0..n0 + nb` from one pass over `dy`: fills `dxc` and
/// returns the weight gradient.
pub(super) fn gradients(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
    dxc: ArrayViewMut2<'_, f32>,
) -> Result<Array2<f32>> {
    backward_chunk(ops, dy, chunk, Some(dxc), true)
}

const DYPAD: &str = "the padded grad_out planes of the depthwise path";

/// One reduction chunk, one task per input channel (each owning its `m` rows of `dW`
/// and its planes of `dxc`), on the rayon pool when the plan says so. Within a task the
/// images, rows and taps go in a fixed order.
fn backward_chunk(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    (n0, nb): (usize, usize),
    dxc: Option<ArrayViewMut2<'_, f32>>,
    want_dw: bool,
) -> Result<Array2<f32>> {
    let geo = ops.geo;
    let pad = Padded::new(geo);
    let taps = Taps::new(geo, &pad);
    let c = geo.in_channels;
    let m = geo.out_channels / c;
    let kk = taps.len();
    let (hw, l, ow) = (geo.in_h * geo.in_w, geo.col_cols(), geo.out_w);
    let x = contiguous_2d(ops.x.view(), "the input")?;
    let w = contiguous_2d(ops.w.view(), "the weights")?;
    let dy = dy
        .to_slice()
        .ok_or_else(|| Error::shape(OP, "grad_out is not contiguous"))?;
    let o_all = geo.out_channels;
    let k = Kern { taps: &taps, l };
    let kernel = ops.plan.kernel;
    // Sizes are within the padded input's and dy's, which the geometry checked, but
    // times m: checked by `resize`.
    let gather = Gather::new(geo, m);
    // Per input channel: its planes of dxc (nb, H * W), when wanted.
    let mut parts: Vec<Option<ArrayViewMut2<'_, f32>>> = Vec::with_capacity(c);
    match dxc {
        Some(d) => {
            let mut rest = d.into_shape_with_order((nb, c, hw)).map_err(shape_err)?;
            for _ in 0..c {
                let (head, tail) = rest.split_at(Axis(1), 1);
                parts.push(Some(head.index_axis_move(Axis(1), 0)));
                rest = tail;
            }
        }
        None => parts.resize_with(c, || None),
    }
    let run = |s: &mut Scratch, (ci, mut dxp): (usize, Option<ArrayViewMut2<'_, f32>>)| {
        let mut dw = vec![0.0f32; if want_dw { m * kk } else { 0 }];
        if want_dw {
            pad.reserve(&mut s.xpad, geo)?;
            resize(
                &mut s.acc,
                &[m, kk, ow],
                "the weight-gradient accumulators of the depthwise path",
                geo,
            )?;
            s.acc.fill(0.0);
        }
        if dxp.is_some() {
            match &gather {
                Some(g) => resize(&mut s.dxpad, &[m, g.hq, g.wq], DYPAD, geo)?,
                None => pad.reserve(&mut s.dxpad, geo)?,
            }
        }
        let os = ci * m..(ci + 1) * m;
        let wo = &w[os.start * kk..os.end * kk];
        for bi in 0..nb {
            let n = n0 + bi;
            let dyp = &dy[(n * o_all + os.start) * l..(n * o_all + os.end) * l];
            if want_dw {
                let p = n * c + ci;
                pad.fill(&x[p * hw..(p + 1) * hw], &mut s.xpad);
                isa::weight_grad_plane(kernel, &mut s.acc, dyp, &s.xpad, &k);
            }
            if let Some(dxp) = dxp.as_mut() {
                let mut plane = dxp.row_mut(bi);
                let plane = plane
                    .as_slice_mut()
                    .ok_or_else(|| Error::shape(OP, "dx planes are not contiguous"))?;
                if let Some(g) = &gather {
                    g.fill(dyp, ow, m, &mut s.dxpad);
                    isa::input_grad_gather_plane(kernel, plane, &s.dxpad, wo, &g.off, g);
                } else {
                    s.dxpad.fill(0.0);
                    isa::input_grad_plane(kernel, &mut s.dxpad, dyp, wo, &k);
                    pad.extract(&s.dxpad, plane);
                }
            }
        }
        // Each tap's accumulator summed in column order.
        for (d, acc) in dw.iter_mut().zip(s.acc.chunks_exact(ow.max(1))) {
            *d = acc.iter().map(|&v| f64::from(v)).sum::<f64>() as f32;
        }
        Ok(dw)
    };
    let tasks = parts.into_iter().enumerate();
    let per_channel: Vec<Vec<f32>> = if l == 0 {
        (0..c)
            .map(|_| vec![0.0; if want_dw { m * kk } else { 0 }])
            .collect()
    } else if ops.plan.parallel {
        tasks
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|task| with_scratch(&SCRATCH, |s| run(s, task)))
            .collect::<Result<_>>()?
    } else {
        with_scratch(&SCRATCH, |s| {
            tasks.map(|t| run(s, t)).collect::<Result<_>>()
        })?
    };
    let mut dw = zeroed_partial(o_all, kk);
    if want_dw {
        for (ci, part) in per_channel.iter().enumerate() {
            let rows = dw.as_slice_mut().expect("a fresh array is contiguous");
            rows[ci * m * kk..(ci + 1) * m * kk].copy_from_slice(part);
        }
    }
    Ok(dw)
}
