//! Packing: copy blocks of A and B, from any strides, into the contiguous, zero-padded
//! micro-panels the kernels read. This is where transposed and strided operands cost
//! nothing extra: the copy that every block needs anyway reads them in whatever order
//! their strides make cheapest.

use ndarray::{ArrayView2, Axis};
use rayon::prelude::*;

use super::kernel::{pack_copy, pack_interleave};

/// Packs `b` (`kc x w`, `w <= nr`) into one B micro-panel: `kc` steps of `nr` values,
/// columns past `w` zero. `out.len() == kc * nr`.
fn pack_b_panel(b: ArrayView2<'_, f32>, nr: usize, out: &mut [f32]) {
    let (kc, w) = b.dim();
    debug_assert!(w <= nr && out.len() == kc * nr);
    if pack_copy(b, nr, out) || pack_interleave(b.t(), nr, out) {
        return;
    }
    if w == 1
        || b.strides()[1] == 1
        || b.strides()[0].unsigned_abs() >= b.strides()[1].unsigned_abs()
    {
        // Rows of B are the cheap direction (row-major B, or a strided view of it).
        for (row, dst) in b.rows().into_iter().zip(out.chunks_exact_mut(nr)) {
            let (valid, pad) = dst.split_at_mut(w);
            match row.as_slice() {
                Some(src) => valid.copy_from_slice(src),
                None => valid.iter_mut().zip(row.iter()).for_each(|(d, &v)| *d = v),
            }
            pad.fill(0.0);
        }
    } else {
        // Columns of B are contiguous (B = x.t() of a row-major x): read down columns.
        if w < nr {
            out.fill(0.0);
        }
        for (j, col) in b.columns().into_iter().enumerate() {
            for (dst, &v) in out.chunks_exact_mut(nr).zip(col.iter()) {
                dst[j] = v;
            }
        }
    }
}

/// Packs `a` (`h x kc`, `h <= mr`) into one A micro-panel: `kc` steps of `mr` values,
/// rows past `h` zero. `out.len() == kc * mr`.
fn pack_a_panel(a: ArrayView2<'_, f32>, mr: usize, out: &mut [f32]) {
    let (h, kc) = a.dim();
    debug_assert!(h <= mr && out.len() == kc * mr);
    if pack_interleave(a, mr, out) || pack_copy(a.t(), mr, out) {
        return;
    }
    if kc == 1 || a.strides()[0].unsigned_abs() < a.strides()[1].unsigned_abs() && h > 1 {
        // Columns of A are the cheap direction (A = x.t() of a row-major x).
        for (col, dst) in a.columns().into_iter().zip(out.chunks_exact_mut(mr)) {
            let (valid, pad) = dst.split_at_mut(h);
            match col.as_slice() {
                Some(src) => valid.copy_from_slice(src),
                None => valid.iter_mut().zip(col.iter()).for_each(|(d, &v)| *d = v),
            }
            pad.fill(0.0);
        }
    } else {
        // Rows of A are contiguous (row-major A): read along rows, scatter into the panel.
        if h < mr {
            out.fill(0.0);
        }
        for (i, row) in a.rows().into_iter().enumerate() {
            match row.as_slice() {
                Some(src) => {
                    for (dst, &v) in out.chunks_exact_mut(mr).zip(src) {
                        dst[i] = v;
                    }
                }
                None => {
                    for (dst, &v) in out.chunks_exact_mut(mr).zip(row.iter()) {
                        dst[i] = v;
                    }
                }
            }
        }
    }
}

/// Packs `b` (`kc x n`) into `ceil(n / nr)` B micro-panels in `out`, in parallel when
/// `parallel`.
pub(super) fn pack_b(b: ArrayView2<'_, f32>, nr: usize, out: &mut [f32], parallel: bool) {
    let (kc, n) = b.dim();
    let panel = |(p, dst): (usize, &mut [f32])| {
        let j0 = p * nr;
        pack_b_panel(b.slice_axis(Axis(1), (j0..n.min(j0 + nr)).into()), nr, dst);
    };
    let out = &mut out[..n.div_ceil(nr) * nr * kc];
    if parallel {
        out.par_chunks_mut(nr * kc)
            .enumerate()
            .with_min_len(4)
            .for_each(panel);
    } else {
        out.chunks_mut(nr * kc).enumerate().for_each(panel);
    }
}

/// Packs `a` (`m x kc`) into `ceil(m / mr)` A micro-panels in `out`, in parallel when
/// `parallel`.
pub(crate) fn pack_a(a: ArrayView2<'_, f32>, mr: usize, out: &mut [f32], parallel: bool) {
    let (m, kc) = a.dim();
    let panel = |(p, dst): (usize, &mut [f32])| {
        let i0 = p * mr;
        pack_a_panel(a.slice_axis(Axis(0), (i0..m.min(i0 + mr)).into()), mr, dst);
    };
    let out = &mut out[..m.div_ceil(mr) * mr * kc];
    if parallel {
        out.par_chunks_mut(mr * kc)
            .enumerate()
            .with_min_len(4)
            .for_each(panel);
    } else {
        out.chunks_mut(mr * kc).enumerate().for_each(panel);
    }
}
