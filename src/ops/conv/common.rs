//! What the conv algorithms share: the operands of one call, fallible buffers and
//! per-thread scratch, the batch's split into image tiles (forward) and reduction chunks
//! (backward), the per-group GEMM loop of the column algorithms, and the bias gradient.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::parallel::prelude::*;
use ndarray::{
    Array1, Array2, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s,
};

use super::plan::ConvPlan;
use crate::error::{Error, Result};
use crate::gemm::{Kernel, sgemm_par};
use crate::limits::{checked_len, try_resize};
use crate::ops::geometry::Conv2dGeometry;
use crate::ops::im2col::Im2colMap;

/// The op name in errors.
pub(super) const OP: &str = "conv2d";

/// At most this many images per partial sum of the weight and bias gradients (fewer for
/// small batches: `ceil(N / 8)`). Fixed by the batch size alone, never by the thread
/// count, so the floating-point summation order is always the same.
pub const REDUCTION_CHUNK: usize = 8;

/// Fewest tasks (forward image tiles) or reduction chunks (backward) to cut a batch into
/// when images are small, so two threads get a balanced share. A constant, never the
/// thread count, so the tiles and chunks, and the floating-point sums, are the same on
/// any pool.
pub(super) const MIN_SPLIT: usize = 8;

/// On the pool, a batch of fewer images than this per thread, and not a multiple of
/// the threads, shares each image over the pool instead (the direct forward's positions,
/// `direct::forward_positions`; the phase forward's output channels, the column
/// forwards' columns, the backward's two gradients): its image tasks would leave threads
/// idle. Measured on the direct forward:
/// Zen 4 (EPYC family 25 model 17), 2 threads, fwd ms, medians of 4, image tasks ->
/// split: one image of 64 x 56x56 -> 128, stride 2: 1.10 -> 0.67; of 128 x 28x28 ->
/// 128: 2.13 -> 1.22; of 512 x 7x7 -> 512: 4.8 -> 4.2; of 64 x 56x56 -> 64, 1x1: 0.31
/// -> 0.17; three images of 64 x 28x28 -> 64: 1.11 -> 0.89. Two images (one per
/// thread already) lose to the split's extra copy: 2 x 32 x 14x14 -> 64 0.083 -> 0.104,
/// 2 x 64 x 28x28 -> 64 0.57 -> 0.62.
const SPLIT_MAX_IMAGES_PER_THREAD: usize = 2;

/// Whether a batch of `n` images on `threads` of the pool is too small to share by
/// images ([`SPLIT_MAX_IMAGES_PER_THREAD`]), so each image is shared instead (given the
/// work, [`split_tasks`]).
pub(super) fn splits_images(n: usize, threads: usize) -> bool {
    threads > 1 && n < SPLIT_MAX_IMAGES_PER_THREAD * threads && !n.is_multiple_of(threads)
}

/// Tasks one image of `work` multiply-adds, in at most `runs` runs, is split into over
/// `threads` ([`SPLIT_TASKS_PER_THREAD`], [`SPLIT_MIN_TASK_MACS`]): the direct
/// forward's position runs, and the column algorithms' column tiles.
pub(super) fn split_tasks(work: usize, runs: usize, threads: usize) -> usize {
    (SPLIT_TASKS_PER_THREAD * threads)
        .min(work / SPLIT_MIN_TASK_MACS)
        .min(runs)
}

/// Tasks per thread of an image's split ([`split_tasks`]), so a thread the host slows leaves the
/// rest of the image to the others.
const SPLIT_TASKS_PER_THREAD: usize = 4;

/// Fewest multiply-adds per task of an image's split (about 10 us; the direct forward): one image of
/// 64 x 7x7 -> 64 (1.8 M) ran in 0.066 ms split against 0.046 on one thread.
const SPLIT_MIN_TASK_MACS: usize = 1 << 20;

/// Images whose column matrix has at most this many entries are lowered through an
/// index map when the plan asks for one.
pub(super) const MAP_ENTRIES: usize = 1 << 16;

/// The shared read-only inputs of one conv.
pub(super) struct Operands<'a> {
    /// The input, (N, C * H * W).
    pub x: ArrayView2<'a, f32>,
    /// The weights, (O, C / groups * kh * kw).
    pub w: ArrayView2<'a, f32>,
    pub geo: &'a Conv2dGeometry,
    pub plan: ConvPlan,
    /// The im2col index map, for small images (whole-image tiles of `Columns` only).
    pub map: Option<Im2colMap>,
    /// `x`'s rows are channels-last, `(H, W, C)` (the direct algorithm only).
    pub x_last: bool,
    /// The output `y` (forward) or `dy` (backward) is channels-last, `(N, L, O)` (the
    /// direct algorithm only).
    pub y_last: bool,
}

impl Operands<'_> {
    /// Whether each GEMM of a tile may go parallel on its own: only outside a parallel
    /// split of the tiles.
    pub(super) fn gemm_parallel(&self) -> bool {
        !self.plan.parallel
    }
}

pub(super) fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::shape(OP, e.to_string())
}

/// Resizes one of an algorithm's buffers to `dims` multiplied, fallibly: a padded image
/// (far padding, stride or dilation) may be far larger than memory.
pub(super) fn resize(
    buf: &mut Vec<f32>,
    dims: &[usize],
    what: &str,
    geo: &Conv2dGeometry,
) -> Result<()> {
    let describe = || format!("{what}, {}", geo.describe());
    let len = checked_len(OP, dims, describe)?;
    try_resize(OP, buf, len, 0.0, describe)
}

/// A scratch buffer whose users write only part of it (the insides of padded images,
/// the first `O` lanes of padded rows) and need the rest to read as zero: it is zeroed
/// when its layout changes, not on every use. Zeroing the padded images of each tile
/// cost more than copying the images in (seed_l2 forward: 850 KB zeroed against 630 KB
/// copied per call, `try_resize` and `memset` 12% of its time).
///
/// It keeps the buffers of the last [`Zeroed::LAYOUTS`] layouts, so the layers of a
/// network, which take turns on each thread's scratch, each find theirs still zero
/// outside what they write (with one buffer, each layer's call zeroed it again:
/// `try_resize` and `memset` about 1.5% of `train_mnist`'s profile).
#[derive(Default)]
pub(super) struct Zeroed {
    /// `(layout, buffer)` by last use, the most recent last.
    slots: Vec<(Vec<usize>, Vec<f32>)>,
}

impl Zeroed {
    /// Layouts kept: the four convs of the notebook's net.
    const LAYOUTS: usize = 4;

    /// The buffer of `dims` floats, zero except where earlier users of the same
    /// `layout` wrote. `layout` must name everything that decides which entries the
    /// caller writes (sizes, padding, channels, images per call): a user that writes
    /// the same entries finds the rest still zero.
    pub(super) fn prepare(
        &mut self,
        dims: &[usize],
        layout: &[usize],
        what: &str,
        geo: &Conv2dGeometry,
    ) -> Result<&mut [f32]> {
        let describe = || format!("{what}, {}", geo.describe());
        let len = checked_len(OP, dims, describe)?;
        let hit = self
            .slots
            .iter()
            .position(|(l, b)| l == layout && b.len() == len);
        let slot = match hit {
            Some(i) => self.slots.remove(i),
            None => {
                let (mut l, mut b) = if self.slots.len() >= Self::LAYOUTS {
                    self.slots.remove(0)
                } else {
                    Default::default()
                };
                l.clear();
                b.clear();
                try_resize(OP, &mut b, len, 0.0, describe)?;
                l.extend_from_slice(layout);
                (l, b)
            }
        };
        self.slots.push(slot);
        Ok(&mut self.slots.last_mut().expect("just pushed").1)
    }
}

/// Runs `f` with this thread's scratch from `key`, taken out while in use (so a
/// re-entrant call just starts with fresh buffers) and put back after: the conv paths
/// keep their buffers across calls, as fresh ones cost page faults and zeroing on every
/// call.
pub(super) fn with_scratch<S: Default, T>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<S>>,
    f: impl FnOnce(&mut S) -> T,
) -> T {
    let mut scratch = key.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let out = f(&mut scratch);
    key.with(|s| *s.borrow_mut() = scratch);
    out
}

/// A reduction chunk's weight-gradient partial, `rows x cols` zeros, from the small
/// buffers ([`crate::buffers::take_small_zeroed`]); `backward` hands every partial back
/// once they are summed, so the next call's come from the same memory. Fresh, a
/// partial of 256 KiB or more was faulted in on every call: the column path's backward
/// of 128 x 64 x 5x5 -> 96, 5x5, ran 9 ms alone and 3 ms after another conv had left
/// the allocator's mmap threshold above it (Zen 4, 1 thread).
pub(super) fn zeroed_partial(rows: usize, cols: usize) -> Array2<f32> {
    let len = rows
        .checked_mul(cols)
        .expect("a partial of a checked geometry");
    Array2::from_shape_vec((rows, cols), crate::buffers::take_small_zeroed(len))
        .expect("rows x cols floats")
}

/// Whole images per tile when an image has at most `tile_cols` positions, else 1.
pub(super) fn images_per_tile(tile_cols: usize, l: usize) -> usize {
    (tile_cols / l.max(1)).max(1)
}

/// Where a forward writes `(N, O, L)`: a view to overwrite, or a new output's memory,
/// not yet initialised, which [`for_each_image_tile`] zeroes one image tile at a time,
/// in the tile's task just before the tile is written.
///
/// Zeroing a whole new output first (`calloc`'s serial `memset` of a block glibc
/// reuses) cost a pass over memory with nothing else running: 11% of nb_32x1x5's
/// forward. A tile zeroed just before its writes stays in cache for them, on whichever
/// thread runs it.
pub(super) enum Out<'a> {
    /// Initialised memory (any values).
    View(ArrayViewMut3<'a, f32>),
    /// Uninitialised memory of `dim`'s size; `done` counts the elements initialised.
    Fresh {
        buf: &'a mut [MaybeUninit<f32>],
        dim: (usize, usize, usize),
        done: &'a AtomicUsize,
    },
}

impl<'a> Out<'a> {
    /// `(N, O, L)`.
    pub(super) fn dim(&self) -> (usize, usize, usize) {
        match self {
            Out::View(v) => v.dim(),
            Out::Fresh { dim, .. } => *dim,
        }
    }

    /// The output as a view; fresh memory is zeroed first (and counted as initialised).
    pub(super) fn into_view(self) -> ArrayViewMut3<'a, f32> {
        match self {
            Out::View(v) => v,
            Out::Fresh { buf, dim, done } => {
                buf.fill(MaybeUninit::new(0.0));
                done.fetch_add(buf.len(), Ordering::Relaxed);
                // SAFETY: every element was just written, and `MaybeUninit<f32>` has the
                // layout of `f32`.
                let buf = unsafe { &mut *(buf as *mut [MaybeUninit<f32>] as *mut [f32]) };
                ArrayViewMut3::from_shape(dim, buf).expect("the buffer holds the shape")
            }
        }
    }

    /// The output cut into tiles of `per` images, in order; none for no images.
    fn tiles(self, per: usize) -> Vec<Out<'a>> {
        if self.dim().0 == 0 {
            return Vec::new();
        }
        match self {
            Out::View(mut rest) => {
                let mut tiles = Vec::new();
                while rest.len_of(Axis(0)) > per {
                    let (head, tail) = rest.split_at(Axis(0), per);
                    tiles.push(Out::View(head));
                    rest = tail;
                }
                tiles.push(Out::View(rest));
                tiles
            }
            Out::Fresh { buf, dim, done } => {
                let (n, o, l) = dim;
                let image = o * l;
                if image == 0 {
                    return vec![Out::Fresh { buf, dim, done }];
                }
                buf.chunks_mut(per * image)
                    .map(|buf| {
                        let dim = (buf.len() / image, o, l);
                        Out::Fresh { buf, dim, done }
                    })
                    .take(n.div_ceil(per))
                    .collect()
            }
        }
    }
}

/// Runs `f(first image, output tile)` over the batch of `y` (N, O, L) cut into
/// `ceil(N / MIN_SPLIT)`-image tiles, on the rayon pool when `parallel`; a fresh
/// output's tile is zeroed in its task before `f` writes it. The tiles depend on the
/// shape only.
pub(super) fn for_each_image_tile(
    y: Out<'_>,
    parallel: bool,
    f: impl Fn(usize, ArrayViewMut3<'_, f32>) -> Result<()> + Sync,
) -> Result<()> {
    let per = tile_images(y.dim().0);
    for_each_tile_of(y, per, parallel, f)
}

/// [`for_each_image_tile`] with tiles of a multiple of `block` images (the one nearest
/// below `ceil(N / MIN_SPLIT)`, at least `block`), for algorithms that run blocks of
/// `block` images: only the batch's last block is partial.
pub(super) fn for_each_image_block(
    y: Out<'_>,
    block: usize,
    parallel: bool,
    f: impl Fn(usize, ArrayViewMut3<'_, f32>) -> Result<()> + Sync,
) -> Result<()> {
    let block = block.max(1);
    let per = (tile_images(y.dim().0) / block).max(1) * block;
    for_each_tile_of(y, per, parallel, f)
}

/// `f(first image, output tile)` over the tiles of `per` images of `y`.
fn for_each_tile_of(
    y: Out<'_>,
    per: usize,
    parallel: bool,
    f: impl Fn(usize, ArrayViewMut3<'_, f32>) -> Result<()> + Sync,
) -> Result<()> {
    let tiles: Vec<_> = y.tiles(per).into_iter().enumerate().collect();
    if parallel {
        tiles
            .into_par_iter()
            .with_max_len(1)
            .try_for_each(|(t, yt)| f(t * per, yt.into_view()))
    } else {
        tiles
            .into_iter()
            .try_for_each(|(t, yt)| f(t * per, yt.into_view()))
    }
}

/// A forward whose output is the bias alone (no images, no output positions or
/// channels, or an empty input: every tap in the padding): `y` (N, O, L), or (N, L, O)
/// when `last`, filled with it (zeros without one).
pub(super) fn fill_bias(y: Out<'_>, bias: Option<ArrayView1<'_, f32>>, last: bool) -> Result<()> {
    let axis = if last { Axis(2) } else { Axis(1) };
    for (oi, mut yo) in y.into_view().axis_iter_mut(axis).enumerate() {
        yo.fill(bias.map_or(0.0, |b| b[oi]));
    }
    Ok(())
}

/// Images per forward tile of [`for_each_image_tile`]: `ceil(N / MIN_SPLIT)`, at least
/// 1. Depends on the batch size only.
pub(super) fn tile_images(n: usize) -> usize {
    n.div_ceil(MIN_SPLIT).max(1)
}

/// Images per reduction chunk of the backward pass: `ceil(N / MIN_SPLIT)`, at most
/// [`REDUCTION_CHUNK`]. Depends on the batch size only.
pub(super) fn chunk_images(n: usize) -> usize {
    n.div_ceil(MIN_SPLIT).clamp(1, REDUCTION_CHUNK)
}

/// The reduction chunks of a batch of `n` images: `(first image, images, their rows of
/// dx when wanted)`, in order.
#[allow(clippy::type_complexity)]
pub(super) fn reduction_chunks(
    n: usize,
    dx: Option<ArrayViewMut2<'_, f32>>,
) -> Vec<(usize, usize, Option<ArrayViewMut2<'_, f32>>)> {
    let cb = chunk_images(n);
    let mut chunks = Vec::new();
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
    chunks
}

/// `out[g] = W[g] (Og, Kg) x cols[g] (Kg, n)` for every group `g`: `out` (O, n), `cols`
/// (K, n).
pub(super) fn group_forward(
    ops: &Operands<'_>,
    cols: ArrayView2<'_, f32>,
    mut out: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    let g = ops.geo.options.groups;
    let (og, kg) = (ops.geo.out_channels / g, ops.w.ncols());
    for gi in 0..g {
        sgemm_par(
            ops.plan.kernel,
            ops.gemm_parallel(),
            1.0,
            ops.w.slice(s![gi * og..(gi + 1) * og, ..]),
            cols.slice(s![gi * kg..(gi + 1) * kg, ..]),
            0.0,
            out.slice_mut(s![gi * og..(gi + 1) * og, ..]),
        )?;
    }
    Ok(())
}

/// `dW[g] += dy[g] (Og, n) x cols[g]^T (n, Kg)` for every group `g`: `dy` (O, n),
/// `cols` (K, n), `dw` (O, Kg).
pub(super) fn group_weight_grad(
    ops: &Operands<'_>,
    dy: ArrayView2<'_, f32>,
    cols: ArrayView2<'_, f32>,
    dw: &mut Array2<f32>,
) -> Result<()> {
    let g = ops.geo.options.groups;
    let (og, kg) = (ops.geo.out_channels / g, ops.w.ncols());
    for gi in 0..g {
        sgemm_par(
            ops.plan.kernel,
            ops.gemm_parallel(),
            1.0,
            dy.slice(s![gi * og..(gi + 1) * og, ..]),
            cols.slice(s![gi * kg..(gi + 1) * kg, ..]).t(),
            1.0,
            dw.slice_mut(s![gi * og..(gi + 1) * og, ..]),
        )?;
    }
    Ok(())
}

/// `dcols[g] = W[g]^T (Kg, Og) x dy[g] (Og, n)` for every group `g`: `dy` (O, n),
/// `dcols` (K, n).
pub(super) fn group_col_grad(
    ops: &Operands<'_>,
    dy: ArrayView2<'_, f32>,
    mut dcols: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    let g = ops.geo.options.groups;
    let (og, kg) = (ops.geo.out_channels / g, ops.w.ncols());
    for gi in 0..g {
        sgemm_par(
            ops.plan.kernel,
            ops.gemm_parallel(),
            1.0,
            ops.w.slice(s![gi * og..(gi + 1) * og, ..]).t(),
            dy.slice(s![gi * og..(gi + 1) * og, ..]),
            0.0,
            dcols.slice_mut(s![gi * kg..(gi + 1) * kg, ..]),
        )?;
    }
    Ok(())
}

/// The bias gradient of images `n0..n0 + nb`: `sum(dy[n, o, :])` per channel, in f64,
/// each row summed by `kernel`'s copy of [`crate::ops::lanes::sum_f64`].
pub(super) fn bias_partial(
    kernel: Kernel,
    dy: ArrayView3<'_, f32>,
    n0: usize,
    nb: usize,
) -> Array1<f64> {
    let mut db = Array1::<f64>::zeros(dy.len_of(Axis(1)));
    for i in 0..nb {
        for (acc, row) in db
            .iter_mut()
            .zip(dy.index_axis(Axis(0), n0 + i).outer_iter())
        {
            *acc += match row.as_slice() {
                Some(row) => crate::ops::lanes::sum_f64(kernel, row),
                None => row.iter().map(|&v| f64::from(v)).sum::<f64>(),
            };
        }
    }
    db
}

/// [`bias_partial`] of a channels-last `dy` (N, L, O): `db[o]` sums its images' `dy`
/// in f64, position by position, in `kernel`'s vectors (the order differs from
/// [`bias_partial`]'s, so the last bits of `db` may too).
pub(super) fn bias_partial_last(
    kernel: Kernel,
    dy: ArrayView3<'_, f32>,
    n0: usize,
    nb: usize,
) -> Array1<f64> {
    let mut db = vec![0.0f64; dy.len_of(Axis(2))];
    for i in 0..nb {
        let img = dy.index_axis(Axis(0), n0 + i);
        match img.as_slice() {
            Some(rows) => crate::ops::lanes::add_columns_f64(kernel, &mut db, rows),
            None => {
                for row in img.outer_iter() {
                    for (acc, &v) in db.iter_mut().zip(row.iter()) {
                        *acc += f64::from(v);
                    }
                }
            }
        }
    }
    Array1::from(db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::geometry::Conv2dOptions;

    /// A layout's buffer comes back as its user left it while it is among the last
    /// [`Zeroed::LAYOUTS`] used, and all zero once evicted or resized.
    #[test]
    fn zeroed_keeps_the_last_layouts() {
        let opts = Conv2dOptions::new();
        let geo = Conv2dGeometry::new(OP, [1, 1, 1, 1], [1, 1, 1, 1], &opts).unwrap();
        let mut z = Zeroed::default();
        let use_ = |z: &mut Zeroed, layout: usize, len: usize| -> Vec<f32> {
            let b = z.prepare(&[len], &[layout], "test", &geo).unwrap();
            let seen = b.to_vec();
            b[0] = layout as f32 + 1.0;
            seen
        };
        assert_eq!(use_(&mut z, 0, 3), [0.0; 3]);
        assert_eq!(use_(&mut z, 1, 3), [0.0; 3]);
        assert_eq!(use_(&mut z, 0, 3), [1.0, 0.0, 0.0], "layout 0 kept");
        assert_eq!(
            use_(&mut z, 0, 4),
            [0.0; 4],
            "another length is another layout"
        );
        for layout in 2..2 + Zeroed::LAYOUTS {
            assert_eq!(use_(&mut z, layout, 3), [0.0; 3]);
        }
        assert_eq!(use_(&mut z, 1, 3), [0.0; 3], "layout 1 evicted");
    }
}
