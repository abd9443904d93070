//! The clipped forward: the direct path's indirect GEMM with every window clipped to the
//! input, so no tap that reads padding is multiplied and no padded copy is made.
//!
//! On small images much of a padded window is padding: seed_l3 (7x7 input, 3x3 kernel,
//! stride 2, padding 1, 4x4 output) spends 31% of the direct forward's multiply-adds on
//! zeros. Output positions whose windows keep the same kernel rows and the same kernel
//! columns inside the input ([`Conv2dGeometry::taps_inside`]) form a class: the
//! interior, each border strip, each corner. A class's taps are fixed, so it runs as
//! one indirect GEMM call ([`crate::gemm::indirect_gemm_rows`]) over its positions, with
//! its own tap offsets (from each window's first inside tap, read in place from the
//! input) and an index of its taps' rows in the packed weights, read in place too. (A
//! copy of each class's rows, about 5x the packed weights, cost more than the skipped
//! taps saved once the weights passed 1 MB, and its fill, on the calling thread, left
//! the pool idle: a batch of 16 x 32 x 7x7 -> 64 ran 1.39x the direct path's time at 2
//! threads with it, 0.84x with the index.)
//!
//! The images go in blocks of the kernel's register-tile rows
//! ([`Kernel::indirect_tile_rows`]): every class has a whole number of positions per
//! image, so a block fills every register tile of every class (seed_l3's corners have
//! one position per image; in calls over any other number of images their last tiles
//! ran part empty).
//!
//! Each sum is the direct path's without its zero terms, in the same order: the same
//! value (an FMA adding `0 * w` leaves a sum as it is), except in rows of one vector
//! (the portable kernel's, and up to 16 output channels on AVX-512), whose tiles split
//! the taps into two interleaved sums: leaving taps out moves the others between the
//! two, and the last bits may differ. Groups of 1 only, either memory format in and out
//! (as the direct path). The classes of the last geometry are kept per thread
//! ([`Classes`]).
//!
//! Measured (1 thread, Zen 4, fwd ms, direct -> clipped): seed_l3 0.160 -> 0.111,
//! seed_l4 0.048 -> 0.028, seed_l2 0.138 -> 0.117; where the chooser takes it,
//! `choose.rs`.

use std::cell::RefCell;
use std::ops::Range;

use ndarray::{ArrayView1, ArrayViewMut3, Axis, s};

use super::common::{Operands, Out, fill_bias, for_each_image_block, resize, with_scratch};
use super::direct::{pack_weights, padded_bias};
use super::layout::transpose_add;
use crate::error::Result;
use crate::gemm::{Channels, IndirectOut, Kernel, Offsets, indirect_gemm_rows};
use crate::ops::geometry::Conv2dGeometry;

/// Groups of 1, any other geometry.
pub(super) fn supports(geo: &Conv2dGeometry) -> bool {
    geo.options.groups == 1
}

/// Most bytes of input per block of images (a multiple of the register-tile rows, at
/// least one tile's worth, unless [`BLOCKS_PER_THREAD`] asks for fewer images): the
/// block's images stay in L1 while each class reads them.
const BLOCK_BYTES: usize = 32 << 10;

/// Blocks per thread a batch is cut into on the pool, so a thread the host slows
/// leaves the other blocks to share, while that leaves blocks of at least half a
/// register tile of images; else one block per thread, and one block on one thread.
/// Blocks of fewer images than the tile's rows leave the tiles of the classes with one
/// position per image part empty (below), which costs most with large kernels (49
/// classes for 7x7, most of them one position per image). Zen 4 (EPYC family 25 model
/// 17), fwd ms, medians of 4 interleaved rounds, clipped / direct:
/// - 1 thread, with a block of at most a quarter of the batch (as before) -> one block:
///   64 x 14x14 -> 64, 7x7, padding 3, N = 2, 4, 8: 1.39, 1.37, 1.01 -> 0.98, 0.88,
///   0.87; 128 x 10x10 -> 16, 7x7, stride 2, N = 2, 4, 8: 2.00, 1.96, 1.16 -> 1.09,
///   0.72, 0.60; 32 x 12x12 -> 32, 5x5, N = 2, 4, 8: 1.16, 1.16, 0.95 -> 0.95, 0.86,
///   0.81; 3x3 kernels gain less (32 x 8x8 -> 64, N = 8: 0.86 -> 0.83); one image is
///   one block either way (7x7: 1.40-1.46, 5x5: 1.14);
/// - 2 threads, two blocks per thread -> one: N = 4 and 8, the same shapes: 7x7 1.39,
///   1.01, 1.59, 1.18 -> 1.09, 0.89, 0.99, 0.65; 5x5 1.03, 0.97 -> 0.86, 0.81; 3x3
///   (8x8 and 7x7) 0.93, 0.86, 0.98, 0.90 -> 0.86, 0.86, 0.88, 0.84; but N = 16 (blocks
///   of 8 against 4) 0.87 -> 1.00 (7x7, 14x14), 0.83 -> 1.12 (3x3, 8x8), 0.87 -> 1.00
///   (3x3, 7x7), though 0.80 -> 0.60 (7x7, stride 2); N = 32 equal (blocks of 8 either
///   way).
///
/// An earlier measurement made the per-thread share: 8 images of 64 x 14 x 14 (3x3, 64
/// output channels) ran at 2 threads 1.37x slower than the direct path in blocks of 6
/// and 2 images (now 4 and 4).
const BLOCKS_PER_THREAD: usize = 2;

thread_local! {
    /// Each thread's position-major output tile (a channel-major output), reused across
    /// calls.
    static TILE: RefCell<Vec<f32>> = RefCell::default();
    /// The classes of the last geometry the thread ran a forward of.
    static CLASSES: RefCell<Classes> = RefCell::default();
}

/// The share of `geo`'s multiply-adds (direct, every tap of every window) whose taps
/// read padding: what the clipped forward skips.
pub(super) fn padding_share(geo: &Conv2dGeometry) -> f64 {
    let inside = |rows: bool| -> usize { geo.taps_inside(rows).iter().map(|r| r.len()).sum() };
    let all = geo.col_cols() * geo.kernel.0 * geo.kernel.1;
    match all {
        0 => 0.0,
        all => 1.0 - (inside(true) * inside(false)) as f64 / all as f64,
    }
}

/// Forward into `y`, on the rayon pool when the plan says so: `y` is (N, O, L), or
/// (N, L, O) when `ops.y_last` (channels-last), `x` read in either layout
/// (`ops.x_last`).
pub(super) fn forward(
    ops: &Operands<'_>,
    bias: Option<ArrayView1<'_, f32>>,
    y: Out<'_>,
) -> Result<()> {
    let geo = ops.geo;
    let (n, o, l) = (geo.batch, geo.out_channels, geo.col_cols());
    if n * o * l == 0 || ops.x.ncols() == 0 {
        return fill_bias(y, bias, ops.y_last);
    }
    let kernel = ops.plan.kernel;
    let ldw = kernel.indirect_ldw(o);
    let w = pack_weights(kernel, ops.w, ldw)?;
    let tile = kernel.indirect_tile_rows(ldw);
    let image = ops.x.ncols() * size_of::<f32>();
    let block = ((BLOCK_BYTES / (tile * image)).max(1) * tile).min(n.div_ceil(blocks(
        n,
        tile,
        ops.plan.parallel.then(rayon::current_num_threads),
    )));
    let key = Key {
        // Any batch size: the classes index one block.
        geo: Conv2dGeometry { batch: 0, ..*geo },
        x_last: ops.x_last,
        ldw,
        block,
        // Channels-last rows are the output's own (`O` floats apart, the bias added as
        // they are stored); channel-major ones go to a position-major tile of `ldw`.
        row_len: if ops.y_last { o } else { ldw },
    };
    let padded_bias = padded_bias(bias, ldw);
    with_scratch(&CLASSES, |classes| {
        classes.prepare(key);
        let run = Run {
            ops,
            kernel,
            ldw,
            w: &w,
            classes: &classes.list,
            block,
            bias: &padded_bias,
        };
        for_each_image_block(y, block, ops.plan.parallel, |n0, yt| {
            with_scratch(&TILE, |tile| run.images(n0, yt, tile))
        })
    })
}

/// Blocks to cut a batch of `n` images into, on `threads` of the pool (`None`: on the
/// calling thread), with register tiles of `tile` rows: [`BLOCKS_PER_THREAD`].
fn blocks(n: usize, tile: usize, threads: Option<usize>) -> usize {
    match threads {
        None => 1,
        Some(t) if n.div_ceil(BLOCKS_PER_THREAD * t) >= tile / 2 => BLOCKS_PER_THREAD * t,
        Some(t) => t,
    }
}

/// What the classes of a forward depend on besides the weights' values.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    geo: Conv2dGeometry,
    /// The input is channels-last.
    x_last: bool,
    /// Floats per packed weight row.
    ldw: usize,
    /// Images per block.
    block: usize,
    /// Floats between consecutive output rows.
    row_len: usize,
}

/// The classes of the last geometry a thread ran: built anew on every call, their
/// indexing took 7 us of seed_l3's 0.12 ms forward, on the calling thread while the
/// pool waited (and then, at 2 threads, slept: 0.107 ms against 0.09 for the direct
/// path).
#[derive(Default)]
struct Classes {
    key: Option<Key>,
    list: Vec<Class>,
}

impl Classes {
    /// The classes of `key`.
    fn prepare(&mut self, key: Key) {
        if self.key != Some(key) {
            self.list = Class::all(&key);
            self.key = Some(key);
        }
    }
}

/// One class of output positions: those whose windows have the same taps inside the
/// input.
struct Class {
    /// Positions of the class per image.
    per_image: usize,
    /// The taps inside: offsets from a window's first inside tap, in the input's layout.
    offs: Offsets,
    /// Where those taps' rows start in the packed weights (`ldw` floats each): the
    /// kernel reads them in place.
    w_rows: Offsets,
    /// Each row's first inside tap for a block of images (image by image, the class's
    /// positions in each), from the block's first float.
    bases: Offsets,
    /// Each row's start in the block's output, from its first float.
    rows: Offsets,
}

impl Class {
    /// The classes of `key.geo`: an input channels-last when `key.x_last`, blocks of `key.block` images whose output rows are
    /// `key.row_len` floats apart (channels-last output, or a position-major tile).
    fn all(key: &Key) -> Vec<Class> {
        let geo = &key.geo;
        let (kh, kw) = geo.kernel;
        let (sh, sw) = geo.options.stride;
        let (ph, pw) = geo.options.padding;
        let (dh, dw) = geo.options.dilation;
        let (c, h, wd) = (geo.in_channels, geo.in_h, geo.in_w);
        let (image, l) = (c * h * wd, geo.col_cols());
        // A pixel's first float, and a channel's distance from it.
        let (pixel, channel) = if key.x_last { (c, 1) } else { (1, h * wd) };
        // Output rows (columns) by their range of inside kernel rows (columns), in
        // order of first appearance.
        let groups = |ranges: Vec<Range<usize>>| {
            let mut groups: Vec<(Range<usize>, Vec<usize>)> = Vec::new();
            for (i, r) in ranges.into_iter().enumerate() {
                match groups.iter_mut().find(|(g, _)| *g == r) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((r, vec![i])),
                }
            }
            groups
        };
        let row_groups = groups(geo.taps_inside(true));
        let col_groups = groups(geo.taps_inside(false));
        let mut classes = Vec::with_capacity(row_groups.len() * col_groups.len());
        for (ry, oys) in &row_groups {
            for (rx, oxs) in &col_groups {
                let mut offs = Vec::with_capacity(c * ry.len() * rx.len());
                let mut w_rows = Vec::with_capacity(c * ry.len() * rx.len());
                for ci in 0..c {
                    for i in ry.clone() {
                        let di = (i - ry.start) * dh;
                        for (n, j) in rx.clone().enumerate() {
                            offs.push(ci * channel + (di * wd + n * dw) * pixel);
                            w_rows.push(((ci * kh + i) * kw + j) * key.ldw);
                        }
                    }
                }
                // A window's first inside tap (any position, for a class with none: its
                // rows read nothing).
                let corner = |oy: usize, ox: usize| match offs.is_empty() {
                    true => 0,
                    false => {
                        let iy = oy * sh + ry.start * dh - ph;
                        let ix = ox * sw + rx.start * dw - pw;
                        (iy * wd + ix) * pixel
                    }
                };
                let per_image = oys.len() * oxs.len();
                let mut bases = Vec::with_capacity(key.block * per_image);
                let mut rows = Vec::with_capacity(key.block * per_image);
                for b in 0..key.block {
                    for &oy in oys {
                        for &ox in oxs {
                            bases.push(b * image + corner(oy, ox));
                            rows.push((b * l + oy * geo.out_w + ox) * key.row_len);
                        }
                    }
                }
                classes.push(Class {
                    per_image,
                    offs: Offsets::new(offs),
                    w_rows: Offsets::new(w_rows),
                    bases: Offsets::new(bases),
                    rows: Offsets::new(rows),
                });
            }
        }
        classes
    }
}

/// What every block of one forward shares.
struct Run<'a, 'x> {
    ops: &'a Operands<'x>,
    kernel: Kernel,
    ldw: usize,
    /// The packed weights, `K x ldw`, whose rows each class reads.
    w: &'a [f32],
    classes: &'a [Class],
    /// Images per block.
    block: usize,
    /// The bias padded to `ldw` (zero without one).
    bias: &'a [f32],
}

impl Run<'_, '_> {
    /// Images `n0..n0 + b` into `yt` ((b, O, L), or (b, L, O) channels-last), a block
    /// at a time, one kernel call per class.
    fn images(&self, n0: usize, mut yt: ArrayViewMut3<'_, f32>, tile: &mut Vec<f32>) -> Result<()> {
        let ops = self.ops;
        let geo = ops.geo;
        let (o, l, ldw) = (geo.out_channels, geo.col_cols(), self.ldw);
        let b = yt.len_of(Axis(0));
        if !ops.y_last {
            resize(
                tile,
                &[self.block.min(b), l, ldw],
                "the output tile of the clipped path",
                geo,
            )?;
        }
        for c0 in (0..b).step_by(self.block) {
            let nb = self.block.min(b - c0);
            let xs = ops.x.slice(s![n0 + c0..n0 + c0 + nb, ..]);
            let xs = xs.to_slice().expect("input rows are contiguous");
            if ops.y_last {
                let y = yt.slice_mut(s![c0..c0 + nb, .., ..]);
                let y = y
                    .into_slice()
                    .expect("channels-last output images are contiguous");
                self.classes_into(xs, nb, y, Channels::first(o, ldw), Some(self.bias));
                continue;
            }
            self.classes_into(xs, nb, tile, Channels::All, None);
            for (bi, t) in tile.chunks_exact(l * ldw).take(nb).enumerate() {
                let mut yn = yt.index_axis_mut(Axis(0), c0 + bi);
                let yn = yn.as_slice_mut().expect("output images are contiguous");
                transpose_add(self.kernel, t, ldw, (l, o), Some(self.bias), yn, l);
            }
        }
        Ok(())
    }

    /// Every class of `nb` images `xs` into `out`.
    fn classes_into(
        &self,
        xs: &[f32],
        nb: usize,
        out: &mut [f32],
        channels: Channels,
        bias: Option<&[f32]>,
    ) {
        for class in self.classes {
            let rows = nb * class.per_image;
            let y = IndirectOut {
                c: &mut *out,
                row_starts: Some(class.rows.prefix(rows)),
                channels,
                bias,
                accumulate: false,
            };
            let bases = class.bases.prefix(rows);
            let w = (self.w, Some(class.w_rows.all()));
            indirect_gemm_rows(self.kernel, xs, bases, class.offs.all(), w, self.ldw, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Conv2dOptions, ConvPlan, ForwardAlgo, conv2d_with_plan};
    use ndarray::{Array1, Array4};

    fn geo(x: [usize; 4], w: [usize; 4], opts: &Conv2dOptions) -> Conv2dGeometry {
        Conv2dGeometry::new("test", x, w, opts).unwrap()
    }

    #[test]
    fn taps_inside_clip_each_window_to_the_input() {
        // seed_l3: 7 rows, 3x3 kernel, stride 2, padding 1: the first window starts in
        // the padding, the last ends in it.
        let s2 = Conv2dOptions::new()
            .with_stride((2, 2))
            .with_padding((1, 1));
        let g = geo([1, 16, 7, 7], [32, 16, 3, 3], &s2);
        assert_eq!(g.taps_inside(true), [1..3, 0..3, 0..3, 0..2]);
        assert!((padding_share(&g) - (1.0 - (10.0f64 / 12.0).powi(2))).abs() < 1e-12);
        // Padding past the kernel: windows all padding are empty; a dilated one skips.
        let far = Conv2dOptions::new()
            .with_padding((3, 0))
            .with_dilation((2, 1));
        let g = geo([1, 1, 2, 5], [1, 1, 2, 3], &far);
        assert_eq!(g.out_h, 6);
        // Tap t of output row i reads padded row i + 2t; rows 3 and 4 are the input.
        assert_eq!(g.taps_inside(true), [0..0, 1..2, 1..2, 0..1, 0..1, 0..0]);
        assert_eq!(g.taps_inside(false), [0..3, 0..3, 0..3]);
        // No padding: every tap of every window.
        let g = geo([1, 1, 5, 5], [1, 1, 3, 3], &Conv2dOptions::new());
        assert_eq!(padding_share(&g), 0.0);
    }

    #[test]
    fn sums_are_the_direct_paths_without_their_zero_terms() {
        // Rows of several vectors (48 output channels) on the SIMD kernels: the tiles
        // that do not split their taps in two sums, so each sum is the direct path's
        // with the zero terms left out, the same value. K = 450 runs in two depth blocks.
        let opts = Conv2dOptions::new()
            .with_stride((2, 1))
            .with_padding((1, 2));
        let (x_dim, w_dim) = ([3, 50, 7, 6], [48, 50, 3, 3]);
        let g = geo(x_dim, w_dim, &opts);
        let value = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 250.0;
        let x = Array4::from_shape_fn(x_dim, |(a, b, c, d)| value(a * 997 + b * 61 + c * 7 + d));
        let w = Array4::from_shape_fn(w_dim, |(a, b, c, d)| value(a * 31 + b * 11 + c * 5 + d + 3));
        let bias = Array1::from_shape_fn(48, |i| value(i + 17));
        for kernel in [Kernel::Avx512, Kernel::Avx2] {
            if !kernel.is_supported() {
                continue;
            }
            let auto = ConvPlan {
                kernel,
                ..ConvPlan::choose(&g, 1)
            };
            let run = |forward| {
                let plan = ConvPlan { forward, ..auto };
                conv2d_with_plan(x.view(), w.view(), Some(bias.view()), &opts, plan).unwrap()
            };
            let (clipped, direct) = (run(ForwardAlgo::Clipped), run(ForwardAlgo::Direct));
            assert_eq!(clipped, direct, "{kernel:?}");
        }
    }
}
