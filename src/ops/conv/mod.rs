//! 2-d convolution (cross-correlation, as PyTorch) on top of the GEMM, and its backward.
//!
//! Layout of the conv code:
//! - [`crate::ops::geometry`]: options, output sizes, buffer sizes and every index
//!   layout the paths use (the one place).
//! - [`crate::ops::im2col`]: im2col / col2im over a range of output positions, the index
//!   map used for small images, and the polyphase split of the phase path.
//! - this module: the public API, the per-shape chooser [`ConvPlan::choose`] (every
//!   threshold cites its measurement) and the final reduction of the weight gradient.
//! - `direct_path` (the default for groups of 1, bar 1x1 convs): no column matrix. The
//!   indirect GEMM kernel ([`crate::gemm`]'s `indirect_gemm`) reads every tap in place
//!   from a zero-padded copy of the image: forward `y = W x`, weight gradient with the
//!   roles of taps and positions swapped, input gradient as a transposed conv per pixel
//!   class (stride phase) reading a zero-padded `dy`. Forward beside backward.
//! - `gemm_path`: the column paths, forward beside backward: output positions cut into
//!   tiles of at most `tile_cols` columns (several small images side by side in one
//!   GEMM, or a run of columns of one large image so the column buffer stays bounded),
//!   each lowered by im2col (rows, or the index map for short output rows) or, for a
//!   1x1 / stride-1 / unpadded conv, taken as the input itself (`Lowering::Pointwise`:
//!   a plain GEMM `y_n = W x_n`, no copy). Used by grouped and 1x1 convs, and by the
//!   backward pass of one-channel inputs (whose input gradient fills too few lanes of
//!   the direct kernel).
//! - `phase_path`: strided convs with long output rows on the column path, each image
//!   split into its stride phases so every column row is one contiguous copy.
//!
//! Column paths, per tile and group `g`: forward `y[g] (Og, cols) = W[g] (Og, Cg*kh*kw)
//! x cols[g]`; backward `dW[g] += dy[g] x cols[g]^T`, `dcols[g] = W[g]^T x dy[g]`,
//! `dx += col2im(dcols)`, `db[o] += sum(dy[o])`. All products go through the crate's
//! GEMM kernels, on one thread inside a parallel split.
//!
//! Determinism: the tiles depend on the shape only; output tiles are disjoint; the weight
//! and bias gradients are summed per fixed chunk of images (`ceil(N / 8)`, at most
//! [`REDUCTION_CHUNK`]; images and tiles in a fixed order inside a chunk) and the chunk
//! partials are then added in chunk order, so the result does not depend on how many
//! threads rayon uses.

use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView4};

use super::geometry::{Conv2dGeometry, Conv2dOptions};
use super::im2col::Im2colMap;
use crate::error::{Error, Result};
use crate::limits::{try_standard_layout, try_zeros};

mod direct_path;
mod gemm_path;
mod phase_path;

use gemm_path::Operands;

/// At most this many images per partial sum of the weight and bias gradients (fewer for
/// small batches: `ceil(N / 8)`). Fixed by the batch size alone, never by the thread
/// count, so the floating-point summation order is always the same.
pub const REDUCTION_CHUNK: usize = 8;

/// How a conv path turns output positions into GEMM columns.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lowering {
    /// im2col of the columns of a tile: any geometry.
    Im2col,
    /// The input is the column matrix: 1x1 kernel, stride 1, no padding only.
    Pointwise,
    /// Whole images split into polyphase planes, whose extended column matrix is made
    /// of contiguous copies: any geometry (`phase_path`).
    Phase,
}

/// The path of a forward pass, in [`ConvPlan`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardPath {
    /// The column path of [`ConvPlan::lowering`] (im2col or pointwise + GEMM).
    Columns,
    /// The direct path: taps read in place, a tile of positions by output channels
    /// (`direct_path`; groups of 1 only).
    Direct,
    /// The stride-phase planes read in place by the B-indirect kernel, output
    /// channel-major (`phase_path`): any geometry.
    Phase,
}

/// The conv path for one shape, from [`ConvPlan::choose`]. Not part of the stable API:
/// tests and benchmarks force paths through [`conv2d_with_plan`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvPlan {
    /// How columns are formed.
    pub lowering: Lowering,
    /// Most output positions per tile (per column buffer); images with fewer run several
    /// side by side in one GEMM.
    pub tile_cols: usize,
    /// Split the tiles (forward) or reduction chunks (backward) over the rayon pool;
    /// otherwise run them in order on the calling thread (each GEMM may still go
    /// parallel on its own when it is large).
    pub parallel: bool,
    /// Lower small images through an index map ([`MAP_ENTRIES`]) rather than by rows.
    pub use_map: bool,
    /// The forward pass's path.
    pub forward: ForwardPath,
    /// Run the backward pass on the direct path (groups of 1 only), whatever `lowering`
    /// says. A backward without the input gradient ([`conv2d_backward_params`]) of a
    /// groups-of-1 conv always runs there.
    pub direct_backward: bool,
}

/// Bytes of one column buffer: a tile of `K x tile_cols` floats, `tile_cols` a multiple
/// of the AVX-512 kernel's 48 columns. Measured with `examples/plan_sweep` (2 threads,
/// back to back): resnet_64 (K = 576) runs best at 384-576 columns, 227 columns (512
/// KiB) is 3% slower and 96-192 up to 20% slower.
const TILE_BYTES: usize = 1 << 20;

/// Fewest columns per tile, whatever `K`: vgg_256 (K = 2304) at 56 columns runs 1.3x
/// slower forward than at 96-960 (the GEMM's 48-column panels run half empty).
const MIN_TILE_COLS: usize = 192;

/// An image whose column matrix takes at most this many bytes is never cut into tiles.
/// resnet_128s2 (K = 576, 784 columns, 1.8 MB), 1 thread, `plan_sweep` fwd / bwd ms:
/// whole images 32-36 / 72-74, tiles of 384-576 columns 36-41 / 84-88. resnet_64
/// (7.2 MB per image) is 1.6x faster forward in tiles than whole (71 vs 114 ms, 1
/// thread, against the previous whole-image im2col).
const WHOLE_IMAGE_BYTES: usize = 2 << 20;

/// Most columns per tile, whatever `K`: small images are grouped up to this many
/// columns. nb_32x1x5 (K = 25, 576 columns per image) runs fwd+bwd 1.3x faster one image
/// per tile than 18 images (10 464 columns) per tile, whose column and output buffers
/// (2.3 MB) spill from L2; seed_l1..l4 do not care between 384 and 3 600 columns.
const MAX_TILE_COLS: usize = 1024;

/// Strided convs whose output rows are at least this long, with an image's extended
/// column matrix within [`WHOLE_IMAGE_BYTES`], take the phase path. Measured 1 thread
/// (fwd / bwd ms, im2col -> phase): seed_l1 (14 wide) 0.23 / 0.73 -> 0.155 / 0.61,
/// resnet_128s2 (28 wide) 25.0 / 53.7 -> 22.1 / 49.7; seed_l2 (7 wide) 0.17 / 0.50 ->
/// 0.44 / 0.71 (splitting tiny images into planes costs more than the gather it saves).
/// Stride-1 rows already lower by contiguous copies (nb_32x1x5: bwd 6.6 -> 7.6 ms).
const PHASE_MIN_OUT_W: usize = 12;

/// Fewest input channels for the direct path; fewer take the phase forward and the
/// column backward. The direct input gradient vectorises over input channels, so one
/// channel fills 1/16 of an AVX-512 vector: 1 thread, bwd ms, column path -> direct:
/// seed_l2 (8 channels) 0.51 -> 0.40, seed_l3 (16) 0.43 -> 0.35, seed_l4 (32) 0.16 ->
/// 0.14, resnet_64 114 -> 87; but seed_l1 (1 channel) 0.75 -> 1.07 and nb_32x1x5 (1)
/// 6.4 -> 26.6. Forward, direct -> phase: seed_l1 0.156 -> 0.129, nb_32x1x5 1.85 ->
/// 1.49 (their few output channels half fill the direct tile, and the phase forward
/// needs no transpose); seed_l2 (8 channels) 0.109 -> 0.267, resnet_128s2 18.0 -> 20.2.
const DIRECT_MIN_CHANNELS: usize = 8;

/// Images whose column matrix has at most this many entries are lowered through an
/// index map.
const MAP_ENTRIES: usize = 1 << 16;

/// Below this many multiply-adds in the whole conv (`N * O * L * K / groups`), run on the
/// calling thread: waking the pool costs more than it saves. `plan_sweep`, 2 threads,
/// on the im2col path, fwd ms serial -> parallel: seed_l1 (3.9 M) 0.40 -> 0.22, seed_l2
/// (5.6 M) 0.19 -> 0.11.
const PARALLEL_MACS: usize = 1 << 20;

/// ... or from this many floats of input and output up, whatever the multiply-adds:
/// per-image copies and transposes cost time too. 2 threads, fwd / bwd ms, serial ->
/// parallel: seed_l4 (0.1 M MACs, 52 K floats) 0.050 / 0.094 -> 0.037 / 0.086; but
/// 10 x 8 x 8 x 8 -> 8 (0.4 M MACs, 10 K floats) 0.012 / 0.028 -> 0.035 / 0.034 and
/// 20 x 8 x 8 x 8 -> 8, stride 2 (13 K floats) 0.008 / 0.029 -> 0.018 / 0.039.
const PARALLEL_FLOATS: usize = 1 << 15;

impl ConvPlan {
    /// The path for `geo`: pointwise for 1x1 / stride 1 / unpadded, phase for strided
    /// convs with long enough output rows ([`PHASE_MIN_OUT_W`]), else im2col; tiles of
    /// [`TILE_BYTES`] of columns; parallel from [`PARALLEL_MACS`] or
    /// [`PARALLEL_FLOATS`] up.
    pub fn choose(geo: &Conv2dGeometry) -> ConvPlan {
        let o = &geo.options;
        let pg = geo.phase();
        let lowering = if geo.kernel == (1, 1) && o.stride == (1, 1) && o.padding == (0, 0) {
            Lowering::Pointwise
        } else if o.stride != (1, 1)
            && geo.out_w >= PHASE_MIN_OUT_W
            && geo.col_rows().saturating_mul(pg.ext) <= WHOLE_IMAGE_BYTES / size_of::<f32>()
        {
            Lowering::Phase
        } else {
            Lowering::Im2col
        };
        let k = geo.col_rows().max(1);
        let mut tile_cols =
            (TILE_BYTES / (k * size_of::<f32>()) / 48 * 48).clamp(MIN_TILE_COLS, MAX_TILE_COLS);
        let l = geo.col_cols();
        if l > tile_cols && k * l * size_of::<f32>() <= WHOLE_IMAGE_BYTES {
            tile_cols = l;
        }
        // Saturating: only compared with thresholds (a broadcast input may be larger
        // than memory; its copy then fails as too large to allocate).
        let macs = [geo.batch, geo.out_channels, geo.col_cols(), k / o.groups]
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d));
        let image = [geo.in_channels, geo.in_h, geo.in_w]
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d));
        let floats = geo
            .batch
            .saturating_mul(image.saturating_add(geo.out_channels * geo.col_cols()));
        ConvPlan {
            lowering,
            tile_cols,
            parallel: (macs >= PARALLEL_MACS || floats >= PARALLEL_FLOATS)
                && rayon::current_num_threads() > 1,
            // Short output rows gather faster through the map (`plan_sweep`, 2 threads,
            // fwd / bwd ms by rows -> by map: seed_l1 (14 wide) 0.22 / 0.60 -> 0.13 /
            // 0.40, seed_l2 (7) 0.23 / 0.56 -> 0.11 / 0.29, seed_l4 (2) 0.36 / 0.72 ->
            // 0.08 / 0.17); 24-wide rows of nb_32x1x5 copy as fast by rows (fwd 2.2 ms
            // both) and scatter faster by rows (bwd 8.4 ms vs 9.3 ms).
            use_map: geo.out_w <= 16,
            // The direct forward beats the column paths on every benchmark shape but 1x1
            // (1 thread, fwd ms, column path -> direct): seed_l2 0.19 -> 0.12, seed_l3
            // 0.16 -> 0.10, seed_l4 0.083 -> 0.064, nb_32x1x5 1.86 -> 1.71, resnet_64
            // 47.5 -> 38.2, resnet_128s2 22.4 -> 17.6, vgg_256 37.7 -> 36.4. A 1x1
            // stride-1 conv is a plain GEMM already, without the direct path's transpose.
            forward: if lowering == Lowering::Pointwise {
                ForwardPath::Columns
            } else if o.groups == 1 && geo.in_channels >= DIRECT_MIN_CHANNELS {
                ForwardPath::Direct
            } else {
                ForwardPath::Phase
            },
            direct_backward: o.groups == 1
                && lowering != Lowering::Pointwise
                && geo.in_channels >= DIRECT_MIN_CHANNELS,
        }
    }

    fn check(&self, geo: &Conv2dGeometry) -> Result<()> {
        let o = &geo.options;
        if self.tile_cols == 0 {
            return Err(Error::config(OP, "a plan needs tile_cols > 0"));
        }
        if self.lowering == Lowering::Pointwise
            && !(geo.kernel == (1, 1) && o.stride == (1, 1) && o.padding == (0, 0))
        {
            return Err(Error::config(
                OP,
                "the pointwise path needs a 1x1 kernel, stride 1 and no padding",
            ));
        }
        if (self.forward == ForwardPath::Direct || self.direct_backward) && o.groups != 1 {
            return Err(Error::config(OP, "the direct path needs groups = 1"));
        }
        Ok(())
    }
}

const OP: &str = "conv2d";

/// Runs `f` with this thread's scratch from `key`, taken out while in use (so a
/// re-entrant call just starts with fresh buffers) and put back after: the conv paths
/// keep their buffers across calls, as fresh ones cost page faults and zeroing on every
/// call.
fn with_scratch<S: Default, T>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<S>>,
    f: impl FnOnce(&mut S) -> T,
) -> T {
    let mut scratch = key.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let out = f(&mut scratch);
    key.with(|s| *s.borrow_mut() = scratch);
    out
}

/// Fewest tasks a batch is cut into for the forward passes, so two threads get a
/// balanced share; a constant, never the thread count.
const MIN_SPLIT: usize = 8;

/// Runs `f(first image, output tile)` over the batch of `y` (N, O, L) cut into
/// `ceil(N / MIN_SPLIT)`-image tiles, on the rayon pool when `parallel`. The tiles
/// depend on the shape only.
fn for_each_image_tile(
    mut y: ndarray::ArrayViewMut3<'_, f32>,
    parallel: bool,
    f: impl Fn(usize, ndarray::ArrayViewMut3<'_, f32>) -> Result<()> + Sync,
) -> Result<()> {
    use ndarray::parallel::prelude::*;
    let per = y.len_of(ndarray::Axis(0)).div_ceil(MIN_SPLIT).max(1);
    let tiles: Vec<_> = y
        .axis_chunks_iter_mut(ndarray::Axis(0), per)
        .enumerate()
        .collect();
    if parallel {
        tiles
            .into_par_iter()
            .with_max_len(1)
            .try_for_each(|(t, yt)| f(t * per, yt))
    } else {
        tiles.into_iter().try_for_each(|(t, yt)| f(t * per, yt))
    }
}

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::shape(OP, e.to_string())
}

fn check_bias(geo: &Conv2dGeometry, w_shape: &[usize], bias_len: Option<usize>) -> Result<()> {
    match bias_len {
        Some(len) if len != geo.out_channels => Err(Error::shape(
            OP,
            format!(
                "bias has length {len}, weight {w_shape:?} has {} output channels",
                geo.out_channels
            ),
        )),
        _ => Ok(()),
    }
}

/// 2-d convolution of `x` (N, C, H, W) with `weight` (O, C / groups, kh, kw) and an
/// optional `bias` (O), as `torch.nn.functional.conv2d`. Returns (N, O, out_h, out_w)
/// with the sizes from [`super::conv_out_size`].
///
/// Runs the images in parallel with rayon, each with its own im2col workspace; the result
/// is the same for any number of threads.
///
/// # Errors
/// [`Error::Config`] for a zero stride, dilation or groups, or groups not dividing the
/// channels; [`Error::Shape`] when the weight does not match the input's channels, the
/// dilated kernel is larger than the padded input, or the bias length is not `O`;
/// [`Error::Alloc`] when a buffer cannot be allocated: the output, a copy of a
/// broadcast or strided `x` or `weight`, or a padded image (far padding, stride or
/// dilation).
///
/// # Examples
/// ```
/// use convinit::ops::{conv2d, Conv2dOptions};
/// use ndarray::{Array1, Array4};
///
/// let x = Array4::<f32>::ones((2, 3, 8, 8));
/// let w = Array4::<f32>::ones((4, 3, 3, 3));
/// let b = Array1::<f32>::zeros(4);
/// let opts = Conv2dOptions::new().with_stride((2, 2)).with_padding((1, 1));
/// let y = conv2d(x.view(), w.view(), Some(b.view()), &opts)?;
/// assert_eq!(y.dim(), (2, 4, 4, 4));
/// // An interior output sees the full 3x3x3 window of ones.
/// assert_eq!(y[[0, 0, 1, 1]], 27.0);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn conv2d(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    options: &Conv2dOptions,
) -> Result<Array4<f32>> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    conv2d_with_plan(x, weight, bias, options, ConvPlan::choose(&geo))
}

/// [`conv2d`] on a given path (tests and benchmarks force each path). Not part of the
/// stable API.
///
/// # Errors
/// As [`conv2d`], and [`Error::Config`] when `plan` cannot run this geometry.
#[doc(hidden)]
pub fn conv2d_with_plan(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    options: &Conv2dOptions,
    plan: ConvPlan,
) -> Result<Array4<f32>> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    check_bias(&geo, weight.shape(), bias.map(|b| b.len()))?;
    plan.check(&geo)?;
    let (x, weight) = standard_operands(&geo, x, weight)?;
    let ops = operands(&geo, x.view(), weight.view(), plan, false)?;
    let mut y = try_zeros(OP, geo.y_shape(), || {
        format!(
            "the output {:?} of {}",
            <[usize; 4]>::from(geo.y_shape()),
            geo.describe()
        )
    })?;
    let y3 = y
        .view_mut()
        .into_shape_with_order((geo.batch, geo.out_channels, geo.col_cols()))
        .map_err(shape_err)?;
    gemm_path::forward(&ops, bias, y3)?;
    Ok(y)
}

/// `x` and `weight` in standard layout: themselves, or a copy (of a broadcast or strided
/// view, whose logical size may be far larger than its memory) reserved fallibly.
fn standard_operands<'a>(
    geo: &Conv2dGeometry,
    x: ArrayView4<'a, f32>,
    weight: ArrayView4<'a, f32>,
) -> Result<(
    ndarray::CowArray<'a, f32, ndarray::Ix4>,
    ndarray::CowArray<'a, f32, ndarray::Ix4>,
)> {
    let x = try_standard_layout(OP, x, || {
        format!("a contiguous copy of the input of {}", geo.describe())
    })?;
    let weight = try_standard_layout(OP, weight, || {
        format!("a contiguous copy of the weight of {}", geo.describe())
    })?;
    Ok((x, weight))
}

/// The input as (N, C * H * W) and the weights as (O, C / groups * kh * kw), for the
/// forward pass or the `backward` one.
fn operands<'a>(
    geo: &'a Conv2dGeometry,
    x: ArrayView4<'a, f32>,
    weight: ArrayView4<'a, f32>,
    plan: ConvPlan,
    backward: bool,
) -> Result<Operands<'a>> {
    // The index map serves only the column paths; the direct and phase ones never read
    // it (building it was 2% of seed_l2's direct forward).
    let uses_columns = if backward {
        !plan.direct_backward
    } else {
        plan.forward == ForwardPath::Columns
    };
    let image = geo.in_channels * geo.in_h * geo.in_w;
    let kg = geo.col_rows() / geo.options.groups;
    Ok(Operands {
        x: x.into_shape_with_order((geo.batch, image))
            .map_err(shape_err)?,
        w: weight
            .into_shape_with_order((geo.out_channels, kg))
            .map_err(shape_err)?,
        geo,
        plan,
        map: (plan.lowering == Lowering::Im2col && plan.use_map && uses_columns)
            .then(|| Im2colMap::new(geo, MAP_ENTRIES))
            .flatten(),
    })
}

/// Gradients of [`conv2d`] with respect to its input, weight and bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dGrads {
    /// Gradient of the input, (N, C, H, W).
    pub dx: Array4<f32>,
    /// Gradient of the weight, (O, C / groups, kh, kw).
    pub dw: Array4<f32>,
    /// Gradient of the bias, (O), when the forward pass had one.
    pub db: Option<Array1<f32>>,
}

/// Backward pass of [`conv2d`]: given the forward input `x`, `weight`, whether there was
/// a bias, and the upstream gradient `dy` (N, O, out_h, out_w), returns `dx`, `dw` and
/// (when `with_bias`) `db`.
///
/// `dx` is computed per image in parallel; `dw` and `db` are summed over images in a fixed
/// order (see the module docs), so the result is the same for any number of threads.
///
/// # Errors
/// Everything [`conv2d`] rejects, and [`Error::Shape`] when `dy` is not the shape the
/// forward pass produces.
pub fn conv2d_backward(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    with_bias: bool,
    dy: ArrayView4<'_, f32>,
    options: &Conv2dOptions,
) -> Result<Conv2dGrads> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    conv2d_backward_with_plan(x, weight, with_bias, dy, options, ConvPlan::choose(&geo))
}

/// Gradients of [`conv2d`] with respect to its weight and bias only, from
/// [`conv2d_backward_params`].
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dParamGrads {
    /// Gradient of the weight, (O, C / groups, kh, kw).
    pub dw: Array4<f32>,
    /// Gradient of the bias, (O), when the forward pass had one.
    pub db: Option<Array1<f32>>,
}

/// [`conv2d_backward`] without the input gradient: only `dw` and (when `with_bias`)
/// `db`, bit for bit as `conv2d_backward` computes them. For a layer whose input needs
/// no gradient (the first layer of a network, as PyTorch skips it for an input without
/// `requires_grad`), this saves the `W^T x dy` product and the col2im scatter.
///
/// # Errors
/// As [`conv2d_backward`].
///
/// # Examples
/// ```
/// use convinit::ops::{conv2d_backward, conv2d_backward_params, Conv2dOptions};
/// use ndarray::Array4;
///
/// let x = Array4::<f32>::ones((2, 3, 6, 6));
/// let w = Array4::<f32>::ones((4, 3, 3, 3));
/// let dy = Array4::<f32>::ones((2, 4, 4, 4));
/// let opts = Conv2dOptions::new();
/// let p = conv2d_backward_params(x.view(), w.view(), true, dy.view(), &opts)?;
/// let full = conv2d_backward(x.view(), w.view(), true, dy.view(), &opts)?;
/// assert_eq!(p.dw, full.dw);
/// assert_eq!(p.db, full.db);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn conv2d_backward_params(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    with_bias: bool,
    dy: ArrayView4<'_, f32>,
    options: &Conv2dOptions,
) -> Result<Conv2dParamGrads> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    let plan = ConvPlan::choose(&geo);
    let (_, dw, db) = backward_impl(x, weight, with_bias, dy, options, plan, false)?;
    Ok(Conv2dParamGrads { dw, db })
}

/// [`conv2d_backward`] on a given path. Not part of the stable API.
///
/// # Errors
/// As [`conv2d_backward`], and [`Error::Config`] when `plan` cannot run this geometry.
#[doc(hidden)]
pub fn conv2d_backward_with_plan(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    with_bias: bool,
    dy: ArrayView4<'_, f32>,
    options: &Conv2dOptions,
    plan: ConvPlan,
) -> Result<Conv2dGrads> {
    let (dx, dw, db) = backward_impl(x, weight, with_bias, dy, options, plan, true)?;
    Ok(Conv2dGrads {
        dx: dx.expect("the input gradient was asked for"),
        dw,
        db,
    })
}

/// The gradients `(dx when want_dx, dw, db when with_bias)`.
#[allow(clippy::type_complexity)]
fn backward_impl(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    with_bias: bool,
    dy: ArrayView4<'_, f32>,
    options: &Conv2dOptions,
    plan: ConvPlan,
    want_dx: bool,
) -> Result<(Option<Array4<f32>>, Array4<f32>, Option<Array1<f32>>)> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    if dy.dim() != geo.y_shape() {
        return Err(Error::shape(
            OP,
            format!(
                "grad_out is {:?}, but x {:?} and weight {:?} give an output of {:?}",
                dy.shape(),
                x.shape(),
                weight.shape(),
                geo.y_shape()
            ),
        ));
    }
    plan.check(&geo)?;
    let (x, weight) = standard_operands(&geo, x, weight)?;
    let dy = try_standard_layout(OP, dy, || {
        format!(
            "a contiguous copy of grad_out {:?} of {}",
            dy.shape(),
            geo.describe()
        )
    })?;
    let ops = operands(&geo, x.view(), weight.view(), plan, true)?;
    let (o, kg) = ops.w.dim();
    let dy3 = dy
        .view()
        .into_shape_with_order((geo.batch, o, geo.col_cols()))
        .map_err(shape_err)?;
    let mut dx = match want_dx {
        true => Some(try_zeros(OP, geo.x_shape(), || {
            format!("the input gradient of {}", geo.describe())
        })?),
        false => None,
    };
    let dx2 = match dx.as_mut() {
        Some(dx) => Some(
            dx.view_mut()
                .into_shape_with_order((geo.batch, ops.x.ncols()))
                .map_err(shape_err)?,
        ),
        None => None,
    };
    // One (dW, db) partial per chunk of images, added in chunk order.
    let partials = gemm_path::backward(&ops, dy3, with_bias, dx2)?;
    let mut dw: Array2<f32> = try_zeros(OP, (o, kg), || {
        format!("the weight gradient of {}", geo.describe())
    })?;
    let mut db = Array1::<f64>::zeros(o);
    for (pw, pb) in &partials {
        dw += pw;
        db += pb;
    }
    let dw = dw.into_shape_with_order(geo.w_shape()).map_err(shape_err)?;
    Ok((dx, dw, with_bias.then(|| db.mapv(|v| v as f32))))
}
