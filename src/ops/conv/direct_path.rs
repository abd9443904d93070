//! The direct conv path (forward): no column matrix at all. Each image is copied once
//! into its padded region (skipped when there is no padding), and the indirect GEMM
//! kernel ([`crate::gemm::indirect_gemm`]) reads every tap straight from it, computing
//! a tile of output positions by output channels in registers; the tile is then written
//! out channel-major with the bias.
//!
//! It pays where im2col does not: small images with few channels, whose column matrix
//! is cheap to multiply but costs a gather per element to build (the notebook's layers,
//! where the gather was two thirds of the forward time). Groups of 1 only; the backward
//! pass of a conv on this path runs on the im2col path.

use std::cell::RefCell;

use ndarray::parallel::prelude::*;
use ndarray::{ArrayView1, ArrayViewMut3, Axis};

use super::gemm_path::Operands;
use crate::error::Result;
use crate::gemm::{Kernel, indirect_gemm};
use crate::ops::geometry::DirectIndex;

/// Fewest tasks to cut a batch into, so two threads get a balanced share; a constant,
/// never the thread count.
const MIN_SPLIT: usize = 8;

thread_local! {
    /// Each thread's padded image and output tile, reused across calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = RefCell::default();
}

/// Forward into `y` (N, O, L), on the rayon pool when the plan says so.
pub(super) fn forward(
    ops: &Operands<'_>,
    bias: Option<ArrayView1<'_, f32>>,
    mut y: ArrayViewMut3<'_, f32>,
) -> Result<()> {
    if y.is_empty() {
        return Ok(());
    }
    let geo = ops.geo;
    let kernel = Kernel::selected();
    let (n, o, _) = y.dim();
    let ldw = o.next_multiple_of(kernel.lanes());
    let idx = geo.direct_index();
    // Weights tap-major, channels padded to whole vectors: w[k * ldw + o].
    let k = ops.w.ncols();
    let mut w = vec![0.0f32; k * ldw];
    for (oi, row) in ops.w.outer_iter().enumerate() {
        for (ki, &v) in row.iter().enumerate() {
            w[ki * ldw + oi] = v;
        }
    }
    let per = n.div_ceil(MIN_SPLIT).max(1);
    let tiles: Vec<_> = y.axis_chunks_iter_mut(Axis(0), per).enumerate().collect();
    let run = |(t, yt): (usize, ArrayViewMut3<'_, f32>)| {
        let mut bufs = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        forward_tile(ops, &idx, kernel, &w, ldw, bias, t * per, yt, &mut bufs);
        SCRATCH.with(|s| *s.borrow_mut() = bufs);
    };
    if ops.plan.parallel {
        tiles.into_par_iter().with_max_len(1).for_each(run);
    } else {
        tiles.into_iter().for_each(run);
    }
    Ok(())
}

/// Images `n0..n0 + b` into `yt` (b, O, L).
#[allow(clippy::too_many_arguments)]
fn forward_tile(
    ops: &Operands<'_>,
    idx: &DirectIndex,
    kernel: Kernel,
    w: &[f32],
    ldw: usize,
    bias: Option<ArrayView1<'_, f32>>,
    n0: usize,
    mut yt: ArrayViewMut3<'_, f32>,
    (padded, out): &mut (Vec<f32>, Vec<f32>),
) {
    let geo = ops.geo;
    let l = geo.col_cols();
    let copy = !idx.is_input(geo);
    if copy {
        // The border stays zero for every image of the tile.
        padded.clear();
        padded.resize(geo.in_channels * idx.rows * idx.cols, 0.0);
    }
    out.resize(l * ldw, 0.0);
    let o = yt.len_of(Axis(1));
    let bias_v: Vec<f32> = bias.map_or_else(|| vec![0.0; o], |b| b.to_vec());
    for (bi, mut yn) in yt.outer_iter_mut().enumerate() {
        let x = ops.x.row(n0 + bi);
        let x = x.as_slice().expect("input rows are contiguous");
        let src = if copy {
            pad_image(x, geo, idx, padded);
            &padded[..]
        } else {
            x
        };
        indirect_gemm(kernel, src, &idx.bases, &idx.offs, w, ldw, out);
        let yn = yn.as_slice_mut().expect("output images are contiguous");
        transpose_bias(&out[..l * ldw], ldw, &bias_v, yn);
    }
}

/// `y[o * l + p] = t[p * ldw + o] + bias[o]` for `o < bias.len()`, `p < l`: the kernel's
/// position-major tile to the channel-major output. Eight positions at a time, so each
/// output row gets whole 8-float stores (a scalar strided loop took 40% of the direct
/// forward of seed_l2).
fn transpose_bias(t: &[f32], ldw: usize, bias: &[f32], y: &mut [f32]) {
    let l = t.len() / ldw;
    let o = bias.len();
    let mut p0 = 0;
    for block in t.chunks_exact(8 * ldw) {
        let rows: [&[f32]; 8] = std::array::from_fn(|i| &block[i * ldw..i * ldw + o]);
        for (oi, (yo, &bv)) in y.chunks_exact_mut(l).zip(bias).enumerate() {
            let v: [f32; 8] = std::array::from_fn(|i| rows[i][oi] + bv);
            yo[p0..p0 + 8].copy_from_slice(&v);
        }
        p0 += 8;
    }
    for (p, row) in t.chunks_exact(ldw).enumerate().skip(p0) {
        for (yo, (&v, &bv)) in y.chunks_exact_mut(l).zip(row.iter().zip(bias)) {
            yo[p] = v + bv;
        }
    }
}

/// Copies image `x` (C, H, W) into the inside of its padded region (C, rows, cols);
/// the border is left as it is (zeroed once per tile by the caller).
fn pad_image(x: &[f32], geo: &super::Conv2dGeometry, idx: &DirectIndex, padded: &mut [f32]) {
    let (h, w) = (geo.in_h, geo.in_w);
    let (ph, pw) = geo.options.padding;
    // Padded rows ph..ph + h and columns pw..pw + w, clipped to the region read.
    let rows = h.min(idx.rows.saturating_sub(ph));
    let cols = w.min(idx.cols.saturating_sub(pw));
    if rows == 0 || cols == 0 {
        return;
    }
    let plane = idx.rows * idx.cols;
    for (xc, dst) in x.chunks_exact(h * w).zip(padded.chunks_exact_mut(plane)) {
        for (src, row) in xc
            .chunks_exact(w)
            .zip(dst[ph * idx.cols..].chunks_exact_mut(idx.cols))
            .take(rows)
        {
            copy_short(&mut row[pw..pw + cols], &src[..cols]);
        }
    }
}

/// `dst.copy_from_slice(src)` for short rows, inline: a library `memcpy` call per row of
/// a few floats cost more than the copy (a third of the direct forward of seed_l3).
#[inline]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: [f32; 8] = s.try_into().expect("chunks of 8");
        d.copy_from_slice(&s);
    }
    for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = s;
    }
}
