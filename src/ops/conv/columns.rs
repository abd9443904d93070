//! The column algorithms (`Columns`, and `Pointwise` through `pointwise.rs`): the output
//! positions of the batch are cut into tiles, each tile's columns lowered into a small
//! buffer and multiplied by the weights, group by group, on the crate's GEMM.
//!
//! A tile is either a run of whole images side by side (small images: one GEMM for
//! several images, `n = images * L`) or a run of output columns of one image (large
//! images: the column buffer stays at [`super::ConvPlan::tile_cols`] columns instead of
//! the whole `C * kh * kw x L` matrix). The lowering is im2col (by rows, or through the
//! index map for whole-image tiles), or for a 1x1 stride-1 unpadded conv
//! ([`Lowering::Pointwise`]) the input itself (no copy for one image).
//!
//! Forward: `y[tile] = W x cols[tile]` per group, then the bias. Backward, per
//! reduction chunk of images, tiles in a fixed order: `dW += dy[tile] x cols[tile]^T`,
//! `dcols = W^T x dy[tile]`, `dx += col2im(dcols)`; [`gradients`] lowers each tile once
//! for both.

use ndarray::parallel::prelude::*;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s};

use super::common::{
    MIN_SPLIT, Operands, group_col_grad, group_forward, group_weight_grad, images_per_tile, resize,
    shape_err, zeroed_partial,
};
use crate::error::Result;
use crate::ops::geometry::Conv2dGeometry;
use crate::ops::im2col::{col2im_range, im2col_range};

/// How a tile's columns are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lowering {
    /// im2col: any geometry.
    Im2col,
    /// The input is the column matrix: see [`pointwise_fits`].
    Pointwise,
}

/// `Columns` runs any geometry.
pub(super) fn supports(_geo: &Conv2dGeometry) -> bool {
    true
}

/// Whether the input is its own column matrix: a 1x1 kernel, stride 1, no padding.
pub(super) fn pointwise_fits(geo: &Conv2dGeometry) -> bool {
    geo.kernel == (1, 1) && geo.options.stride == (1, 1) && geo.options.padding == (0, 0)
}

/// Writes the lowered columns `l0..l0 + lt` of images `n0..n0 + b` side by side into
/// `cols` (K rows of `b * lt`).
#[allow(clippy::too_many_arguments)]
fn lower(
    ops: &Operands<'_>,
    lowering: Lowering,
    n0: usize,
    b: usize,
    l0: usize,
    lt: usize,
    cols: &mut [f32],
) {
    let nc = b * lt;
    for bi in 0..b {
        let x = ops.x.row(n0 + bi);
        let x = x.as_slice().expect("input rows are contiguous");
        match lowering {
            Lowering::Im2col => match &ops.map {
                Some(map) if lt == ops.geo.col_cols() => map.gather(x, &mut cols[bi * lt..], nc),
                _ => im2col_range(x, ops.geo, l0, l0 + lt, &mut cols[bi * lt..], nc),
            },
            Lowering::Pointwise => {
                let l = ops.geo.col_cols();
                for (c, dst) in cols.chunks_exact_mut(nc).enumerate() {
                    dst[bi * lt..(bi + 1) * lt].copy_from_slice(&x[c * l + l0..c * l + l0 + lt]);
                }
            }
        }
    }
}

/// The B operand (K, b * lt) of a tile: the input itself for one image of a pointwise
/// conv, else lowered into `buf`.
fn operand_b<'a: 'r, 'r>(
    ops: &Operands<'a>,
    lowering: Lowering,
    (n0, b, l0, lt): (usize, usize, usize, usize),
    buf: &'r mut Vec<f32>,
) -> Result<ArrayView2<'r, f32>> {
    let k = ops.geo.col_rows();
    if lowering == Lowering::Pointwise && b == 1 {
        let l = ops.geo.col_cols();
        let x = ops
            .x
            .index_axis_move(Axis(0), n0)
            .into_shape_with_order((k, l))
            .map_err(shape_err)?;
        return Ok(x.slice_move(s![.., l0..l0 + lt]));
    }
    resize(buf, &[k, b, lt], "the column matrix of a tile", ops.geo)?;
    lower(ops, lowering, n0, b, l0, lt, buf);
    ArrayView2::from_shape((k, b * lt), &buf[..]).map_err(shape_err)
}

/// Forward into `y` (N, O, L): splits it into disjoint tiles and runs them, on the rayon
/// pool when the plan says so.
pub(super) fn forward(
    ops: &Operands<'_>,
    lowering: Lowering,
    bias: Option<ArrayView1<'_, f32>>,
    mut y: ArrayViewMut3<'_, f32>,
) -> Result<()> {
    let (n, o, l) = y.dim();
    let mut tile_cols = ops.plan.tile_cols;
    let per = images_per_tile(tile_cols, l);
    let split = image_tile_cols(ops, (n, o, l));
    let mut tiles: Vec<(usize, usize, ArrayViewMut3<'_, f32>)> = Vec::new();
    if let Some(cols) = split {
        tile_cols = tile_cols.min(cols);
    }
    if split.is_none() && (per > 1 || l <= tile_cols) {
        let per = per.min(n.div_ceil(MIN_SPLIT)).max(1);
        for (i, chunk) in y.axis_chunks_iter_mut(Axis(0), per).enumerate() {
            tiles.push((i * per, 0, chunk));
        }
    } else {
        for (i, yn) in y.axis_chunks_iter_mut(Axis(0), 1).enumerate() {
            let mut rest = yn;
            let mut l0 = 0;
            while rest.len_of(Axis(2)) > 0 {
                let lt = tile_cols.min(rest.len_of(Axis(2)));
                let (head, tail) = rest.split_at(Axis(2), lt);
                tiles.push((i, l0, head));
                rest = tail;
                l0 += lt;
            }
        }
    }
    let run = |bufs: &mut (Vec<f32>, Vec<f32>),
               (n0, l0, yt): (usize, usize, ArrayViewMut3<'_, f32>)|
     -> Result<()> { forward_tile(ops, lowering, bias, n0, l0, yt, bufs) };
    if ops.plan.parallel {
        tiles
            .into_par_iter()
            .with_max_len(1)
            .try_for_each_init(|| (Vec::new(), Vec::new()), run)
    } else {
        let mut bufs = (Vec::new(), Vec::new());
        tiles.into_iter().try_for_each(|t| run(&mut bufs, t))
    }
}

/// The columns of each one-image tile of a parallel plan's forward of `y` `(n, o, l)`
/// when the batch is too small to share the pool by images
/// ([`super::common::splits_images`]): each image cut into one run of columns per
/// thread (given the work, [`super::common::split_tasks`]), whole [`SPLIT_COLS`]. A
/// GEMM's sums do not depend on its columns, so the bits are those of whole-image
/// tiles. Not more runs, as the direct forward has: every run packs the weights for its
/// GEMM. Measured (2 threads, Zen 4, fwd ms, interleaved, image tiles -> split), one
/// image, pointwise: 256 x 14x14 -> 512 0.54 -> 0.31, 64 x 56x56 -> 128 0.52 -> 0.27,
/// 512 x 7x7 -> 512 0.33 -> 0.19, 1024 x 7x7 -> 256 0.34 -> 0.21; three of 256 x 14x14
/// -> 256 0.56 -> 0.45; columns, 128 x 28x28 -> 256 1x1 stride 2 0.17 -> 0.12; runs of
/// whole 48-column GEMM panels (five on 196 columns, three tasks against two) lost (256
/// x 14x14 -> 512 0.52 -> 0.57), and so did the tile's GEMM split over the pool (0.52 ->
/// 0.77: each of its calls packs the weights and wakes the pool).
fn image_tile_cols(ops: &Operands<'_>, (n, o, l): (usize, usize, usize)) -> Option<usize> {
    let threads = rayon::current_num_threads();
    if !ops.plan.parallel || !super::common::splits_images(n, threads) {
        return None;
    }
    let work = o.saturating_mul(l).saturating_mul(ops.w.ncols());
    let tasks = super::common::split_tasks(work, l.div_ceil(SPLIT_COLS), threads).min(threads);
    (tasks > 1).then(|| l.div_ceil(tasks).next_multiple_of(SPLIT_COLS))
}

/// The column tiles of [`image_tile_cols`] are whole multiples of this: 16 floats, an
/// AVX-512 vector, two AVX2 ones.
const SPLIT_COLS: usize = 16;

/// One forward tile: images `n0..n0 + b`, columns `l0..l0 + lt`, output `yt` (b, O, lt).
fn forward_tile(
    ops: &Operands<'_>,
    lowering: Lowering,
    bias: Option<ArrayView1<'_, f32>>,
    n0: usize,
    l0: usize,
    mut yt: ArrayViewMut3<'_, f32>,
    (cbuf, obuf): &mut (Vec<f32>, Vec<f32>),
) -> Result<()> {
    let (b, o, lt) = yt.dim();
    let cols = operand_b(ops, lowering, (n0, b, l0, lt), cbuf)?;
    if b == 1 {
        // Straight into `y`, in blocks of columns small enough that the bias is added
        // while the block is still in cache: a separate pass over a large output read
        // and wrote it once more from memory (pw_64x128: 1.6 MB per image).
        let mut yn = yt.index_axis_mut(Axis(0), 0);
        let step = match bias {
            Some(_) => (BIAS_BLOCK_BYTES / (o.max(1) * size_of::<f32>()))
                .next_multiple_of(48)
                .max(48),
            None => lt.max(1),
        };
        for j0 in (0..lt).step_by(step) {
            let j1 = (j0 + step).min(lt);
            let mut block = yn.slice_mut(s![.., j0..j1]);
            group_forward(ops, cols.slice(s![.., j0..j1]), block.view_mut())?;
            if let Some(bias) = bias {
                for (mut row, &bv) in block.outer_iter_mut().zip(bias) {
                    row.mapv_inplace(|v| v + bv);
                }
            }
        }
    } else {
        resize(obuf, &[o, b, lt], "the output of a tile", ops.geo)?;
        let mut out = ArrayViewMut2::from_shape((o, b * lt), &mut obuf[..]).map_err(shape_err)?;
        group_forward(ops, cols, out.view_mut())?;
        // Copied out with the bias, one pass.
        for (bi, mut yn) in yt.outer_iter_mut().enumerate() {
            let src = out.slice(s![.., bi * lt..(bi + 1) * lt]);
            match bias {
                Some(bias) => {
                    for ((mut row, src), &bv) in yn.outer_iter_mut().zip(src.outer_iter()).zip(bias)
                    {
                        row.zip_mut_with(&src, |d, &v| *d = v + bv);
                    }
                }
                None => yn.assign(&src),
            }
        }
    }
    Ok(())
}

/// Bytes of output per GEMM call of a one-image forward tile with a bias, so the bias
/// pass finds the block in L2.
const BIAS_BLOCK_BYTES: usize = 256 << 10;

/// The input gradient of images `n0..n0 + nb` into `dxc` (their rows of dx, zeroed).
pub(super) fn input_grad(
    ops: &Operands<'_>,
    lowering: Lowering,
    dy: ArrayView3<'_, f32>,
    (n0, nb): (usize, usize),
    dxc: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    backward_chunk(ops, lowering, dy, (n0, nb), Some(dxc), false).map(drop)
}

/// The weight gradient `(O, C / groups * kh * kw)` of images `n0..n0 + nb`.
pub(super) fn weight_grad(
    ops: &Operands<'_>,
    lowering: Lowering,
    dy: ArrayView3<'_, f32>,
    (n0, nb): (usize, usize),
) -> Result<Array2<f32>> {
    backward_chunk(ops, lowering, dy, (n0, nb), None, true)
}

/// Both gradients of images `n0..n0 + nb`, each tile lowered once for both: fills
/// `dxc` and returns the weight gradient.
pub(super) fn gradients(
    ops: &Operands<'_>,
    lowering: Lowering,
    dy: ArrayView3<'_, f32>,
    (n0, nb): (usize, usize),
    dxc: ArrayViewMut2<'_, f32>,
) -> Result<Array2<f32>> {
    backward_chunk(ops, lowering, dy, (n0, nb), Some(dxc), true)
}

/// One reduction chunk: images `n0..n0 + nb`, tiles in a fixed order; `dxc` (their
/// rows of dx) is left out when the input gradient is not wanted, and the weight
/// gradient (then returned as zeros) when `want_dw` is false.
fn backward_chunk(
    ops: &Operands<'_>,
    lowering: Lowering,
    dy: ArrayView3<'_, f32>,
    (n0, nb): (usize, usize),
    mut dxc: Option<ArrayViewMut2<'_, f32>>,
    want_dw: bool,
) -> Result<Array2<f32>> {
    let (_, o, l) = dy.dim();
    let (kg, k) = (ops.w.ncols(), ops.geo.col_rows());
    let tile_cols = ops.plan.tile_cols;
    let mut dw = zeroed_partial(o, kg);
    let (mut cbuf, mut dybuf, mut dcbuf) = (Vec::new(), Vec::new(), Vec::new());
    // Tiles of this chunk: (first image, images, first column, columns).
    let per = images_per_tile(tile_cols, l);
    let mut tiles = Vec::new();
    if per > 1 || l <= tile_cols {
        for i in (0..nb).step_by(per) {
            tiles.push((i, per.min(nb - i), 0, l));
        }
    } else {
        for i in 0..nb {
            for l0 in (0..l).step_by(tile_cols) {
                tiles.push((i, 1, l0, tile_cols.min(l - l0)));
            }
        }
    }
    for (i, b, l0, lt) in tiles {
        let n = n0 + i;
        let nc = b * lt;
        let dyt = if b == 1 {
            dy.index_axis(Axis(0), n).slice_move(s![.., l0..l0 + lt])
        } else {
            resize(&mut dybuf, &[o, nc], "grad_out of a tile", ops.geo)?;
            for (oi, dst) in dybuf.chunks_exact_mut(nc).enumerate() {
                for bi in 0..b {
                    let src = dy.slice(s![n + bi, oi, l0..l0 + lt]);
                    let src = src.as_slice().expect("standard layout rows are contiguous");
                    dst[bi * lt..(bi + 1) * lt].copy_from_slice(src);
                }
            }
            ArrayView2::from_shape((o, nc), &dybuf[..]).map_err(shape_err)?
        };
        if want_dw {
            let cols = operand_b(ops, lowering, (n, b, l0, lt), &mut cbuf)?;
            group_weight_grad(ops, dyt, cols, &mut dw)?;
        }
        let Some(dxc) = dxc.as_mut() else { continue };
        if lowering == Lowering::Pointwise && b == 1 {
            // The column matrix is the image itself: write dx directly.
            let dxn = dxc
                .row_mut(i)
                .into_shape_with_order((k, l))
                .map_err(shape_err)?;
            group_col_grad(ops, dyt, dxn.slice_move(s![.., l0..l0 + lt]))?;
            continue;
        }
        resize(
            &mut dcbuf,
            &[k, nc],
            "the column gradient of a tile",
            ops.geo,
        )?;
        let dcols = ArrayViewMut2::from_shape((k, nc), &mut dcbuf[..]).map_err(shape_err)?;
        group_col_grad(ops, dyt, dcols)?;
        for bi in 0..b {
            let mut dxn = dxc.row_mut(i + bi);
            let dxn = dxn.as_slice_mut().expect("dx rows are contiguous");
            match &ops.map {
                Some(map) if lowering == Lowering::Im2col && lt == l => {
                    map.scatter_add(&dcbuf[bi * lt..], nc, dxn)
                }
                _ => col2im_range(&dcbuf[bi * lt..], nc, ops.geo, l0, l0 + lt, dxn),
            }
        }
    }
    Ok(dw)
}
