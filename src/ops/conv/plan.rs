//! The conv plan: which algorithm runs each pass, and the knobs the algorithms take;
//! and the user's setting, [`ConvAlgorithm`], that decides how a plan is made.
//! Data only: [`ConvPlan::choose`] (in `choose.rs`) picks one per shape, `autotune.rs`
//! times the candidates, and the dispatch in `conv/mod.rs` checks a plan against the
//! geometry and runs it.

use crate::gemm::Kernel;

/// The algorithm of the forward pass, in [`ConvPlan::forward`].
///
/// Non-exhaustive: more algorithms may be added; iterate over
/// [`ForwardAlgo::ALL`] rather than listing the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// No GEMM: each input plane copied once into a zero-padded plane split by stride
    /// phase, then `y_row += w[tap] * xpad_run` per output channel, row and tap, the
    /// inner loop vectorised along the output row (`depthwise.rs`). One input channel
    /// per group only (`groups == C`, any channel multiplier `O / C`).
    Depthwise,
    /// Winograd F(2x2, 3x3): per block of 4x4 input tiles, the transformed input
    /// `B^T d B`, one GEMM per each of the 16 tile positions against the transformed
    /// filter `G g G^T` (over the input channels), then `A^T M A` with the bias
    /// (`winograd.rs`). 3x3 kernels of stride 1, dilation 1 and groups of 1 only (any
    /// padding).
    WinogradF2,
    /// Winograd F(4x4, 3x3): as [`ForwardAlgo::WinogradF2`] on 6x6 input tiles of 4x4
    /// outputs, 4x fewer multiplications than a direct 3x3 conv (2.25x for F2) with a
    /// larger rounding error (`examples/winograd_error.rs`). The same geometries.
    WinogradF4,
    /// The direct forward with every window clipped to the input: output positions
    /// grouped by which kernel rows and columns of their windows fall inside it, one
    /// indirect kernel call per group reading only those taps, in place (no padded copy,
    /// no multiply-add on padding) (`clipped.rs`). The direct path's values. Groups of 1
    /// only; forward only.
    Clipped,
}

/// The algorithm of the input gradient `dx`, in [`ConvPlan::input_grad`].
///
/// Non-exhaustive: more algorithms may be added; iterate over
/// [`InputGradAlgo::ALL`] rather than listing the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// No GEMM: `dxpad_run += w[tap] * dy_row` per output channel, row and tap into a
    /// zero-padded plane, whose interior is copied to `dx` (`depthwise.rs`). One input
    /// channel per group only.
    Depthwise,
    /// Winograd F(2x2, 3x3) on `dy` padded by `2 - p` (a larger padding crops) with
    /// the filter rotated by 180 degrees and transposed, as
    /// [`ForwardAlgo::WinogradF2`] (`winograd.rs`). The same geometries.
    WinogradF2,
    /// Winograd F(4x4, 3x3), as [`InputGradAlgo::WinogradF2`] on 6x6 tiles. The same
    /// geometries.
    WinogradF4,
}

/// The algorithm of the weight gradient `dW`, in [`ConvPlan::weight_grad`].
///
/// Non-exhaustive: more algorithms may be added; iterate over
/// [`WeightGradAlgo::ALL`] rather than listing the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// No GEMM: per input channel, `acc[tap] += dy_row * xpad_run` along each output
    /// row over the images and rows in a fixed order, each accumulator summed at the end
    /// (`depthwise.rs`). One input channel per group only.
    Depthwise,
    /// Winograd F(2x2, 3x3) transposed: per block of tiles, the transformed input
    /// `B^T d B` (as the forward) and the transformed output gradient `A dy A^T`, one
    /// GEMM per each of the 16 tile positions summing their products over the tiles,
    /// then `G^T . G` in f64 back to the 3x3 taps (`winograd.rs`). The geometries of
    /// [`ForwardAlgo::WinogradF2`].
    WinogradF2,
    /// Winograd F(4x4, 3x3) transposed, as [`WeightGradAlgo::WinogradF2`] on 6x6 tiles
    /// (36 GEMMs). The same geometries.
    WinogradF4,
}

/// How one conv runs: an algorithm per pass and the knobs they take.
///
/// The ops make one per call from the options' [`ConvAlgorithm`]:
/// [`ConvPlan::choose`] for [`ConvAlgorithm::Auto`], that plan with some passes replaced
/// ([`ConvAlgos::apply_to`]) for [`ConvAlgorithm::Fixed`], a timed pick for
/// [`ConvAlgorithm::Autotune`] ([`super::autotuned_plan`] tells which). Benchmarks and
/// tests that want every knob (tile size, index map, parallel split) build or edit a
/// plan and run it through [`super::conv2d_with_plan`] /
/// [`super::conv2d_backward_with_plan`]. A plan that asks an algorithm for a geometry it
/// cannot run, or a kernel this CPU lacks, is [`crate::Error::Config`] naming the
/// algorithm and why, never a silent fallback.
///
/// ```
/// use convinit::ops::{conv2d, conv2d_with_plan, Conv2dGeometry, Conv2dOptions, ConvPlan, ForwardAlgo};
/// use ndarray::Array4;
///
/// let x = Array4::<f32>::ones((2, 8, 10, 10));
/// let w = Array4::<f32>::ones((4, 8, 3, 3));
/// let opts = Conv2dOptions::new().with_padding((1, 1));
/// let geo = Conv2dGeometry::new("example", [2, 8, 10, 10], [4, 8, 3, 3], &opts)?;
/// let auto = ConvPlan::choose(&geo, rayon::current_num_threads());
/// // What `conv2d` runs, bit for bit.
/// assert_eq!(conv2d_with_plan(x.view(), w.view(), None, &opts, auto)?,
///            conv2d(x.view(), w.view(), None, &opts)?);
/// // The im2col forward, in tiles of 64 output positions.
/// let columns = ConvPlan { forward: ForwardAlgo::Columns, tile_cols: 64, ..auto };
/// let y = conv2d_with_plan(x.view(), w.view(), None, &opts, columns)?;
/// assert_eq!(y[[1, 3, 5, 5]], 72.0);
/// # Ok::<(), convinit::Error>(())
/// ```
///
/// The fields are public so a plan can be built with struct update syntax
/// (`ConvPlan { forward, ..auto }`); new algorithms come as new variants of the pass
/// enums, not as new fields.
///
/// Backward fusion: when [`ConvPlan::input_grad`] and [`ConvPlan::weight_grad`] name the
/// same column lowering (`Columns`, `Pointwise` or `Phase` both), each tile is lowered
/// once and serves both products; when both are `Direct`, the padded images and `dy`
/// are shared per kernel call; when both are `Depthwise`, one pass per input channel
/// computes both. Otherwise each gradient runs on its own path, per
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
    /// whole image). Unused by `Direct`, `Depthwise`, the Winograd algorithms (whose
    /// tasks are sized by their GEMMs' operands) and the `Phase` forward.
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
    /// `Direct` and `Phase` included; `Depthwise`, which has no GEMM, compiles its loops
    /// for the same instruction set (with the same results on each). Must be one this
    /// CPU supports ([`Kernel::is_supported`]).
    pub kernel: Kernel,
}

/// The lowering an algorithm of any pass belongs to: one name, and one rule for the
/// geometries it runs, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Direct,
    Columns,
    Pointwise,
    Phase,
    Depthwise,
    WinogradF2,
    WinogradF4,
    Clipped,
}

impl Family {
    pub(super) fn name(self) -> &'static str {
        match self {
            Family::Direct => "direct",
            Family::Columns => "columns",
            Family::Pointwise => "pointwise",
            Family::Phase => "phase",
            Family::Depthwise => "depthwise",
            Family::WinogradF2 => "winograd2",
            Family::WinogradF4 => "winograd4",
            Family::Clipped => "clipped",
        }
    }
}

impl ForwardAlgo {
    /// Every forward algorithm, in the order benchmarks list them.
    pub const ALL: &'static [ForwardAlgo] = &[
        ForwardAlgo::Direct,
        ForwardAlgo::Clipped,
        ForwardAlgo::Columns,
        ForwardAlgo::Pointwise,
        ForwardAlgo::Phase,
        ForwardAlgo::Depthwise,
        ForwardAlgo::WinogradF2,
        ForwardAlgo::WinogradF4,
    ];

    /// The lowering this algorithm belongs to.
    pub(super) fn family(self) -> Family {
        match self {
            ForwardAlgo::Direct => Family::Direct,
            ForwardAlgo::Columns => Family::Columns,
            ForwardAlgo::Pointwise => Family::Pointwise,
            ForwardAlgo::Phase => Family::Phase,
            ForwardAlgo::Depthwise => Family::Depthwise,
            ForwardAlgo::WinogradF2 => Family::WinogradF2,
            ForwardAlgo::WinogradF4 => Family::WinogradF4,
            ForwardAlgo::Clipped => Family::Clipped,
        }
    }

    /// The algorithm's lower-case name (`"direct"`, `"clipped"`, `"columns"`,
    /// `"pointwise"`, `"phase"`, `"depthwise"`, `"winograd2"`, `"winograd4"`): the same
    /// word names the same lowering in every pass enum (`"clipped"` is a forward
    /// only).
    pub fn name(self) -> &'static str {
        self.family().name()
    }

    /// The algorithm named `name` ([`ForwardAlgo::name`], any case), if there is one.
    pub fn from_name(name: &str) -> Option<ForwardAlgo> {
        ForwardAlgo::ALL
            .iter()
            .copied()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }
}

impl InputGradAlgo {
    /// Every input-gradient algorithm, in the order benchmarks list them.
    pub const ALL: &'static [InputGradAlgo] = &[
        InputGradAlgo::Direct,
        InputGradAlgo::Columns,
        InputGradAlgo::Pointwise,
        InputGradAlgo::Phase,
        InputGradAlgo::Depthwise,
        InputGradAlgo::WinogradF2,
        InputGradAlgo::WinogradF4,
    ];

    /// The lowering this algorithm belongs to.
    pub(super) fn family(self) -> Family {
        match self {
            InputGradAlgo::Direct => Family::Direct,
            InputGradAlgo::Columns => Family::Columns,
            InputGradAlgo::Pointwise => Family::Pointwise,
            InputGradAlgo::Phase => Family::Phase,
            InputGradAlgo::Depthwise => Family::Depthwise,
            InputGradAlgo::WinogradF2 => Family::WinogradF2,
            InputGradAlgo::WinogradF4 => Family::WinogradF4,
        }
    }

    /// The algorithm's lower-case name, as [`ForwardAlgo::name`].
    pub fn name(self) -> &'static str {
        self.family().name()
    }

    /// The algorithm named `name` ([`InputGradAlgo::name`], any case), if there is one.
    pub fn from_name(name: &str) -> Option<InputGradAlgo> {
        InputGradAlgo::ALL
            .iter()
            .copied()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }
}

impl WeightGradAlgo {
    /// Every weight-gradient algorithm, in the order benchmarks list them.
    pub const ALL: &'static [WeightGradAlgo] = &[
        WeightGradAlgo::Direct,
        WeightGradAlgo::Columns,
        WeightGradAlgo::Pointwise,
        WeightGradAlgo::Phase,
        WeightGradAlgo::Depthwise,
        WeightGradAlgo::WinogradF2,
        WeightGradAlgo::WinogradF4,
    ];

    /// The lowering this algorithm belongs to.
    pub(super) fn family(self) -> Family {
        match self {
            WeightGradAlgo::Direct => Family::Direct,
            WeightGradAlgo::Columns => Family::Columns,
            WeightGradAlgo::Pointwise => Family::Pointwise,
            WeightGradAlgo::Phase => Family::Phase,
            WeightGradAlgo::Depthwise => Family::Depthwise,
            WeightGradAlgo::WinogradF2 => Family::WinogradF2,
            WeightGradAlgo::WinogradF4 => Family::WinogradF4,
        }
    }

    /// The algorithm's lower-case name, as [`ForwardAlgo::name`].
    pub fn name(self) -> &'static str {
        self.family().name()
    }

    /// The algorithm named `name` ([`WeightGradAlgo::name`], any case), if there is one.
    pub fn from_name(name: &str) -> Option<WeightGradAlgo> {
        WeightGradAlgo::ALL
            .iter()
            .copied()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// How a conv picks its algorithms: the `algorithm` setting of
/// [`Conv2dOptions`](crate::ops::Conv2dOptions) and
/// [`Conv2dConfig`](crate::nn::Conv2dConfig), [`ConvAlgorithm::Auto`] by default.
///
/// ```
/// use convinit::nn::Conv2dConfig;
/// use convinit::ops::{conv2d, Conv2dOptions, ConvAlgorithm, ConvAlgos, ForwardAlgo};
/// use ndarray::Array4;
///
/// // Force the im2col forward; the backward passes stay on auto's choice.
/// let columns = ConvAlgorithm::Fixed(ConvAlgos::new().with_forward(ForwardAlgo::Columns));
/// let opts = Conv2dOptions::new().with_padding((1, 1)).with_algorithm(columns);
/// let x = Array4::<f32>::ones((1, 3, 6, 6));
/// let w = Array4::<f32>::ones((2, 3, 3, 3));
/// assert_eq!(conv2d(x.view(), w.view(), None, &opts)?[[0, 1, 2, 2]], 27.0);
///
/// // The same setting on a layer; or let the first call time every candidate.
/// let cfg = Conv2dConfig::new(3, 2, (3, 3)).with_algorithm(ConvAlgorithm::Autotune);
/// # let _ = cfg;
/// # Ok::<(), convinit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ConvAlgorithm {
    /// [`ConvPlan::choose`]: a pure function of the shape and the thread count, measured
    /// on the project's machines. The same inputs always give the same bits.
    #[default]
    Auto,
    /// As `torch.backends.cudnn.benchmark = True`: the first call for a geometry, a
    /// thread count and a pass ([`ConvPass`](crate::ops::ConvPass)) runs every algorithm
    /// that can run the geometry on the call's own inputs, a few times each within about
    /// a second (at least once each), and keeps the fastest in a process-wide cache (auto's
    /// own choice stays unless another beats it by more than 3%: tuning runs are noisy);
    /// later calls run the cached plan ([`autotuned_plan`](crate::ops::autotuned_plan)
    /// tells which). The first call returns the result of the winning run.
    ///
    /// Off by default because the choice depends on timing: two runs of a program, or
    /// two processes, may pick different algorithms, whose results may differ in the
    /// last bits (different summation orders). Each algorithm is still bit-identical at
    /// any thread count. The first call costs several times a plain one.
    Autotune,
    /// The passes named in [`ConvAlgos`] run those algorithms; the others take auto's
    /// choice. An algorithm that cannot run a geometry (the direct path on a grouped
    /// conv, the pointwise path on a 3x3 kernel), or a kernel this CPU lacks, is
    /// [`crate::Error::Config`] naming it and why, never a silent fallback. A backward
    /// call checks the forward algorithm too, so one setting either runs every pass of
    /// a geometry or none.
    Fixed(ConvAlgos),
}

/// The algorithms of [`ConvAlgorithm::Fixed`]: per pass, `Some` to force one, `None` to
/// keep auto's choice; and optionally the GEMM kernel.
///
/// Non-exhaustive: build it with [`ConvAlgos::new`] and the `with_` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct ConvAlgos {
    /// The forward pass's algorithm, or `None` for auto's.
    pub forward: Option<ForwardAlgo>,
    /// The input gradient's algorithm, or `None` for auto's.
    pub input_grad: Option<InputGradAlgo>,
    /// The weight gradient's algorithm, or `None` for auto's.
    pub weight_grad: Option<WeightGradAlgo>,
    /// The GEMM micro-kernel of every pass, or `None` for [`Kernel::selected`].
    pub kernel: Option<Kernel>,
}

impl ConvAlgos {
    /// Nothing forced: every pass on auto's choice (the same plan as
    /// [`ConvAlgorithm::Auto`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Forces the forward pass's algorithm.
    pub fn with_forward(mut self, algo: ForwardAlgo) -> Self {
        self.forward = Some(algo);
        self
    }

    /// Forces the input gradient's algorithm.
    pub fn with_input_grad(mut self, algo: InputGradAlgo) -> Self {
        self.input_grad = Some(algo);
        self
    }

    /// Forces the weight gradient's algorithm.
    pub fn with_weight_grad(mut self, algo: WeightGradAlgo) -> Self {
        self.weight_grad = Some(algo);
        self
    }

    /// Forces the GEMM micro-kernel (one this CPU supports, [`Kernel::is_supported`]).
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// Every pass that has an algorithm called `name` ([`ForwardAlgo::name`], e.g.
    /// `"columns"`) forced to it, the others left to auto; `None` when no pass has one.
    ///
    /// ```
    /// use convinit::ops::{ConvAlgos, ForwardAlgo, InputGradAlgo, WeightGradAlgo};
    /// let phase = ConvAlgos::named("phase").unwrap();
    /// assert_eq!(phase.forward, Some(ForwardAlgo::Phase));
    /// assert_eq!(phase.input_grad, Some(InputGradAlgo::Phase));
    /// assert_eq!(phase.weight_grad, Some(WeightGradAlgo::Phase));
    /// assert!(ConvAlgos::named("fft").is_none());
    /// ```
    pub fn named(name: &str) -> Option<Self> {
        let algos = ConvAlgos {
            forward: ForwardAlgo::from_name(name),
            input_grad: InputGradAlgo::from_name(name),
            weight_grad: WeightGradAlgo::from_name(name),
            kernel: None,
        };
        (algos != ConvAlgos::default()).then_some(algos)
    }

    /// `plan` with the forced passes and kernel replaced, its other passes and knobs
    /// kept: what [`ConvAlgorithm::Fixed`] runs, from `plan` =
    /// [`ConvPlan::choose`]. Does not check the result against a geometry (the ops do).
    pub fn apply_to(&self, plan: ConvPlan) -> ConvPlan {
        ConvPlan {
            forward: self.forward.unwrap_or(plan.forward),
            input_grad: self.input_grad.unwrap_or(plan.input_grad),
            weight_grad: self.weight_grad.unwrap_or(plan.weight_grad),
            kernel: self.kernel.unwrap_or(plan.kernel),
            ..plan
        }
    }
}
