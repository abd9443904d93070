//! 2-d convolution (cross-correlation, as PyTorch) on top of the GEMM, and its backward.
//!
//! One algorithm layer, by pass. Files, none importing one that imports it back:
//! - this module: the public API, each call's geometry validated once, the plan checked
//!   against it ([`Error::Config`] when an algorithm cannot run the shape or the CPU
//!   lacks the kernel), one dispatching `match` per pass, and the final reduction of
//!   the weight and bias gradients;
//! - `plan`: [`ConvPlan`], the algorithm enums [`ForwardAlgo`], [`InputGradAlgo`],
//!   [`WeightGradAlgo`], and the user's setting [`ConvAlgorithm`] / [`ConvAlgos`] (data
//!   only);
//! - `choose`: [`ConvPlan::choose`], the only place a plan is picked from the shape
//!   (every threshold cites its measurement);
//! - `autotune`: [`ConvAlgorithm::Autotune`]'s timing of the candidates and its
//!   process-wide cache ([`autotuned_plan`]);
//! - `common`: what the algorithms share (operands, buffers and scratch, image tiles
//!   and reduction chunks, the per-group GEMM loop, the bias gradient);
//! - `layout`: the data movement between layouts (padded copies, transposes between
//!   kernel tiles and NCHW, phase-plane rows), portable loops with AVX-512 versions
//!   behind the same functions;
//! - one file per algorithm, each with `supports(geometry)`, its forward, input-gradient
//!   and weight-gradient functions side by side, a fused `gradients` for both, and its
//!   own index types: `direct` (indirect kernel, taps read in place; groups of 1),
//!   `columns` (im2col tiles, [`crate::ops`]'s `im2col` module), `pointwise` (the input
//!   as the column matrix), `phase` (stride-phase planes), `depthwise` (one input
//!   channel per group, plain vectorised loops, no GEMM), `winograd` (F(2x2, 3x3) and
//!   F(4x4, 3x3) for 3x3 stride-1 convs), `clipped` (a forward only: the direct
//!   kernel on windows clipped to the image, positions grouped by their inside taps).
//!
//! Adding an algorithm costs its file, a variant in each pass enum it serves (and its
//! `ALL` list), a `Family` with its rule in `unsupported`, an arm in the dispatch
//! `match`es, and a line in `choose` to pick it; the autotuner and `convbench` then try
//! it by themselves.
//!
//! Backward: the batch is cut into reduction chunks (`ceil(N / 8)` images, at most
//! [`REDUCTION_CHUNK`]); each chunk fills its rows of `dx` and returns its partial `dW`
//! and `db` (`db[o] = sum(dy[o])` in f64, whatever the algorithms). When the input and
//! weight gradients run the same algorithm they run fused (one lowering per tile, or one
//! padded copy per kernel call for `Direct`), else one after the other; a batch too
//! small to share the pool by chunks (one image on two threads) runs each chunk's two
//! gradients side by side instead, unfused (the same bits: `splits_gradients`).
//!
//! Determinism: the tiles and chunks depend on the shape only; output tiles are
//! disjoint; within a chunk images and tiles go in a fixed order, and the chunk partials
//! are added in chunk order, so the result does not depend on how many threads rayon
//! uses.

use ndarray::{
    Array1, Array2, Array4, ArrayView1, ArrayView3, ArrayView4, ArrayViewMut2, ArrayViewMut4,
    CowArray, Ix4,
};

use super::geometry::{Conv2dGeometry, Conv2dOptions, MemoryFormat};
use super::im2col::Im2colMap;
use crate::error::{Error, Result};
use crate::limits::{try_standard_layout, try_vec_with_capacity, try_written_output, try_zeros};
use std::sync::atomic::{AtomicUsize, Ordering};

mod autotune;
mod choose;
mod clipped;
mod columns;
mod common;
mod depthwise;
mod direct;
mod layout;
mod phase;
mod plan;
mod pointwise;
mod winograd;

use super::lanes;
pub use autotune::{ConvPass, autotuned_plan, clear_autotune_cache};
pub use common::REDUCTION_CHUNK;
use common::{
    MAP_ENTRIES, OP, Operands, Out, bias_partial, bias_partial_last, reduction_chunks, shape_err,
};
use plan::Family;
pub use plan::{ConvAlgorithm, ConvAlgos, ConvPlan, ForwardAlgo, InputGradAlgo, WeightGradAlgo};

/// Why an algorithm of `family` cannot run `geo`, or `None` when it can: each algorithm
/// file's `supports`, and its rule in words.
fn unsupported(family: Family, geo: &Conv2dGeometry) -> Option<String> {
    let o = &geo.options;
    let runs = match family {
        Family::Direct => direct::supports(geo),
        Family::Clipped => clipped::supports(geo),
        Family::Columns => columns::supports(geo),
        Family::Pointwise => pointwise::supports(geo),
        Family::Phase => phase::supports(geo),
        Family::Depthwise => depthwise::supports(geo),
        Family::WinogradF2 | Family::WinogradF4 => winograd::supports(geo),
    };
    if runs {
        return None;
    }
    Some(match family {
        Family::Direct | Family::Clipped => format!(
            "it runs groups of 1 only, this conv has groups {}",
            o.groups
        ),
        Family::Pointwise => format!(
            "it needs a 1x1 kernel, stride 1 and no padding, this conv has kernel {:?}, \
             stride {:?}, padding {:?}",
            geo.kernel, o.stride, o.padding
        ),
        Family::Depthwise => format!(
            "it runs one input channel per group only (groups = in_channels), this conv \
             has {} input channels and groups {}",
            geo.in_channels, o.groups
        ),
        Family::WinogradF2 | Family::WinogradF4 => format!(
            "it runs 3x3 kernels of stride 1, dilation 1 and groups of 1 only, this conv \
             has kernel {:?}, stride {:?}, dilation {:?}, groups {}",
            geo.kernel, o.stride, o.dilation, o.groups
        ),
        Family::Columns | Family::Phase => "it cannot run this geometry".into(),
    })
}

impl ForwardAlgo {
    /// Whether this algorithm can run `geo` (the pointwise algorithm only a 1x1,
    /// stride-1, unpadded conv; the direct one only groups of 1; the depthwise one only
    /// one input channel per group, `groups == C`; the Winograd ones only a 3x3 kernel
    /// of stride 1, dilation 1 and groups of 1).
    pub fn supports(self, geo: &Conv2dGeometry) -> bool {
        unsupported(self.family(), geo).is_none()
    }
}

impl InputGradAlgo {
    /// Whether this algorithm can run `geo`, as [`ForwardAlgo::supports`].
    pub fn supports(self, geo: &Conv2dGeometry) -> bool {
        unsupported(self.family(), geo).is_none()
    }
}

impl WeightGradAlgo {
    /// Whether this algorithm can run `geo`, as [`ForwardAlgo::supports`].
    pub fn supports(self, geo: &Conv2dGeometry) -> bool {
        unsupported(self.family(), geo).is_none()
    }
}

/// Checks that every algorithm of `plan` runs `geo`, and its knobs.
fn check_plan(plan: &ConvPlan, geo: &Conv2dGeometry) -> Result<()> {
    let passes = [
        (plan.forward.family(), "forward pass"),
        (plan.input_grad.family(), "input gradient"),
        (plan.weight_grad.family(), "weight gradient"),
    ];
    for (family, pass) in passes {
        if let Some(why) = unsupported(family, geo) {
            let name = family.name();
            return Err(Error::config(
                OP,
                format!(
                    "the {name} algorithm cannot run the {pass} of {}: {why}",
                    geo.describe()
                ),
            ));
        }
    }
    if plan.tile_cols == 0 {
        return Err(Error::config(OP, "a plan needs tile_cols > 0"));
    }
    if !plan.kernel.is_supported() {
        return Err(Error::config(
            OP,
            format!(
                "the plan asks for the {} GEMM kernel, which this CPU does not support",
                plan.kernel.name()
            ),
        ));
    }
    Ok(())
}

/// The forward pass into `y` (N, O, L): one arm per algorithm.
fn forward(ops: &Operands<'_>, bias: Option<ArrayView1<'_, f32>>, y: Out<'_>) -> Result<()> {
    match ops.plan.forward {
        ForwardAlgo::Direct => direct::forward(ops, bias, y),
        ForwardAlgo::Phase => phase::forward(ops, bias, y),
        ForwardAlgo::Clipped => clipped::forward(ops, bias, y),
        algo => {
            let y = y.into_view();
            match algo {
                ForwardAlgo::Columns => columns::forward(ops, columns::Lowering::Im2col, bias, y),
                ForwardAlgo::Pointwise => pointwise::forward(ops, bias, y),
                ForwardAlgo::Depthwise => depthwise::forward(ops, bias, y),
                ForwardAlgo::WinogradF2 => winograd::forward(ops, winograd::Tile::F2, bias, y),
                ForwardAlgo::WinogradF4 => winograd::forward(ops, winograd::Tile::F4, bias, y),
                ForwardAlgo::Direct | ForwardAlgo::Phase | ForwardAlgo::Clipped => {
                    unreachable!("matched above")
                }
            }
        }
    }
}

/// Most bytes of one image tile for a new output to be zeroed tile by tile
/// ([`Out::Fresh`]): a tile this small is still in cache when the algorithm writes it.
/// Larger ones are zeroed over the pool first ([`try_written_output`]): resnet_128s2's
/// 1.6 MB tiles ran its forward 8-10% slower zeroed tile by tile (Intel 6/207, 1 and 2
/// threads), while seed_l2's 40 KB tiles ran 20% faster at 2 threads.
const FRESH_TILE_BYTES: usize = 256 << 10;

/// Whether `plan`'s forward zeroes a new output of `geo` itself, tile by tile.
fn zeroes_tiles(geo: &Conv2dGeometry, plan: &ConvPlan) -> bool {
    let per = geo.batch.div_ceil(common::MIN_SPLIT).max(1);
    let tile = [geo.out_channels, geo.col_cols(), size_of::<f32>()]
        .iter()
        .try_fold(per, |a, &d| a.checked_mul(d));
    matches!(
        plan.forward,
        ForwardAlgo::Direct | ForwardAlgo::Phase | ForwardAlgo::Clipped
    ) && tile.is_some_and(|t| t <= FRESH_TILE_BYTES)
}

/// Whether the input and weight gradients run fused (the same algorithm).
fn fused(plan: &ConvPlan) -> bool {
    matches!(
        (plan.input_grad, plan.weight_grad),
        (InputGradAlgo::Direct, WeightGradAlgo::Direct)
            | (InputGradAlgo::Columns, WeightGradAlgo::Columns)
            | (InputGradAlgo::Pointwise, WeightGradAlgo::Pointwise)
            | (InputGradAlgo::Phase, WeightGradAlgo::Phase)
            | (InputGradAlgo::Depthwise, WeightGradAlgo::Depthwise)
    )
}

/// The weight gradient of one reduction chunk: one arm per algorithm.
fn weight_grad(
    ops: &Operands<'_>,
    direct: Option<&direct::Backward>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
) -> Result<Array2<f32>> {
    match ops.plan.weight_grad {
        WeightGradAlgo::Direct => prepared(direct).weight_grad(ops, dy, chunk),
        WeightGradAlgo::Columns => columns::weight_grad(ops, columns::Lowering::Im2col, dy, chunk),
        WeightGradAlgo::Pointwise => pointwise::weight_grad(ops, dy, chunk),
        WeightGradAlgo::Phase => phase::weight_grad(ops, dy, chunk),
        WeightGradAlgo::Depthwise => depthwise::weight_grad(ops, dy, chunk),
        WeightGradAlgo::WinogradF2 => winograd::weight_grad(ops, winograd::Tile::F2, dy, chunk),
        WeightGradAlgo::WinogradF4 => winograd::weight_grad(ops, winograd::Tile::F4, dy, chunk),
    }
}

/// The input gradient of one reduction chunk into `dxc`: one arm per algorithm.
fn input_grad(
    ops: &Operands<'_>,
    direct: Option<&direct::Backward>,
    winograd: Option<&winograd::Backward>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
    dxc: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    match ops.plan.input_grad {
        InputGradAlgo::Direct => prepared(direct).input_grad(ops, dy, chunk, dxc),
        InputGradAlgo::Columns => {
            columns::input_grad(ops, columns::Lowering::Im2col, dy, chunk, dxc)
        }
        InputGradAlgo::Pointwise => pointwise::input_grad(ops, dy, chunk, dxc),
        InputGradAlgo::Phase => phase::input_grad(ops, dy, chunk, dxc),
        InputGradAlgo::Depthwise => depthwise::input_grad(ops, dy, chunk, dxc),
        InputGradAlgo::WinogradF2 | InputGradAlgo::WinogradF4 => winograd
            .expect("the Winograd backward is prepared whenever the plan runs it")
            .input_grad(ops, dy, chunk, dxc),
    }
}

/// Both gradients of one reduction chunk on one algorithm ([`fused`]): one arm per
/// algorithm.
fn gradients(
    ops: &Operands<'_>,
    direct: Option<&direct::Backward>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
    dxc: ArrayViewMut2<'_, f32>,
) -> Result<Array2<f32>> {
    match ops.plan.weight_grad {
        WeightGradAlgo::Direct => prepared(direct).gradients(ops, dy, chunk, dxc),
        WeightGradAlgo::Columns => {
            columns::gradients(ops, columns::Lowering::Im2col, dy, chunk, dxc)
        }
        WeightGradAlgo::Pointwise => pointwise::gradients(ops, dy, chunk, dxc),
        WeightGradAlgo::Phase => phase::gradients(ops, dy, chunk, dxc),
        WeightGradAlgo::Depthwise => depthwise::gradients(ops, dy, chunk, dxc),
        WeightGradAlgo::WinogradF2 | WeightGradAlgo::WinogradF4 => {
            unreachable!("the Winograd weight gradient never runs fused (`fused`)")
        }
    }
}

fn prepared(direct: Option<&direct::Backward>) -> &direct::Backward {
    direct.expect("the direct backward is prepared whenever the plan runs it")
}

/// Whether the pool is too large for `chunks` reduction chunks to share it by chunks
/// (one chunk, one image, on two threads; or three on two), so that each chunk runs its
/// input and weight gradients side by side on the pool (`rayon::join`), unfused. Either
/// way every gradient element is the same sum in the same order (each algorithm's fused
/// pass runs the separate passes' arithmetic), so the bits do not change. Measured (2
/// threads, Zen 4, bwd ms, chunks -> split, interleaved): one image of 64 x 56x56 -> 64
/// 4.14 -> 2.42 (direct dx, F4 dW), 128 x 28x28 -> 128 4.34 -> 2.66, 32 x 28x28 -> 64
/// 5x5 1.50 -> 0.84, 3 x 224x224 -> 64 7x7 stride 2 6.40 -> 4.07 (columns dx), 256 x
/// 14x14 -> 512 1x1 1.04 -> 0.59 (pointwise); three images of 64 x 28x28 -> 64 2.31 ->
/// 1.81; small ones gain less (16 x 32x32 -> 16 0.107 -> 0.087; 64 x 28x28 -> 128
/// stride 2 0.63 -> 0.62, its two halves slower side by side). The same rule as the
/// forward splits of one image ([`common::splits_images`]).
fn splits_gradients(chunks: usize) -> bool {
    common::splits_images(chunks, rayon::current_num_threads())
}

/// The backward pass: `dx` (N, C * H * W, any contents: each chunk zeroes its own
/// rows), when wanted, filled per reduction chunk; returns one `(dW, db)` partial per
/// chunk, in chunk order.
fn backward(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    with_bias: bool,
    dx: Option<ArrayViewMut2<'_, f32>>,
) -> Result<Vec<(Array2<f32>, Array1<f64>)>> {
    use ndarray::parallel::prelude::*;
    let want_dx = dx.is_some();
    let plan = ops.plan;
    let dx_direct = want_dx && plan.input_grad == InputGradAlgo::Direct;
    // The direct algorithm's per-call indexing and packed weights, shared by the chunks.
    let direct = (dx_direct || plan.weight_grad == WeightGradAlgo::Direct)
        .then(|| direct::Backward::new(ops, dx_direct))
        .transpose()?;
    let direct = direct.as_ref();
    // The Winograd input gradient's transformed filter, shared by the chunks.
    let winograd = match plan.input_grad {
        InputGradAlgo::WinogradF2 if want_dx => {
            Some(winograd::Backward::new(ops, winograd::Tile::F2)?)
        }
        InputGradAlgo::WinogradF4 if want_dx => {
            Some(winograd::Backward::new(ops, winograd::Tile::F4)?)
        }
        _ => None,
    };
    let winograd = winograd.as_ref();
    let chunks = reduction_chunks(dy.len_of(ndarray::Axis(0)), dx);
    let split = want_dx && plan.parallel && splits_gradients(chunks.len());
    let run = |(n0, nb, mut dxc): (usize, usize, Option<ArrayViewMut2<'_, f32>>)| {
        let chunk = (n0, nb);
        // Each chunk zeroes its own rows of dx, on its own thread, just before it writes
        // them (a serial `memset` of all of dx was 1.6% of `train_mnist`'s profile).
        // Not where the direct path stores every element: in channel-major dx that was
        // no faster (the zeros bring the rows into cache for the stores that follow),
        // channels-last it saves a pass (memset 1.5% of `train_mnist`'s profile).
        let writes_all = plan.input_grad == InputGradAlgo::Direct
            && direct.is_some_and(|d| d.writes_every_dx(ops.geo));
        if let Some(d) = dxc.as_mut().filter(|_| !writes_all) {
            match d.as_slice_mut() {
                // A `memset`: ndarray's `fill` ran an element loop.
                Some(d) => d.fill(0.0),
                None => d.fill(0.0),
            }
        }
        let dw = match dxc {
            Some(dxc) if split => {
                let (dw, dx) = rayon::join(
                    || weight_grad(ops, direct, dy, chunk),
                    || input_grad(ops, direct, winograd, dy, chunk, dxc),
                );
                dx?;
                dw?
            }
            Some(dxc) if fused(&plan) => gradients(ops, direct, dy, chunk, dxc)?,
            Some(dxc) => {
                let dw = weight_grad(ops, direct, dy, chunk)?;
                input_grad(ops, direct, winograd, dy, chunk, dxc)?;
                dw
            }
            None => weight_grad(ops, direct, dy, chunk)?,
        };
        let db = match (with_bias, ops.y_last) {
            (true, false) => bias_partial(plan.kernel, dy, n0, nb),
            (true, true) => bias_partial_last(plan.kernel, dy, n0, nb),
            (false, _) => Array1::zeros(ops.geo.out_channels),
        };
        Ok((dw, db))
    };
    if plan.parallel {
        chunks.into_par_iter().with_max_len(1).map(run).collect()
    } else {
        chunks.into_iter().map(run).collect()
    }
}

/// `dw += pw` for every chunk's partial, in chunk order, with the kernel's vectors and,
/// on a parallel plan, over blocks of `dw` on the pool (each element sums the partials
/// in the same order either way, so the bits do not change). Added one by one on the
/// calling thread, they took 1.2% of `train_mnist`'s profile with the pool waiting.
fn sum_partials(plan: &ConvPlan, dw: &mut Array2<f32>, partials: &[(Array2<f32>, Array1<f64>)]) {
    use rayon::prelude::*;
    /// Floats of `dw` per task.
    const BLOCK: usize = 1 << 12;
    let parts: Vec<&[f32]> = partials
        .iter()
        .map(|(pw, _)| pw.as_slice().expect("a new partial is contiguous"))
        .collect();
    let dw = dw.as_slice_mut().expect("a new array is contiguous");
    let add = |(i, d): (usize, &mut [f32])| {
        for p in &parts {
            let p = &p[i * BLOCK..][..d.len()];
            lanes::update_with(plan.kernel, d, p, &|v: f32, g: f32| g + v);
        }
    };
    if plan.parallel && dw.len() > 2 * BLOCK {
        dw.par_chunks_mut(BLOCK).enumerate().for_each(add);
    } else {
        dw.chunks_mut(BLOCK).enumerate().for_each(add);
    }
}

/// Runs `call` on the plan of `geo.options.algorithm` for `pass` on this pool: auto's,
/// auto's with the fixed passes replaced, or the autotuned one.
fn with_algorithm<T: autotune::Spent>(
    geo: &Conv2dGeometry,
    pass: ConvPass,
    mut call: impl FnMut(ConvPlan) -> Result<T>,
) -> Result<T> {
    let auto = || ConvPlan::choose(geo, rayon::current_num_threads());
    match geo.options.algorithm {
        ConvAlgorithm::Auto => call(auto()),
        ConvAlgorithm::Fixed(algos) => call(algos.apply_to(auto())),
        ConvAlgorithm::Autotune => autotune::run(geo, pass, call),
    }
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
/// Runs on the algorithms of `options.algorithm` ([`ConvAlgorithm`]: by default
/// [`ConvPlan::choose`]'s for this shape and pool), splitting the images over rayon's
/// pool; with [`ConvAlgorithm::Auto`] or [`ConvAlgorithm::Fixed`] the result is the same
/// for any number of threads.
///
/// `x` may be channel-major or channels-last ([`MemoryFormat`], read from its strides;
/// any other strides are copied first); the output is laid out as
/// `options.memory_format` says. The values do not depend on either: the direct
/// algorithm reads and writes channels-last tensors as they are, the others run on
/// channel-major copies. [`conv2d_backward`] returns `dx` in `x`'s layout and takes `dy`
/// in either.
///
/// # Errors
/// [`Error::Config`] for a zero stride, dilation or groups, or groups not dividing the
/// channels, or when `options.algorithm` forces an algorithm that cannot run this
/// geometry or a GEMM kernel this CPU lacks; [`Error::Shape`] when the weight does not
/// match the input's channels, the dilated kernel is larger than the padded input, or
/// the bias length is not `O`;
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
    with_algorithm(&geo, ConvPass::Forward, |plan| {
        forward_impl(&geo, x, weight, bias, plan)
    })
}

/// [`conv2d`] writing into the caller's `out` (N, O, out_h, out_w), which a loop reuses
/// from call to call instead of allocating an output each time. `out` is overwritten
/// (its contents do not matter); the result is the same, bit for bit, as
/// [`conv2d`]'s.
///
/// ```
/// use convinit::ops::{conv2d, conv2d_into, Conv2dOptions};
/// use ndarray::Array4;
///
/// let x = Array4::<f32>::ones((2, 3, 8, 8));
/// let w = Array4::<f32>::ones((4, 3, 3, 3));
/// let opts = Conv2dOptions::new().with_padding((1, 1));
/// let mut y = Array4::<f32>::zeros((2, 4, 8, 8));
/// for _ in 0..3 {
///     conv2d_into(x.view(), w.view(), None, &opts, y.view_mut())?;
/// }
/// assert_eq!(y, conv2d(x.view(), w.view(), None, &opts)?);
/// # Ok::<(), convinit::Error>(())
/// ```
///
/// # Errors
/// As [`conv2d`], and [`Error::Shape`] when `out` is not the output's shape or not in
/// standard layout.
pub fn conv2d_into(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    options: &Conv2dOptions,
    mut out: ArrayViewMut4<'_, f32>,
) -> Result<()> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    let want: [usize; 4] = geo.y_shape().into();
    super::check_out(OP, "out", out.shape(), &want, out.is_standard_layout())?;
    with_algorithm(&geo, ConvPass::Forward, |plan| {
        forward_into(&geo, x, weight, bias, plan, out.view_mut())
    })
}

/// [`conv2d`] on a given plan: every knob of [`ConvPlan`] (tile size, index map,
/// parallel split, kernel) forced, for benchmarks and tests. `options.algorithm` is not
/// used: the plan decides.
///
/// # Errors
/// As [`conv2d`], and [`Error::Config`] when an algorithm of `plan` cannot run this
/// geometry, its `tile_cols` is zero or this CPU lacks its kernel.
pub fn conv2d_with_plan(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    options: &Conv2dOptions,
    plan: ConvPlan,
) -> Result<Array4<f32>> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    forward_impl(&geo, x, weight, bias, plan)
}

/// [`conv2d_with_plan`] on a validated geometry.
fn forward_impl(
    geo: &Conv2dGeometry,
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    plan: ConvPlan,
) -> Result<Array4<f32>> {
    check_bias(geo, weight.shape(), bias.map(|b| b.len()))?;
    check_plan(&plan, geo)?;
    let describe = || {
        format!(
            "the output {:?} of {}",
            <[usize; 4]>::from(geo.y_shape()),
            geo.describe()
        )
    };
    let x_last = MemoryFormat::of(&x) == MemoryFormat::ChannelsLast;
    let y_last = geo.options.memory_format == MemoryFormat::ChannelsLast;
    if x_last || y_last {
        return forward_layouts(geo, x, weight, bias, plan, (x_last, y_last));
    }
    let (n, o, h, w) = geo.y_shape();
    // `None` on overflow: `try_written_output` reports it.
    let len = [o, h, w].iter().try_fold(n, |a, &d| a.checked_mul(d));
    // Every forward algorithm writes each element of `y` (the `_into` contract), so a
    // cached buffer needs no zeros of its own; a new one is zeroed tile by tile by the
    // algorithms that can, when the tiles are small ([`zeroes_tiles`]), else over the
    // pool or by calloc.
    if let Some(len) = len.filter(|&len| zeroes_tiles(geo, &plan) && !crate::buffers::holds(len)) {
        let mut v = try_vec_with_capacity::<f32>(OP, len, describe)?;
        let done = AtomicUsize::new(0);
        let dim = (geo.batch, geo.out_channels, geo.col_cols());
        let out = Out::Fresh {
            buf: &mut v.spare_capacity_mut()[..len],
            dim,
            done: &done,
        };
        run_forward(geo, x, weight, bias, plan, out)?;
        // Each element is counted once, when its tile is zeroed (the tiles are
        // disjoint), so a count of `len` means every element is initialised.
        assert_eq!(
            done.load(Ordering::Relaxed),
            len,
            "conv2d: the forward left part of a new output unwritten"
        );
        // SAFETY: the capacity is at least `len`, and every element is initialised
        // (checked just above).
        unsafe { v.set_len(len) };
        return Ok(Array4::from_shape_vec(geo.y_shape(), v).expect("length matches the shape"));
    }
    let mut y = try_written_output(OP, geo.y_shape(), plan.parallel, describe)?;
    forward_into(geo, x, weight, bias, plan, y.view_mut())?;
    Ok(y)
}

/// [`forward_impl`] with a channels-last input or output (`x_last`, `y_last`): the
/// direct algorithm reads and writes them as they are (its kernels work on
/// position-major tiles, so channels-last spares it the transposes); the others run
/// channel-major on a copy of the input, and their output is copied to channels-last
/// when asked. The same bits either way.
fn forward_layouts(
    geo: &Conv2dGeometry,
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    plan: ConvPlan,
    (x_last, y_last): (bool, bool),
) -> Result<Array4<f32>> {
    if !matches!(plan.forward, ForwardAlgo::Direct | ForwardAlgo::Clipped) {
        let x = channel_major(x, || {
            format!("a contiguous copy of the input of {}", geo.describe())
        })?;
        let mut contiguous = *geo;
        contiguous.options.memory_format = MemoryFormat::Contiguous;
        let y = forward_impl(&contiguous, x.view(), weight, bias, plan)?;
        recycle_copy(x);
        return match y_last {
            true => {
                let last = to_memory_format(y.view(), MemoryFormat::ChannelsLast)?;
                crate::buffers::give_array(y);
                Ok(last)
            }
            false => Ok(y),
        };
    }
    let (n, o, oh, ow) = geo.y_shape();
    let describe = || format!("the output {:?} of {}", [n, o, oh, ow], geo.describe());
    // The input as stored: (N, H, W, C) or (N, C, H, W), row-major.
    let xs = if x_last {
        x.permuted_axes([0, 2, 3, 1])
    } else {
        x
    };
    let (xs, weight) = standard_operands(geo, xs, weight)?;
    let ops = operands_in(geo, xs.view(), weight.view(), plan, false, (x_last, y_last))?;
    let (shape, dims) = match y_last {
        true => ((n, oh, ow, o), (n, oh * ow, o)),
        false => ((n, o, oh, ow), (n, o, oh * ow)),
    };
    let mut y = try_written_output(OP, shape, plan.parallel, describe)?;
    let y3 = y
        .view_mut()
        .into_shape_with_order(dims)
        .map_err(shape_err)?;
    match plan.forward {
        ForwardAlgo::Clipped => clipped::forward(&ops, bias, Out::View(y3))?,
        _ => direct::forward(&ops, bias, Out::View(y3))?,
    }
    Ok(if y_last {
        y.permuted_axes([0, 3, 1, 2])
    } else {
        y
    })
}

/// `x` in standard (channel-major) layout: itself when it is, a copy by blocked
/// transposes when it is channels-last ([`to_memory_format`], over the pool), else an
/// element-by-element copy. For the algorithms that run channel-major: a
/// channels-last pw_64x128 copied element by element in logical order (a stride of C
/// floats between reads) ran its pointwise forward 5x slower than channel-major.
fn channel_major<'a>(
    x: ArrayView4<'a, f32>,
    describe: impl FnOnce() -> String,
) -> Result<CowArray<'a, f32, Ix4>> {
    if !x.is_standard_layout() && MemoryFormat::of(&x) == MemoryFormat::ChannelsLast {
        return Ok(to_memory_format(x, MemoryFormat::Contiguous)?.into());
    }
    try_standard_layout(OP, x, describe)
}

/// Hands a copy [`channel_major`] made to the buffer cache once it is spent.
fn recycle_copy(x: CowArray<'_, f32, Ix4>) {
    if !x.is_view() {
        crate::buffers::give_array(x.into_owned());
    }
}

/// `x` copied into `format`'s layout (its shape stays `(N, C, H, W)`), or as it is when
/// already laid out so. Convert a network's input once with it; the layers keep the
/// layout they are given.
///
/// ```
/// use convinit::ops::{MemoryFormat, to_memory_format};
/// use ndarray::Array4;
///
/// let x = Array4::from_shape_fn((2, 3, 4, 5), |(n, c, h, w)| (n * 1000 + c * 100 + h * 10 + w) as f32);
/// let last = to_memory_format(x.view(), MemoryFormat::ChannelsLast)?;
/// assert_eq!(MemoryFormat::of(&last), MemoryFormat::ChannelsLast);
/// assert_eq!(last, x); // the same elements, in another order in memory
/// assert_eq!(last.strides(), &[60, 1, 15, 3]);
/// # Ok::<(), convinit::Error>(())
/// ```
///
/// # Errors
/// [`Error::Alloc`] when the copy cannot be allocated.
pub fn to_memory_format(x: ArrayView4<'_, f32>, format: MemoryFormat) -> Result<Array4<f32>> {
    use rayon::prelude::*;
    let (n, c, h, w) = x.dim();
    let describe = || format!("a {format:?} copy of {:?}", x.shape());
    // Row-major: (N, C, H, W) for contiguous, (N, H, W, C) for channels-last.
    let (want, other) = match format {
        MemoryFormat::Contiguous => (x, x.permuted_axes([0, 2, 3, 1])),
        MemoryFormat::ChannelsLast => (x.permuted_axes([0, 2, 3, 1]), x),
    };
    let image = c * h * w;
    let v = if let Some(s) = want.as_slice() {
        // Laid out so already (with one channel or pixel, both layouts are).
        let mut v = try_vec_with_capacity(OP, n * image, describe)?;
        v.extend_from_slice(s);
        v
    } else if let Some(s) = other.as_slice() {
        // The other layout: a transpose per image, (rows, cols) -> (cols, rows), into
        // a cached buffer as it is (every element is written), else a new one.
        let (rows, cols) = match format {
            MemoryFormat::Contiguous => (h * w, c),
            MemoryFormat::ChannelsLast => (c, h * w),
        };
        let parallel = n * image >= 1 << 16;
        let (mut v, _) =
            try_written_output(OP, n * image, parallel, describe)?.into_raw_vec_and_offset();
        let kernel = crate::gemm::Kernel::selected();
        let run = |(t, y): (&[f32], &mut [f32])| {
            layout::transpose_add(kernel, t, cols, (rows, cols), None, y, rows);
        };
        if parallel {
            s.par_chunks(image)
                .zip(v.par_chunks_mut(image))
                .for_each(run);
        } else {
            s.chunks(image).zip(v.chunks_mut(image)).for_each(run);
        }
        v
    } else {
        let mut v = try_vec_with_capacity(OP, n * image, describe)?;
        v.extend(want.iter().copied());
        v
    };
    let y = Array4::from_shape_vec(want.dim(), v).expect("length matches the shape");
    Ok(match format {
        MemoryFormat::Contiguous => y,
        MemoryFormat::ChannelsLast => y.permuted_axes([0, 3, 1, 2]),
    })
}

/// The forward pass into `y`: the shape of `geo.y_shape()`, standard layout (checked
/// by the callers), any contents (zeroed here first).
fn forward_into(
    geo: &Conv2dGeometry,
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    plan: ConvPlan,
    y: ArrayViewMut4<'_, f32>,
) -> Result<()> {
    let y3 = y
        .into_shape_with_order((geo.batch, geo.out_channels, geo.col_cols()))
        .map_err(shape_err)?;
    run_forward(geo, x, weight, bias, plan, Out::View(y3))
}

/// The forward pass into `y` (N, O, L), after the checks every entry point shares.
fn run_forward(
    geo: &Conv2dGeometry,
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    plan: ConvPlan,
    y: Out<'_>,
) -> Result<()> {
    let geo = *geo;
    check_bias(&geo, weight.shape(), bias.map(|b| b.len()))?;
    check_plan(&plan, &geo)?;
    let (x, weight) = standard_operands(&geo, x, weight)?;
    let ops = operands(&geo, x.view(), weight.view(), plan, false)?;
    forward(&ops, bias, y)
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
    operands_in(geo, x, weight, plan, backward, (false, false))
}

/// [`operands`] with the layouts of the direct path: `x` is the standard-layout input
/// (N, H, W, C) when `x_last`, and `y_last` says whether the output (forward) or `dy`
/// (backward) is channels-last.
fn operands_in<'a>(
    geo: &'a Conv2dGeometry,
    x: ArrayView4<'a, f32>,
    weight: ArrayView4<'a, f32>,
    plan: ConvPlan,
    backward: bool,
    (x_last, y_last): (bool, bool),
) -> Result<Operands<'a>> {
    // The index map serves only the `Columns` algorithm; the others never read it
    // (building it was 2% of seed_l2's direct forward).
    let uses_columns = if backward {
        plan.input_grad == InputGradAlgo::Columns || plan.weight_grad == WeightGradAlgo::Columns
    } else {
        plan.forward == ForwardAlgo::Columns
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
        map: (plan.use_map && uses_columns)
            .then(|| Im2colMap::new(geo, MAP_ENTRIES))
            .flatten(),
        x_last,
        y_last,
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
/// Runs the input-gradient and weight-gradient algorithms of `options.algorithm`, as
/// [`conv2d`] (autotuned as one [`ConvPass::Backward`]). `dx` is computed per image in
/// parallel; `dw` and `db` are summed over images in a fixed order (see the module
/// docs), so with [`ConvAlgorithm::Auto`] or [`ConvAlgorithm::Fixed`] the result is the
/// same for any number of threads.
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
    let (dx, dw, db) = with_algorithm(&geo, ConvPass::Backward, |plan| {
        backward_impl(&geo, x, weight, with_bias, dy, plan, true)
    })?;
    Ok(Conv2dGrads {
        dx: dx.expect("the input gradient was asked for"),
        dw,
        db,
    })
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
/// `db`, bit for bit as `conv2d_backward` computes them (on the same plan: autotuning
/// tunes this call as its own [`ConvPass::BackwardParams`], so it may pick another
/// weight-gradient algorithm). For a layer whose input needs no gradient (the first
/// layer of a network, as PyTorch skips it for an input without `requires_grad`), this
/// saves the `W^T x dy` product and the col2im scatter.
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
    let (_, dw, db) = with_algorithm(&geo, ConvPass::BackwardParams, |plan| {
        backward_impl(&geo, x, weight, with_bias, dy, plan, false)
    })?;
    Ok(Conv2dParamGrads { dw, db })
}

/// [`conv2d_backward`] on a given plan, as [`conv2d_with_plan`]: `options.algorithm` is
/// not used. The plan's forward algorithm must run the geometry too (it is checked,
/// though the backward does not run it).
///
/// # Errors
/// As [`conv2d_backward`], and [`Error::Config`] when an algorithm of `plan` cannot run
/// this geometry, its `tile_cols` is zero or this CPU lacks its kernel.
pub fn conv2d_backward_with_plan(
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    with_bias: bool,
    dy: ArrayView4<'_, f32>,
    options: &Conv2dOptions,
    plan: ConvPlan,
) -> Result<Conv2dGrads> {
    let geo = Conv2dGeometry::new(OP, x.dim().into(), weight.dim().into(), options)?;
    let (dx, dw, db) = backward_impl(&geo, x, weight, with_bias, dy, plan, true)?;
    Ok(Conv2dGrads {
        dx: dx.expect("the input gradient was asked for"),
        dw,
        db,
    })
}

/// The gradients `(dx when want_dx, dw, db when with_bias)`.
#[allow(clippy::type_complexity)]
fn backward_impl(
    geo: &Conv2dGeometry,
    x: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    with_bias: bool,
    dy: ArrayView4<'_, f32>,
    plan: ConvPlan,
    want_dx: bool,
) -> Result<(Option<Array4<f32>>, Array4<f32>, Option<Array1<f32>>)> {
    let geo = *geo;
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
    check_plan(&plan, &geo)?;
    let x_last = MemoryFormat::of(&x) == MemoryFormat::ChannelsLast;
    let dy_last = MemoryFormat::of(&dy) == MemoryFormat::ChannelsLast;
    let direct = plan.weight_grad == WeightGradAlgo::Direct
        && (!want_dx || plan.input_grad == InputGradAlgo::Direct);
    if (x_last || dy_last) && !direct {
        // The other algorithms run channel-major: on copies, dx copied back.
        let describe = |what| format!("a contiguous copy of {what} of {}", geo.describe());
        let x = channel_major(x, || describe("the input"))?;
        let dy = channel_major(dy, || describe("grad_out"))?;
        let (dx, dw, db) =
            backward_impl(&geo, x.view(), weight, with_bias, dy.view(), plan, want_dx)?;
        recycle_copy(x);
        recycle_copy(dy);
        let dx = match (dx, x_last) {
            (Some(dx), true) => {
                let last = to_memory_format(dx.view(), MemoryFormat::ChannelsLast)?;
                crate::buffers::give_array(dx);
                Some(last)
            }
            (dx, _) => dx,
        };
        return Ok((dx, dw, db));
    }
    // As stored, row-major: (N, H, W, C) or (N, C, H, W); (N, oh, ow, O) or (N, O, oh, ow).
    let x = if x_last {
        x.permuted_axes([0, 2, 3, 1])
    } else {
        x
    };
    let dy = if dy_last {
        dy.permuted_axes([0, 2, 3, 1])
    } else {
        dy
    };
    let (x, weight) = standard_operands(&geo, x, weight)?;
    let dy = try_standard_layout(OP, dy, || {
        format!(
            "a contiguous copy of grad_out {:?} of {}",
            dy.shape(),
            geo.describe()
        )
    })?;
    let ops = operands_in(&geo, x.view(), weight.view(), plan, true, (x_last, dy_last))?;
    let (o, kg) = ops.w.dim();
    let l = geo.col_cols();
    let dims = if dy_last {
        (geo.batch, l, o)
    } else {
        (geo.batch, o, l)
    };
    let dy3 = dy.view().into_shape_with_order(dims).map_err(shape_err)?;
    let (n, c, h, w) = geo.x_shape();
    let mut dx = match want_dx {
        // Zeroed chunk by chunk by `backward`, on the pool.
        true => Some(try_written_output(
            OP,
            if x_last { (n, h, w, c) } else { (n, c, h, w) },
            plan.parallel,
            || format!("the input gradient of {}", geo.describe()),
        )?),
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
    let mut partials = backward(&ops, dy3, with_bias, dx2)?;
    let dx = dx.map(|dx| match x_last {
        true => dx.permuted_axes([0, 3, 1, 2]),
        false => dx,
    });
    let describe = || format!("the weight gradient of {}", geo.describe());
    let mut dw: Array2<f32> = try_zeros(OP, (o, kg), describe)?;
    let mut db = Array1::<f64>::zeros(o);
    for (_, pb) in &partials {
        db += pb;
    }
    match (
        plan.weight_grad == WeightGradAlgo::Direct,
        partials.split_first_mut(),
    ) {
        // The direct algorithm's partials come transposed, (K, O): summed into the first
        // (no other buffer: a second K x O allocation per call upset the allocator for
        // the ops after it) and transposed once.
        (true, Some(((first, _), rest))) => {
            sum_partials(&plan, first, rest);
            let src = first.as_slice().expect("a new partial is contiguous");
            let dst = dw.as_slice_mut().expect("a new array is contiguous");
            layout::transpose_add(plan.kernel, src, o, (kg, o), None, dst, kg);
        }
        _ => sum_partials(&plan, &mut dw, &partials),
    }
    // Summed: the partials came from the small buffers (`common::zeroed_partial`), and
    // their memory serves the next call's.
    for (p, _) in partials {
        crate::buffers::give_small(p.into_raw_vec_and_offset().0);
    }
    let dw = dw.into_shape_with_order(geo.w_shape()).map_err(shape_err)?;
    Ok((dx, dw, with_bias.then(|| db.mapv(|v| v as f32))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs taken from the buffer cache with a previous user's values (NaN here)
    /// come out bit for bit as fresh ones: every forward algorithm writes each element
    /// of `y`, and every input-gradient algorithm gets its chunk of `dx` zeroed.
    #[test]
    fn recycled_outputs_leave_no_trace() {
        let (n, c, h, w, o) = (8, 16, 32, 32, 16);
        let value = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 700.0;
        let x = Array4::from_shape_fn((n, c, h, w), |(a, b, i, j)| {
            value(((a * c + b) * h + i) * w + j)
        });
        let wt = Array4::from_shape_fn((o, c, 3, 3), |(a, b, i, j)| {
            value(((a * c + b) * 3 + i) * 3 + j + 13) / 10.0
        });
        let dy = x.mapv(|v| v * 0.5 - 0.1);
        let opts = Conv2dOptions::new().with_padding((1, 1));
        let geo = Conv2dGeometry::new(OP, [n, c, h, w], [o, c, 3, 3], &opts).unwrap();
        let auto = ConvPlan::choose(&geo, rayon::current_num_threads());
        let bits = |a: &Array4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let stale = || crate::buffers::give(vec![f32::NAN; n * c * h * w]);
        for &forward in ForwardAlgo::ALL.iter().filter(|a| a.supports(&geo)) {
            let plan = ConvPlan { forward, ..auto };
            let fresh = forward_impl(&geo, x.view(), wt.view(), None, plan).unwrap();
            stale();
            let recycled = forward_impl(&geo, x.view(), wt.view(), None, plan).unwrap();
            assert_eq!(bits(&recycled), bits(&fresh), "{forward:?}");
        }
        // Strides 2 and 4 too: pixel classes, some without taps at stride 4.
        for stride in [1, 2, 4] {
            let opts = opts.with_stride((stride, stride));
            let geo = Conv2dGeometry::new(OP, [n, c, h, w], [o, c, 3, 3], &opts).unwrap();
            let auto = ConvPlan::choose(&geo, rayon::current_num_threads());
            let dy = dy.slice(ndarray::s![.., .., ..geo.out_h, ..geo.out_w]);
            for &input_grad in InputGradAlgo::ALL.iter().filter(|a| a.supports(&geo)) {
                let plan = ConvPlan { input_grad, ..auto };
                let run = || backward_impl(&geo, x.view(), wt.view(), false, dy, plan, true);
                let fresh = run().unwrap().0.unwrap();
                stale();
                let recycled = run().unwrap().0.unwrap();
                assert_eq!(
                    bits(&recycled),
                    bits(&fresh),
                    "{input_grad:?} stride {stride}"
                );
            }
        }
    }
}
