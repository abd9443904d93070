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
//!   per task, or a band of tile rows of one large image), about [`GEMM_BYTES`] of
//!   transformed input and output per GEMM. Per task: the input transform of every tile and
//!   channel into `V[xi][C][T]`, [`LANES`] tiles at a time (plain loops over
//!   fixed-size lane arrays, which the compiler vectorises); `alpha^2` GEMMs on the
//!   calling thread; the output transform (plus the bias) into a contiguous block,
//!   partial tiles clipped, copied into the output.
//! - The input gradient is the same conv of `dy` with the filter rotated by 180 degrees
//!   and transposed (`C x O`), padded by `2 - p` (a negative padding crops: the tiles'
//!   origins are signed), [`Backward`] holding its transformed filter for the call.
//! - The weight gradient ([`weight_grad`]) is the forward transposed: per block of
//!   tiles, `V` as the forward makes it and `Z = A dY A^T` of the output gradient,
//!   `P[xi] += Z[xi] V[xi]^T` (`O x C`, one GEMM per position summing over the tiles),
//!   and `dW = G^T P G` in f64 at the end of a reduction chunk.
//!
//! F2 uses Lavin & Gray's matrices (points 0, ±1, infinity). F4 uses the points 0, 1,
//! -1, 1/2, -2 and infinity, whose f32 error is 3-5x smaller than Lavin & Gray's 0, ±1,
//! ±2 ([`in_f4`]). Every fraction that is not a power of two sits in `G`: the filter
//! transform is the one computed in f64, rounded once, so the f32 roundings are the
//! input and output transforms', on coefficients of a few bits (see
//! `examples/winograd_error.rs` for the error).
//!
//! Determinism: the tasks and their tiles depend on the shape only, each output element
//! is computed by one task, by the same operations whatever the thread count. The
//! transform loops are compiled for the plan's GEMM kernel's instruction set, `mul`
//! then `add` (never fused), so every version gives the same bits.

use std::cell::RefCell;

use ndarray::ShapeBuilder;
use ndarray::parallel::prelude::*;
use ndarray::{
    Array2, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, ArrayViewMut4, Axis,
    s,
};
use rayon::slice::ParallelSliceMut;

use super::common::{OP, Operands, resize, shape_err, with_scratch, zeroed_partial};
use crate::error::{Error, Result};
use crate::gemm::{Kernel, indirect_b_gemm, pack_a_panels_into, sgemm_par};
use crate::limits::{checked_len, try_resize};
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

/// Bytes of transformed input and output of one GEMM, `V[xi]` and `M[xi]`,
/// `(C + O) T` floats (the task's block is `alpha^2` times that). Measured (1 thread,
/// fwd ms, F2 / F4, the block's bytes `alpha^2 (C + O) T * 4` per task): resnet_64 at 1
/// MiB 78 / 58, 4 MiB 79 / 50, 16 MiB 77 / 48, 32 MiB 86 / 57; vgg_256 1 MiB 43 / 53,
/// 4 MiB 44 / 41, 16 MiB 41 / 29, 32 MiB 45 / 32. Smaller blocks leave the GEMMs short
/// (few columns per packed `U[xi]`, which is `O x C` floats, read once per GEMM).
const GEMM_BYTES: usize = 1 << 19;

/// Fewest tasks a batch is cut into (when it has enough tiles), instead of the other
/// paths' `MIN_SPLIT` of 8: every task reads all of the packed `U` (36 `O x C`
/// floats, 9.4 MB for vgg_256) from beyond L2, so fewer, longer tasks read it less.
/// vgg_256 forward ms (Intel Xeon 6/207, two interleaved runs), at least 8 / 4 / 2
/// tasks: 2 threads 26.5 / 23.2-23.5 / 19.9-21.2, 1 thread 41.1-42.1 / 34.7-36.7 /
/// 32.1-33.9; resnet_64 unchanged (its tasks are bounded by [`GEMM_BYTES`]). Not 2:
/// tasks are fixed by the shape (for determinism), and more cores than tasks would
/// idle.
const WINOGRAD_MIN_TASKS: usize = 4;

/// Fewest tiles per task (when the images have that many): fewer leave the GEMM's
/// 48-column panels half empty.
const MIN_BLOCK_TILES: usize = 48;

/// Most tiles per task, whatever the channels, so that small channel counts do not
/// make tasks of huge images.
const MAX_BLOCK_TILES: usize = 2048;

/// F(2x2, 3x3) (Lavin & Gray): `G` (4 x 3); `B^T` and `A^T` are [`in_f2`] and
/// [`out_f2`].
mod f2 {
    pub(super) const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
}

/// F(4x4, 3x3) on the points 0, 1, -1, 1/2, -2 and infinity (rather than Lavin &
/// Gray's 0, ±1, ±2: a 2.8x smaller f32 error at 64 channels, 4.8x at 256, see
/// [`in_f4`]): `G` (6 x 3); `B^T` and `A^T` are [`in_f4`] and [`out_f4`].
mod f4 {
    pub(super) const G: [[f64; 3]; 6] = [
        [1.0, 0.0, 0.0],
        [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
        [-1.0 / 3.0, 1.0 / 3.0, -1.0 / 3.0],
        [-16.0 / 15.0, -8.0 / 15.0, -4.0 / 15.0],
        [1.0 / 15.0, -2.0 / 15.0, 4.0 / 15.0],
        [0.0, 0.0, 1.0],
    ];
}

/// `B^T d` of F2 on [`LANES`] columns, `B^T` = `[1 0 -1 0; 0 1 1 0; 0 -1 1 0;
/// 0 1 0 -1]`.
#[inline(always)]
fn in_f2(d: &[Lane; 4]) -> [Lane; 4] {
    let mut v = [[0.0f32; LANES]; 4];
    for l in 0..LANES {
        let [d0, d1, d2, d3] = [d[0][l], d[1][l], d[2][l], d[3][l]];
        v[0][l] = d0 - d2;
        v[1][l] = d1 + d2;
        v[2][l] = d2 - d1;
        v[3][l] = d1 - d3;
    }
    v
}

/// `A^T m` of F2 on [`LANES`] columns, `A^T` = `[1 1 1 0; 0 1 -1 -1]`.
#[inline(always)]
fn out_f2(m: &[Lane; 4]) -> [Lane; 2] {
    let mut y = [[0.0f32; LANES]; 2];
    for l in 0..LANES {
        let [m0, m1, m2, m3] = [m[0][l], m[1][l], m[2][l], m[3][l]];
        y[0][l] = m0 + m1 + m2;
        y[1][l] = m1 - m2 - m3;
    }
    y
}

/// `B^T d` of F4 on [`LANES`] columns, `B^T` = `[1 -3/2 -2 3/2 1 0; 0 -1 1/2 5/2 1 0;
/// 0 1 -5/2 1/2 1 0; 0 -2 -1 2 1 0; 0 1/2 -1 -1/2 1 0; 0 1 -3/2 -2 3/2 1]`.
///
/// The points 0, 1, -1, 1/2, -2 follow Barabasz, Anderson, Soodhalter and Gregg, "Error
/// analysis and improving the accuracy of Winograd convolution for deep neural
/// networks" (2020); measured with a float32 model of the transforms (max error
/// relative to `max|ref|`, 3x3 kaiming-normal filters, N(0, 1) tiles), Lavin & Gray's
/// 0, ±1, ±2 against these: 5.9e-6 -> 2.1e-6 at 64 channels, 1.7e-5 -> 3.6e-6 at 256
/// (0, ±1, ±1/2: 5.6e-6 and 1.1e-5; 0, ±1, 2, -1/2: 2.3e-6 and 4.8e-6).
#[inline(always)]
fn in_f4(d: &[Lane; 6]) -> [Lane; 6] {
    let mut v = [[0.0f32; LANES]; 6];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        v[0][l] = d0 - 1.5 * d1 - 2.0 * d2 + 1.5 * d3 + d4;
        v[1][l] = 0.5 * d2 - d1 + 2.5 * d3 + d4;
        v[2][l] = d1 - 2.5 * d2 + 0.5 * d3 + d4;
        v[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        v[4][l] = 0.5 * (d1 - d3) - d2 + d4;
        v[5][l] = d1 - 1.5 * d2 - 2.0 * d3 + 1.5 * d4 + d5;
    }
    v
}

/// `A^T m` of F4 on [`LANES`] columns, `A^T` = `[1 1 1 1 1 0; 0 1 -1 1/2 -2 0;
/// 0 1 1 1/4 4 0; 0 1 -1 1/8 -8 1]`, factored.
#[inline(always)]
fn out_f4(m: &[Lane; 6]) -> [Lane; 4] {
    let mut y = [[0.0f32; LANES]; 4];
    for l in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (s12, d12) = (m1 + m2, m1 - m2);
        y[0][l] = m0 + s12 + m3 + m4;
        y[1][l] = d12 + 0.5 * m3 - 2.0 * m4;
        y[2][l] = s12 + 0.25 * m3 + 4.0 * m4;
        y[3][l] = d12 + 0.125 * m3 - 8.0 * m4 + m5;
    }
    y
}

/// `T d T^T` of [`LANES`] `M x M` tiles `d`, `tf` the 1-d `T` (`A x M`): `d[s][r]`
/// holds column `s`, row `r` of the tiles; `out` gets entry `(i, j)` at `out[(i * A +
/// j) * stride..][..LANES]`. The input transform `V = B^T d B` (`tf` = [`in_f4`] or
/// [`in_f2`], `M = A`) and the weight gradient's `Z = A dY A^T` ([`grad_f4`],
/// [`grad_f2`]).
#[inline(always)]
fn transform_2d<const A: usize, const M: usize>(
    tf: impl Fn(&[Lane; M]) -> [Lane; A],
    d: &[[Lane; M]; M],
    out: &mut [f32],
    stride: usize,
) {
    // t[s] = T (column s of d): t[s][i] = (T d)[i][s].
    let mut t = [[[0.0f32; LANES]; A]; M];
    for (ts, col) in t.iter_mut().zip(d) {
        *ts = tf(col);
    }
    let mut row = [[0.0f32; LANES]; M];
    for i in 0..A {
        // Row i of T d, transformed: (T d T^T)[i][j].
        for (r, ts) in row.iter_mut().zip(&t) {
            *r = ts[i];
        }
        for (j, v) in tf(&row).iter().enumerate() {
            let at = (i * A + j) * stride;
            out[at..at + LANES].copy_from_slice(v);
        }
    }
}

/// `Y = A^T M A + b` of [`LANES`] tiles, `tf` the 1-d `A^T`: `mc[s][r]` holds
/// `M[r][s]`; `out[i * M + j]` gets `Y[i][j]`.
#[inline(always)]
fn output_tf<const A: usize, const M: usize>(
    tf: impl Fn(&[Lane; A]) -> [Lane; M],
    mc: &[[Lane; A]; A],
    bias: f32,
    out: &mut [Lane],
) {
    let mut t = [[[0.0f32; LANES]; M]; A];
    for (ts, col) in t.iter_mut().zip(mc) {
        *ts = tf(col);
    }
    let mut row = [[0.0f32; LANES]; A];
    for i in 0..M {
        for (r, ts) in row.iter_mut().zip(&t) {
            *r = ts[i];
        }
        for (j, y) in tf(&row).iter().enumerate() {
            let o = &mut out[i * M + j];
            for (o, &v) in o.iter_mut().zip(y) {
                *o = v + bias;
            }
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
    /// The transformed filter `U[xi]` (`cout x cin`) per position `xi`, packed for the
    /// GEMM kernel.
    u: &'a [Vec<f32>],
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

/// Per-thread scratch: transformed inputs, GEMM outputs, the origins of a task's
/// tiles.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    origins: Vec<Origin>,
    /// The offsets of the rows of `V[xi]` (one per input channel).
    offs: Vec<usize>,
}

thread_local! {
    /// Each thread's scratch, reused across calls.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// The filter transform `U[xi][p][q] = (G g_pq G^T)[xi]` in f64, rounded once, for the
/// `p x q` 3x3 filters `g_pq = filter(p, q)` (9 taps, row-major), into `u` (resized,
/// every float written) laid out `[p][xi][q]`
/// so that each row `p` is one contiguous run for every `xi`: rows split over the
/// rayon pool when `parallel` (the transform is the same per row either way). Within a
/// row, 8 filters `q` at a time, so the f64 arithmetic vectorises.
fn transform_filter(
    tile: Tile,
    p: usize,
    q: usize,
    filter: impl Fn(usize, usize) -> [f32; 9] + Sync,
    geo: &Conv2dGeometry,
    parallel: bool,
    u: &mut Vec<f32>,
) -> Result<()> {
    const Q: usize = 8;
    let a = tile.alpha();
    let aa = a * a;
    let describe = || format!("the Winograd filter transform of {}", geo.describe());
    let len = checked_len(OP, &[p, aa, q], describe)?;
    try_resize(OP, u, len, 0.0, describe)?;
    u.truncate(len);
    let g: &[[f64; 3]] = match tile {
        Tile::F2 => &f2::G,
        Tile::F4 => &f4::G,
    };
    let row = |(pi, out): (usize, &mut [f32])| {
        for q0 in (0..q).step_by(Q) {
            let qn = Q.min(q - q0);
            let mut f = [[0.0f64; Q]; 9];
            for k in 0..qn {
                for (ft, &v) in f.iter_mut().zip(&filter(pi, q0 + k)) {
                    ft[k] = f64::from(v);
                }
            }
            // t = G f, (alpha x 3) per lane.
            let mut t = [[[0.0f64; Q]; 3]; 6];
            for (ti, gi) in t.iter_mut().zip(g) {
                for (c, tc) in ti.iter_mut().enumerate() {
                    for (r, &gr) in gi.iter().enumerate() {
                        for (o, &v) in tc.iter_mut().zip(&f[r * 3 + c]) {
                            *o += gr * v;
                        }
                    }
                }
            }
            for (i, ti) in t.iter().take(a).enumerate() {
                for (j, gj) in g.iter().enumerate() {
                    let mut acc = [0.0f64; Q];
                    for (c, &gc) in gj.iter().enumerate() {
                        for (o, &v) in acc.iter_mut().zip(&ti[c]) {
                            *o += v * gc;
                        }
                    }
                    let at = (i * a + j) * q + q0;
                    for (o, &v) in out[at..at + qn].iter_mut().zip(&acc) {
                        *o = v as f32;
                    }
                }
            }
        }
    };
    if q > 0 {
        if parallel {
            u.par_chunks_mut(aa * q).enumerate().for_each(row);
        } else {
            u.chunks_mut(aa * q).enumerate().for_each(row);
        }
    }
    Ok(())
}

/// `U` as [`transform_filter`] makes it (`[p][xi][q]`), each `U[xi]` (`p x q`, rows
/// `alpha^2 q` apart) packed for the kernel's GEMM into `out[xi]` (buffers reused), the
/// positions over the rayon pool when `parallel`.
fn pack(
    kernel: Kernel,
    tile: Tile,
    u: &[f32],
    (p, q): (usize, usize),
    parallel: bool,
    out: &mut Vec<Vec<f32>>,
) -> Result<()> {
    let aa = tile.alpha() * tile.alpha();
    out.resize_with(aa, Vec::new);
    out.truncate(aa);
    let one = |(xi, dst): (usize, &mut Vec<f32>)| {
        let uxi = if p == 0 || q == 0 {
            ArrayView2::from_shape((p, q), &[][..])
        } else {
            ArrayView2::from_shape((p, q).strides((aa * q, 1)), &u[xi * q..])
        }
        .map_err(shape_err)?;
        pack_a_panels_into(kernel, uxi, dst, OP)
    };
    if parallel {
        out.par_iter_mut().enumerate().try_for_each(one)
    } else {
        out.iter_mut().enumerate().try_for_each(one)
    }
}

/// The calling thread's transformed and packed filters, kept across calls: a fresh
/// 9.4 MB transform and 36 packed panels per call (vgg_256) cost page faults (about 9%
/// of its 2-thread forward's samples).
#[derive(Default)]
struct Filters {
    u: Vec<f32>,
    packed: Vec<Vec<f32>>,
}

thread_local! {
    /// Each calling thread's [`Filters`].
    static FILTERS: RefCell<Filters> = RefCell::default();
}

/// Tiles per task: `V[xi]` and `M[xi]`, `(cin + cout) T` floats, within
/// [`GEMM_BYTES`], at least [`WINOGRAD_MIN_TASKS`] tasks when the batch has that many tiles
/// (`total` tiles in all), within [`MIN_BLOCK_TILES`] and [`MAX_BLOCK_TILES`]. Depends
/// on the shape only.
fn block_tiles(cin: usize, cout: usize, total: usize) -> usize {
    let per_tile = size_of::<f32>().saturating_mul(cin.saturating_add(cout).max(1));
    (GEMM_BYTES / per_tile)
        .min(total.div_ceil(WINOGRAD_MIN_TASKS))
        .clamp(MIN_BLOCK_TILES, MAX_BLOCK_TILES)
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
        let target = block_tiles(self.cin, self.cout, n.saturating_mul(th * tw));
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
    fn task(&self, s: &mut Scratch, task: Task<'_>) -> Result<()> {
        let (m, a) = (self.tile.m(), self.tile.alpha());
        let aa = a * a;
        let tw = self.wo.div_ceil(m);
        let rows = task.r1 - task.r0;
        let t = task.nimg * rows * tw;
        // Lanes `tp` apart, a whole number of the kernel's column panels: the GEMM reads
        // whole panels of each row of `V`.
        let tp = t.next_multiple_of(LANES.max(self.kernel.blocks().nr));
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
        isa::input_block(self.kernel, self, &s.origins, &mut s.v, tp);
        s.offs.clear();
        s.offs.extend((0..self.cin).map(|c| c * tp));
        for (xi, u) in self.u.iter().enumerate() {
            let v = &s.v[xi * self.cin * tp..(xi + 1) * self.cin * tp];
            let mo = &mut s.m[xi * self.cout * tp..(xi + 1) * self.cout * tp];
            indirect_b_gemm(self.kernel, u, self.cout, v, &s.offs, t, mo, tp);
        }
        let block = OutBlock {
            tw,
            rows,
            out_rows,
            t,
            tp,
        };
        // The task's output planes, `nimg * cout` runs of `out_rows` whole rows each.
        let mut planes = Vec::new();
        let mut rest = task.y;
        for _ in 0..task.nimg {
            let (mut img, tail) = rest.split_at(Axis(0), 1);
            rest = tail;
            for _ in 0..self.cout {
                let (plane, tail) = img.split_at(Axis(1), 1);
                img = tail;
                planes.push(
                    plane
                        .into_slice()
                        .ok_or_else(|| Error::shape(OP, "the output rows are not contiguous"))?,
                );
            }
        }
        isa::output_block(self.kernel, self, &block, &s.m, &mut planes);
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
/// `[xi][cin][tp]`, the tiles' windows gathered by [`gather_scalar`] (the portable
/// version; [`gather::input_block`] is the AVX-512 one).
#[inline(always)]
fn input_block(conv: &Conv<'_>, origins: &[Origin], v: &mut [f32], tp: usize) {
    let groups = origins.len().div_ceil(LANES);
    match conv.tile {
        Tile::F2 => input_block_t::<4>(in_f2, conv, groups, v, tp, |c, b, dc| {
            gather_scalar(conv, origins, c, b, dc)
        }),
        Tile::F4 => input_block_t::<6>(in_f4, conv, groups, v, tp, |c, b, dc| {
            gather_scalar(conv, origins, c, b, dc)
        }),
    }
}

/// The input transform of `groups` lane groups of tiles, every channel, into `v`
/// `[xi][cin][tp]`: `gather(c, b, dc)` fills `dc[s][r][l]` with column `s`, row `r` of
/// the `A x A` window of channel `c` of tile `b * LANES + l` (zero outside the image
/// and for lanes past the last tile), all of `dc`.
#[inline(always)]
fn input_block_t<const A: usize>(
    tf: impl Fn(&[Lane; A]) -> [Lane; A] + Copy,
    conv: &Conv<'_>,
    groups: usize,
    v: &mut [f32],
    tp: usize,
    gather: impl Fn(usize, usize, &mut [[Lane; A]; A]),
) {
    let stride = conv.cin * tp;
    // Aligned: a vector store or load of a lane splitting two cache lines is slower.
    let mut dc = Aligned([[[0.0f32; LANES]; A]; A]);
    for c in 0..conv.cin {
        for b in 0..groups {
            gather(c, b, &mut dc.0);
            let at = c * tp + b * LANES;
            transform_2d::<A, A>(tf, &dc.0, &mut v[at..], stride);
        }
    }
}

/// Lanes on whole cache lines.
#[repr(align(64))]
struct Aligned<T>(T);

/// The gather of [`input_block_t`] with scalar loads and stores: each lane's window
/// element by element, the border tiles' (partly outside the image) one bounds check
/// per element. The portable version, and the reference of the vectorised ones.
// The loops index the tiles transposed (lanes innermost): ranges read clearer.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn gather_scalar<const A: usize>(
    conv: &Conv<'_>,
    origins: &[Origin],
    c: usize,
    b: usize,
    dc: &mut [[Lane; A]; A],
) {
    let (hi, wi) = (conv.hi as isize, conv.wi as isize);
    let plane = conv.hi * conv.wi;
    *dc = [[[0.0f32; LANES]; A]; A];
    let lanes = &origins[b * LANES..origins.len().min((b + 1) * LANES)];
    for (l, o) in lanes.iter().enumerate() {
        let base = o.image + c * plane;
        let inside = o.iy >= 0 && o.ix >= 0 && o.iy + A as isize <= hi && o.ix + A as isize <= wi;
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
}

/// The output transform of every tile of a task into its output planes `y` (image
/// `img`, channel `o` at `img * cout + o`, `out_rows x wo` each), partial tiles clipped,
/// the tiles' outputs scattered by [`scatter_scalar`] (the portable version;
/// [`gather::output_block`] is the AVX-512 one).
#[inline(always)]
fn output_block(conv: &Conv<'_>, blk: &OutBlock, mm: &[f32], y: &mut [&mut [f32]]) {
    let places = places(blk, conv.tile.m());
    match conv.tile {
        Tile::F2 => output_block_t::<4, 2>(out_f2, conv, blk, mm, |o, b, out| {
            scatter_scalar::<2>(conv, blk, &places, o, b, out, y)
        }),
        Tile::F4 => output_block_t::<6, 4>(out_f4, conv, blk, mm, |o, b, out| {
            scatter_scalar::<4>(conv, blk, &places, o, b, out, y)
        }),
    }
}

/// Each tile's image, first output row and column (in the task's block, tiles `m`
/// outputs wide), worked out once for all output channels (three divisions per tile
/// and channel were a third of the output transform).
fn places(blk: &OutBlock, m: usize) -> Vec<(usize, usize, usize)> {
    (0..blk.t)
        .map(|t| {
            let img = t / (blk.rows * blk.tw);
            let ty = (t / blk.tw) % blk.rows;
            (img, ty * m, (t % blk.tw) * m)
        })
        .collect()
}

/// The output transform of every tile of a task: `scatter(o, b, out)` writes `out[i *
/// M + j][l]`, output `(i, j)` of channel `o` of tile `b * LANES + l`, plus the bias,
/// into the output (partial tiles clipped, lanes past the last tile dropped).
#[inline(always)]
fn output_block_t<const A: usize, const M: usize>(
    tf: impl Fn(&[Lane; A]) -> [Lane; M] + Copy,
    conv: &Conv<'_>,
    blk: &OutBlock,
    mm: &[f32],
    mut scatter: impl FnMut(usize, usize, &[Lane]),
) {
    let cout = conv.cout;
    let stride = cout * blk.tp;
    let mut out = Aligned([[0.0f32; LANES]; 16]);
    let mut mc = Aligned([[[0.0f32; LANES]; A]; A]);
    for o in 0..cout {
        let bias = conv.bias.map_or(0.0, |b| b[o]);
        for b in 0..blk.t.div_ceil(LANES) {
            let base = o * blk.tp + b * LANES;
            for (r, row) in (0..A).map(|r| (r, r * A)) {
                for sc in 0..A {
                    let at = base + (row + sc) * stride;
                    mc.0[sc][r].copy_from_slice(&mm[at..at + LANES]);
                }
            }
            output_tf::<A, M>(tf, &mc.0, bias, &mut out.0[..M * M]);
            scatter(o, b, &out.0[..M * M]);
        }
    }
}

/// The scatter of [`output_block_t`] with scalar stores, `places` the tiles' (from
/// [`places`]). The portable version, and the reference of the vectorised one.
#[inline(always)]
fn scatter_scalar<const M: usize>(
    conv: &Conv<'_>,
    blk: &OutBlock,
    places: &[(usize, usize, usize)],
    o: usize,
    b: usize,
    out: &[Lane],
    y: &mut [&mut [f32]],
) {
    let (cout, wo) = (conv.cout, conv.wo);
    let tiles = &places[b * LANES..blk.t.min((b + 1) * LANES)];
    for (l, &(img, y0, x0)) in tiles.iter().enumerate() {
        let plane = &mut *y[img * cout + o];
        for i in 0..M.min(blk.out_rows - y0) {
            let row = &mut plane[(y0 + i) * wo + x0..(y0 + i + 1) * wo];
            for (j, v) in row.iter_mut().take(M).enumerate() {
                *v = out[i * M + j][l];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod gather;

/// [`input_block`], [`output_block`] and [`grad_block`] compiled for the instruction set
/// of the plan's GEMM kernel: the same source (and bits) with wider vectors where the
/// CPU has them (AVX-512's gather and scatter in `gather.rs`).
mod isa {
    use super::{Conv, GradBlock, Kernel, Origin, OutBlock};

    pub(super) fn input_block(
        kernel: Kernel,
        conv: &Conv<'_>,
        origins: &[Origin],
        v: &mut [f32],
        tp: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            use super::gather::input_block as avx512;
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
        y: &mut [&mut [f32]],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            use super::gather::output_block as avx512;
            #[target_feature(enable = "avx2")]
            fn avx2(conv: &Conv<'_>, blk: &OutBlock, mm: &[f32], y: &mut [&mut [f32]]) {
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

    /// [`super::grad_block`] compiled for the plan's kernel's instruction set, as
    /// [`input_block`].
    pub(super) fn grad_block(kernel: Kernel, blk: &GradBlock<'_>, z: &mut [f32], tp: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn avx512(blk: &GradBlock<'_>, z: &mut [f32], tp: usize) {
                super::grad_block(blk, z, tp)
            }
            #[target_feature(enable = "avx2")]
            fn avx2(blk: &GradBlock<'_>, z: &mut [f32], tp: usize) {
                super::grad_block(blk, z, tp)
            }
            match kernel {
                // SAFETY: as `input_block`.
                Kernel::Avx512 => return unsafe { avx512(blk, z, tp) },
                Kernel::Avx2 => return unsafe { avx2(blk, z, tp) },
                Kernel::Fallback => {}
            }
        }
        let _ = kernel;
        super::grad_block(blk, z, tp)
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
    let bias = match bias {
        Some(b) => Some(
            b.to_slice()
                .ok_or_else(|| Error::shape(OP, "the bias is not contiguous"))?,
        ),
        None => None,
    };
    let (ph, pw) = geo.options.padding;
    let pad = (signed(ph)?, signed(pw)?);
    let x = contiguous(ops.x.view(), "the input")?;
    let y = y
        .into_shape_with_order((geo.batch, o, geo.out_h, geo.out_w))
        .map_err(shape_err)?;
    with_scratch(&FILTERS, |f| {
        let taps = |oi, ci| taps(w, c, oi, ci);
        transform_filter(tile, o, c, taps, geo, parallel, &mut f.u)?;
        pack(ops.plan.kernel, tile, &f.u, (o, c), parallel, &mut f.packed)?;
        let conv = Conv {
            tile,
            kernel: ops.plan.kernel,
            x,
            cin: c,
            hi: geo.in_h,
            wi: geo.in_w,
            cout: o,
            ho: geo.out_h,
            wo: geo.out_w,
            pad,
            u: &f.packed,
            bias,
            geo,
        };
        conv.run(y, parallel)
    })
}

/// `p` as a signed offset; padding beyond `isize` is not a conv any image fits.
fn signed(p: usize) -> Result<isize> {
    isize::try_from(p).map_err(|_| Error::shape(OP, format!("padding {p} is too large")))
}

/// The input gradient's transformed filter for one call: `w` rotated by 180 degrees
/// and transposed, `U[xi][C][O]`.
pub(super) struct Backward {
    tile: Tile,
    u: Vec<Vec<f32>>,
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
        let parallel = ops.plan.parallel;
        let mut t = Vec::new();
        transform_filter(tile, c, o, rotated, geo, parallel, &mut t)?;
        let mut u = Vec::new();
        pack(ops.plan.kernel, tile, &t, (c, o), parallel, &mut u)?;
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

/// `A y` of F2 on [`LANES`] columns, the transpose of [`out_f2`]: an output-gradient
/// tile's 2 rows (or columns) to the 4 positions of its transformed tile.
#[inline(always)]
fn grad_f2(y: &[Lane; 2]) -> [Lane; 4] {
    let mut z = [[0.0f32; LANES]; 4];
    for l in 0..LANES {
        let [y0, y1] = [y[0][l], y[1][l]];
        z[0][l] = y0;
        z[1][l] = y0 + y1;
        z[2][l] = y0 - y1;
        z[3][l] = -y1;
    }
    z
}

/// `A y` of F4 on [`LANES`] columns, the transpose of [`out_f4`]; every coefficient a
/// power of two.
#[inline(always)]
fn grad_f4(y: &[Lane; 4]) -> [Lane; 6] {
    let mut z = [[0.0f32; LANES]; 6];
    for l in 0..LANES {
        let [y0, y1, y2, y3] = [y[0][l], y[1][l], y[2][l], y[3][l]];
        let (s02, s13) = (y0 + y2, y1 + y3);
        z[0][l] = y0;
        z[1][l] = s02 + s13;
        z[2][l] = s02 - s13;
        z[3][l] = y0 + 0.5 * y1 + 0.25 * y2 + 0.125 * y3;
        z[4][l] = y0 - 2.0 * y1 + 4.0 * y2 - 8.0 * y3;
        z[5][l] = y3;
    }
    z
}

/// One block of output-gradient tiles for the weight gradient: `dy` the chunk's
/// `(images, cout, ho * wo)`, `places` each tile's image (in the chunk), first row and
/// first column; `z` gets `[xi][cout][tp]`, zeros past the output's edges.
struct GradBlock<'a> {
    tile: Tile,
    dy: &'a [f32],
    cout: usize,
    ho: usize,
    wo: usize,
    places: &'a [(usize, usize, usize)],
}

/// The output-gradient transform of every tile and channel of `blk` into `z`.
#[inline(always)]
fn grad_block(blk: &GradBlock<'_>, z: &mut [f32], tp: usize) {
    match blk.tile {
        Tile::F2 => grad_block_t::<4, 2>(grad_f2, blk, z, tp),
        Tile::F4 => grad_block_t::<6, 4>(grad_f4, blk, z, tp),
    }
}

// The loops index the tiles transposed (lanes innermost): ranges read clearer.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn grad_block_t<const A: usize, const M: usize>(
    tf: impl Fn(&[Lane; M]) -> [Lane; A] + Copy,
    blk: &GradBlock<'_>,
    z: &mut [f32],
    tp: usize,
) {
    let l = blk.ho * blk.wo;
    let stride = blk.cout * tp;
    for o in 0..blk.cout {
        for (b, lanes) in blk.places.chunks(LANES).enumerate() {
            let mut yc = [[[0.0f32; LANES]; M]; M];
            for (lane, &(img, y0, x0)) in lanes.iter().enumerate() {
                let plane = &blk.dy[(img * blk.cout + o) * l..(img * blk.cout + o + 1) * l];
                for r in 0..M.min(blk.ho - y0) {
                    let row = &plane[(y0 + r) * blk.wo + x0..(y0 + r + 1) * blk.wo];
                    for (sc, &v) in row.iter().take(M).enumerate() {
                        yc[sc][r][lane] = v;
                    }
                }
            }
            let at = o * tp + b * LANES;
            transform_2d::<A, M>(tf, &yc, &mut z[at..], stride);
        }
    }
}

/// Most tiles per f32 product of the weight gradient; the products are added up in f64.
/// `P` sums every tile of a chunk (thousands for a large image), and `G^T P G` cancels
/// much of it: one f32 run over the 2 048 tiles of a block (of a 201 x 190 image, a
/// kernel summing all of `k` in one accumulator) erred by 1.6e-3 of `max|dW|` on the
/// tests' data (non-zero means), against their `1e-5`; the GEMM's own depth blocks
/// only shorten the runs by chance.
const SUM_TILES: usize = 128;

/// Per-thread scratch of the weight gradient: the transformed output gradient and the
/// per-position sums `P[xi]` (the input side reuses [`Scratch`]).
#[derive(Default)]
struct GradScratch {
    z: Vec<f32>,
    /// One product `O x C` (of at most [`SUM_TILES`] tiles), and the chunk's sums `P`
    /// `[xi][O][C]` in f64.
    prod: Vec<f32>,
    p: Vec<f64>,
    places: Vec<(usize, usize, usize)>,
}

thread_local! {
    /// Each thread's weight-gradient scratch, reused across calls.
    static GRAD_SCRATCH: RefCell<GradScratch> = RefCell::default();
}

/// The weight gradient `(O, C * 9)` of images `n0..n0 + nb` on `tile`.
///
/// The forward's `Y = A^T [U . V] A` is bilinear in `U = G g G^T`, so `dL/dU[xi] =
/// (A dY A^T)[xi] . V[xi]` per tile, and `dL/dg = G^T (dL/dU) G`. Summed over the
/// tiles, `P[xi] (O x C) = Z[xi] (O x T) x V[xi]^T (T x C)` with `Z = A dY A^T`: one
/// GEMM per position `xi` and run of at most [`SUM_TILES`] tiles, added up in f64 over
/// the chunk's runs in order; then `G^T P G` per filter in f64, rounded once. The blocks, and so
/// the sums, depend on the shape only.
pub(super) fn weight_grad(
    ops: &Operands<'_>,
    tile: Tile,
    dy: ArrayView3<'_, f32>,
    (n0, nb): (usize, usize),
) -> Result<Array2<f32>> {
    let geo = ops.geo;
    let (c, o) = (geo.in_channels, geo.out_channels);
    let mut dw = zeroed_partial(o, c * 9);
    let (ho, wo) = (geo.out_h, geo.out_w);
    if dw.is_empty() || nb == 0 || ho == 0 || wo == 0 {
        return Ok(dw);
    }
    let (m, a) = (tile.m(), tile.alpha());
    let aa = a * a;
    let (th, tw) = (ho.div_ceil(m), wo.div_ceil(m));
    let l = ho * wo;
    let dy = dy
        .to_slice()
        .ok_or_else(|| Error::shape(OP, "grad_out is not contiguous"))?;
    let (ph, pw) = geo.options.padding;
    let conv = Conv {
        tile,
        kernel: ops.plan.kernel,
        x: contiguous(ops.x.view(), "the input")?,
        cin: c,
        hi: geo.in_h,
        wi: geo.in_w,
        cout: o,
        ho,
        wo,
        pad: (signed(ph)?, signed(pw)?),
        u: &[],
        bias: None,
        geo,
    };
    let total = nb * th * tw;
    let per_tile = size_of::<f32>().saturating_mul(c + o);
    let block = (GEMM_BYTES / per_tile).clamp(MIN_BLOCK_TILES, MAX_BLOCK_TILES);
    let plane = geo.in_h * geo.in_w;
    let what = "the Winograd weight-gradient tiles";
    with_scratch(&SCRATCH, |s| {
        with_scratch(&GRAD_SCRATCH, |g| {
            let plen = checked_len(OP, &[aa, o, c], || what.into())?;
            try_resize(OP, &mut g.p, plen, 0.0, || what.into())?;
            g.p[..plen].fill(0.0);
            resize(&mut g.prod, &[o, c], what, geo)?;
            for t0 in (0..total).step_by(block) {
                let t = block.min(total - t0);
                let tp = t.next_multiple_of(LANES);
                s.origins.clear();
                g.places.clear();
                for k in t0..t0 + t {
                    let (img, ty, tx) = (k / (th * tw), (k / tw) % th, k % tw);
                    s.origins.push(Origin {
                        image: (n0 + img) * c * plane,
                        iy: (ty * m) as isize - conv.pad.0,
                        ix: (tx * m) as isize - conv.pad.1,
                    });
                    g.places.push((img, ty * m, tx * m));
                }
                resize(&mut s.v, &[aa, c, tp], what, geo)?;
                resize(&mut g.z, &[aa, o, tp], what, geo)?;
                isa::input_block(conv.kernel, &conv, &s.origins, &mut s.v, tp);
                let grads = GradBlock {
                    tile,
                    dy: &dy[n0 * o * l..(n0 + nb) * o * l],
                    cout: o,
                    ho,
                    wo,
                    places: &g.places,
                };
                isa::grad_block(conv.kernel, &grads, &mut g.z, tp);
                for xi in 0..aa {
                    let zx = ArrayView2::from_shape((o, tp), &g.z[xi * o * tp..(xi + 1) * o * tp])
                        .map_err(shape_err)?;
                    let vx = ArrayView2::from_shape((c, tp), &s.v[xi * c * tp..(xi + 1) * c * tp])
                        .map_err(shape_err)?;
                    let px = &mut g.p[xi * o * c..(xi + 1) * o * c];
                    // Sums of at most `SUM_TILES` tiles in f32, added up in f64.
                    for k0 in (0..t).step_by(SUM_TILES) {
                        let k1 = (k0 + SUM_TILES).min(t);
                        let prod = ArrayViewMut2::from_shape((o, c), &mut g.prod[..o * c])
                            .map_err(shape_err)?;
                        // Z[xi] V[xi]^T over tiles k0..k1.
                        sgemm_par(
                            conv.kernel,
                            ops.gemm_parallel(),
                            1.0,
                            zx.slice(s![.., k0..k1]),
                            vx.slice(s![.., k0..k1]).reversed_axes(),
                            0.0,
                            prod,
                        )?;
                        for (d, &v) in px.iter_mut().zip(&g.prod) {
                            *d += f64::from(v);
                        }
                    }
                }
            }
            untransform_filter(tile, &g.p, o, c, &mut dw);
            Ok(dw)
        })
    })
}

/// `dW[o][c * 9 + 3 a + b] = (G^T P[.][o][c] G)[a][b]` in f64, rounded once: the
/// per-position sums `p` `[xi][o][c]` back to the 3x3 taps.
fn untransform_filter(tile: Tile, p: &[f64], o: usize, c: usize, dw: &mut Array2<f32>) {
    let a = tile.alpha();
    let g: &[[f64; 3]] = match tile {
        Tile::F2 => &f2::G,
        Tile::F4 => &f4::G,
    };
    for oi in 0..o {
        for ci in 0..c {
            // t[i][b] = sum_j P[i][j] G[j][b].
            let mut t = [[0.0f64; 3]; 6];
            for (i, ti) in t.iter_mut().take(a).enumerate() {
                for (j, gj) in g.iter().enumerate() {
                    let v = p[((i * a + j) * o + oi) * c + ci];
                    for (tb, &gb) in ti.iter_mut().zip(gj) {
                        *tb += v * gb;
                    }
                }
            }
            for (k, dst) in dw.row_mut(oi).iter_mut().skip(ci * 9).take(9).enumerate() {
                let (ar, b) = (k / 3, k % 3);
                let v: f64 = (0..a).map(|i| g[i][ar] * t[i][b]).sum();
                *dst = v as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BT2: [[f64; 4]; 4] = [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ];
    const AT2: [[f64; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
    const BT4: [[f64; 6]; 6] = [
        [1.0, -1.5, -2.0, 1.5, 1.0, 0.0],
        [0.0, -1.0, 0.5, 2.5, 1.0, 0.0],
        [0.0, 1.0, -2.5, 0.5, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 0.5, -1.0, -0.5, 1.0, 0.0],
        [0.0, 1.0, -1.5, -2.0, 1.5, 1.0],
    ];
    const AT4: [[f64; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 0.5, -2.0, 0.0],
        [0.0, 1.0, 1.0, 0.25, 4.0, 0.0],
        [0.0, 1.0, -1.0, 0.125, -8.0, 1.0],
    ];

    /// 1-d check of the matrices: `A^T [(G g) . (B^T d)] = correlation of d with g`;
    /// and of the factored lane transforms against the matrices.
    fn check<const A: usize, const M: usize>(
        bt: &[[f64; A]; A],
        g: &[[f64; 3]; A],
        at: &[[f64; A]; M],
        tin: fn(&[Lane; A]) -> [Lane; A],
        tout: fn(&[Lane; A]) -> [Lane; M],
        tgrad: fn(&[Lane; M]) -> [Lane; A],
    ) {
        let d: Vec<f64> = (0..A).map(|i| (i as f64 * 0.7 - 1.3).sin()).collect();
        let k = [0.3, -1.1, 0.8];
        let u: Vec<f64> = g
            .iter()
            .map(|r| (0..3).map(|i| r[i] * k[i]).sum())
            .collect();
        let v: Vec<f64> = bt
            .iter()
            .map(|r| (0..A).map(|i| r[i] * d[i]).sum())
            .collect();
        for (i, r) in at.iter().enumerate() {
            let y: f64 = (0..A).map(|j| r[j] * u[j] * v[j]).sum();
            let want: f64 = (0..3).map(|j| d[i + j] * k[j]).sum();
            assert!((y - want).abs() < 1e-12, "{i}: {y} vs {want}");
        }
        // The weight gradient: `G^T [(A dy) . (B^T d)]` is the correlation of `d` with
        // `dy`, `dg[k] = sum_i dy[i] d[i + k]`.
        let dy: Vec<f64> = (0..M).map(|i| (i as f64 * 1.3 + 0.4).cos()).collect();
        let z: Vec<f64> = (0..A)
            .map(|j| (0..M).map(|i| at[i][j] * dy[i]).sum())
            .collect();
        for k in 0..3 {
            let got: f64 = (0..A).map(|j| g[j][k] * z[j] * v[j]).sum();
            let want: f64 = (0..M).map(|i| dy[i] * d[i + k]).sum();
            assert!((got - want).abs() < 1e-12, "dg {k}: {got} vs {want}");
        }
        // Small integers: exact in f32 whatever the factoring.
        let lanes: [Lane; A] =
            std::array::from_fn(|i| std::array::from_fn(|l| (i * 7 + l) as f32 % 5.0 - 2.0));
        let got = tin(&lanes);
        for (i, r) in bt.iter().enumerate() {
            for l in 0..LANES {
                let want: f64 = (0..A).map(|j| r[j] * f64::from(lanes[j][l])).sum();
                assert_eq!(f64::from(got[i][l]), want, "B^T row {i}");
            }
        }
        let got = tout(&lanes);
        for (i, r) in at.iter().enumerate() {
            for l in 0..LANES {
                let want: f64 = (0..A).map(|j| r[j] * f64::from(lanes[j][l])).sum();
                assert_eq!(f64::from(got[i][l]), want, "A^T row {i}");
            }
        }
        let small: [Lane; M] = std::array::from_fn(|i| lanes[i]);
        let got = tgrad(&small);
        for j in 0..A {
            for l in 0..LANES {
                let want: f64 = (0..M).map(|i| at[i][j] * f64::from(small[i][l])).sum();
                assert_eq!(f64::from(got[j][l]), want, "A column {j}");
            }
        }
    }

    #[test]
    fn transforms_compute_a_correlation() {
        check(&BT2, &f2::G, &AT2, in_f2, out_f2, grad_f2);
        check(&BT4, &f4::G, &AT4, in_f4, out_f4, grad_f4);
    }
}
