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
//! - [`forward`]: per (image, input channel), `y_row += w[tap] * run(tap)` for each of
//!   the `m` output channels, output row and tap. Planes are disjoint, so any split over
//!   threads gives the same bits.
//! - [`input_grad`]: the transposed scatter, `dxpad_run(tap) += w[tap] * dy_row`, into a
//!   padded plane of the same layout, whose interior is then copied to `dx`.
//! - [`weight_grad`]: per input channel, over the chunk's images, rows and taps in that
//!   order, `acc[tap][j] += dy_row[j] * run(tap)[j]` into one row-long accumulator per
//!   tap (so the product vectorises along the row with no horizontal reduction), each
//!   accumulator summed in column order at the end. The order is fixed by the shape, so
//!   the result does not depend on the thread count; the channels run in parallel, each
//!   writing its own rows of `dW`.
//! - [`gradients`]: both from one pass over `dy`, per input channel.
//!
//! The bias gradient is the shared `bias_partial` of `conv/mod.rs`, as for every
//! algorithm.

use std::cell::RefCell;

use ndarray::parallel::prelude::*;
use ndarray::{Array2, ArrayView1, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::slice::ParallelSliceMut;

use super::common::{OP, Operands, resize, shape_err, with_scratch};
use crate::error::{Error, Result};
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

    /// Writes the plane `x` (H x W) into `buf` (one padded plane), zeros around it.
    fn fill(&self, x: &[f32], buf: &mut [f32]) {
        buf.fill(0.0);
        for (h, xr) in x.chunks_exact(self.w).enumerate() {
            let r = h + self.ph;
            if self.sw == 1 {
                let s = self.at(r, self.pw);
                buf[s..s + self.w].copy_from_slice(xr);
            } else {
                for (c, &v) in xr.iter().enumerate() {
                    buf[self.at(r, c + self.pw)] = v;
                }
            }
        }
    }

    /// Copies the interior of `buf` (one padded plane) into `dx` (H x W).
    fn extract(&self, buf: &[f32], dx: &mut [f32]) {
        for (h, dr) in dx.chunks_exact_mut(self.w).enumerate() {
            let r = h + self.ph;
            if self.sw == 1 {
                let s = self.at(r, self.pw);
                dr.copy_from_slice(&buf[s..s + self.w]);
            } else {
                for (c, d) in dr.iter_mut().enumerate() {
                    *d = buf[self.at(r, c + self.pw)];
                }
            }
        }
    }
}

/// The taps of one conv: for output row `i` and tap `t`, the run of the padded plane
/// read for that row starts at `(i * sh + a * dh) * row + off[t]`, `a = t / kw`.
struct Taps {
    kh: usize,
    kw: usize,
    sh: usize,
    dh: usize,
    /// Per tap, its offset within a padded row (phase start plus column).
    off: Vec<usize>,
    ow: usize,
}

impl Taps {
    fn new(geo: &Conv2dGeometry, pad: &Padded) -> Taps {
        let (kh, kw) = geo.kernel;
        let (sh, _) = geo.options.stride;
        let (dh, dw) = geo.options.dilation;
        let off = (0..kh * kw).map(|t| pad.at(0, (t % kw) * dw)).collect();
        Taps {
            kh,
            kw,
            sh,
            dh,
            off,
            ow: geo.out_w,
        }
    }

    /// The start of the run of tap `t` for output row `i` in a plane of `row` floats
    /// per padded row.
    #[inline]
    fn start(&self, i: usize, t: usize, row: usize) -> usize {
        (i * self.sh + (t / self.kw) * self.dh) * row + self.off[t]
    }

    fn len(&self) -> usize {
        self.kh * self.kw
    }
}

/// `y[j] += a * x[j]` along a row: vectorised by the compiler.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `acc[j] += x[j] * y[j]` along a row: vectorised by the compiler.
#[inline]
fn mul_acc(acc: &mut [f32], x: &[f32], y: &[f32]) {
    for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
        *a += x * y;
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
    let run = |s: &mut Scratch, (p, yp): (usize, &mut [f32])| -> Result<()> {
        // Plane p: image p / C, input channel p % C, output channels ci * m..(ci + 1) * m.
        let ci = p % c;
        pad.reserve(&mut s.xpad, geo)?;
        pad.fill(&x[p * hw..(p + 1) * hw], &mut s.xpad);
        for (j, yo) in yp.chunks_exact_mut(l).enumerate() {
            let o = ci * m + j;
            let wo = &w[o * kk..(o + 1) * kk];
            yo.fill(bias.map_or(0.0, |b| b[o]));
            for (i, yr) in yo.chunks_exact_mut(taps.ow).enumerate() {
                for (t, &wt) in wo.iter().enumerate() {
                    let s0 = taps.start(i, t, pad.row);
                    axpy(yr, wt, &s.xpad[s0..s0 + taps.ow]);
                }
            }
        }
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
            pad.reserve(&mut s.dxpad, geo)?;
        }
        for bi in 0..nb {
            let n = n0 + bi;
            if want_dw {
                let p = n * c + ci;
                pad.fill(&x[p * hw..(p + 1) * hw], &mut s.xpad);
            }
            if dxp.is_some() {
                s.dxpad.fill(0.0);
            }
            for j in 0..m {
                let o = ci * m + j;
                let wo = &w[o * kk..(o + 1) * kk];
                let dyo = &dy[(n * o_all + o) * l..(n * o_all + o + 1) * l];
                for (i, dyr) in dyo.chunks_exact(ow).enumerate() {
                    for (t, &wt) in wo.iter().enumerate() {
                        let s0 = taps.start(i, t, pad.row);
                        if want_dw {
                            let acc = &mut s.acc[(j * kk + t) * ow..(j * kk + t + 1) * ow];
                            mul_acc(acc, dyr, &s.xpad[s0..s0 + ow]);
                        }
                        if dxp.is_some() {
                            axpy(&mut s.dxpad[s0..s0 + ow], wt, dyr);
                        }
                    }
                }
            }
            if let Some(dxp) = dxp.as_mut() {
                let mut plane = dxp.row_mut(bi);
                let plane = plane
                    .as_slice_mut()
                    .ok_or_else(|| Error::shape(OP, "dx planes are not contiguous"))?;
                pad.extract(&s.dxpad, plane);
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
    let mut dw = Array2::<f32>::zeros((o_all, kk));
    if want_dw {
        for (ci, part) in per_channel.iter().enumerate() {
            let rows = dw.as_slice_mut().expect("a fresh array is contiguous");
            rows[ci * m * kk..(ci + 1) * m * kk].copy_from_slice(part);
        }
    }
    Ok(dw)
}
