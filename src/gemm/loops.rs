//! The BLIS loop nest, around the macro-kernel of [`super::kernel`]:
//!
//! * loop 5: `jc` over blocks of `NC` columns of C and B;
//! * loop 4: `pc` over depth blocks of at most `KC` (equal sizes); B's block is packed into
//!   `NR`-column micro-panels (or, for few rows of C, only its last partial panel: the rest
//!   is read in place), and all rows of A's block into `MR`-row micro-panels;
//! * loop 3: tasks of `MC` rows x a chunk of whole `NR` panels sized to the L2 budget;
//! * in the macro-kernel, loop 2 over the task's `MR` panels of A (one in L1 at a time),
//!   loop 1 over its `NR` panels of B (streamed from L2), then the micro-kernel.
//!
//! Threading: for each `(jc, pc)` block, B and A are packed (in parallel over panels) into
//! buffers shared read-only, then the tasks, disjoint tiles of C, run in parallel. K is
//! never split across threads and each element of C always sees the same `KC` blocks in
//! the same order with the same arithmetic, so the result is bit-identical for any
//! number of threads. Products below [`PARALLEL_THRESHOLD`] never touch rayon.
//!
//! Packing buffers are thread-local to the calling thread and reused: they grow to the
//! largest product seen (`(m + min(n, NC)) * KC` floats) and are not shrunk.

use std::cell::RefCell;

use ndarray::{ArrayView2, ArrayViewMut2, Axis, Slice};
use rayon::prelude::*;

use super::archparam::GemmBlocks;
use super::kernel::{self, BPanels, Kernel};
use super::pack::{pack_a, pack_b};

/// Below this many multiply-adds (`m * n * k`, about 116^3) the product runs on the
/// calling thread without touching rayon: waking the pool costs more than it saves.
/// Measured with the AVX-512 kernel on 2 cores: at 2 M (128^3) two threads break even,
/// at 1.8 M (32 x 144 x 400) and 2 M (8 x 25 x 10000) they win by 1.3-1.6x, at 0.9 M
/// (96^3) and below they lose.
///
/// Kept the same on every CPU: the break-even is set by the cost of waking rayon's
/// workers (microseconds, an OS and scheduler cost, not a cache size) against the time
/// the product takes. Zen 5 and Intel's AVX-512 server cores both do 32 multiply-adds
/// per cycle per core at similar clocks, so the measured value carries over. Zen 4 (two
/// 256-bit FMA pipes) and AVX2-only cores do 16: a product takes twice as long there, so
/// two threads would already pay off at about half the size, and this threshold is
/// conservative: products between about 0.75 M and 1.5 M multiply-adds (under 50
/// microseconds each) stay on one thread. Not measured on those CPUs, so not changed.
pub(crate) const PARALLEL_THRESHOLD: usize = 3 << 19;

/// B is read in place rather than packed when C has at most this many micro-panels of
/// rows (`m <= 4 * MR`): each B panel is then used at most 4 times, and copying it costs
/// more than it saves. Measured on conv shapes (m = 8: 2x faster, m = 32: 1.2x, m = 64:
/// no clear gain).
const DIRECT_B_MAX_PANELS: usize = 4;

/// Tasks per thread to aim for, for load balance.
const TASKS_PER_THREAD: usize = 3;

thread_local! {
    /// Packing buffers of the calling thread, reused across calls.
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The first `len` elements of `buf` from a 64-byte aligned start, growing `buf` if
/// needed.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const ALIGN_F32: usize = 64 / size_of::<f32>();
    if buf.len() < len + ALIGN_F32 {
        buf.resize(len + ALIGN_F32, 0.0);
    }
    let off = buf.as_ptr().align_offset(64);
    let off = if off < ALIGN_F32 { off } else { 0 };
    &mut buf[off..off + len]
}

/// Splits `v` along `axis` into consecutive pieces of `step` (the last may be shorter).
fn split_chunks<'a>(
    mut v: ArrayViewMut2<'a, f32>,
    axis: Axis,
    step: usize,
    out: &mut Vec<ArrayViewMut2<'a, f32>>,
) {
    while v.len_of(axis) > step {
        let (head, tail) = v.split_at(axis, step);
        out.push(head);
        v = tail;
    }
    out.push(v);
}

/// `C = alpha * A * B + beta * C` with `kernel` and block sizes `bs` (valid for it) on
/// up to `threads` rayon threads. Shapes are already checked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    kernel: Kernel,
    bs: GemmBlocks,
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
    threads: usize,
) {
    let (m, n) = c.dim();
    if m == 0 || n == 0 {
        return;
    }
    // The kernels want unit stride along the NR side of the tile (the columns of C):
    // if C is column-major, compute C^T = B^T A^T instead, which is the same arithmetic.
    let unit_n = n == 1 || c.strides()[1] == 1;
    let unit_m = m == 1 || c.strides()[0] == 1;
    if unit_m && (!unit_n || m > n) {
        return gemm_oriented(
            kernel,
            bs,
            alpha,
            b.t(),
            a.t(),
            beta,
            c.reversed_axes(),
            threads,
        );
    }
    gemm_oriented(kernel, bs, alpha, a, b, beta, c, threads);
}

/// [`gemm`] after choosing the orientation.
#[allow(clippy::too_many_arguments)]
fn gemm_oriented(
    kernel: Kernel,
    bs: GemmBlocks,
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    mut c: ArrayViewMut2<'_, f32>,
    threads: usize,
) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    if k == 0 {
        if beta == 0.0 {
            c.fill(0.0);
        } else {
            c.mapv_inplace(|x| beta * x);
        }
        return;
    }
    let parallel = threads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_THRESHOLD;
    let kc = bs.kc_for(k);
    let nb_max = bs.nb(kc);
    // With few rows of C each B panel is used once or twice: read B in place instead of
    // copying it, when its rows are contiguous.
    let direct_b = b.strides()[1] == 1 && m <= DIRECT_B_MAX_PANELS * bs.mr;
    let (mut abuf, mut bbuf) = BUFFERS.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    let ap = aligned(&mut abuf, m.div_ceil(bs.mr) * bs.mr * kc);
    let bp_len = if direct_b {
        bs.nr * kc
    } else {
        n.min(bs.nc).div_ceil(bs.nr) * bs.nr * kc
    };
    let bp = aligned(&mut bbuf, bp_len);

    for jc in (0..n).step_by(bs.nc) {
        let ncb = bs.nc.min(n - jc);
        for pc in (0..k).step_by(kc) {
            let kcb = kc.min(k - pc);
            // Later depth blocks accumulate onto what the first one wrote.
            let beta_k = if pc == 0 { beta } else { 1.0 };
            let b_blk = b
                .slice_axis(Axis(0), Slice::from(pc..pc + kcb))
                .slice_axis_move(Axis(1), Slice::from(jc..jc + ncb));
            // Pack B (or just its last, partial panel) and A side by side.
            let ap_ref = &mut *ap;
            let bp_ref = &mut *bp;
            let mut pack_b_side = move || {
                if direct_b {
                    let full = ncb / bs.nr * bs.nr;
                    if full < ncb {
                        pack_b(
                            b_blk.slice_axis(Axis(1), Slice::from(full..)),
                            bs.nr,
                            bp_ref,
                            false,
                        );
                    }
                } else {
                    pack_b(b_blk, bs.nr, bp_ref, parallel);
                }
            };
            let mut pack_a_side = move || {
                pack_a(
                    a.slice_axis(Axis(1), Slice::from(pc..pc + kcb)),
                    bs.mr,
                    ap_ref,
                    parallel,
                )
            };
            if parallel {
                rayon::join(pack_b_side, pack_a_side);
            } else {
                pack_b_side();
                pack_a_side();
            }
            let (ap, bp) = (&*ap, &*bp);

            // Tasks: MC rows x column chunks of whole NR panels, as few chunks as the L2
            // budget allows (more when that gives too few tasks), spread evenly.
            let row_blocks = m.div_ceil(bs.mc);
            let panels = ncb.div_ceil(bs.nr);
            let mut chunks = panels.div_ceil(nb_max / bs.nr);
            if parallel {
                chunks = chunks
                    .max((TASKS_PER_THREAD * threads).div_ceil(row_blocks))
                    .next_multiple_of(threads);
            }
            let chunks = chunks.clamp(1, panels);
            // First column of chunk `i` (and `ncb` for `i == chunks`).
            let col0 = |i: usize| (i * panels / chunks * bs.nr).min(ncb);
            let run = |(ib, j0, tile): (usize, usize, ArrayViewMut2<'_, f32>)| {
                let a_off = ib * bs.mc * kcb;
                let panels = if direct_b {
                    BPanels::Direct {
                        b: b_blk.slice_axis(Axis(1), Slice::from(j0..j0 + tile.ncols())),
                        edge: bp,
                    }
                } else {
                    BPanels::Packed(&bp[j0 * kcb..])
                };
                kernel::macro_kernel(kernel, kcb, &ap[a_off..], panels, alpha, beta_k, tile);
            };
            let c_blk = c.slice_axis_mut(Axis(1), Slice::from(jc..jc + ncb));
            if parallel {
                let mut rows = Vec::new();
                split_chunks(c_blk, Axis(0), bs.mc, &mut rows);
                let mut tasks = Vec::new();
                for (ib, mut r) in rows.into_iter().enumerate() {
                    for jb in 0..chunks {
                        let (tile, rest) = r.split_at(Axis(1), col0(jb + 1) - col0(jb));
                        tasks.push((ib, col0(jb), tile));
                        r = rest;
                    }
                }
                tasks.into_par_iter().with_max_len(1).for_each(run);
            } else {
                // The same tiles in the same order, without collecting them.
                let mut rest_rows = c_blk;
                for ib in 0..row_blocks {
                    let h = bs.mc.min(rest_rows.nrows());
                    let (mut r, tail) = rest_rows.split_at(Axis(0), h);
                    rest_rows = tail;
                    for jb in 0..chunks {
                        let (tile, rest) = r.split_at(Axis(1), col0(jb + 1) - col0(jb));
                        run((ib, col0(jb), tile));
                        r = rest;
                    }
                }
            }
        }
    }
    BUFFERS.with(|cell| *cell.borrow_mut() = (abuf, bbuf));
}
