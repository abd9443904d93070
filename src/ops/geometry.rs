//! Convolution options and geometry: the one place the output size is computed.

use super::conv::ConvAlgorithm;
use crate::error::{Error, Result};

/// Stride, padding, dilation and groups of a 2-d convolution, each per dimension `(h, w)`,
/// and how its algorithms are picked.
///
/// [`Default`] gives PyTorch's `nn.Conv2d` defaults: stride 1, padding 0, dilation 1,
/// groups 1; and [`ConvAlgorithm::Auto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dOptions {
    /// Step between neighbouring output positions, `(h, w)`; must be positive. Default `(1, 1)`.
    pub stride: (usize, usize),
    /// Zeros added on both sides of the input, `(h, w)`. Default `(0, 0)`.
    pub padding: (usize, usize),
    /// Spacing between kernel taps, `(h, w)`; must be positive. Default `(1, 1)`.
    pub dilation: (usize, usize),
    /// Number of channel groups; must divide both channel counts. Default `1`.
    pub groups: usize,
    /// How the conv picks its algorithm per pass. Default [`ConvAlgorithm::Auto`]; the
    /// other settings change which algorithm runs, never what is computed (results may
    /// differ in the last bits).
    pub algorithm: ConvAlgorithm,
    /// The memory layout of [`crate::ops::conv2d`]'s output. Default
    /// [`MemoryFormat::Contiguous`]. The input may be in either layout whatever this
    /// says, and an input gradient comes back in its input's layout.
    pub memory_format: MemoryFormat,
}

/// How an `(N, C, H, W)` array lies in memory, as PyTorch's `torch.memory_format`.
///
/// Either way the array's shape is `(N, C, H, W)`; only its strides differ. Between
/// conv layers, [`MemoryFormat::ChannelsLast`] spares the direct conv path its
/// transposes: its kernels produce and read position-major tiles (all channels of a
/// pixel side by side), which are then the tensors themselves. Element-wise layers keep
/// the layout they are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MemoryFormat {
    /// Row-major `(N, C, H, W)` (`torch.contiguous_format`): each channel's plane
    /// contiguous.
    #[default]
    Contiguous,
    /// `(N, H, W, C)` in memory, seen as `(N, C, H, W)` (`torch.channels_last`): strides
    /// `(H * W * C, 1, W * C, C)`.
    ChannelsLast,
}

impl MemoryFormat {
    /// The layout of `x`: [`MemoryFormat::ChannelsLast`] when its strides are exactly
    /// those of channels-last and not also row-major (with one channel, or one pixel,
    /// the two coincide, and it counts as [`MemoryFormat::Contiguous`]); else
    /// [`MemoryFormat::Contiguous`], whatever its strides.
    pub fn of<S: ndarray::Data<Elem = f32>>(
        x: &ndarray::ArrayBase<S, ndarray::Ix4>,
    ) -> MemoryFormat {
        if !x.is_standard_layout() && x.view().permuted_axes([0, 2, 3, 1]).is_standard_layout() {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        }
    }
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            algorithm: ConvAlgorithm::Auto,
            memory_format: MemoryFormat::Contiguous,
        }
    }
}

impl Conv2dOptions {
    /// PyTorch's defaults (same as [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the stride `(h, w)`.
    pub fn with_stride(mut self, stride: (usize, usize)) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the padding `(h, w)`.
    pub fn with_padding(mut self, padding: (usize, usize)) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the dilation `(h, w)`.
    pub fn with_dilation(mut self, dilation: (usize, usize)) -> Self {
        self.dilation = dilation;
        self
    }

    /// Sets the number of groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Sets how the algorithms are picked ([`ConvAlgorithm`]).
    pub fn with_algorithm(mut self, algorithm: ConvAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets the memory layout of the output ([`MemoryFormat`]).
    pub fn with_memory_format(mut self, memory_format: MemoryFormat) -> Self {
        self.memory_format = memory_format;
        self
    }

    /// Checks what can be checked without shapes: positive stride, dilation and groups,
    /// and a GEMM kernel forced by [`ConvAlgorithm::Fixed`] that this CPU runs (whether
    /// a forced algorithm runs the geometry is checked by the call).
    ///
    /// # Errors
    /// [`Error::Config`] naming `op` when the stride, dilation or groups is zero, or the
    /// forced kernel is not supported here.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.stride.0 == 0 || self.stride.1 == 0 {
            return Err(Error::config(
                op,
                format!("stride must be positive, got {:?}", self.stride),
            ));
        }
        if self.dilation.0 == 0 || self.dilation.1 == 0 {
            return Err(Error::config(
                op,
                format!("dilation must be positive, got {:?}", self.dilation),
            ));
        }
        if self.groups == 0 {
            return Err(Error::config(op, "groups must be positive, got 0"));
        }
        if let ConvAlgorithm::Fixed(algos) = &self.algorithm
            && let Some(kernel) = algos.kernel
            && !kernel.is_supported()
        {
            return Err(Error::config(
                op,
                format!(
                    "the algorithm setting forces the {} GEMM kernel, which this CPU does \
                     not support",
                    kernel.name()
                ),
            ));
        }
        Ok(())
    }
}

/// Output size of a convolution along one dimension, as PyTorch:
/// `(input + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1`.
///
/// Returns `None` when the dilated kernel does not fit in the padded input, when
/// `kernel`, `stride` or `dilation` is zero, or when the arithmetic overflows.
///
/// # Examples
/// ```
/// use convinit::ops::conv_out_size;
/// assert_eq!(conv_out_size(28, 5, 2, 2, 1), Some(14));
/// assert_eq!(conv_out_size(3, 5, 1, 0, 1), None);
/// ```
pub fn conv_out_size(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let padded = padding.checked_mul(2)?.checked_add(input)?;
    let extent = dilation.checked_mul(kernel - 1)?.checked_add(1)?;
    let span = padded.checked_sub(extent)?;
    Some(span / stride + 1)
}

/// The validated shapes of one convolution: input `(N, C, H, W)`, weight
/// `(O, C / groups, kh, kw)`, output `(N, O, out_h, out_w)` and the options.
///
/// Built only by [`Conv2dGeometry::new`], which checks that everything fits, so holding
/// one means the convolution is well defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Conv2dGeometry {
    /// Batch size `N`.
    pub batch: usize,
    /// Input channels `C`.
    pub in_channels: usize,
    /// Input height `H`.
    pub in_h: usize,
    /// Input width `W`.
    pub in_w: usize,
    /// Output channels `O`.
    pub out_channels: usize,
    /// Kernel size `(kh, kw)`.
    pub kernel: (usize, usize),
    /// Output height, from [`conv_out_size`].
    pub out_h: usize,
    /// Output width, from [`conv_out_size`].
    pub out_w: usize,
    /// Stride, padding, dilation and groups.
    pub options: Conv2dOptions,
}

impl Conv2dGeometry {
    /// Validates an input shape and a weight shape against the options.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero stride, dilation, groups or kernel size, or groups not
    /// dividing the channel counts; [`Error::Shape`] when the weight's channels do not
    /// match `C / groups` or the dilated kernel is larger than the padded input. The
    /// message names `op` and the shapes.
    pub fn new(
        op: &'static str,
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        options: &Conv2dOptions,
    ) -> Result<Self> {
        options.validate(op)?;
        let [n, c, h, w] = x_shape;
        let [o, cg, kh, kw] = w_shape;
        let g = options.groups;
        if kh == 0 || kw == 0 {
            return Err(Error::config(
                op,
                format!("kernel size must be positive, weight is {w_shape:?}"),
            ));
        }
        if c % g != 0 || o % g != 0 {
            return Err(Error::config(
                op,
                format!(
                    "groups {g} must divide both the input channels of x {x_shape:?} and \
                     the output channels of weight {w_shape:?}"
                ),
            ));
        }
        if cg != c / g {
            return Err(Error::shape(
                op,
                format!(
                    "x {x_shape:?} has {c} channels, so weight {w_shape:?} with groups {g} \
                     should have {} input channels per group, not {cg}",
                    c / g
                ),
            ));
        }
        let (sh, sw) = options.stride;
        let (ph, pw) = options.padding;
        let (dh, dw) = options.dilation;
        let out = |input, k, s, p, d, axis: &str| {
            conv_out_size(input, k, s, p, d).ok_or_else(|| {
                Error::shape(
                    op,
                    format!(
                        "kernel {w_shape:?} with dilation {:?} does not fit the {axis} of x \
                         {x_shape:?} padded by {:?}",
                        options.dilation, options.padding
                    ),
                )
            })
        };
        let out_h = out(h, kh, sh, ph, dh, "height")?;
        let out_w = out(w, kw, sw, pw, dw, "width")?;
        // Sizes of the buffers the op will allocate must not overflow (each on its own
        // too: a zero batch or channel count must not hide an overflowing image).
        let fits = [
            out_h.checked_mul(out_w),
            o.checked_mul(out_h).and_then(|v| v.checked_mul(out_w)),
            n.checked_mul(o)
                .and_then(|v| v.checked_mul(out_h))
                .and_then(|v| v.checked_mul(out_w)),
            c.checked_mul(kh)
                .and_then(|v| v.checked_mul(kw))
                .and_then(|v| v.checked_mul(out_h))
                .and_then(|v| v.checked_mul(out_w)),
        ];
        // In bytes, within `isize::MAX`: a larger `Vec` panics ("capacity overflow")
        // instead of failing to allocate.
        let allocatable = |elems: &Option<usize>| {
            elems
                .and_then(|e| e.checked_mul(std::mem::size_of::<f32>()))
                .is_some_and(|bytes| bytes <= isize::MAX as usize)
        };
        if !fits.iter().all(allocatable) {
            return Err(Error::shape(
                op,
                format!(
                    "x {x_shape:?} and weight {w_shape:?} with padding {:?} give a buffer too \
                     large to allocate",
                    options.padding
                ),
            ));
        }
        Ok(Conv2dGeometry {
            batch: n,
            in_channels: c,
            in_h: h,
            in_w: w,
            out_channels: o,
            kernel: (kh, kw),
            out_h,
            out_w,
            options: *options,
        })
    }

    /// The shapes and options, for error messages: `x [..], weight [..], stride (..),
    /// padding (..), dilation (..), groups g`.
    pub(crate) fn describe(&self) -> String {
        let o = &self.options;
        let (n, c, h, w) = self.x_shape();
        let (wo, wc, kh, kw) = self.w_shape();
        format!(
            "x {:?}, weight {:?}, stride {:?}, padding {:?}, dilation {:?}, groups {}",
            [n, c, h, w],
            [wo, wc, kh, kw],
            o.stride,
            o.padding,
            o.dilation,
            o.groups
        )
    }

    /// Input shape `(N, C, H, W)`.
    pub fn x_shape(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.in_channels, self.in_h, self.in_w)
    }

    /// Weight shape `(O, C / groups, kh, kw)`.
    pub fn w_shape(&self) -> (usize, usize, usize, usize) {
        (
            self.out_channels,
            self.in_channels / self.options.groups,
            self.kernel.0,
            self.kernel.1,
        )
    }

    /// Output shape `(N, O, out_h, out_w)`.
    pub fn y_shape(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.out_channels, self.out_h, self.out_w)
    }

    /// Rows of the im2col matrix of one image: `C * kh * kw`.
    pub(crate) fn col_rows(&self) -> usize {
        self.in_channels * self.kernel.0 * self.kernel.1
    }

    /// Columns of the im2col matrix of one image: `out_h * out_w`.
    pub(crate) fn col_cols(&self) -> usize {
        self.out_h * self.out_w
    }

    /// For each output row (`rows`) or column (`!rows`), the kernel rows (columns) whose
    /// taps read inside the input rather than its padding: `lo..hi` with `i * s + k * d`
    /// in `p..p + H` for every `k` in it (an empty `0..0` when the whole window lies in
    /// the padding).
    pub(crate) fn taps_inside(&self, rows: bool) -> Vec<std::ops::Range<usize>> {
        let o = &self.options;
        let (out, input, k, s, p, d) = match rows {
            true => (
                self.out_h,
                self.in_h,
                self.kernel.0,
                o.stride.0,
                o.padding.0,
                o.dilation.0,
            ),
            false => (
                self.out_w,
                self.in_w,
                self.kernel.1,
                o.stride.1,
                o.padding.1,
                o.dilation.1,
            ),
        };
        (0..out)
            .map(|i| {
                // Tap `t` reads padded position `i * s + t * d`, inside when it is in
                // `p..p + input`.
                let start = i * s;
                let lo = p.saturating_sub(start).div_ceil(d);
                let hi = match (p + input).checked_sub(start + 1) {
                    Some(last) => (last / d + 1).min(k),
                    None => 0,
                };
                if lo < hi { lo..hi } else { 0..0 }
            })
            .collect()
    }
}
