//! The direct conv path, forward beside backward: no column matrix at all. Every product
//! runs on the indirect GEMM kernel ([`crate::gemm::indirect_gemm`]), which reads its
//! A operand in place at `base + offset` from a zero-padded copy of one image:
//!
//! - forward: `y[p, o] = sum_k xpad[bases[p] + offs[k]] * W[k, o]` (positions by
//!   output channels, [`DirectIndex`]), then written channel-major with the bias;
//! - weight gradient: the same gather with the roles swapped,
//!   `dW[k, o] += sum_p xpad[offs[k] + bases[p]] * dy[p, o]`, summed per image;
//! - input gradient: a transposed conv, run per pixel class as a gather from a
//!   zero-padded `dy` ([`TransposeIndex`]): `dx[pix, c] = sum_(o, tap)
//!   dypad[bases[pix] + off(o, tap)] * W[o, c, tap]`.
//!
//! Channels-last tensors ([`crate::ops::MemoryFormat::ChannelsLast`]) are read and
//! written as they are: the padded copy of a channels-last image is channels-last too
//! ([`DirectIndex::new`] with `last`), and the kernel stores the output's rows (adding
//! the bias as it stores them) and each pixel's row of `dx` itself
//! ([`crate::gemm::IndirectOut`]; masked to the first `O` or `C` lanes when the
//! channels are not whole vectors). With whole vectors of output channels `dy` is the
//! weight gradient's operand as it is; otherwise its rows are copied to a tile padded
//! to whole vectors (no transpose). The sums are the same, in the same order, so the
//! bits are those of the channel-major run.
//!
//! Each kernel row holds the output channels (forward, weight gradient) or the input
//! channels (input gradient) padded to [`Kernel::indirect_ldw`]: whole vectors, which
//! on a Zen 4 are 256-bit ones for the AVX-512 kernel when a 512-bit vector would be
//! at most half used (the notebook's 8- and 1-channel layers).
//!
//! It pays where im2col does not: the column matrix costs a gather per element to build
//! and a scatter per element to fold back, which dominated the notebook's small layers
//! (two thirds of their forward time), and an extra pass over memory on large ones.
//! Groups of 1 only ([`supports`]). [`forward`] is the forward pass; a [`Backward`],
//! built once per call, runs [`Backward::input_grad`], [`Backward::weight_grad`] or
//! both fused ([`Backward::gradients`]) per reduction chunk. The index types
//! ([`DirectIndex`], [`TransposeIndex`]) are at the end of this file.

use std::cell::RefCell;

use ndarray::{Array2, ArrayView1, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s};

use super::common::{
    self, OP, Operands, Out, Zeroed, chunk_images, fill_bias, for_each_image_block,
    for_each_image_tile, resize, tile_images, with_scratch, zeroed_partial,
};
use super::layout::{copy_rows_add, pad_into, scatter_pixels, transpose_add};
use crate::error::Result;
use crate::gemm::{Channels, IndirectOut, Kernel, Offsets, indirect_gemm};
use crate::limits::{checked_len, try_zeroed_vec};
use crate::ops::geometry::Conv2dGeometry;

/// Groups of 1, any other geometry.
pub(super) fn supports(geo: &Conv2dGeometry) -> bool {
    geo.options.groups == 1
}

/// Most bytes of (padded) images per kernel call. Small images go several to a call,
/// so the last register tile of one image is not left half empty (seed_l4 has 4
/// positions per image, half of an 8-position tile) and per-call work is shared.
const CALL_BYTES: usize = 128 << 10;

thread_local! {
    /// Each thread's forward buffers, reused across calls: fresh ones cost page faults
    /// and zeroing on every call.
    static FORWARD: RefCell<ForwardScratch> = RefCell::default();
    /// Each thread's backward buffers, kept apart from the forward's so that a training
    /// step's alternating passes each find their own buffers at the size they need.
    static BACKWARD: RefCell<BackwardScratch> = RefCell::default();
}

/// The forward's buffers.
#[derive(Default)]
struct ForwardScratch {
    /// Padded images, borders zero.
    padded: Zeroed,
    /// The kernel's position-major output tile (a channel-major output).
    tile: Vec<f32>,
}

/// The backward's buffers.
#[derive(Default)]
struct BackwardScratch {
    /// Padded images, borders zero.
    xpad: Zeroed,
    /// `dy` position-major, padding lanes zero.
    dyt: Zeroed,
    /// The chunk's weight-gradient sum, which each call adds to.
    acc: Vec<f32>,
    /// Padded `dy`, borders zero.
    dypad: Zeroed,
    /// One pixel class's input-gradient tile.
    tile: Vec<f32>,
}

/// Weights `(O, K)` packed `K x ldw`, tap-major, channels padded with zeros: one
/// register transpose per 16 x 16 block (an element loop over ndarray's rows took 5% of
/// seed_l3-sized forwards, on the calling thread while the pool waited).
pub(super) fn pack_weights(
    kernel: Kernel,
    w: ndarray::ArrayView2<'_, f32>,
    ldw: usize,
) -> Result<Vec<f32>> {
    let (o, k) = w.dim();
    let mut out = try_zeroed_vec(OP, k * ldw, || {
        format!("the packed weights {:?}", w.shape())
    })?;
    match w.as_slice() {
        Some(ws) => transpose_add(kernel, ws, k, (o, k), None, &mut out, ldw),
        None => {
            for (oi, row) in w.outer_iter().enumerate() {
                for (ki, &v) in row.iter().enumerate() {
                    out[ki * ldw + oi] = v;
                }
            }
        }
    }
    Ok(out)
}

/// The bias padded with zeros to `ldw` (all zero without one), as the kernel adds it.
pub(super) fn padded_bias(bias: Option<ArrayView1<'_, f32>>, ldw: usize) -> Vec<f32> {
    let mut b = vec![0.0; ldw];
    if let Some(bias) = bias {
        b.iter_mut().zip(bias).for_each(|(d, &s)| *d = s);
    }
    b
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
        // An empty image (no channels, or zero height or width, all padding): the output
        // is the bias.
        return fill_bias(y, bias, ops.y_last);
    }
    let kernel = ops.plan.kernel;
    let ldw = kernel.indirect_ldw(o);
    let idx = DirectIndex::new(geo, ops.x_last)?;
    let w = pack_weights(kernel, ops.w, ldw)?;
    // The window corners of the most images a call of any tile takes, built once (per
    // call they were 1% of `train_mnist`'s profile).
    let img = image_len(geo, &idx);
    let calls = images_per_call(img, tile_images(n));
    let bases = multi_bases(&idx.bases, img, calls);
    // A channels-last output takes each position's `O` channels from the kernel as it
    // stores them: rows packed when the channels are whole vectors, else each row's
    // start and its channels masked.
    let starts = match ops.y_last && ldw != o {
        true => {
            let one: Vec<usize> = (0..l).map(|q| q * o).collect();
            Some(multi_bases(&one, o * l, calls))
        }
        false => None,
    };
    let out = Output {
        rows: ops.y_last.then_some(starts),
        bias: padded_bias(bias, ldw),
    };
    let threads = rayon::current_num_threads();
    let work = o.saturating_mul(l).saturating_mul(ops.w.ncols());
    let tasks = common::split_tasks(
        work,
        l.div_ceil(kernel.indirect_tile_rows(ldw).max(1)),
        threads,
    );
    if ops.plan.parallel && common::splits_images(n, threads) && tasks > 1 {
        return forward_positions(ops, &idx, kernel, &w, ldw, &out, tasks, y);
    }
    for_each_image_tile(y, ops.plan.parallel, |n0, yt| {
        with_scratch(&FORWARD, |bufs| {
            forward_tile(ops, &idx, &bases, kernel, &w, ldw, &out, n0, yt, bufs)
        })
    })
}

/// Each thread's output tile and its channel-major copy, for [`forward_positions`].
#[derive(Default)]
struct SplitScratch {
    tile: Vec<f32>,
    rows: Vec<f32>,
}

thread_local! {
    static SPLIT: RefCell<SplitScratch> = RefCell::default();
}

/// The forward of a small batch on the pool: every image padded once (on the calling
/// thread), then the images' output positions cut into `tasks` runs each, of whole
/// register tiles, all the runs shared over the pool at once. Each position's sums are
/// those of [`forward_tile`] (a row's sum does not depend on the rows beside it in a
/// tile), so the bits are the same.
#[allow(clippy::too_many_arguments)]
fn forward_positions(
    ops: &Operands<'_>,
    idx: &DirectIndex,
    kernel: Kernel,
    w: &[f32],
    ldw: usize,
    out: &Output,
    tasks: usize,
    y: Out<'_>,
) -> Result<()> {
    use rayon::prelude::*;
    let geo = ops.geo;
    let (n, o, l) = (geo.batch, geo.out_channels, geo.col_cols());
    let img = image_len(geo, idx);
    let bases = Offsets::new(idx.bases.clone());
    let tile_rows = kernel.indirect_tile_rows(ldw).max(1);
    let chunk = l.div_ceil(tasks).div_ceil(tile_rows).max(1) * tile_rows;
    // Run `p0..p0 + len` of image `src` into `c`: rows packed, or at `rows` (a
    // channels-last output whose channels are not whole vectors).
    let run = |src: &[f32], p0: usize, len: usize, c: &mut [f32], rows: Option<&Offsets>| {
        let y = IndirectOut {
            c,
            row_starts: rows.map(|s| s.prefix(len)),
            channels: Channels::first(o, ldw),
            bias: Some(&out.bias),
            accumulate: false,
        };
        let bases = bases.range(p0..p0 + len);
        indirect_gemm(kernel, src, bases, idx.offs.all(), w, ldw, y);
    };
    // One tile of the whole batch.
    for_each_image_block(y, n, false, |_, mut yt| {
        with_scratch(&FORWARD, |bufs| {
            let xs = ops.x.rows().into_iter();
            let xs = xs.map(|x| x.to_slice().expect("input rows are contiguous"));
            let images: Vec<&[f32]> = match idx.is_input(geo) {
                true => xs.collect(),
                false => {
                    let padded = padded_images(&mut bufs.padded, geo, idx, ops.x_last, n)?;
                    for (x, dst) in xs.zip(padded.chunks_exact_mut(img)) {
                        pad_x(kernel, x, geo, idx, ops.x_last, dst);
                    }
                    padded.chunks_exact(img).collect()
                }
            };
            if let Some(starts) = &out.rows {
                // Channels-last: each run's positions are rows of `y` in a row.
                let yt = yt.as_slice_mut().expect("the output is contiguous");
                let runs: Vec<_> = yt
                    .chunks_exact_mut(l * o)
                    .zip(&images)
                    .flat_map(|(yn, &src)| {
                        yn.chunks_mut(chunk * o).enumerate().map(move |r| (src, r))
                    })
                    .collect();
                runs.into_par_iter().for_each(|(src, (ci, yc))| {
                    run(src, ci * chunk, yc.len() / o, yc, starts.as_ref())
                });
                return Ok(());
            }
            // Channel-major: each run's tile transposed, then its part of every channel's
            // row copied out.
            let runs: Vec<_> = yt
                .outer_iter_mut()
                .zip(&images)
                .flat_map(|(mut yn, &src)| {
                    // Runs of `chunk` positions, as views that outlive `yn`.
                    let mut runs = Vec::new();
                    while yn.ncols() > 0 {
                        let at = chunk.min(yn.ncols());
                        let (head, rest) = yn.split_at(Axis(1), at);
                        runs.push(head);
                        yn = rest;
                    }
                    runs.into_iter().enumerate().map(move |r| (src, r))
                })
                .collect();
            runs.into_par_iter().try_for_each(|(src, (ci, mut yc))| {
                with_scratch(&SPLIT, |s| {
                    let len = yc.ncols();
                    let what = "an output tile of the direct path";
                    resize(&mut s.tile, &[len, ldw], what, geo)?;
                    resize(&mut s.rows, &[o, len], what, geo)?;
                    run(src, ci * chunk, len, &mut s.tile, None);
                    transpose_add(kernel, &s.tile, ldw, (len, o), None, &mut s.rows, len);
                    for (mut dst, src) in yc.outer_iter_mut().zip(s.rows.chunks_exact(len)) {
                        let dst = dst.as_slice_mut().expect("output rows are contiguous");
                        dst.copy_from_slice(src);
                    }
                    Ok(())
                })
            })
        })
    })
}

/// Where the forward's kernel puts the output, built once per conv.
struct Output {
    /// A channels-last output, which the kernel writes: each position's row start for
    /// the images of the largest call (`None`: packed rows, the channels whole
    /// vectors). `None`: a channel-major output, from a position-major tile.
    rows: Option<Option<Offsets>>,
    /// The bias padded to `ldw` (zero without one).
    bias: Vec<f32>,
}

/// Images `n0..n0 + b` into `yt` ((b, O, L), or (b, L, O) channels-last),
/// [`images_per_call`] images per kernel call: a channels-last output stored by the
/// kernel with the bias ([`Output`]), a channel-major one transposed from the kernel's
/// position-major tile.
#[allow(clippy::too_many_arguments)]
fn forward_tile(
    ops: &Operands<'_>,
    idx: &DirectIndex,
    bases: &Offsets,
    kernel: Kernel,
    w: &[f32],
    ldw: usize,
    out: &Output,
    n0: usize,
    mut yt: ArrayViewMut3<'_, f32>,
    ForwardScratch { padded, tile }: &mut ForwardScratch,
) -> Result<()> {
    let geo = ops.geo;
    let l = geo.col_cols();
    let copy = !idx.is_input(geo);
    let img = image_len(geo, idx);
    let (b, o) = (yt.len_of(Axis(0)), geo.out_channels);
    let per_call = images_per_call(img, b);
    // Built for the largest tile's calls (no tile is larger).
    assert!(
        bases.as_slice().len() >= per_call * l,
        "direct: a tile larger than the first"
    );
    // The borders stay zero for every image of the tile, and of later tiles and calls
    // that pad the same way.
    let padded = padded_images(padded, geo, idx, ops.x_last, per_call)?;
    if out.rows.is_none() {
        resize(
            tile,
            &[per_call, l, ldw],
            "the output tile of the direct path",
            geo,
        )?;
    }
    for c0 in (0..b).step_by(per_call) {
        let nc = per_call.min(b - c0);
        let xs = ops.x.slice(s![n0 + c0..n0 + c0 + nc, ..]);
        let xs = xs.to_slice().expect("input rows are contiguous");
        let src = if copy {
            for (x, dst) in xs
                .chunks_exact(ops.x.ncols())
                .zip(padded.chunks_exact_mut(img))
            {
                pad_x(kernel, x, geo, idx, ops.x_last, dst);
            }
            &padded[..]
        } else {
            xs
        };
        // All the call's positions in one kernel call.
        let bases = bases.prefix(nc * l);
        if let Some(starts) = &out.rows {
            let y = yt.slice_mut(s![c0..c0 + nc, .., ..]);
            let y = y
                .into_slice()
                .expect("channels-last output images are contiguous");
            let y = IndirectOut {
                c: y,
                row_starts: starts.as_ref().map(|s| s.prefix(nc * l)),
                channels: Channels::first(o, ldw),
                bias: Some(&out.bias),
                accumulate: false,
            };
            indirect_gemm(kernel, src, bases, idx.offs.all(), w, ldw, y);
            continue;
        }
        // Channel-major. Tried: the kernel storing each position's channels `L` apart
        // (a scatter per vector, or float by float): 1.8x slower on resnet_128s2
        // (1 thread, Intel Xeon 6/207, 38 -> 70 ms), each tile's stores touching a
        // page per channel. And calls over chunks of positions whose tile fits L1,
        // each transposed at once: within noise since `transpose_add` keeps the
        // output's rows in its inner loop (before, faster alone but slower wherever
        // the backward ran between forwards).
        let packed = IndirectOut::packed(tile, false);
        indirect_gemm(kernel, src, bases, idx.offs.all(), w, ldw, packed);
        for (bi, t) in tile.chunks_exact(l * ldw).take(nc).enumerate() {
            let mut yn = yt.index_axis_mut(Axis(0), c0 + bi);
            let yn = yn.as_slice_mut().expect("output images are contiguous");
            transpose_add(kernel, t, ldw, (l, o), Some(&out.bias), yn, l);
        }
    }
    Ok(())
}

/// Copies `channels` planes of `h x w` (channel-major, or channels-last when `last`)
/// into the inside of a padded `rows x cols` region at `origin`, in the same layout (the
/// borders are left as they are): an input image, or a `dy` image.
#[allow(clippy::too_many_arguments)]
fn pad_image(
    kernel: Kernel,
    src: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (top, left): (usize, usize),
    (rows, cols): (usize, usize),
    last: bool,
    dst: &mut [f32],
) {
    let c = channels;
    if last {
        // One plane whose rows are `w * c` floats: each image row in one copy.
        pad_into(
            kernel,
            src,
            1,
            (h, w * c),
            (top, left * c),
            (rows, cols * c),
            dst,
        );
    } else {
        pad_into(kernel, src, c, (h, w), (top, left), (rows, cols), dst);
    }
}

/// [`pad_image`] of input image `x` into its padded region of [`DirectIndex`].
fn pad_x(
    kernel: Kernel,
    x: &[f32],
    geo: &Conv2dGeometry,
    idx: &DirectIndex,
    last: bool,
    dst: &mut [f32],
) {
    let hw = (geo.in_h, geo.in_w);
    let region = (idx.rows, idx.cols);
    pad_image(
        kernel,
        x,
        geo.in_channels,
        hw,
        geo.options.padding,
        region,
        last,
        dst,
    );
}

/// `per_call` padded images in `buf` (channels-last when `last`), borders zero (zeroed
/// only when the padding layout changes); empty when the kernels read the input itself.
fn padded_images<'a>(
    buf: &'a mut Zeroed,
    geo: &Conv2dGeometry,
    idx: &DirectIndex,
    last: bool,
    per_call: usize,
) -> Result<&'a mut [f32]> {
    if idx.is_input(geo) {
        return Ok(&mut []);
    }
    let (pt, pl) = geo.options.padding;
    let layout = [
        geo.in_channels,
        geo.in_h,
        geo.in_w,
        pt,
        pl,
        idx.rows,
        idx.cols,
        usize::from(last),
    ];
    let what = "the padded images of the direct path";
    buf.prepare(&[per_call, image_len(geo, idx)], &layout, what, geo)
}

/// Floats of one image as the direct kernels read it: its padded region, or the input
/// itself.
fn image_len(geo: &Conv2dGeometry, idx: &DirectIndex) -> usize {
    if idx.is_input(geo) {
        geo.in_channels * geo.in_h * geo.in_w
    } else {
        geo.in_channels * idx.rows * idx.cols
    }
}

/// Images side by side in one kernel call (their positions one after the other, so
/// register tiles run across image boundaries): as many of `b` as fit
/// [`CALL_BYTES`], at least one.
fn images_per_call(image_len: usize, b: usize) -> usize {
    (CALL_BYTES / (image_len * size_of::<f32>()).max(1)).clamp(1, b.max(1))
}

/// `bases` of one image repeated for `images` images `image_len` apart.
fn multi_bases(bases: &[usize], image_len: usize, images: usize) -> Offsets {
    Offsets::new(
        (0..images)
            .flat_map(|i| bases.iter().map(move |&b| i * image_len + b))
            .collect(),
    )
}

/// The per-conv part of the direct backward, shared by every reduction chunk.
pub(super) struct Backward {
    kernel: Kernel,
    idx: DirectIndex,
    /// The window corners of the most images a call of any chunk takes.
    x_bases: Offsets,
    /// `x` and `dx` are channels-last.
    x_last: bool,
    /// `dy` is channels-last, (N, L, O).
    dy_last: bool,
    /// Output channels padded to whole vectors (`dW`'s tile width).
    ldo: usize,
    /// For the input gradient, when wanted.
    dx: Option<InputGrad>,
}

/// The input gradient's part of [`Backward`].
struct InputGrad {
    /// The pixel classes.
    index: TransposeIndex,
    /// Input channels padded to whole vectors (the tile width).
    ldc: usize,
    /// Per class, the weights packed `(O * taps) x ldc` and each row's offset in one
    /// padded `dy`.
    classes: Vec<(Vec<f32>, Offsets)>,
    /// Per class, each pixel's window corner in the padded `dy` of the most images a
    /// call of any chunk takes, one image after the other.
    bases: Vec<Offsets>,
    /// Per class, where each pixel's row of a channels-last `dx` starts, for the same
    /// images: the kernel writes such a `dx` itself (its first `C` lanes when the
    /// channels are not whole vectors). Empty for a channel-major `dx`.
    starts: Vec<Offsets>,
}

impl InputGrad {
    /// Whether the kernel writes the rows of a channels-last `dx` itself (no tile).
    fn writes_dx(&self) -> bool {
        !self.starts.is_empty()
    }
}

impl Backward {
    /// Indexing and packed weights of `ops`' conv; the input gradient's only when
    /// `want_dx`.
    pub(super) fn new(ops: &Operands<'_>, want_dx: bool) -> Result<Self> {
        let geo = ops.geo;
        let kernel = ops.plan.kernel;
        let (o, c) = (geo.out_channels, geo.in_channels);
        let (kh, kw) = geo.kernel;
        let idx = DirectIndex::new(geo, ops.x_last)?;
        // Calls of the largest chunk take this many images: their indexing is built once
        // (per chunk it was 1% of `train_mnist`'s profile).
        let calls = images_per_call(image_len(geo, &idx), chunk_images(geo.batch));
        let dx = if want_dx {
            let t = TransposeIndex::new(geo)?;
            let ldc = kernel.indirect_ldw(c);
            let plane = t.rows * t.cols;
            let mut classes = t
                .classes
                .iter()
                .map(|cl| {
                    let nt = cl.taps.len();
                    let w = try_zeroed_vec(OP, o * nt * ldc, || {
                        format!(
                            "the packed weights of the input gradient, {}",
                            geo.describe()
                        )
                    })?;
                    // Tap `off` of output channel `oi`: channel-major, `oi`'s plane;
                    // channels-last, `oi` among the `O` floats of each position.
                    let dy_last = ops.y_last;
                    let offs = (0..o)
                        .flat_map(|oi| {
                            cl.tap_offs.iter().map(move |&off| match dy_last {
                                true => off * o + oi,
                                false => oi * plane + off,
                            })
                        })
                        .collect();
                    Ok((w, Offsets::new(offs)))
                })
                .collect::<Result<Vec<(Vec<f32>, Offsets)>>>()?;
            // Each output channel's weights (C, kh * kw) transposed once to tap-major
            // rows of C, which are then each class's rows: a strided element loop per
            // class took 1.5% of `train_mnist`, on the calling thread while the pool
            // waited.
            let taps = kh * kw;
            let mut wt = try_zeroed_vec(OP, taps * c, || {
                format!("a transposed weight row of {}", geo.describe())
            })?;
            for (oi, wo) in ops.w.outer_iter().enumerate() {
                match wo.as_slice() {
                    Some(ws) => transpose_add(kernel, ws, taps, (c, taps), None, &mut wt, c),
                    None => {
                        for (ci, row) in wo.exact_chunks(taps).into_iter().enumerate() {
                            for (ti, &v) in row.iter().enumerate() {
                                wt[ti * c + ci] = v;
                            }
                        }
                    }
                }
                for (cl, (w, _)) in t.classes.iter().zip(&mut classes) {
                    let nt = cl.taps.len();
                    for (ti, &(i, j)) in cl.taps.iter().enumerate() {
                        let row = &mut w[(oi * nt + ti) * ldc..][..c];
                        row.copy_from_slice(&wt[(i * kw + j) * c..][..c]);
                    }
                }
            }
            let scale = if ops.y_last { o } else { 1 };
            let dy_img = o * t.rows * t.cols;
            let bases = t
                .classes
                .iter()
                .map(|cl| {
                    let one: Vec<usize> = cl.bases.iter().map(|&b| b * scale).collect();
                    multi_bases(&one, dy_img, calls)
                })
                .collect();
            // Channels-last: each pixel's row of `dx` is a row of the kernel's output
            // (its first `C` lanes, when the channels are not whole vectors).
            let starts = match ops.x_last {
                true => t
                    .classes
                    .iter()
                    .map(|cl| {
                        let one: Vec<usize> = cl.pixels.iter().map(|&px| px * c).collect();
                        multi_bases(&one, geo.in_h * geo.in_w * c, calls)
                    })
                    .collect(),
                false => Vec::new(),
            };
            Some(InputGrad {
                index: t,
                ldc,
                classes,
                bases,
                starts,
            })
        } else {
            None
        };
        Ok(Backward {
            kernel,
            x_bases: multi_bases(&idx.bases, image_len(geo, &idx), calls),
            idx,
            x_last: ops.x_last,
            dy_last: ops.y_last,
            ldo: kernel.indirect_ldw(o),
            dx,
        })
    }

    /// Whether the input gradient writes every element of its rows of dx, so they need
    /// no zeros first: every pixel class has taps (a kernel narrower than the stride
    /// leaves classes without), and there are channels and images to write.
    pub(super) fn writes_every_dx(&self, geo: &Conv2dGeometry) -> bool {
        let image = geo.in_channels * geo.in_h * geo.in_w;
        geo.out_channels > 0
            && image > 0
            && self
                .dx
                .as_ref()
                .is_some_and(|g| g.index.classes.iter().all(|cl| !cl.taps.is_empty()))
    }

    /// The input gradient of images `n0..n0 + nb` into `dxc` (their rows of dx,
    /// zeroed unless [`Backward::writes_every_dx`]). Needs a [`Backward`] made with
    /// `want_dx`.
    pub(super) fn input_grad(
        &self,
        ops: &Operands<'_>,
        dy: ArrayView3<'_, f32>,
        chunk: (usize, usize),
        dxc: ArrayViewMut2<'_, f32>,
    ) -> Result<()> {
        self.chunk(ops, dy, chunk, Some(dxc), false).map(drop)
    }

    /// The weight gradient of images `n0..n0 + nb`, transposed: `(C * kh * kw, O)` (each
    /// chunk's was transposed on its own: 1.5% of `train_mnist`'s profile).
    pub(super) fn weight_grad(
        &self,
        ops: &Operands<'_>,
        dy: ArrayView3<'_, f32>,
        chunk: (usize, usize),
    ) -> Result<Array2<f32>> {
        self.chunk(ops, dy, chunk, None, true)
    }

    /// Both gradients of images `n0..n0 + nb`, sharing each call's padded images and
    /// `dy`: fills `dxc` and returns the weight gradient, transposed as
    /// [`Backward::weight_grad`]'s. Needs a [`Backward`] made with `want_dx`.
    pub(super) fn gradients(
        &self,
        ops: &Operands<'_>,
        dy: ArrayView3<'_, f32>,
        chunk: (usize, usize),
        dxc: ArrayViewMut2<'_, f32>,
    ) -> Result<Array2<f32>> {
        self.chunk(ops, dy, chunk, Some(dxc), true)
    }

    /// One reduction chunk: images `n0..n0 + nb` in order; fills their rows of `dxc`
    /// (zeroed) when given; returns the chunk's `dW` (zeros unless `want_dw`).
    fn chunk(
        &self,
        ops: &Operands<'_>,
        dy: ArrayView3<'_, f32>,
        (n0, nb): (usize, usize),
        dxc: Option<ArrayViewMut2<'_, f32>>,
        want_dw: bool,
    ) -> Result<Array2<f32>> {
        let geo = ops.geo;
        // An empty image (every tap reads padding), no output channels or no images: dW
        // is zero or empty, and so is dx (zeroed by the caller).
        if ops.x.ncols() == 0 || geo.out_channels == 0 || nb == 0 {
            return Ok(zeroed_partial(geo.col_rows(), geo.out_channels));
        }
        with_scratch(&BACKWARD, |bufs| {
            self.chunk_in(ops, dy, (n0, nb), dxc, want_dw, bufs)
        })
    }

    fn chunk_in(
        &self,
        ops: &Operands<'_>,
        dy: ArrayView3<'_, f32>,
        (n0, nb): (usize, usize),
        mut dxc: Option<ArrayViewMut2<'_, f32>>,
        want_dw: bool,
        BackwardScratch {
            xpad,
            dyt,
            acc,
            dypad,
            tile,
        }: &mut BackwardScratch,
    ) -> Result<Array2<f32>> {
        let geo = ops.geo;
        let (o, l, k) = (geo.out_channels, geo.col_cols(), geo.col_rows());
        let (ldo, idx) = (self.ldo, &self.idx);
        let copy = !idx.is_input(geo);
        let img = image_len(geo, idx);
        let per_call = images_per_call(img, nb);
        // Built for the largest chunk's calls (a later chunk is no larger).
        assert!(
            self.x_bases.as_slice().len() >= per_call * l,
            "direct: a chunk larger than the first"
        );
        let x_bases = &self.x_bases;
        // Borders (and padding lanes) are zero for the whole chunk, and for later chunks
        // and calls laid out the same way; insides are rewritten per call.
        let xpad = padded_images(xpad, geo, idx, self.x_last, per_call)?;
        // Channels-last `dy` with whole vectors of channels is its own position-major
        // tile: no copy.
        let dy_is_dyt = self.dy_last && ldo == o;
        let dyt = if want_dw {
            let what = "the transposed grad_out of the direct path";
            let dyt = match dy_is_dyt {
                true => &mut [],
                false => dyt.prepare(&[per_call, l, ldo], &[l, ldo, o], what, geo)?,
            };
            // Written in full by the chunk's first call, which stores instead of adding.
            if ldo != o {
                let what = "the weight gradient tile of the direct path";
                resize(acc, &[k, ldo], what, geo)?;
            }
            dyt
        } else {
            &mut []
        };
        // The chunk's (K, O) partial; with whole vectors of output channels the kernel
        // sums straight into it, else into `acc` (`ldo` wide), copied after. Taken as
        // every path's partials are (`zeroed_partial`): a kept buffer of their exact
        // length; taking any large buffer that fitted from the cache left the ops after
        // a large conv to fault theirs in afresh (dw_64 after vgg_256 in `bench`:
        // 3.0-4.5 -> 4.8-5.0 ms).
        let mut partial = zeroed_partial(k, o);
        let partial_s = partial.as_slice_mut().expect("a new array is contiguous");
        let target: &mut [f32] = match (want_dw, ldo == o) {
            (true, true) => partial_s,
            (true, false) => acc,
            (false, _) => &mut [],
        };
        let dy_img = self
            .dx
            .as_ref()
            .map_or(0, |g| o * g.index.rows * g.index.cols);
        let dypad = match &self.dx {
            Some(g) => {
                let t = &g.index;
                let layout = [
                    o,
                    geo.out_h,
                    geo.out_w,
                    t.origin.0,
                    t.origin.1,
                    t.rows,
                    t.cols,
                    usize::from(self.dy_last),
                ];
                let what = "the padded grad_out of the direct path";
                dypad.prepare(&[per_call, dy_img], &layout, what, geo)?
            }
            None => &mut [],
        };
        // Each class's window corners for `per_call` images side by side.
        let class_bases: &[Offsets] = self.dx.as_ref().map_or(&[], |g| &g.bases);
        // One tile for every class, sized once: resizing it per class between the
        // classes' pixel counts wrote zeros on every call.
        if let Some(g) = self.dx.as_ref().filter(|g| !g.writes_dx()) {
            let most = g.index.classes.iter().map(|cl| cl.pixels.len()).max();
            let what = "the input gradient tile of the direct path";
            resize(tile, &[per_call, most.unwrap_or(0), g.ldc], what, geo)?;
        }
        for c0 in (0..nb).step_by(per_call) {
            let nc = per_call.min(nb - c0);
            let xs = ops.x.slice(s![n0 + c0..n0 + c0 + nc, ..]);
            let xs = xs.to_slice().expect("input rows are contiguous");
            let src = if copy {
                for (x, dst) in xs
                    .chunks_exact(ops.x.ncols())
                    .zip(xpad.chunks_exact_mut(img))
                {
                    pad_x(self.kernel, x, geo, idx, self.x_last, dst);
                }
                &xpad[..]
            } else {
                xs
            };
            // (nc, O, L), or (nc, L, O) channels-last.
            let dys = dy.slice(s![n0 + c0..n0 + c0 + nc, .., ..]);
            let dys = dys.to_slice().expect("standard layout dy");
            // dW^T (K x O) += sum_p xpad[offs[k] + bases[p]] * dy^T[p, o], over the
            // positions of all `nc` images.
            if want_dw {
                if !dy_is_dyt {
                    for (dyn_, dst) in dys.chunks_exact(o * l).zip(dyt.chunks_exact_mut(l * ldo)) {
                        if self.dy_last {
                            copy_rows_add(self.kernel, dyn_, o, (l, o), None, dst, ldo);
                        } else {
                            transpose_add(self.kernel, dyn_, l, (o, l), None, dst, ldo);
                        }
                    }
                }
                let dyt = if dy_is_dyt { dys } else { &dyt[..] };
                let (bases, dyt) = (x_bases.prefix(nc * l), &dyt[..nc * l * ldo]);
                let add = c0 > 0;
                let out = IndirectOut::packed(target, add);
                indirect_gemm(self.kernel, src, idx.offs.all(), bases, dyt, ldo, out);
            }
            // dx, one pixel class at a time, for all `nc` images in each call.
            let (Some(g), Some(dxc)) = (&self.dx, dxc.as_mut()) else {
                continue;
            };
            let (t, ldc) = (&g.index, g.ldc);
            for (dyn_, dst) in dys.chunks_exact(o * l).zip(dypad.chunks_exact_mut(dy_img)) {
                let (hw, region) = ((geo.out_h, geo.out_w), (t.rows, t.cols));
                pad_image(
                    self.kernel,
                    dyn_,
                    o,
                    hw,
                    t.origin,
                    region,
                    self.dy_last,
                    dst,
                );
            }
            let hw = geo.in_h * geo.in_w;
            for (ci, (cl, (w, offs))) in t.classes.iter().zip(&g.classes).enumerate() {
                let np = cl.pixels.len();
                if cl.taps.is_empty() || np == 0 {
                    continue;
                }
                let bases = class_bases[ci].prefix(nc * np);
                if g.writes_dx() {
                    let dx = dxc.slice_mut(s![c0..c0 + nc, ..]);
                    let out = IndirectOut {
                        c: dx.into_slice().expect("dx rows are contiguous"),
                        row_starts: Some(g.starts[ci].prefix(nc * np)),
                        channels: Channels::first(geo.in_channels, g.ldc),
                        bias: None,
                        accumulate: false,
                    };
                    indirect_gemm(self.kernel, dypad, bases, offs.all(), w, ldc, out);
                    continue;
                }
                let tile = &mut tile[..nc * np * ldc];
                let out = IndirectOut::packed(tile, false);
                indirect_gemm(self.kernel, dypad, bases, offs.all(), w, ldc, out);
                // Channel-major (a channels-last `dx` was written above).
                for (bi, tile) in tile.chunks_exact(np * ldc).take(nc).enumerate() {
                    let mut dxn = dxc.row_mut(c0 + bi);
                    let dxn = dxn.as_slice_mut().expect("dx rows are contiguous");
                    let c = geo.in_channels;
                    if np == hw {
                        // One class (stride 1): its pixels are all of them, in order.
                        transpose_add(self.kernel, tile, ldc, (hw, c), None, dxn, hw)
                    } else {
                        scatter_pixels(tile, ldc, &cl.pixels, c, dxn, hw)
                    }
                }
            }
        }
        // Transposed, (K, O): the chunks' partials are summed so and transposed once.
        if want_dw && ldo != o {
            let out = partial.as_slice_mut().expect("a new array is contiguous");
            copy_rows_add(self.kernel, acc, ldo, (k, o), None, out, o);
        }
        Ok(partial)
    }
}

/// The direct path's indexing of one image: the padded region every window reads, `(C,
/// rows, cols)` row-major, the corner of each output position's window in it and the
/// offset of each tap from the corner. Input `x` of output `(oy, ox)` and tap
/// `(c, i, j)` is `padded[bases[oy * out_w + ox] + offs[(c * kh + i) * kw + j]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DirectIndex {
    /// Rows of the padded region: `(out_h - 1) * sh + (kh - 1) * dh + 1`.
    pub rows: usize,
    /// Columns of the padded region: `(out_w - 1) * sw + (kw - 1) * dw + 1`.
    pub cols: usize,
    /// Window corner of each output position.
    pub bases: Vec<usize>,
    /// Offset of each tap from its window's corner.
    pub offs: Offsets,
}

impl DirectIndex {
    /// Whether the padded region is the input itself (no padding, no unread rows or
    /// columns), so no copy is needed.
    pub(super) fn is_input(&self, geo: &Conv2dGeometry) -> bool {
        self.rows == geo.in_h && self.cols == geo.in_w && geo.options.padding == (0, 0)
    }
}

impl DirectIndex {
    /// The indexing of `geo` (groups of 1), of a channel-major padded region or, when
    /// `last`, a channels-last one (`(rows, cols, C)` row-major: input `x` of output
    /// `(oy, ox)` and tap `(c, i, j)` at `((oy * sh + i * dh) * cols + ox * sw + j * dw)
    /// * C + c`).
    ///
    /// # Errors
    /// [`crate::Error::Alloc`] when the padded region of one image overflows.
    pub(super) fn new(geo: &Conv2dGeometry, last: bool) -> Result<DirectIndex> {
        let (kh, kw) = geo.kernel;
        let (sh, sw) = geo.options.stride;
        let (dh, dw) = geo.options.dilation;
        let rows = (geo.out_h - 1) * sh + (kh - 1) * dh + 1;
        let cols = (geo.out_w - 1) * sw + (kw - 1) * dw + 1;
        // Every offset below is within one padded image.
        checked_len(OP, &[geo.in_channels, rows, cols, size_of::<f32>()], || {
            format!("a padded image of {}", geo.describe())
        })?;
        let ch = geo.in_channels;
        // A pixel's first float, and a channel's distance from it.
        let (pixel, channel) = if last { (ch, 1) } else { (1, rows * cols) };
        let bases = (0..geo.out_h)
            .flat_map(|oy| (0..geo.out_w).map(move |ox| (oy * sh * cols + ox * sw) * pixel))
            .collect();
        let mut offs = Vec::with_capacity(geo.col_rows());
        for c in 0..ch {
            for i in 0..kh {
                for j in 0..kw {
                    offs.push(c * channel + (i * dh * cols + j * dw) * pixel);
                }
            }
        }
        Ok(DirectIndex {
            rows,
            cols,
            bases,
            offs: Offsets::new(offs),
        })
    }
}

/// The direct input gradient's multiply-adds relative to the column lowering's: each
/// input pixel sums every tap of its class from a zero-padded `dy`
/// ([`TransposeIndex`]), while the column lowering computes every tap of every output
/// position (`out_h * out_w * kh * kw` per channel pair) before its scatter. Both
/// compute the pairs that carry a gradient; the direct path adds those landing on
/// `dy`'s padding, the column path those on the input's. About 1 for padded convs of
/// any stride; large for a kernel nearly as large as the input without padding, whose
/// few outputs each pixel reaches through most of its taps (5x5 onto 5x5: 25). Row
/// and column counts multiply, so this costs `O(k + min(H, s))` per side, whatever
/// the padding.
pub(super) fn input_grad_work_ratio(geo: &Conv2dGeometry) -> f64 {
    let o = &geo.options;
    let side = |rows: bool| -> f64 {
        let (input, out, k, s, p, d) = match rows {
            true => (
                geo.in_h,
                geo.out_h,
                geo.kernel.0,
                o.stride.0,
                o.padding.0,
                o.dilation.0,
            ),
            false => (
                geo.in_w,
                geo.out_w,
                geo.kernel.1,
                o.stride.1,
                o.padding.1,
                o.dilation.1,
            ),
        };
        // Taps per class: `(i * d) % s`, sorted to count by binary search.
        let mut residues: Vec<usize> = (0..k).map(|i| (i * d) % s).collect();
        residues.sort_unstable();
        let taps =
            |r: usize| residues.partition_point(|&x| x <= r) - residues.partition_point(|&x| x < r);
        // The pixels of class `r = (iy + p) % s`: the first one, then every `s`.
        let direct: usize = (0..input.min(s))
            .map(|iy| ((input - 1 - iy) / s + 1) * taps((iy + p) % s))
            .sum();
        direct as f64 / (out * k).max(1) as f64
    };
    side(true) * side(false)
}

/// The direct path's indexing of the input gradient, a transposed convolution run as a
/// gather: `dx` pixel `(iy, ix)` sums `W[o, c, i, j] * dy[o, oy, ox]` over the taps with
/// `oy * sh + i * dh = iy + ph` (and the same across). Pixels fall into `sh * sw`
/// classes by `((iy + ph) % sh, (ix + pw) % sw)`; within a class the taps that reach a
/// pixel are fixed (`(i * dh) % sh` equal to its class), and tap `(i, j)` reads `dy` at
/// `((iy + ph) / sh - (i * dh) / sh, ...)`. With `dy` copied into a zero-padded region
/// (`rows x cols` per channel, real `dy` at offset `(ty, tx)`), every read is
/// `dy_padded[bases[p] + tap_offs[t] + o * rows * cols]`, out-of-range ones landing on
/// zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TransposeIndex {
    /// Rows of the padded `dy` region of one channel.
    pub rows: usize,
    /// Columns of the padded `dy` region of one channel.
    pub cols: usize,
    /// Row and column of `dy[o, 0, 0]` in the padded region.
    pub origin: (usize, usize),
    /// The pixel classes that hold pixels (some may have no taps: their pixels get no
    /// gradient).
    pub classes: Vec<TransposeClass>,
}

/// One pixel class of [`TransposeIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TransposeClass {
    /// The class's pixels, as offsets `iy * W + ix` in one channel of the input.
    pub pixels: Vec<usize>,
    /// Each pixel's window corner in the padded `dy` region of one channel.
    pub bases: Vec<usize>,
    /// The taps `(i, j)` of the class.
    pub taps: Vec<(usize, usize)>,
    /// Each tap's offset from a window corner.
    pub tap_offs: Vec<usize>,
}

impl TransposeIndex {
    /// The indexing of the input gradient of `geo` (groups of 1).
    ///
    /// # Errors
    /// [`crate::Error::Alloc`] when the padded `dy` of one image overflows.
    pub(super) fn new(geo: &Conv2dGeometry) -> Result<TransposeIndex> {
        let (kh, kw) = geo.kernel;
        let (sh, sw) = geo.options.stride;
        let (ph, pw) = geo.options.padding;
        let (dh, dw) = geo.options.dilation;
        let (ty, tx) = ((kh - 1) * dh / sh, (kw - 1) * dw / sw);
        // Highest window row / column any real pixel uses, and room for all of dy.
        let qy_max = (ph + geo.in_h).saturating_sub(1) / sh;
        let qx_max = (pw + geo.in_w).saturating_sub(1) / sw;
        let rows = (qy_max + 1).max(geo.out_h) + ty;
        let cols = (qx_max + 1).max(geo.out_w) + tx;
        // Every offset below is within one padded `dy`.
        checked_len(
            OP,
            &[geo.out_channels, rows, cols, size_of::<f32>()],
            || format!("the padded grad_out of {}", geo.describe()),
        )?;
        // The classes that hold pixels, in order: every class when the input is at least
        // a stride wide, else only its pixels' (a stride far wider than the input has
        // more classes than memory, all but a few empty).
        let classes_of = |s: usize, p: usize, n: usize| {
            let mut r: Vec<usize> = (0..n.min(s)).map(|i| (i + p) % s).collect();
            r.sort_unstable();
            r
        };
        let (ry_all, rx_all) = (classes_of(sh, ph, geo.in_h), classes_of(sw, pw, geo.in_w));
        let mut classes = Vec::with_capacity(ry_all.len() * rx_all.len());
        for &ry in &ry_all {
            for &rx in &rx_all {
                let mut taps = Vec::new();
                let mut tap_offs = Vec::new();
                for i in (0..kh).filter(|i| i * dh % sh == ry) {
                    for j in (0..kw).filter(|j| j * dw % sw == rx) {
                        taps.push((i, j));
                        tap_offs.push((ty - i * dh / sh) * cols + tx - j * dw / sw);
                    }
                }
                let (mut pixels, mut bases) = (Vec::new(), Vec::new());
                for iy in (0..geo.in_h).filter(|iy| (iy + ph) % sh == ry) {
                    for ix in (0..geo.in_w).filter(|ix| (ix + pw) % sw == rx) {
                        pixels.push(iy * geo.in_w + ix);
                        bases.push((iy + ph) / sh * cols + (ix + pw) / sw);
                    }
                }
                classes.push(TransposeClass {
                    pixels,
                    bases,
                    taps,
                    tap_offs,
                });
            }
        }
        Ok(TransposeIndex {
            rows,
            cols,
            origin: (ty, tx),
            classes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Conv2dOptions;

    /// [`input_grad_work_ratio`] against a count of what [`TransposeIndex`] runs (every
    /// pixel times its class's taps) over the column lowering's taps, over strides,
    /// paddings, dilations and kernels up to past the input.
    #[test]
    fn input_grad_work_ratio_counts_what_the_transpose_index_runs() {
        let mut checked = 0;
        for (h, w) in [(1, 1), (5, 5), (7, 4), (9, 6)] {
            for (k, s, p, d) in [
                (1, 1, 0, 1),
                (3, 1, 1, 1),
                (3, 2, 1, 1),
                (5, 1, 0, 1),
                (5, 3, 4, 1),
                (3, 2, 2, 2),
                (2, 4, 0, 3),
            ] {
                let opts = Conv2dOptions::new()
                    .with_stride((s, 1))
                    .with_padding((p, p / 2))
                    .with_dilation((d, 1));
                let Ok(g) = Conv2dGeometry::new("t", [1, 1, h, w], [1, 1, k, k], &opts) else {
                    continue;
                };
                let t = TransposeIndex::new(&g).unwrap();
                let run: usize = t
                    .classes
                    .iter()
                    .map(|c| c.pixels.len() * c.taps.len())
                    .sum();
                let columns = (g.out_h * k * g.out_w * k).max(1);
                let want = run as f64 / columns as f64;
                let got = input_grad_work_ratio(&g);
                assert!(
                    (got - want).abs() < 1e-12,
                    "{:?}: {got} vs {want}",
                    (h, w, k, s, p, d)
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked} geometries");
        // A 5x5 kernel onto a 5x5 input: each of 25 pixels sums 25 taps, for one window.
        let g = Conv2dGeometry::new("t", [1, 1, 5, 5], [1, 1, 5, 5], &Conv2dOptions::new());
        assert_eq!(input_grad_work_ratio(&g.unwrap()), 25.0);
        // Padding 3 for a 7x7 kernel on 5x5: the same work either way.
        let p3 = Conv2dOptions::new().with_padding((3, 3));
        let g = Conv2dGeometry::new("t", [1, 1, 5, 5], [1, 1, 7, 7], &p3);
        assert_eq!(input_grad_work_ratio(&g.unwrap()), 1.0);
    }
}
