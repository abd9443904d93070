//! Convolution options and geometry: the one place the output size is computed.

use crate::error::{Error, Result};
use crate::limits::checked_len;

/// Stride, padding, dilation and groups of a 2-d convolution, each per dimension `(h, w)`.
///
/// [`Default`] gives PyTorch's `nn.Conv2d` defaults: stride 1, padding 0, dilation 1,
/// groups 1.
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
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
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

    /// Checks what can be checked without shapes: positive stride, dilation and groups.
    ///
    /// # Errors
    /// [`Error::Config`] naming `op` when the stride, dilation or groups is zero.
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

    /// The polyphase layout of one image for the phase lowering (see [`PhaseGeometry`]).
    pub(crate) fn phase(&self) -> PhaseGeometry {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.options.stride;
        let (dh, dw) = self.options.dilation;
        let rows = self.out_h + (kh - 1) * dh / sh;
        let cols = self.out_w + (kw - 1) * dw / sw;
        // Saturating: a far-padded or far-dilated image may have planes larger than
        // memory; the chooser then never picks the phase path, and the path's buffer
        // sizes fail as too large to allocate.
        PhaseGeometry {
            rows,
            cols,
            plane: rows.saturating_mul(cols).saturating_add(cols - self.out_w),
            ext: self.out_h.saturating_mul(cols),
        }
    }

    /// Where tap `(c, i, j)` starts in the phase planes of an image: row
    /// `(c * kh + i) * kw + j` of the extended column matrix is the `ext` floats from
    /// there.
    pub(crate) fn phase_tap(&self, pg: &PhaseGeometry, c: usize, i: usize, j: usize) -> usize {
        let (sh, sw) = self.options.stride;
        let (dh, dw) = self.options.dilation;
        let (py, qy) = ((i * dh) % sh, (i * dh) / sh);
        let (px, qx) = ((j * dw) % sw, (j * dw) / sw);
        ((c * sh + py) * sw + px) * pg.plane + qy * pg.cols + qx
    }
}

/// The direct path's indexing of one image: the padded region every window reads, `(C,
/// rows, cols)` row-major, the corner of each output position's window in it and the
/// offset of each tap from the corner. Input `x` of output `(oy, ox)` and tap
/// `(c, i, j)` is `padded[bases[oy * out_w + ox] + offs[(c * kh + i) * kw + j]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirectIndex {
    /// Rows of the padded region: `(out_h - 1) * sh + (kh - 1) * dh + 1`.
    pub rows: usize,
    /// Columns of the padded region: `(out_w - 1) * sw + (kw - 1) * dw + 1`.
    pub cols: usize,
    /// Window corner of each output position.
    pub bases: Vec<usize>,
    /// Offset of each tap from its window's corner.
    pub offs: Vec<usize>,
}

impl DirectIndex {
    /// Whether the padded region is the input itself (no padding, no unread rows or
    /// columns), so no copy is needed.
    pub(crate) fn is_input(&self, geo: &Conv2dGeometry) -> bool {
        self.rows == geo.in_h && self.cols == geo.in_w && geo.options.padding == (0, 0)
    }
}

impl Conv2dGeometry {
    /// The indexing of the direct path (groups of 1).
    ///
    /// # Errors
    /// [`Error::Alloc`] naming `op` when the padded region of one image overflows.
    pub(crate) fn direct_index(&self, op: &'static str) -> Result<DirectIndex> {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.options.stride;
        let (dh, dw) = self.options.dilation;
        let rows = (self.out_h - 1) * sh + (kh - 1) * dh + 1;
        let cols = (self.out_w - 1) * sw + (kw - 1) * dw + 1;
        // Every offset below is within one padded image.
        checked_len(
            op,
            &[self.in_channels, rows, cols, size_of::<f32>()],
            || format!("a padded image of {}", self.describe()),
        )?;
        let bases = (0..self.out_h)
            .flat_map(|oy| (0..self.out_w).map(move |ox| oy * sh * cols + ox * sw))
            .collect();
        let mut offs = Vec::with_capacity(self.col_rows());
        for c in 0..self.in_channels {
            for i in 0..kh {
                for j in 0..kw {
                    offs.push((c * rows + i * dh) * cols + j * dw);
                }
            }
        }
        Ok(DirectIndex {
            rows,
            cols,
            bases,
            offs,
        })
    }
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
pub(crate) struct TransposeIndex {
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
pub(crate) struct TransposeClass {
    /// The class's pixels, as offsets `iy * W + ix` in one channel of the input.
    pub pixels: Vec<usize>,
    /// Each pixel's window corner in the padded `dy` region of one channel.
    pub bases: Vec<usize>,
    /// The taps `(i, j)` of the class.
    pub taps: Vec<(usize, usize)>,
    /// Each tap's offset from a window corner.
    pub tap_offs: Vec<usize>,
}

impl Conv2dGeometry {
    /// The indexing of the direct path's input gradient (groups of 1).
    ///
    /// # Errors
    /// [`Error::Alloc`] naming `op` when the padded `dy` of one image overflows.
    pub(crate) fn transpose_index(&self, op: &'static str) -> Result<TransposeIndex> {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.options.stride;
        let (ph, pw) = self.options.padding;
        let (dh, dw) = self.options.dilation;
        let (ty, tx) = ((kh - 1) * dh / sh, (kw - 1) * dw / sw);
        // Highest window row / column any real pixel uses, and room for all of dy.
        let qy_max = (ph + self.in_h).saturating_sub(1) / sh;
        let qx_max = (pw + self.in_w).saturating_sub(1) / sw;
        let rows = (qy_max + 1).max(self.out_h) + ty;
        let cols = (qx_max + 1).max(self.out_w) + tx;
        // Every offset below is within one padded `dy`.
        checked_len(
            op,
            &[self.out_channels, rows, cols, size_of::<f32>()],
            || format!("the padded grad_out of {}", self.describe()),
        )?;
        // The classes that hold pixels, in order: every class when the input is at least
        // a stride wide, else only its pixels' (a stride far wider than the input has
        // more classes than memory, all but a few empty).
        let classes_of = |s: usize, p: usize, n: usize| {
            let mut r: Vec<usize> = (0..n.min(s)).map(|i| (i + p) % s).collect();
            r.sort_unstable();
            r
        };
        let (ry_all, rx_all) = (classes_of(sh, ph, self.in_h), classes_of(sw, pw, self.in_w));
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
                for iy in (0..self.in_h).filter(|iy| (iy + ph) % sh == ry) {
                    for ix in (0..self.in_w).filter(|ix| (ix + pw) % sw == rx) {
                        pixels.push(iy * self.in_w + ix);
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

/// The polyphase ("space to depth") layout of one padded input image, which turns any
/// strided, dilated, padded conv into shifted contiguous reads.
///
/// Channel `c` of the padded image is split into `sh * sw` planes, plane `(py, px)`
/// holding the padded pixels `(r * sh + py, q * sw + px)` at `(r, q)`, for `r < rows`
/// and `q < cols`. Tap `(i, j)` of output `(oy, ox)` reads padded pixel
/// `(oy * sh + i * dh, ox * sw + j * dw)`, which is plane
/// `((i * dh) % sh, (j * dw) % sw)` at `(oy + (i * dh) / sh, ox + (j * dw) / sw)`. So on
/// the *extended* output grid `e = oy * cols + ox` (`ox < cols`, the columns from
/// `out_w` on are discarded), each im2col row is one contiguous run of `ext` floats of a
/// plane ([`Conv2dGeometry::phase_tap`]). Planes are `plane` floats apart: the last
/// discarded columns read up to `cols - out_w` floats past a plane's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PhaseGeometry {
    /// Rows of a plane: `out_h + (kh - 1) * dh / sh`.
    pub rows: usize,
    /// Columns of a plane, and of the extended output grid: `out_w + (kw - 1) * dw / sw`.
    pub cols: usize,
    /// Floats from one plane to the next: `rows * cols + cols - out_w`.
    pub plane: usize,
    /// Extended output positions of one image: `out_h * cols`.
    pub ext: usize,
}
