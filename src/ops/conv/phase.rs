//! The phase algorithm: each image is split into its polyphase ("space to depth")
//! planes ([`PhaseGeometry`], at the end of this file), so every tap of the conv reads
//! one contiguous run of a plane on the *extended* output grid (`ext = out_h * cols`
//! positions, the `cols - out_w` extra columns of each output row discarded), whatever
//! the stride, padding or dilation. Any geometry ([`supports`]).
//!
//! - [`forward`], per image: no column matrix. The B-indirect kernel
//!   ([`crate::gemm`]'s `indirect_b_gemm_real`) reads each tap's run of the planes in
//!   place, `out (O, ext) = W x planes[tap + e]` per group, which comes out
//!   channel-major; it stores the real columns of `out`, plus the bias, straight into
//!   `y` (on AVX-512 one register compress and masked store per vector; on a Zen 4 the
//!   tiles run row by row on 256-bit vectors when the rows' real columns fill them, so
//!   no lane computes a discarded column). The default forward of layers with few input
//!   channels or groups, where the direct path's tile of output channels would run half
//!   empty or cannot run.
//! - Backward, per tile of whole images side by side: the extended column matrix is
//!   built by contiguous copies and `dy` is spread onto the extended grid (zero in the
//!   discarded columns). [`weight_grad`]: `dW += dy_ext x cols^T` (the discarded
//!   columns of `cols` zeroed first, so values the conv never reads cannot reach
//!   `dW`). [`input_grad`]: `dcols = W^T x dy_ext`, `dx += merge(scatter(dcols))`, the
//!   scatter one contiguous add per row, with no column matrix built. [`gradients`]
//!   does both on one lowering per tile.
//!
//! The extra columns cost `cols / out_w - 1` more work (1/7 for the notebook's first
//! layer) and save the im2col gather, which dominated these shapes.

use std::cell::RefCell;

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s};

use super::common::{
    OP, Operands, Out, for_each_image_block, for_each_image_tile, group_col_grad,
    group_weight_grad, images_per_tile, resize, shape_err, with_scratch, zeroed_partial,
};
use super::layout::{PhasePlane, phase_planes};
use crate::error::Result;
use crate::gemm::{Kernel, RealColumns, indirect_b_gemm_real, pack_a_panels};
use crate::ops::geometry::Conv2dGeometry;
use crate::ops::im2col::valid_range;

/// Any geometry (buffers too large for memory fail as [`crate::Error::Alloc`]).
pub(super) fn supports(_geo: &Conv2dGeometry) -> bool {
    true
}

/// Scratch buffers of one worker: phase planes, and for the backward the extended
/// columns, the extended `dy` and the column gradient.
#[derive(Default)]
struct Scratch {
    planes: Vec<f32>,
    cols: Vec<f32>,
    out: Vec<f32>,
    dcols: Vec<f32>,
    /// The planes of each image of [`forward_panels`]'s batch.
    batch_planes: Vec<Vec<f32>>,
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
            phase_split(ops.plan.kernel, x, geo, pg, &mut self.planes);
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
    geo: &Conv2dGeometry,
    pg: &PhaseGeometry,
    extra: usize,
) -> Result<()> {
    let len = planes_len(geo, pg)?;
    resize(planes, &[len.saturating_add(extra)], PLANES, geo)
}

const PLANES: &str = "the phase planes of an image";

/// Floats of the phase planes of one image, or [`crate::Error::Alloc`] when that
/// overflows (every tap offset is within them).
fn planes_len(geo: &Conv2dGeometry, pg: &PhaseGeometry) -> Result<usize> {
    let (sh, sw) = geo.options.stride;
    let dims = [geo.in_channels, sh, sw, pg.plane, size_of::<f32>()];
    let bytes = crate::limits::checked_len(OP, &dims, || format!("{PLANES}, {}", geo.describe()))?;
    Ok(bytes / size_of::<f32>())
}

/// Forward into `y` (N, O, L): tiles of whole images, on the rayon pool when the plan
/// says so. No column matrix: the B-indirect kernel reads each tap's run of the phase
/// planes in place and writes the extended output channel-major.
pub(super) fn forward(
    ops: &Operands<'_>,
    bias: Option<ArrayView1<'_, f32>>,
    y: Out<'_>,
) -> Result<()> {
    let geo = ops.geo;
    let pg = PhaseGeometry::new(geo);
    let kernel = ops.plan.kernel;
    let g = geo.options.groups;
    let (og, kg) = (geo.out_channels / g, ops.w.ncols());
    // Per group: the weights packed for the kernel, and the taps' starts in the planes
    // (which must be addressable).
    planes_len(geo, &pg)?;
    let taps = phase_taps(geo, &pg);
    let groups: Vec<(Vec<f32>, &[usize])> = (0..g)
        .map(|gi| {
            let w = ops.w.slice(s![gi * og..(gi + 1) * og, ..]);
            Ok((pack_a_panels(kernel, w, OP)?, &taps[gi * kg..(gi + 1) * kg]))
        })
        .collect::<Result<_>>()?;
    let threads = rayon::current_num_threads();
    if ops.plan.parallel && super::common::splits_images(geo.batch, threads) {
        return forward_panels(ops, &pg, kernel, &groups, bias, y);
    }
    for_each_image_tile(y, ops.plan.parallel, |n0, yt| {
        with_scratch(&SCRATCH, |scratch| {
            forward_tile(ops, &pg, kernel, &groups, bias, n0, yt, scratch)
        })
    })
}

/// Tasks per thread of [`forward_panels`].
const PANEL_TASKS_PER_THREAD: usize = 2;

/// The forward of a batch the pool cannot share by images
/// ([`super::common::splits_images`]): every image's planes split once, then each
/// image's output channels, in runs of whole panels of the packed weights, shared over
/// the pool (a row's sums do not depend on the other rows of its panel or call, so the
/// bits are [`forward_tile`]'s). Zen 4 (EPYC family 25 model 17), 2 threads, fwd ms,
/// medians of 4, image tasks -> panels: one image of 3 x 224x224 -> 64, 7x7 stride 2
/// 2.30 -> 1.32-1.54; of 3 x 32x32 -> 64 0.041 -> 0.027-0.030; three of 3 x 64x64 ->
/// 64 0.35 -> 0.25; but one image of 3 x 128x128 -> 32, stride 2, gains nothing (0.098
/// -> 0.095).
fn forward_panels(
    ops: &Operands<'_>,
    pg: &PhaseGeometry,
    kernel: Kernel,
    groups: &[(Vec<f32>, &[usize])],
    bias: Option<ArrayView1<'_, f32>>,
    y: Out<'_>,
) -> Result<()> {
    use rayon::prelude::*;
    let geo = ops.geo;
    let (n, o, l) = (geo.batch, geo.out_channels, geo.col_cols());
    let og = o / groups.len().max(1);
    if og * l == 0 {
        return Ok(());
    }
    let mr = kernel.tile().0;
    let panels = og.div_ceil(mr);
    let tasks = PANEL_TASKS_PER_THREAD * rayon::current_num_threads();
    // Rows per run: whole panels.
    let rows = panels.div_ceil((tasks / groups.len().max(1)).max(1)) * mr;
    let bias: Option<Vec<f32>> = bias.map(|b| b.to_vec());
    let extra = kernel.tile_cols() + pg.cols;
    with_scratch(&SCRATCH, |scratch| {
        let planes = &mut scratch.batch_planes;
        planes.resize_with(n, Vec::new);
        for (ni, planes) in planes.iter_mut().enumerate() {
            resize_planes(planes, geo, pg, extra)?;
            let x = ops.x.row(ni);
            let x = x.as_slice().expect("input rows are contiguous");
            phase_split(kernel, x, geo, pg, planes);
        }
        let (planes, bias) = (&*planes, bias.as_deref());
        for_each_image_block(y, n, false, |_, mut yt| {
            let yt = yt.as_slice_mut().expect("the output is contiguous");
            // (image, group, first row, its rows of y).
            let runs: Vec<_> = yt
                .chunks_exact_mut(o * l)
                .enumerate()
                .flat_map(|(ni, yn)| {
                    yn.chunks_exact_mut(og * l)
                        .enumerate()
                        .flat_map(move |(gi, yg)| {
                            yg.chunks_mut(rows * l)
                                .enumerate()
                                .map(move |(ri, yr)| (ni, gi, ri * rows, yr))
                        })
                })
                .collect();
            runs.into_par_iter().for_each(|(ni, gi, r0, yr)| {
                let (a, taps) = &groups[gi];
                let k = taps.len();
                let m = yr.len() / l;
                let to = RealColumns {
                    cols: pg.cols,
                    ow: geo.out_w,
                    bias: bias.map(|b| &b[gi * og + r0..gi * og + r0 + m]),
                };
                let a = &a[r0 * k..];
                indirect_b_gemm_real(kernel, a, m, &planes[ni], taps, pg.ext, to, yr, l);
            });
            Ok(())
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
    let (o, ext, l) = (geo.out_channels, pg.ext, geo.col_cols());
    let og = o / groups.len().max(1);
    if og * l == 0 {
        return Ok(());
    }
    // The kernel reads each tap's run up to a whole register tile past `ext`.
    let extra = kernel.tile_cols() + pg.cols;
    resize_planes(&mut scratch.planes, geo, pg, extra)?;
    let bias: Option<Vec<f32>> = bias.map(|b| b.to_vec());
    for (bi, mut yn) in yt.outer_iter_mut().enumerate() {
        let x = ops.x.row(n0 + bi);
        let x = x.as_slice().expect("input rows are contiguous");
        phase_split(kernel, x, geo, pg, &mut scratch.planes);
        let yn = yn.as_slice_mut().expect("output images are contiguous");
        // Each group's channels, their real columns stored by the kernel, plus the bias.
        for (gi, ((a, taps), yg)) in groups.iter().zip(yn.chunks_exact_mut(og * l)).enumerate() {
            let to = RealColumns {
                cols: pg.cols,
                ow: geo.out_w,
                bias: bias.as_deref().map(|b| &b[gi * og..(gi + 1) * og]),
            };
            indirect_b_gemm_real(kernel, a, og, &scratch.planes, taps, ext, to, yg, l);
        }
    }
    Ok(())
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

/// The weight gradient `(O, C / groups * kh * kw)` of images `n0..n0 + nb`.
pub(super) fn weight_grad(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
) -> Result<Array2<f32>> {
    backward_chunk(ops, dy, chunk, None, true)
}

/// Both gradients of images `n0..n0 + nb`, each tile lowered once for both: fills
/// `dxc` and returns the weight gradient.
pub(super) fn gradients(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
    dxc: ArrayViewMut2<'_, f32>,
) -> Result<Array2<f32>> {
    backward_chunk(ops, dy, chunk, Some(dxc), true)
}

/// One reduction chunk, with the thread's scratch: `dxc` is left out when the input
/// gradient is not wanted, and the weight gradient (then zeros) when `want_dw` is false.
fn backward_chunk(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
    dxc: Option<ArrayViewMut2<'_, f32>>,
    want_dw: bool,
) -> Result<Array2<f32>> {
    with_scratch(&SCRATCH, |scratch| {
        backward_chunk_in(ops, dy, chunk, dxc, want_dw, scratch)
    })
}

/// [`backward_chunk`] with the thread's scratch.
fn backward_chunk_in(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    (n0, nb): (usize, usize),
    mut dxc: Option<ArrayViewMut2<'_, f32>>,
    want_dw: bool,
    scratch: &mut Scratch,
) -> Result<Array2<f32>> {
    let geo = ops.geo;
    let pg = PhaseGeometry::new(geo);
    let o = dy.len_of(Axis(1));
    let (kg, k) = (ops.w.ncols(), geo.col_rows());
    let (ow, pc) = (geo.out_w, pg.cols);
    let mut dw = zeroed_partial(o, kg);

    let per = images_per_tile(ops.plan.tile_cols, pg.ext);
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
        if let Some(cols) = cols {
            group_weight_grad(ops, dyt, cols, &mut dw)?;
        }
        if dxc.is_some() {
            let dcols =
                ArrayViewMut2::from_shape((k, ld), &mut scratch.dcols[..]).map_err(shape_err)?;
            group_col_grad(ops, dyt, dcols)?;
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
    Ok(dw)
}

/// The polyphase ("space to depth") layout of one padded input image, which turns any
/// strided, dilated, padded conv into shifted contiguous reads.
///
/// Channel `c` of the padded image is split into `sh * sw` planes, plane `(py, px)`
/// holding the padded pixels `(r * sh + py, q * sw + px)` at `(r, q)`, for `r < rows`
/// and `q < cols`. Tap `(i, j)` of output `(oy, ox)` reads padded pixel
/// `(oy * sh + i * dh, ox * sw + j * dw)`, which is plane
/// `((i * dh) % sh, (j * dw) % sw)` at `(oy + (i * dh) / sh, ox + (j * dw) / sw)`. So on
/// the *extended* output grid `e = oy * cols + ox` (`ox < cols`, the columns from
/// `out_w` on are discarded), each im2col row is one contiguous run of `ext` floats of a
/// plane ([`PhaseGeometry::tap`]). Planes are `plane` floats apart: the last
/// discarded columns read up to `cols - out_w` floats past a plane's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PhaseGeometry {
    /// Rows of a plane: `out_h + (kh - 1) * dh / sh`.
    pub rows: usize,
    /// Columns of a plane, and of the extended output grid: `out_w + (kw - 1) * dw / sw`.
    pub cols: usize,
    /// Floats from one plane to the next: `rows * cols + cols - out_w`.
    pub plane: usize,
    /// Extended output positions of one image: `out_h * cols`.
    pub ext: usize,
}

impl PhaseGeometry {
    /// The polyphase layout of one image of `geo`.
    pub(super) fn new(geo: &Conv2dGeometry) -> PhaseGeometry {
        let (kh, kw) = geo.kernel;
        let (sh, sw) = geo.options.stride;
        let (dh, dw) = geo.options.dilation;
        let rows = geo.out_h + (kh - 1) * dh / sh;
        let cols = geo.out_w + (kw - 1) * dw / sw;
        // Saturating: a far-padded or far-dilated image may have planes larger than
        // memory; the chooser then never picks the phase path, and the path's buffer
        // sizes fail as too large to allocate.
        PhaseGeometry {
            rows,
            cols,
            plane: rows.saturating_mul(cols).saturating_add(cols - geo.out_w),
            ext: geo.out_h.saturating_mul(cols),
        }
    }

    /// Where tap `(c, i, j)` starts in the phase planes of an image: row
    /// `(c * kh + i) * kw + j` of the extended column matrix is the `ext` floats from
    /// there.
    fn tap(&self, geo: &Conv2dGeometry, c: usize, i: usize, j: usize) -> usize {
        let (sh, sw) = geo.options.stride;
        let (dh, dw) = geo.options.dilation;
        let (py, qy) = ((i * dh) % sh, (i * dh) / sh);
        let (px, qx) = ((j * dw) % sw, (j * dw) / sw);
        ((c * sh + py) * sw + px) * self.plane + qy * self.cols + qx
    }
}

/// Splits image `x` (C, H, W, row-major) into its phase planes: `C * sh * sw` planes of
/// `pg.plane` floats in `planes`, plane `(c, py, px)` at `((c * sh + py) * sw + px) *
/// pg.plane`. Every float of the planes is written (zero in the padding and the slack).
fn phase_split(
    kernel: Kernel,
    x: &[f32],
    geo: &Conv2dGeometry,
    pg: &PhaseGeometry,
    planes: &mut [f32],
) {
    debug_assert_eq!(x.len(), geo.in_channels * geo.in_h * geo.in_w);
    phase_planes(
        kernel,
        planes,
        x,
        geo.options.stride.1,
        image_planes(geo, pg),
    );
}

/// The adjoint of [`phase_split`]: adds the planes' values at real pixels into `dx`
/// (C, H, W); the padding and slack are dropped.
fn phase_merge_add(planes: &[f32], geo: &Conv2dGeometry, pg: &PhaseGeometry, dx: &mut [f32]) {
    debug_assert_eq!(dx.len(), geo.in_channels * geo.in_h * geo.in_w);
    let sw = geo.options.stride.1;
    for p in image_planes(geo, pg) {
        let ((r0, r1), (qlo, qhi)) = (p.rows_real, p.cols_real);
        for (i, r) in (r0..r1).enumerate() {
            let row = &planes[p.start + r * p.cols..][qlo..qhi];
            let xoff = p.xoff + i * p.xstep;
            if sw == 1 {
                for (d, &v) in dx[xoff..xoff + row.len()].iter_mut().zip(row) {
                    *d += v;
                }
            } else {
                for (d, &v) in dx[xoff..].iter_mut().step_by(sw).zip(row) {
                    *d += v;
                }
            }
        }
    }
}

/// The planes of an image, in order: plane `(c, py, px)` holds the padded pixels
/// `(r * sh + py, q * sw + px)` of channel `c` at `(r, q)`; its real rows and columns
/// are those inside the image.
fn image_planes<'a>(
    geo: &'a Conv2dGeometry,
    pg: &'a PhaseGeometry,
) -> impl Iterator<Item = PhasePlane> + 'a {
    let (h, w) = (geo.in_h, geo.in_w);
    let (sh, sw) = geo.options.stride;
    let (ph, pw) = geo.options.padding;
    (0..geo.in_channels * sh * sw).map(move |p| {
        let (c, py, px) = (p / (sh * sw), p / sw % sh, p % sw);
        let (r0, r1) = valid_range(py, sh, ph, 1, h, pg.rows);
        let (qlo, qhi) = valid_range(px, sw, pw, 1, w, pg.cols);
        // The first real pixel, when there is one (else never read).
        let xoff = if r1 > r0 && qhi > qlo {
            (c * h + r0 * sh + py - ph) * w + qlo * sw + px - pw
        } else {
            0
        };
        PhasePlane {
            start: p * pg.plane,
            rows: pg.rows,
            cols: pg.cols,
            slack: pg.plane - pg.rows * pg.cols,
            rows_real: (r0, r1),
            cols_real: (qlo, qhi),
            xoff,
            xstep: sh * w,
        }
    })
}

/// Fills the extended column matrix of one image from its phase planes: row `r` (tap
/// `(c, i, j)`) goes to `cols[r * ld..r * ld + pg.ext]`, one contiguous copy.
fn phase_gather(
    planes: &[f32],
    geo: &Conv2dGeometry,
    pg: &PhaseGeometry,
    cols: &mut [f32],
    ld: usize,
) {
    for_each_tap(geo, pg, |r, tap| {
        cols[r * ld..r * ld + pg.ext].copy_from_slice(&planes[tap..tap + pg.ext]);
    });
}

/// The adjoint of [`phase_gather`]: adds row `r` of `cols` into the planes it was read
/// from.
fn phase_scatter_add(
    cols: &[f32],
    ld: usize,
    geo: &Conv2dGeometry,
    pg: &PhaseGeometry,
    planes: &mut [f32],
) {
    for_each_tap(geo, pg, |r, tap| {
        let src = &cols[r * ld..r * ld + pg.ext];
        for (d, &v) in planes[tap..tap + pg.ext].iter_mut().zip(src) {
            *d += v;
        }
    });
}

/// The start of every row's tap in the phase planes, in row order (the B-indirect
/// kernel's row offsets).
fn phase_taps(geo: &Conv2dGeometry, pg: &PhaseGeometry) -> Vec<usize> {
    let mut taps = Vec::with_capacity(geo.col_rows());
    for_each_tap(geo, pg, |_, tap| taps.push(tap));
    taps
}

/// Calls `f(row, start)` for every row of the column matrix with the start of its tap in
/// the phase planes.
fn for_each_tap(geo: &Conv2dGeometry, pg: &PhaseGeometry, mut f: impl FnMut(usize, usize)) {
    let (kh, kw) = geo.kernel;
    let mut r = 0;
    for c in 0..geo.in_channels {
        for i in 0..kh {
            for j in 0..kw {
                f(r, pg.tap(geo, c, i, j));
                r += 1;
            }
        }
    }
}
