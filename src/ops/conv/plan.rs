//! The conv plan: which algorithm runs each pass, and the knobs the algorithms take.
//! Data only: [`ConvPlan::choose`] (in `choose.rs`) picks one per shape, and the
//! dispatch in `conv/mod.rs` checks it against the geometry and runs it.

use crate::gemm::Kernel;

/// The algorithm of the forward pass, in [`ConvPlan::forward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardAlgo {
    /// No column matrix: the indirect GEMM kernel reads every tap in place from a
    /// zero-padded copy of the image, a tile of positions by output channels, then
    /// transposed to channel-major with the bias (`direct.rs`). Groups of 1 only.
    Direct,
    /// im2col + GEMM on tiles of at most [`ConvPlan::tile_cols`] output positions,
    /// lowered by rows or through the index map ([`ConvPlan::use_map`]) (`columns.rs`).
    /// Any geometry.
    Columns,
    /// A plain GEMM `y_n = W x_n` on the input itself, no copy for one image per tile
    /// (`pointwise.rs`). A 1x1 kernel, stride 1 and no padding only.
    Pointwise,
    /// Each image split into its stride-phase planes, read in place by the B-indirect
    /// kernel, output channel-major (`phase.rs`). Any geometry.
    Phase,
}

/// The algorithm of the input gradient `dx`, in [`ConvPlan::input_grad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputGradAlgo {
    /// A transposed conv per pixel class (stride phase), gathered by the indirect kernel
    /// from a zero-padded `dy` (`direct.rs`). Groups of 1 only.
    Direct,
    /// `dcols = W^T x dy` per tile, then col2im (by rows or through the index map)
    /// (`columns.rs`). Any geometry.
    Columns,
    /// `dx_n = W^T x dy_n` written straight into `dx` for one image per tile
    /// (`pointwise.rs`). A 1x1 kernel, stride 1 and no padding only.
    Pointwise,
    /// `dcols = W^T x dy` on the extended grid of the phase planes, scattered back by
    /// contiguous adds and merged into `dx` (`phase.rs`). Any geometry.
    Phase,
}

/// The algorithm of the weight gradient `dW`, in [`ConvPlan::weight_grad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightGradAlgo {
    /// `dW^T += xpad[taps] x dy^T`, the indirect kernel reading the taps in place from a
    /// zero-padded copy of the images (`direct.rs`). Groups of 1 only.
    Direct,
    /// `dW += dy x cols^T` per tile of im2col columns (`columns.rs`). Any geometry.
    Columns,
    /// `dW += dy x x^T`, the input itself as the columns (`pointwise.rs`). A 1x1 kernel,
    /// stride 1 and no padding only.
    Pointwise,
    /// `dW += dy_ext x cols_ext^T` on the extended column matrix of the phase planes,
    /// its discarded columns zeroed (`phase.rs`). Any geometry.
    Phase,
}

/// How one conv runs: an algorithm per pass and the knobs they take. From
/// [`ConvPlan::choose`]; tests and benchmarks build or edit one and run it through
/// [`super::conv2d_with_plan`] / [`super::conv2d_backward_with_plan`]. A plan that asks
/// an algorithm for a geometry it cannot run, or a kernel this CPU lacks, is
/// [`crate::Error::Config`], never a silent fallback.
///
/// Backward fusion: when [`ConvPlan::input_grad`] and [`ConvPlan::weight_grad`] name the
/// same column lowering (`Columns`, `Pointwise` or `Phase` both), each tile is lowered
/// once and serves both products; when both are `Direct`, the padded images and `dy`
/// are shared per kernel call. Otherwise each gradient runs on its own path, per
/// reduction chunk, one after the other. A backward without the input gradient
/// ([`super::conv2d_backward_params`]) runs the weight-gradient algorithm alone, with
/// the same result bit for bit.
///
/// The results of every plan are the same for any thread count; different plans may
/// differ in the last bits (different summation orders).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvPlan {
    /// The forward pass's algorithm.
    pub forward: ForwardAlgo,
    /// The input gradient's algorithm.
    pub input_grad: InputGradAlgo,
    /// The weight gradient's algorithm. The bias gradient is the same sum of `dy`
    /// whatever the algorithms.
    pub weight_grad: WeightGradAlgo,
    /// Most output positions per tile of the column algorithms (`Columns`,
    /// `Pointwise`; `Phase` backward counts extended positions), must be positive:
    /// images with fewer run several side by side in one GEMM, larger ones are cut
    /// into runs of columns (`Columns`, `Pointwise`; `Phase` always takes at least one
    /// whole image). Unused by `Direct` and the `Phase` forward.
    pub tile_cols: usize,
    /// Lower whole-image tiles of the `Columns` algorithms through an index map (built
    /// once per call, for images of at most 65 536 column entries) rather than by rows.
    /// Unused by the other algorithms.
    pub use_map: bool,
    /// Split the forward's image tiles, or the backward's reduction chunks, over the
    /// rayon pool; otherwise run them in order on the calling thread, each GEMM of the
    /// column algorithms then free to go parallel on its own when large. The tiles and
    /// chunks, and so the result, are the same either way.
    pub parallel: bool,
    /// The GEMM micro-kernel of every product of the plan, the indirect kernels of
    /// `Direct` and `Phase` included. Must be one this CPU supports
    /// ([`Kernel::is_supported`]).
    pub kernel: Kernel,
}
