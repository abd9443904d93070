//! The phase conv path: each image is split into its polyphase planes
//! ([`crate::ops::geometry::PhaseGeometry`]), so every row of its *extended* column
//! matrix (`ext = out_h * cols` positions, the `cols - out_w` extra columns of each
//! output row discarded) is one contiguous run of the planes instead of a gather.
//!
//! Forward, per image: no column matrix at all. The B-indirect kernel
//! ([`crate::gemm`]'s `indirect_b_gemm`) reads each tap's run of the planes in place,
//! `out (O, ext) = W x planes[tap + e]`, which comes out channel-major; the real columns
//! of `out` plus the bias go to `y`. The default forward of layers with few input
//! channels (the notebook's first layer), where the direct path's tile of output
//! channels would run half empty.
//!
//! Backward, per tile of whole images side by side: the extended column matrix is built
//! by contiguous copies, `dy` is spread onto the extended grid (zero in the discarded
//! columns), `dW += dy_ext x cols^T` (the discarded columns of `cols` are zeroed first,
//! so values the conv never reads cannot reach `dW`), `dcols = W^T x dy_ext`,
//! `dx += merge(scatter(dcols))`, where the scatter is one contiguous add per row.
//!
//! The extra columns cost `cols / out_w - 1` more work (1/7 for the notebook's first
//! layer) and save the im2col gather, which dominated these shapes.

use std::cell::RefCell;

use ndarray::{
    Array1, Array2, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s,
};

use super::gemm_path::{Operands, bias_partial, resize};
use super::shape_err;
use super::{for_each_image_tile, with_scratch};
use crate::error::Result;
use crate::gemm::{Kernel, indirect_b_gemm, pack_a_panels, sgemm_par};
use crate::ops::geometry::PhaseGeometry;
use crate::ops::im2col::{
    phase_gather, phase_merge_add, phase_scatter_add, phase_split, phase_taps,
};

/// Whole images per tile: as many extended images as `tile_cols` holds, at least one.
fn images_per_tile(ops: &Operands<'_>, pg: &PhaseGeometry) -> usize {
    (ops.plan.tile_cols / pg.ext.max(1)).max(1)
}

/// Scratch buffers of one worker: phase planes, extended columns, GEMM output (forward)
/// or extended `dy` (backward), and the column gradient.
#[derive(Default)]
struct Scratch {
    planes: Vec<f32>,
    cols: Vec<f32>,
    out: Vec<f32>,
    dcols: Vec<f32>,
}

thread_local! {
    /// Each thread's scratch, reused across calls: fresh buffers of a few hundred KiB
    /// per call cost page faults and zeroing that showed as 12% of the notebook layers'
    /// forward time. Taken out while in use, so a re-entrant call just starts afresh.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl Scratch {
    /// The extended column matrix (K, b * ext) of images `n0..n0 + b`.
    fn lower(&mut self, ops: &Operands<'_>, pg: &PhaseGeometry, n0: usize, b: usize) -> Result<()> {
        let geo = ops.geo;
        let ld = b * pg.ext;
        resize_planes(&mut self.planes, geo, pg, 0)?;
        resize(&mut self.cols, &[geo.col_rows(), ld], COLS, geo)?;
        for bi in 0..b {
            let x = ops.x.row(n0 + bi);
            let x = x.as_slice().expect("input rows are contiguous");
            phase_split(x, geo, pg, &mut self.planes);
            phase_gather(&self.planes, geo, pg, &mut self.cols[bi * pg.ext..], ld);
        }
        Ok(())
    }
}

const COLS: &str = "the extended column matrix of the phase path";

/// Resizes `planes` to the phase planes of one image plus `extra` floats, fallibly: far
/// padding or stride gives planes far larger than memory.
fn resize_planes(
    planes: &mut Vec<f32>,
    geo: &crate::ops::geometry::Conv2dGeometry,
    pg: &PhaseGeometry,
    extra: usize,
) -> Result<()> {
    let len = planes_len(geo, pg)?;
    resize(planes, &[len.saturating_add(extra)], PLANES, geo)
}

const PLANES: &str = "the phase planes of an image";

/// Floats of the phase planes of one image, or [`crate::Error::Alloc`] when that
/// overflows (every tap offset is within them).
fn planes_len(geo: &crate::ops::geometry::Conv2dGeometry, pg: &PhaseGeometry) -> Result<usize> {
    let (sh, sw) = geo.options.stride;
    let dims = [geo.in_channels, sh, sw, pg.plane, size_of::<f32>()];
    let bytes =
        crate::limits::checked_len(super::OP, &dims, || format!("{PLANES}, {}", geo.describe()))?;
    Ok(bytes / size_of::<f32>())
}

/// Forward into `y` (N, O, L): tiles of whole images, on the rayon pool when the plan
/// says so. No column matrix: the B-indirect kernel reads each tap's run of the phase
/// planes in place and writes the extended output channel-major.
pub(super) fn forward(
    ops: &Operands<'_>,
    bias: Option<ArrayView1<'_, f32>>,
    y: ArrayViewMut3<'_, f32>,
) -> Result<()> {
    let geo = ops.geo;
    let pg = geo.phase();
    let kernel = Kernel::selected();
    let g = geo.options.groups;
    let (og, kg) = (geo.out_channels / g, ops.w.ncols());
    // Per group: the weights packed for the kernel, and the taps' starts in the planes
    // (which must be addressable).
    planes_len(geo, &pg)?;
    let taps = phase_taps(geo, &pg);
    let groups: Vec<(Vec<f32>, &[usize])> = (0..g)
        .map(|gi| {
            let w = ops.w.slice(s![gi * og..(gi + 1) * og, ..]);
            (pack_a_panels(kernel, w), &taps[gi * kg..(gi + 1) * kg])
        })
        .collect();
    for_each_image_tile(y, ops.plan.parallel, |n0, yt| {
        with_scratch(&SCRATCH, |scratch| {
            forward_tile(ops, &pg, kernel, &groups, bias, n0, yt, scratch)
        })
    })
}

/// One forward tile: images `n0..n0 + b` into `yt` (b, O, L).
#[allow(clippy::too_many_arguments)]
fn forward_tile(
    ops: &Operands<'_>,
    pg: &PhaseGeometry,
    kernel: Kernel,
    groups: &[(Vec<f32>, &[usize])],
    bias: Option<ArrayView1<'_, f32>>,
    n0: usize,
    mut yt: ArrayViewMut3<'_, f32>,
    scratch: &mut Scratch,
) -> Result<()> {
    let geo = ops.geo;
    let (o, ow, ext) = (geo.out_channels, geo.out_w, pg.ext);
    let og = o / groups.len().max(1);
    // The kernel reads each tap's run up to a whole register tile past `ext`.
    let extra = kernel.tile_cols() + pg.cols;
    resize_planes(&mut scratch.planes, geo, pg, extra)?;
    resize(
        &mut scratch.out,
        &[o, ext],
        "the output of the phase path",
        geo,
    )?;
    for (bi, mut yn) in yt.outer_iter_mut().enumerate() {
        let x = ops.x.row(n0 + bi);
        let x = x.as_slice().expect("input rows are contiguous");
        phase_split(x, geo, pg, &mut scratch.planes);
        for (gi, (a, taps)) in groups.iter().enumerate() {
            let out = &mut scratch.out[gi * og * ext..(gi + 1) * og * ext];
            indirect_b_gemm(kernel, a, og, &scratch.planes, taps, ext, out, ext);
        }
        // The real columns, plus the bias.
        for (oi, mut yo) in yn.outer_iter_mut().enumerate() {
            let bv = bias.map_or(0.0, |b| b[oi]);
            let yo = yo.as_slice_mut().expect("output rows are contiguous");
            let src = &scratch.out[oi * ext..(oi + 1) * ext];
            for (dst, src) in yo.chunks_exact_mut(ow).zip(src.chunks_exact(pg.cols)) {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v + bv;
                }
            }
        }
    }
    Ok(())
}

/// One reduction chunk of the backward pass: images `n0..n0 + nb`, tiles in a fixed
/// order; `dxc` (their rows of dx) is left out when the input gradient is not wanted.
pub(super) fn backward_chunk(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    with_bias: bool,
    n0: usize,
    nb: usize,
    dxc: Option<ArrayViewMut2<'_, f32>>,
    want_dw: bool,
) -> Result<(Array2<f32>, Array1<f64>)> {
    with_scratch(&SCRATCH, |scratch| {
        backward_chunk_in(ops, dy, with_bias, n0, nb, dxc, want_dw, scratch)
    })
}

/// [`backward_chunk`] with the thread's scratch.
#[allow(clippy::too_many_arguments)]
fn backward_chunk_in(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    with_bias: bool,
    n0: usize,
    nb: usize,
    mut dxc: Option<ArrayViewMut2<'_, f32>>,
    want_dw: bool,
    scratch: &mut Scratch,
) -> Result<(Array2<f32>, Array1<f64>)> {
    let geo = ops.geo;
    let pg = geo.phase();
    let o = dy.len_of(Axis(1));
    let g = geo.options.groups;
    let (og, kg, k) = (o / g, ops.w.ncols(), geo.col_rows());
    let (ow, pc) = (geo.out_w, pg.cols);
    let par = !ops.plan.parallel;
    let mut dw = Array2::<f32>::zeros((o, kg));

    let per = images_per_tile(ops, &pg);
    for i in (0..nb).step_by(per) {
        let b = per.min(nb - i);
        let ld = b * pg.ext;
        if want_dw {
            scratch.lower(ops, &pg, n0 + i, b)?;
        } else {
            // Only dx: no columns; the planes buffer serves the scatter.
            resize_planes(&mut scratch.planes, geo, &pg, 0)?;
        }
        // The discarded columns read pixels the conv never reads: zero them for dW.
        if want_dw && pc > ow {
            for row in scratch.cols.chunks_exact_mut(ld) {
                for ext_row in row.chunks_exact_mut(pc) {
                    ext_row[ow..].fill(0.0);
                }
            }
        }
        // dy on the extended grid, zero in the discarded columns.
        let what = "grad_out on the extended grid of the phase path";
        resize(&mut scratch.out, &[o, ld], what, geo)?;
        for (oi, dst) in scratch.out.chunks_exact_mut(ld).enumerate() {
            for bi in 0..b {
                let src = dy.slice(s![n0 + i + bi, oi, ..]);
                let src = src.as_slice().expect("standard layout rows are contiguous");
                let dst = &mut dst[bi * pg.ext..(bi + 1) * pg.ext];
                for (d, s) in dst.chunks_exact_mut(pc).zip(src.chunks_exact(ow)) {
                    d[..ow].copy_from_slice(s);
                    d[ow..].fill(0.0);
                }
            }
        }
        let cols = if want_dw {
            Some(ArrayView2::from_shape((k, ld), &scratch.cols[..]).map_err(shape_err)?)
        } else {
            None
        };
        let dyt = ArrayView2::from_shape((o, ld), &scratch.out[..]).map_err(shape_err)?;
        if dxc.is_some() {
            resize(&mut scratch.dcols, &[k, ld], COLS, geo)?;
        }
        for gi in 0..g {
            let (orange, krange) = (gi * og..(gi + 1) * og, gi * kg..(gi + 1) * kg);
            let dy_g = dyt.slice(s![orange.clone(), ..]);
            // dW[g] += dy[g] (Og, ld) x cols[g]^T (ld, Kg)
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
            if dxc.is_some() {
                // dcols[g] = W[g]^T (Kg, Og) x dy[g] (Og, ld)
                let mut dcols = ArrayViewMut2::from_shape((k, ld), &mut scratch.dcols[..])
                    .map_err(shape_err)?;
                let wt = ops.w.slice(s![orange, ..]);
                sgemm_par(par, 1.0, wt.t(), dy_g, 0.0, dcols.slice_mut(s![krange, ..]))?;
            }
        }
        if let Some(dxc) = dxc.as_mut() {
            for bi in 0..b {
                let planes = &mut scratch.planes;
                planes.fill(0.0);
                phase_scatter_add(&scratch.dcols[bi * pg.ext..], ld, geo, &pg, planes);
                let mut dxn = dxc.row_mut(i + bi);
                let dxn = dxn.as_slice_mut().expect("dx rows are contiguous");
                phase_merge_add(planes, geo, &pg, dxn);
            }
        }
    }
    let db = if with_bias {
        bias_partial(dy, n0, nb)
    } else {
        Array1::zeros(o)
    };
    Ok((dw, db))
}
