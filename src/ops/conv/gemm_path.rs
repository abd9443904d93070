//! The GEMM conv path, forward and backward: the output positions of the batch are cut
//! into tiles, each tile's columns are lowered into a small buffer and multiplied by the
//! weights with [`sgemm_par`].
//!
//! A tile is either a run of whole images side by side (small images: one GEMM for
//! several images, `n = images * L`) or a run of output columns of one image (large
//! images: the column buffer stays at [`ConvPlan::tile_cols`] columns instead of the
//! whole `C * kh * kw x L` matrix). The lowering is im2col, or for a 1x1 stride-1
//! unpadded conv ([`Lowering::Pointwise`]) the input itself (no copy for one image).
//!
//! Forward: `y[tile] = W x cols[tile]` per group, then the bias. Backward, per fixed chunk
//! of images (see [`backward_chunk`]): `dW += dy[tile] x cols[tile]^T`,
//! `dcols = W^T x dy[tile]`, `dx += col2im(dcols)`, `db += sum(dy)`.

use ndarray::parallel::prelude::*;
use ndarray::{
    Array1, Array2, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s,
};

use super::{ConvPlan, ForwardPath, Lowering, REDUCTION_CHUNK, shape_err};
use crate::error::Result;
use crate::gemm::sgemm_par;
use crate::limits::{checked_len, try_resize};
use crate::ops::geometry::Conv2dGeometry;
use crate::ops::im2col::{Im2colMap, col2im_range, im2col_range};

/// Fewest tasks (forward) or reduction chunks (backward) to cut a batch into when images
/// are small, so two threads get a balanced share. A constant, never the thread count, so
/// the chunks, and the floating-point sums, are the same on any pool.
const MIN_SPLIT: usize = 8;

/// The shared read-only inputs of one conv.
pub(super) struct Operands<'a> {
    /// The input, (N, C * H * W).
    pub x: ArrayView2<'a, f32>,
    /// The weights, (O, C / groups * kh * kw).
    pub w: ArrayView2<'a, f32>,
    pub geo: &'a Conv2dGeometry,
    pub plan: ConvPlan,
    /// The im2col index map, for small images (whole-image tiles only).
    pub map: Option<Im2colMap>,
}

/// Resizes one of the path's buffers to `dims` multiplied, fallibly.
pub(super) fn resize(
    buf: &mut Vec<f32>,
    dims: &[usize],
    what: &str,
    geo: &Conv2dGeometry,
) -> Result<()> {
    let describe = || format!("{what}, {}", geo.describe());
    let len = checked_len(super::OP, dims, describe)?;
    try_resize(super::OP, buf, len, 0.0, describe)
}

/// Whole images per tile when an image has at most `tile_cols` output positions, else 1.
fn images_per_tile(plan: &ConvPlan, l: usize) -> usize {
    (plan.tile_cols / l.max(1)).max(1)
}

/// Writes the lowered columns `l0..l0 + lt` of images `n0..n0 + b` side by side into
/// `cols` (K rows of `b * lt`).
fn lower(ops: &Operands<'_>, n0: usize, b: usize, l0: usize, lt: usize, cols: &mut [f32]) {
    let nc = b * lt;
    for bi in 0..b {
        let x = ops.x.row(n0 + bi);
        let x = x.as_slice().expect("input rows are contiguous");
        match ops.plan.lowering {
            Lowering::Im2col => match &ops.map {
                Some(map) if lt == ops.geo.col_cols() => map.gather(x, &mut cols[bi * lt..], nc),
                _ => im2col_range(x, ops.geo, l0, l0 + lt, &mut cols[bi * lt..], nc),
            },
            Lowering::Phase => unreachable!("the phase path lowers its own tiles"),
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
    n0: usize,
    b: usize,
    l0: usize,
    lt: usize,
    buf: &'r mut Vec<f32>,
) -> Result<ArrayView2<'r, f32>> {
    let k = ops.geo.col_rows();
    if ops.plan.lowering == Lowering::Pointwise && b == 1 {
        let l = ops.geo.col_cols();
        let x = ops
            .x
            .index_axis_move(Axis(0), n0)
            .into_shape_with_order((k, l))
            .map_err(shape_err)?;
        return Ok(x.slice_move(s![.., l0..l0 + lt]));
    }
    resize(buf, &[k, b, lt], "the column matrix of a tile", ops.geo)?;
    lower(ops, n0, b, l0, lt, buf);
    ArrayView2::from_shape((k, b * lt), &buf[..]).map_err(shape_err)
}

/// Forward into `y` (N, O, L): splits it into disjoint tiles and runs them, on the rayon
/// pool when the plan says so.
pub(super) fn forward(
    ops: &Operands<'_>,
    bias: Option<ArrayView1<'_, f32>>,
    mut y: ArrayViewMut3<'_, f32>,
) -> Result<()> {
    match ops.plan.forward {
        ForwardPath::Direct => return super::direct_path::forward(ops, bias, y),
        ForwardPath::Phase => return super::phase_path::forward(ops, bias, y),
        ForwardPath::Columns if ops.plan.lowering == Lowering::Phase => {
            return super::phase_path::forward(ops, bias, y);
        }
        ForwardPath::Columns => {}
    }
    let (n, _, l) = y.dim();
    let per = images_per_tile(&ops.plan, l);
    let mut tiles: Vec<(usize, usize, ArrayViewMut3<'_, f32>)> = Vec::new();
    if per > 1 || l <= ops.plan.tile_cols {
        let per = per.min(n.div_ceil(MIN_SPLIT)).max(1);
        for (i, chunk) in y.axis_chunks_iter_mut(Axis(0), per).enumerate() {
            tiles.push((i * per, 0, chunk));
        }
    } else {
        for (i, yn) in y.axis_chunks_iter_mut(Axis(0), 1).enumerate() {
            let mut rest = yn;
            let mut l0 = 0;
            while rest.len_of(Axis(2)) > 0 {
                let lt = ops.plan.tile_cols.min(rest.len_of(Axis(2)));
                let (head, tail) = rest.split_at(Axis(2), lt);
                tiles.push((i, l0, head));
                rest = tail;
                l0 += lt;
            }
        }
    }
    let run = |bufs: &mut (Vec<f32>, Vec<f32>),
               (n0, l0, yt): (usize, usize, ArrayViewMut3<'_, f32>)|
     -> Result<()> { forward_tile(ops, bias, n0, l0, yt, bufs) };
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

/// One forward tile: images `n0..n0 + b`, columns `l0..l0 + lt`, output `yt` (b, O, lt).
fn forward_tile(
    ops: &Operands<'_>,
    bias: Option<ArrayView1<'_, f32>>,
    n0: usize,
    l0: usize,
    mut yt: ArrayViewMut3<'_, f32>,
    (cbuf, obuf): &mut (Vec<f32>, Vec<f32>),
) -> Result<()> {
    let (b, o, lt) = yt.dim();
    let g = ops.geo.options.groups;
    let (og, kg) = (o / g, ops.w.ncols());
    // Inside a parallel split each GEMM stays on its thread.
    let par = !ops.plan.parallel;
    let cols = operand_b(ops, n0, b, l0, lt, cbuf)?;
    let gemm_into = |mut out: ArrayViewMut2<'_, f32>| -> Result<()> {
        for gi in 0..g {
            sgemm_par(
                par,
                1.0,
                ops.w.slice(s![gi * og..(gi + 1) * og, ..]),
                cols.slice(s![gi * kg..(gi + 1) * kg, ..]),
                0.0,
                out.slice_mut(s![gi * og..(gi + 1) * og, ..]),
            )?;
        }
        Ok(())
    };
    if b == 1 {
        gemm_into(yt.index_axis_mut(Axis(0), 0))?;
    } else {
        resize(obuf, &[o, b, lt], "the output of a tile", ops.geo)?;
        let mut out = ArrayViewMut2::from_shape((o, b * lt), &mut obuf[..]).map_err(shape_err)?;
        gemm_into(out.view_mut())?;
        for (bi, mut yn) in yt.outer_iter_mut().enumerate() {
            yn.assign(&out.slice(s![.., bi * lt..(bi + 1) * lt]));
        }
    }
    if let Some(bias) = bias {
        for (oi, &bv) in bias.iter().enumerate() {
            yt.slice_mut(s![.., oi, ..]).mapv_inplace(|v| v + bv);
        }
    }
    Ok(())
}

/// Images per reduction chunk of the backward pass: `ceil(N / MIN_SPLIT)`, at most
/// [`REDUCTION_CHUNK`]. Depends on the batch size only.
pub(super) fn chunk_images(n: usize) -> usize {
    n.div_ceil(MIN_SPLIT).clamp(1, REDUCTION_CHUNK)
}

/// Backward: `dx` (N, C * H * W, zeroed), when wanted, is filled per chunk of
/// [`chunk_images`] images; returns one `(dW, db)` partial per chunk, in chunk order.
pub(super) fn backward(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    with_bias: bool,
    dx: Option<ArrayViewMut2<'_, f32>>,
) -> Result<Vec<(Array2<f32>, Array1<f64>)>> {
    let n = dy.len_of(Axis(0));
    let cb = chunk_images(n);
    let mut chunks: Vec<(usize, usize, Option<ArrayViewMut2<'_, f32>>)> = Vec::new();
    let mut rest = dx;
    for n0 in (0..n).step_by(cb) {
        let nb = cb.min(n - n0);
        let head = rest.take().map(|d| {
            let (head, tail) = d.split_at(Axis(0), nb);
            rest = Some(tail);
            head
        });
        chunks.push((n0, nb, head));
    }
    let want_dx = chunks.iter().any(|c| c.2.is_some());
    let plan = ops.plan;
    // The direct path's weight gradient serves every groups-of-1 conv; only its input
    // gradient needs several input channels to fill the vectors, so with fewer the
    // column path adds dx alone. 1 thread, weights-only backward ms, columns -> direct:
    // seed_l1 0.38 -> 0.24 (N = 100), 4.35 -> 2.48 (N = 1000); nb_32x1x5 3.74 -> 2.62.
    let direct = (plan.direct_backward || ops.geo.options.groups == 1)
        .then(|| super::direct_path::Backward::new(ops, want_dx && plan.direct_backward))
        .transpose()?;
    let columns = |n0: usize,
                   nb: usize,
                   dxc: Option<ArrayViewMut2<'_, f32>>,
                   with_bias: bool,
                   want_dw: bool| {
        if plan.lowering == Lowering::Phase {
            super::phase_path::backward_chunk(ops, dy, with_bias, n0, nb, dxc, want_dw)
        } else {
            backward_chunk(ops, dy, with_bias, n0, nb, dxc, want_dw)
        }
    };
    let run = |(n0, nb, dxc): (usize, usize, Option<ArrayViewMut2<'_, f32>>)| match &direct {
        Some(d) if plan.direct_backward => d.chunk(ops, dy, with_bias, n0, nb, dxc),
        Some(d) => {
            let (dw, db) = d.chunk(ops, dy, with_bias, n0, nb, None)?;
            if dxc.is_some() {
                columns(n0, nb, dxc, false, false)?;
            }
            Ok((dw, db))
        }
        None => columns(n0, nb, dxc, with_bias, true),
    };
    if ops.plan.parallel {
        chunks.into_par_iter().with_max_len(1).map(run).collect()
    } else {
        chunks.into_iter().map(run).collect()
    }
}

/// One reduction chunk: images `n0..n0 + nb`, tiles in a fixed order; `dxc` (their
/// rows of dx) is left out when the input gradient is not wanted, and the weight
/// gradient (then returned as zeros) when `want_dw` is false.
fn backward_chunk(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    with_bias: bool,
    n0: usize,
    nb: usize,
    mut dxc: Option<ArrayViewMut2<'_, f32>>,
    want_dw: bool,
) -> Result<(Array2<f32>, Array1<f64>)> {
    let (_, o, l) = dy.dim();
    let g = ops.geo.options.groups;
    let (og, kg, k) = (o / g, ops.w.ncols(), ops.geo.col_rows());
    let par = !ops.plan.parallel;
    let mut dw = Array2::<f32>::zeros((o, kg));
    let mut db = Array1::<f64>::zeros(o);
    let (mut cbuf, mut dybuf, mut dcbuf) = (Vec::new(), Vec::new(), Vec::new());
    // Tiles of this chunk: (first image, images, first column, columns).
    let per = images_per_tile(&ops.plan, l);
    let mut tiles = Vec::new();
    if per > 1 || l <= ops.plan.tile_cols {
        for i in (0..nb).step_by(per) {
            tiles.push((i, per.min(nb - i), 0, l));
        }
    } else {
        for i in 0..nb {
            for l0 in (0..l).step_by(ops.plan.tile_cols) {
                tiles.push((i, 1, l0, ops.plan.tile_cols.min(l - l0)));
            }
        }
    }
    for (i, b, l0, lt) in tiles {
        let n = n0 + i;
        let nc = b * lt;
        let cols = if want_dw {
            Some(operand_b(ops, n, b, l0, lt, &mut cbuf)?)
        } else {
            None
        };
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
        let pointwise_direct = ops.plan.lowering == Lowering::Pointwise && b == 1;
        if !pointwise_direct && dxc.is_some() {
            resize(
                &mut dcbuf,
                &[k, nc],
                "the column gradient of a tile",
                ops.geo,
            )?;
        }
        for gi in 0..g {
            let (orange, krange) = (gi * og..(gi + 1) * og, gi * kg..(gi + 1) * kg);
            let dy_g = dyt.slice(s![orange.clone(), ..]);
            // dW[g] += dy[g] (Og, nc) x cols[g]^T (nc, Kg)
            if let Some(cols) = &cols {
                sgemm_par(
                    par,
                    1.0,
                    dy_g,
                    cols.slice(s![krange.clone(), ..]).t(),
                    1.0,
                    dw.slice_mut(s![orange.clone(), ..]),
                )?;
            }
            // dcols[g] = W[g]^T (Kg, Og) x dy[g] (Og, nc)
            let Some(dxc) = dxc.as_mut() else { continue };
            let wt = ops.w.slice(s![orange, ..]);
            if pointwise_direct {
                // The column matrix is the image itself: write dx directly.
                let dxn = dxc
                    .row_mut(i)
                    .into_shape_with_order((k, l))
                    .map_err(shape_err)?;
                let mut dxn = dxn.slice_move(s![krange, l0..l0 + lt]);
                sgemm_par(par, 1.0, wt.t(), dy_g, 0.0, dxn.view_mut())?;
            } else {
                let mut dcols =
                    ArrayViewMut2::from_shape((k, nc), &mut dcbuf[..]).map_err(shape_err)?;
                sgemm_par(par, 1.0, wt.t(), dy_g, 0.0, dcols.slice_mut(s![krange, ..]))?;
            }
        }
        if let (false, Some(dxc)) = (pointwise_direct, dxc.as_mut()) {
            for bi in 0..b {
                let mut dxn = dxc.row_mut(i + bi);
                let dxn = dxn.as_slice_mut().expect("dx rows are contiguous");
                match &ops.map {
                    Some(map) if lt == l => map.scatter_add(&dcbuf[bi * lt..], nc, dxn),
                    _ => col2im_range(&dcbuf[bi * lt..], nc, ops.geo, l0, l0 + lt, dxn),
                }
            }
        }
    }
    if with_bias {
        db = bias_partial(dy, n0, nb);
    }
    Ok((dw, db))
}

/// `sum(v)` in f64 over eight interleaved partial sums, which vectorise (one running
/// sum waits on each add's latency: it took 3% of a training step of the notebook net).
fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f64::from(x);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    acc.iter().sum::<f64>() + tail
}

/// The bias gradient of images `n0..n0 + nb`: `sum(dy[n, o, :])` per channel, in f64.
pub(super) fn bias_partial(dy: ArrayView3<'_, f32>, n0: usize, nb: usize) -> Array1<f64> {
    let mut db = Array1::<f64>::zeros(dy.len_of(Axis(1)));
    for i in 0..nb {
        for (acc, row) in db
            .iter_mut()
            .zip(dy.index_axis(Axis(0), n0 + i).outer_iter())
        {
            *acc += match row.as_slice() {
                Some(row) => sum_f64(row),
                None => row.iter().map(|&v| f64::from(v)).sum::<f64>(),
            };
        }
    }
    db
}
