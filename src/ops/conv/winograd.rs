//! The Winograd algorithm for 3x3 convs of stride 1, dilation 1 and groups of 1 (any
//! padding): F(2x2, 3x3) on 4x4 input tiles and F(4x4, 3x3) on 6x6 input tiles
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), as
//! [`Tile::F2`] and [`Tile::F4`].
//!
//! Each `m x m` block of outputs (`m` = 2 or 4) is `Y = A^T [U . V] A` summed over the
//! input channels, with `U = G g G^T` the transformed 3x3 filter and `V = B^T d B` the
//! transformed `alpha x alpha` input tile (`alpha = m + 2`). Summed over channels, the
//! elementwise products of each of the `alpha^2` positions `xi` are one GEMM:
//! `M[xi] (O x T) = U[xi] (O x C) x V[xi] (C x T)` over a block of `T` tiles.
//!
//! - The filter transform runs once per call, in f64 (rounded once to f32), into
//!   `U[xi][O][C]`.
//! - [`Conv::run`] cuts the output into tasks of whole tile rows (several small images
//!   per task, or a band of tile rows of one large image), about [`BLOCK_BYTES`] of
//!   transformed input and output each. Per task: the input transform of every tile and
//!   channel into `V[xi][C][T]`, [`LANES`] tiles at a time (plain loops over
//!   fixed-size lane arrays, which the compiler vectorises); `alpha^2` GEMMs on the
//!   calling thread; the output transform (plus the bias) into a contiguous block,
//!   partial tiles clipped, copied into the output.
//! - The input gradient is the same conv of `dy` with the filter rotated by 180 degrees
//!   and transposed (`C x O`), padded by `2 - p` (a negative padding crops: the tiles'
//!   origins are signed), [`Backward`] holding its transformed filter for the call.
//! - No weight gradient: the chooser keeps the direct one.
//!
//! The transforms use the integer matrices `B^T` and `A^T` of Lavin & Gray (points 0,
//! ±1, ±2 and infinity) with every fraction in `G`: the filter transform is the one
//! computed in f64, so the f32 roundings are the input and output transforms' only,
//! on small integer coefficients (see `examples/winograd_error.rs` for the error).
//!
//! Determinism: the tasks and their tiles depend on the shape only, each output element
//! is computed by one task, by the same operations whatever the thread count. The
//! transform loops are compiled for the plan's GEMM kernel's instruction set, `mul`
//! then `add` (never fused), so every version gives the same bits.

use std::cell::RefCell;

use ndarray::parallel::prelude::*;
use ndarray::{
    ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, ArrayViewMut4, Axis,
    ShapeBuilder,
};
use rayon::slice::ParallelSliceMut;

use super::common::{OP, Operands, resize, shape_err, with_scratch};
use crate::error::{Error, Result};
use crate::gemm::{Kernel, sgemm_par};
use crate::limits::{checked_len, try_zeroed_vec};
use crate::ops::geometry::Conv2dGeometry;

/// A 3x3 kernel, stride 1, dilation 1 and groups of 1; any padding, batch, channels
/// and image size.
pub(super) fn supports(geo: &Conv2dGeometry) -> bool {
    let o = &geo.options;
    geo.kernel == (3, 3) && o.stride == (1, 1) && o.dilation == (1, 1) && o.groups == 1
}

/// The output tile of a Winograd variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tile {
    /// F(2x2, 3x3): 2x2 outputs from 4x4 input tiles, 16 products per tile and channel
    /// (2.25x fewer multiplications than the 36 of a direct 2x2 block).
    F2,
    /// F(4x4, 3x3): 4x4 outputs from 6x6 input tiles, 36 products per tile and channel
    /// (4x fewer than the 144 of a direct 4x4 block).
    F4,
}

impl Tile {
    /// Outputs per tile side.
    fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Input tile side, `m + 2`.
    fn alpha(self) -> usize {
        self.m() + 2
    }
}

/// Tiles per vector of the transforms: one AVX-512 register of f32 (two AVX2 ones).
const LANES: usize = 16;
type Lane = [f32; LANES];

/// Bytes of transformed input and output per task, `alpha^2 (C + O) T` floats: the
/// GEMMs' operands stay in the 1 MiB L2.
const BLOCK_BYTES: usize = 1 << 20;

/// Fewest tiles per task (when the images have that many): fewer leave the GEMM's
/// 48-column panels half empty and the per-GEMM packing of `U` unshared.
const MIN_BLOCK_TILES: usize = 48;

/// Most tiles per task, so that a large image with few channels is still cut into
/// several tasks.
const MAX_BLOCK_TILES: usize = 512;

/// F(2x2, 3x3) (Lavin & Gray): `B^T` (4 x 4), `G` (4 x 3), `A^T` (2 x 4).
mod f2 {
    pub(super) const BT: [[f32; 4]; 4] = [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ];
    pub(super) const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    pub(super) const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
}

/// F(4x4, 3x3) (Lavin & Gray, points 0, ±1, ±2 and infinity): `B^T` (6 x 6), `G`
/// (6 x 3), `A^T` (4 x 6).
mod f4 {
    pub(super) const BT: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    pub(super) const G: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    pub(super) const AT: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];
}

/// `sum_k coef[k] * rows[k]` lane by lane, in `k` order, the zero coefficients
/// skipped and ±1 as an add or subtract (the coefficients are constants: once inlined
/// the tests fold away).
#[inline(always)]
fn comb<const K: usize>(coef: &[f32; K], rows: &[Lane; K]) -> Lane {
    let mut acc = [0.0f32; LANES];
    let mut first = true;
    for (&c, r) in coef.iter().zip(rows) {
        if c == 0.0 {
            continue;
        }
        if first {
            if c == 1.0 {
                acc = *r;
            } else if c == -1.0 {
                for (a, &v) in acc.iter_mut().zip(r) {
                    *a = -v;
                }
            } else {
                for (a, &v) in acc.iter_mut().zip(r) {
                    *a = c * v;
                }
            }
            first = false;
        } else if c == 1.0 {
            for (a, &v) in acc.iter_mut().zip(r) {
                *a += v;
            }
        } else if c == -1.0 {
            for (a, &v) in acc.iter_mut().zip(r) {
                *a -= v;
            }
        } else {
            for (a, &v) in acc.iter_mut().zip(r) {
                *a += c * v;
            }
        }
    }
    acc
}

/// `V = B^T d B` of [`LANES`] tiles: `dc[s][r]` holds column `s`, row `r` of the
/// tiles; `v` gets `V[i][j]` at `v[(i * A + j) * stride..][..LANES]`.
#[inline(always)]
fn input_tf<const A: usize>(bt: &[[f32; A]; A], dc: &[[Lane; A]; A], v: &mut [f32], stride: usize) {
    // t[i][s] = sum_r BT[i][r] d[r][s]
    let mut t = [[[0.0f32; LANES]; A]; A];
    for (s, col) in dc.iter().enumerate() {
        for (i, row) in bt.iter().enumerate() {
            t[i][s] = comb(row, col);
        }
    }
    // V[i][j] = sum_s t[i][s] BT[j][s]
    for (i, ti) in t.iter().enumerate() {
        for (j, row) in bt.iter().enumerate() {
            let out = comb(row, ti);
            let at = (i * A + j) * stride;
            v[at..at + LANES].copy_from_slice(&out);
        }
    }
}

/// `Y = A^T M A + b` of [`LANES`] tiles: `mc[s][r]` holds `M[r][s]`; returns `Y[i][j]`
/// at `[i * M + j]`, as `M * M` lanes in `out`.
#[inline(always)]
fn output_tf<const A: usize, const M: usize>(
    at: &[[f32; A]; M],
    mc: &[[Lane; A]; A],
    bias: f32,
    out: &mut [Lane],
) {
    // t[i][s] = sum_r AT[i][r] M[r][s]
    let mut t = [[[0.0f32; LANES]; A]; M];
    for (s, col) in mc.iter().enumerate() {
        for (i, row) in at.iter().enumerate() {
            t[i][s] = comb(row, col);
        }
    }
    for (i, ti) in t.iter().enumerate() {
        for (j, row) in at.iter().enumerate() {
            let mut y = comb(row, ti);
            for v in &mut y {
                *v += bias;
            }
            out[i * M + j] = y;
        }
    }
}

/// Where one tile of a task reads its input: the image's offset in the input, and the
/// top-left corner of its `alpha x alpha` window (signed: padding puts it outside).
#[derive(Debug, Clone, Copy)]
struct Origin {
    image: usize,
    iy: isize,
    ix: isize,
}

/// One convolution the algorithm runs: the forward (`x`, `w`) or the input gradient
/// (`dy`, the rotated transposed `w`).
pub(super) struct Conv<'a> {
    tile: Tile,
    kernel: Kernel,
    /// The input, `(n, cin, hi, wi)`, contiguous.
    x: &'a [f32],
    cin: usize,
    hi: usize,
    wi: usize,
    cout: usize,
    ho: usize,
    wo: usize,
    /// The input offset of output (0, 0): output `(i, j)` reads input `(i - ph + a,
    /// j - pw + b)` for the taps `(a, b)`; negative padding crops.
    pad: (isize, isize),
    /// The transformed filter, `[xi][cout][cin]`.
    u: &'a [f32],
    bias: Option<&'a [f32]>,
    geo: &'a Conv2dGeometry,
}

/// One task: images `n0..n0 + nimg` of the output, tile rows `r0..r1` of each.
struct Task<'a> {
    n0: usize,
    nimg: usize,
    r0: usize,
    r1: usize,
    /// The task's outputs: `(nimg, cout, rows, wo)`.
    y: ArrayViewMut4<'a, f32>,
}

/// Per-thread scratch: transformed inputs, GEMM outputs, the output block, the
/// origins of a task's tiles.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    y: Vec<f32>,
    origins: Vec<Origin>,
}

thread_local! {
    /// Each thread's scratch, reused across calls.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// The filter transform `U[xi][p][q] = (G g_pq G^T)[xi]` in f64, rounded once, for the
/// `p x q` 3x3 filters `g_pq = filter(p, q)` (9 taps, row-major).
fn transform_filter(
    tile: Tile,
    p: usize,
    q: usize,
    filter: impl Fn(usize, usize) -> [f32; 9] + Sync,
    parallel: bool,
    geo: &Conv2dGeometry,
) -> Result<Vec<f32>> {
    let a = tile.alpha();
    let aa = a * a;
    let describe = || format!("the Winograd filter transform of {}", geo.describe());
    let len = checked_len(OP, &[aa, p, q], describe)?;
    let mut u = try_zeroed_vec(OP, len, describe)?;
    let g: &[[f64; 3]] = match tile {
        Tile::F2 => &f2::G,
        Tile::F4 => &f4::G,
    };
    // Per row p: its q filters' alpha^2 values, `[p][q][xi]`, then scattered.
    let mut pq = try_zeroed_vec(OP, len, describe)?;
    let row = |(pi, out): (usize, &mut [f32])| {
        for (qi, out) in out.chunks_exact_mut(aa).enumerate() {
            let f = filter(pi, qi);
            // t = G f (alpha x 3)
            let mut t = [[0.0f64; 3]; 6];
            for (ti, gi) in t.iter_mut().zip(g) {
                for (c, tc) in ti.iter_mut().enumerate() {
                    *tc = (0..3).map(|r| gi[r] * f64::from(f[r * 3 + c])).sum();
                }
            }
            for (i, ti) in t.iter().take(a).enumerate() {
                for (j, gj) in g.iter().enumerate() {
                    let v: f64 = (0..3).map(|c| ti[c] * gj[c]).sum();
                    out[i * a + j] = v as f32;
                }
            }
        }
    };
    if q == 0 {
        return Ok(u);
    }
    if parallel {
        pq.par_chunks_mut(q * aa).enumerate().for_each(row);
    } else {
        pq.chunks_mut(q * aa).enumerate().for_each(row);
    }
    for (pi, r) in pq.chunks_exact(q * aa).enumerate() {
        for (qi, f) in r.chunks_exact(aa).enumerate() {
            for (xi, &val) in f.iter().enumerate() {
                u[(xi * p + pi) * q + qi] = val;
            }
        }
    }
    Ok(u)
}

/// Tiles per task for `alpha^2 (cin + cout)` floats per tile.
fn block_tiles(tile: Tile, cin: usize, cout: usize) -> usize {
    let a = tile.alpha();
    let per_tile = (a * a * size_of::<f32>()).saturating_mul(cin.saturating_add(cout).max(1));
    (BLOCK_BYTES / per_tile).clamp(MIN_BLOCK_TILES, MAX_BLOCK_TILES)
}

impl Conv<'_> {
    /// Runs the conv into `y` `(n, cout, ho, wo)`, the tasks on the rayon pool when
    /// `parallel`.
    fn run(&self, y: ArrayViewMut4<'_, f32>, parallel: bool) -> Result<()> {
        let n = y.len_of(Axis(0));
        if y.is_empty() {
            return Ok(());
        }
        let m = self.tile.m();
        let (th, tw) = (self.ho.div_ceil(m), self.wo.div_ceil(m));
        let target = block_tiles(self.tile, self.cin, self.cout);
        let mut tasks = Vec::new();
        let mut rest = y;
        if th * tw <= target {
            let per = (target / (th * tw)).max(1);
            for n0 in (0..n).step_by(per) {
                let nimg = per.min(n - n0);
                let (head, tail) = rest.split_at(Axis(0), nimg);
                rest = tail;
                tasks.push(Task {
                    n0,
                    nimg,
                    r0: 0,
                    r1: th,
                    y: head,
                });
            }
        } else {
            let k = (target / tw).max(1);
            for n0 in 0..n {
                let (img, tail) = rest.split_at(Axis(0), 1);
                rest = tail;
                let mut img = img;
                for r0 in (0..th).step_by(k) {
                    let r1 = (r0 + k).min(th);
                    let rows = (r1 * m).min(self.ho) - r0 * m;
                    let (head, tail) = img.split_at(Axis(2), rows);
                    img = tail;
                    tasks.push(Task {
                        n0,
                        nimg: 1,
                        r0,
                        r1,
                        y: head,
                    });
                }
            }
        }
        let run = |task: Task<'_>| with_scratch(&SCRATCH, |s| self.task(s, task));
        if parallel {
            tasks.into_par_iter().with_max_len(1).try_for_each(run)
        } else {
            tasks.into_iter().try_for_each(run)
        }
    }

    /// One task: input transform, GEMMs, output transform.
    fn task(&self, s: &mut Scratch, mut task: Task<'_>) -> Result<()> {
        let (m, a) = (self.tile.m(), self.tile.alpha());
        let aa = a * a;
        let tw = self.wo.div_ceil(m);
        let rows = task.r1 - task.r0;
        let t = task.nimg * rows * tw;
        let tp = t.next_multiple_of(LANES);
        let plane = self.hi * self.wi;
        s.origins.clear();
        for img in 0..task.nimg {
            for ty in task.r0..task.r1 {
                for tx in 0..tw {
                    s.origins.push(Origin {
                        image: (task.n0 + img) * self.cin * plane,
                        iy: (ty * m) as isize - self.pad.0,
                        ix: (tx * m) as isize - self.pad.1,
                    });
                }
            }
        }
        let what = "the Winograd transformed tiles";
        resize(&mut s.v, &[aa, self.cin, tp], what, self.geo)?;
        resize(&mut s.m, &[aa, self.cout, tp], what, self.geo)?;
        let out_rows = task.y.len_of(Axis(2));
        resize(
            &mut s.y,
            &[task.nimg, self.cout, out_rows, self.wo],
            "the Winograd output block",
            self.geo,
        )?;
        isa::input_block(self.kernel, self, &s.origins, &mut s.v, tp);
        for xi in 0..aa {
            let u = &self.u[xi * self.cout * self.cin..(xi + 1) * self.cout * self.cin];
            let u = ArrayView2::from_shape((self.cout, self.cin), u).map_err(shape_err)?;
            let v = &s.v[xi * self.cin * tp..(xi + 1) * self.cin * tp];
            let v = ArrayView2::from_shape((self.cin, t).strides((tp, 1)), v).map_err(shape_err)?;
            let mo = &mut s.m[xi * self.cout * tp..(xi + 1) * self.cout * tp];
            let mo = ArrayViewMut2::from_shape((self.cout, t).strides((tp, 1)), mo)
                .map_err(shape_err)?;
            sgemm_par(self.kernel, false, 1.0, u, v, 0.0, mo)?;
        }
        let block = OutBlock {
            tw,
            rows,
            out_rows,
            t,
            tp,
        };
        isa::output_block(self.kernel, self, &block, &s.m, &mut s.y);
        let yb = ndarray::ArrayView4::from_shape(
            (task.nimg, self.cout, out_rows, self.wo),
            &s.y[..task.nimg * self.cout * out_rows * self.wo],
        )
        .map_err(shape_err)?;
        task.y.assign(&yb);
        Ok(())
    }
}

/// The layout of a task's output block: `rows` tile rows of `tw` tiles per image;
/// `out_rows` output rows per image; `t` tiles in all, their lanes `tp` apart.
struct OutBlock {
    tw: usize,
    rows: usize,
    out_rows: usize,
    t: usize,
    tp: usize,
}

/// The input transform of every tile of a task, channel by channel, into `v`
/// `[xi][cin][tp]`.
#[inline(always)]
fn input_block(conv: &Conv<'_>, origins: &[Origin], v: &mut [f32], tp: usize) {
    match conv.tile {
        Tile::F2 => input_block_t::<4>(&f2::BT, conv, origins, v, tp),
        Tile::F4 => input_block_t::<6>(&f4::BT, conv, origins, v, tp),
    }
}

// The loops index the tiles transposed (lanes innermost): ranges read clearer.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_block_t<const A: usize>(
    bt: &[[f32; A]; A],
    conv: &Conv<'_>,
    origins: &[Origin],
    v: &mut [f32],
    tp: usize,
) {
    let (hi, wi) = (conv.hi as isize, conv.wi as isize);
    let plane = conv.hi * conv.wi;
    let stride = conv.cin * tp;
    for c in 0..conv.cin {
        for (b, lanes) in origins.chunks(LANES).enumerate() {
            let mut dc = [[[0.0f32; LANES]; A]; A];
            for (l, o) in lanes.iter().enumerate() {
                let base = o.image + c * plane;
                let inside =
                    o.iy >= 0 && o.ix >= 0 && o.iy + A as isize <= hi && o.ix + A as isize <= wi;
                if inside {
                    let at = base + o.iy as usize * conv.wi + o.ix as usize;
                    for r in 0..A {
                        let row = &conv.x[at + r * conv.wi..at + r * conv.wi + A];
                        for (sc, &val) in row.iter().enumerate() {
                            dc[sc][r][l] = val;
                        }
                    }
                } else {
                    for r in 0..A {
                        let y = o.iy + r as isize;
                        if y < 0 || y >= hi {
                            continue;
                        }
                        for sc in 0..A {
                            let x = o.ix + sc as isize;
                            if x >= 0 && x < wi {
                                dc[sc][r][l] = conv.x[base + y as usize * conv.wi + x as usize];
                            }
                        }
                    }
                }
            }
            let at = c * tp + b * LANES;
            input_tf(bt, &dc, &mut v[at..], stride);
        }
    }
}

/// The output transform of every tile of a task into the block `y` `(nimg, cout,
/// out_rows, wo)`, partial tiles clipped.
#[inline(always)]
fn output_block(conv: &Conv<'_>, blk: &OutBlock, mm: &[f32], y: &mut [f32]) {
    match conv.tile {
        Tile::F2 => output_block_t::<4, 2>(&f2::AT, conv, blk, mm, y),
        Tile::F4 => output_block_t::<6, 4>(&f4::AT, conv, blk, mm, y),
    }
}

// The loops index the tiles transposed (lanes innermost): ranges read clearer.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_block_t<const A: usize, const M: usize>(
    at: &[[f32; A]; M],
    conv: &Conv<'_>,
    blk: &OutBlock,
    mm: &[f32],
    y: &mut [f32],
) {
    let (cout, wo) = (conv.cout, conv.wo);
    let image = cout * blk.out_rows * wo;
    let stride = cout * blk.tp;
    let mut out = [[0.0f32; LANES]; 16];
    for o in 0..cout {
        let bias = conv.bias.map_or(0.0, |b| b[o]);
        for b in 0..blk.t.div_ceil(LANES) {
            let mut mc = [[[0.0f32; LANES]; A]; A];
            let base = o * blk.tp + b * LANES;
            for (r, row) in (0..A).map(|r| (r, r * A)) {
                for sc in 0..A {
                    let at = base + (row + sc) * stride;
                    mc[sc][r].copy_from_slice(&mm[at..at + LANES]);
                }
            }
            output_tf::<A, M>(at, &mc, bias, &mut out[..M * M]);
            let lanes = LANES.min(blk.t - b * LANES);
            for l in 0..lanes {
                let t = b * LANES + l;
                let img = t / (blk.rows * blk.tw);
                let ty = (t / blk.tw) % blk.rows;
                let tx = t % blk.tw;
                let y0 = ty * M;
                let x0 = tx * M;
                let plane = img * image + o * blk.out_rows * wo;
                for i in 0..M.min(blk.out_rows - y0) {
                    let row = plane + (y0 + i) * wo;
                    for j in 0..M.min(wo - x0) {
                        y[row + x0 + j] = out[i * M + j][l];
                    }
                }
            }
        }
    }
}

/// [`input_block`] and [`output_block`] compiled for the instruction set of the plan's
/// GEMM kernel: the same source (and bits) with wider vectors where the CPU has them.
mod isa {
    use super::{Conv, Kernel, Origin, OutBlock};

    pub(super) fn input_block(
        kernel: Kernel,
        conv: &Conv<'_>,
        origins: &[Origin],
        v: &mut [f32],
        tp: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn avx512(conv: &Conv<'_>, origins: &[Origin], v: &mut [f32], tp: usize) {
                super::input_block(conv, origins, v, tp)
            }
            #[target_feature(enable = "avx2")]
            fn avx2(conv: &Conv<'_>, origins: &[Origin], v: &mut [f32], tp: usize) {
                super::input_block(conv, origins, v, tp)
            }
            match kernel {
                // SAFETY: the dispatch checked that this CPU runs the plan's kernel
                // (`check_plan`), so it has the kernel's target features.
                Kernel::Avx512 => return unsafe { avx512(conv, origins, v, tp) },
                Kernel::Avx2 => return unsafe { avx2(conv, origins, v, tp) },
                Kernel::Fallback => {}
            }
        }
        let _ = kernel;
        super::input_block(conv, origins, v, tp)
    }

    pub(super) fn output_block(
        kernel: Kernel,
        conv: &Conv<'_>,
        blk: &OutBlock,
        mm: &[f32],
        y: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn avx512(conv: &Conv<'_>, blk: &OutBlock, mm: &[f32], y: &mut [f32]) {
                super::output_block(conv, blk, mm, y)
            }
            #[target_feature(enable = "avx2")]
            fn avx2(conv: &Conv<'_>, blk: &OutBlock, mm: &[f32], y: &mut [f32]) {
                super::output_block(conv, blk, mm, y)
            }
            match kernel {
                // SAFETY: as `input_block`.
                Kernel::Avx512 => return unsafe { avx512(conv, blk, mm, y) },
                Kernel::Avx2 => return unsafe { avx2(conv, blk, mm, y) },
                Kernel::Fallback => {}
            }
        }
        let _ = kernel;
        super::output_block(conv, blk, mm, y)
    }
}

fn contiguous<'a>(v: ArrayView2<'a, f32>, what: &str) -> Result<&'a [f32]> {
    v.to_slice()
        .ok_or_else(|| Error::shape(OP, format!("{what} is not contiguous")))
}

/// The 9 taps of filter `(o, c)` of `w` (O, C * 9).
fn taps(w: &[f32], c: usize, o: usize, ci: usize) -> [f32; 9] {
    let at = (o * c + ci) * 9;
    w[at..at + 9].try_into().expect("9 taps")
}

/// Forward into `y` (N, O, L) on `tile`.
pub(super) fn forward(
    ops: &Operands<'_>,
    tile: Tile,
    bias: Option<ArrayView1<'_, f32>>,
    y: ArrayViewMut3<'_, f32>,
) -> Result<()> {
    let geo = ops.geo;
    if y.is_empty() {
        return Ok(());
    }
    let (c, o) = (geo.in_channels, geo.out_channels);
    let w = contiguous(ops.w.view(), "the weights")?;
    let parallel = ops.plan.parallel;
    let u = transform_filter(tile, o, c, |oi, ci| taps(w, c, oi, ci), parallel, geo)?;
    let bias = match bias {
        Some(b) => Some(
            b.to_slice()
                .ok_or_else(|| Error::shape(OP, "the bias is not contiguous"))?,
        ),
        None => None,
    };
    let (ph, pw) = geo.options.padding;
    let conv = Conv {
        tile,
        kernel: ops.plan.kernel,
        x: contiguous(ops.x.view(), "the input")?,
        cin: c,
        hi: geo.in_h,
        wi: geo.in_w,
        cout: o,
        ho: geo.out_h,
        wo: geo.out_w,
        pad: (signed(ph)?, signed(pw)?),
        u: &u,
        bias,
        geo,
    };
    let y = y
        .into_shape_with_order((geo.batch, o, geo.out_h, geo.out_w))
        .map_err(shape_err)?;
    conv.run(y, parallel)
}

/// `p` as a signed offset; padding beyond `isize` is not a conv any image fits.
fn signed(p: usize) -> Result<isize> {
    isize::try_from(p).map_err(|_| Error::shape(OP, format!("padding {p} is too large")))
}

/// The input gradient's transformed filter for one call: `w` rotated by 180 degrees
/// and transposed, `U[xi][C][O]`.
pub(super) struct Backward {
    tile: Tile,
    u: Vec<f32>,
}

impl Backward {
    /// Transforms the filter of `ops` for the input gradient on `tile`.
    pub(super) fn new(ops: &Operands<'_>, tile: Tile) -> Result<Backward> {
        let geo = ops.geo;
        let (c, o) = (geo.in_channels, geo.out_channels);
        let w = contiguous(ops.w.view(), "the weights")?;
        let rotated = |ci: usize, oi: usize| {
            let mut f = taps(w, c, oi, ci);
            f.reverse();
            f
        };
        let u = transform_filter(tile, c, o, rotated, ops.plan.parallel, geo)?;
        Ok(Backward { tile, u })
    }

    /// The input gradient of images `n0..n0 + nb` into `dxc` (their rows of dx).
    pub(super) fn input_grad(
        &self,
        ops: &Operands<'_>,
        dy: ArrayView3<'_, f32>,
        (n0, nb): (usize, usize),
        dxc: ArrayViewMut2<'_, f32>,
    ) -> Result<()> {
        let geo = ops.geo;
        let (c, o) = (geo.in_channels, geo.out_channels);
        let l = geo.out_h * geo.out_w;
        let dy = dy
            .to_slice()
            .ok_or_else(|| Error::shape(OP, "grad_out is not contiguous"))?;
        let (ph, pw) = geo.options.padding;
        let conv = Conv {
            tile: self.tile,
            kernel: ops.plan.kernel,
            x: &dy[n0 * o * l..(n0 + nb) * o * l],
            cin: o,
            hi: geo.out_h,
            wi: geo.out_w,
            cout: c,
            ho: geo.in_h,
            wo: geo.in_w,
            pad: (2 - signed(ph)?, 2 - signed(pw)?),
            u: &self.u,
            bias: None,
            geo,
        };
        let dx = dxc
            .into_shape_with_order((nb, c, geo.in_h, geo.in_w))
            .map_err(shape_err)?;
        conv.run(dx, ops.plan.parallel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1-d check of the matrices: `A^T [(G g) . (B^T d)] = correlation of d with g`.
    fn check<const A: usize, const M: usize>(
        bt: &[[f32; A]; A],
        g: &[[f64; 3]; A],
        at: &[[f32; A]; M],
    ) {
        let d: Vec<f64> = (0..A).map(|i| (i as f64 * 0.7 - 1.3).sin()).collect();
        let k = [0.3, -1.1, 0.8];
        let u: Vec<f64> = g
            .iter()
            .map(|r| (0..3).map(|i| r[i] * k[i]).sum())
            .collect();
        let v: Vec<f64> = bt
            .iter()
            .map(|r| (0..A).map(|i| f64::from(r[i]) * d[i]).sum())
            .collect();
        for (i, r) in at.iter().enumerate() {
            let y: f64 = (0..A).map(|j| f64::from(r[j]) * u[j] * v[j]).sum();
            let want: f64 = (0..3).map(|j| d[i + j] * k[j]).sum();
            assert!((y - want).abs() < 1e-12, "{i}: {y} vs {want}");
        }
    }

    #[test]
    fn transforms_compute_a_correlation() {
        check(&f2::BT, &f2::G, &f2::AT);
        check(&f4::BT, &f4::G, &f4::AT);
    }
}
