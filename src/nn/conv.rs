//! The `Conv2d` layer: owns its weight, bias and their gradients.

use std::any::Any;

use ndarray::{ArcArray, ArcArrayD, Array1, Array4, ArrayD, ArrayView4, ArrayViewD, Ix4};
use rand::Rng;

use super::{
    Layer, Param, ParamMut, check_bias, check_grad_shape, check_param_shape, not_run, to_rank,
    weight_bias_params, weight_bias_params_mut,
};
use crate::error::{Error, Result};
use crate::init::Init;
use crate::limits::try_to_owned;
use crate::ops::{
    Conv2dGeometry, Conv2dOptions, ConvAlgorithm, MemoryFormat, conv2d, conv2d_backward,
    conv2d_backward_params,
};

const OP: &str = "Conv2d";

/// Configuration of a [`Conv2d`], with PyTorch's `nn.Conv2d` defaults.
///
/// ```
/// use convinit::nn::Conv2dConfig;
/// let cfg = Conv2dConfig::new(1, 8, (5, 5)).with_stride((2, 2)).with_padding((2, 2));
/// assert_eq!(cfg.weight_shape(), (8, 1, 5, 5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dConfig {
    /// Input channels `C`.
    pub in_channels: usize,
    /// Output channels `O`.
    pub out_channels: usize,
    /// Kernel size `(kh, kw)`.
    pub kernel_size: (usize, usize),
    /// Stride `(h, w)`. Default `(1, 1)`.
    pub stride: (usize, usize),
    /// Zero padding on both sides `(h, w)`. Default `(0, 0)`.
    pub padding: (usize, usize),
    /// Dilation `(h, w)`. Default `(1, 1)`.
    pub dilation: (usize, usize),
    /// Channel groups; must divide both channel counts. Default `1`.
    pub groups: usize,
    /// Whether the layer has a bias. Default `true`.
    pub bias: bool,
    /// How the forward and backward passes pick their algorithms. Default
    /// [`ConvAlgorithm::Auto`]; see [`Conv2dOptions::algorithm`].
    pub algorithm: ConvAlgorithm,
    /// The memory layout of the layer's output. Default [`MemoryFormat::Contiguous`];
    /// see [`Conv2dOptions::memory_format`].
    pub memory_format: MemoryFormat,
}

impl Conv2dConfig {
    /// A config with PyTorch's defaults: stride 1, padding 0, dilation 1, groups 1, bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: (usize, usize)) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel_size,
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            bias: true,
            algorithm: ConvAlgorithm::Auto,
            memory_format: MemoryFormat::Contiguous,
        }
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

    /// Sets whether the layer has a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Sets how the layer's forward and backward passes pick their algorithms:
    /// [`ConvAlgorithm::Fixed`] to force some, [`ConvAlgorithm::Autotune`] to time them
    /// on the first call of each input shape.
    ///
    /// ```
    /// use convinit::nn::{Conv2d, Conv2dConfig, Layer};
    /// use convinit::ops::{ConvAlgorithm, ConvAlgos};
    /// use ndarray::ArrayD;
    /// use rand::SeedableRng;
    ///
    /// let im2col = ConvAlgorithm::Fixed(ConvAlgos::named("columns").unwrap());
    /// let cfg = Conv2dConfig::new(3, 8, (3, 3)).with_algorithm(im2col);
    /// let mut layer = Conv2d::new(cfg, &mut rand::rngs::StdRng::seed_from_u64(0))?;
    /// let y = layer.forward(ArrayD::<f32>::ones(vec![2, 3, 6, 6]).view())?;
    /// layer.backward(ArrayD::<f32>::ones(y.shape()).view())?;
    /// # Ok::<(), convinit::Error>(())
    /// ```
    pub fn with_algorithm(mut self, algorithm: ConvAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets the memory layout of the layer's output ([`MemoryFormat`]). Between conv
    /// layers whose weights run the direct path, [`MemoryFormat::ChannelsLast`] saves
    /// the transposes between its kernels' tiles and the tensors, forward and backward
    /// (`examples/train_mnist` sets it on its first three convs).
    ///
    /// ```
    /// use convinit::nn::{Conv2d, Conv2dConfig, Layer};
    /// use convinit::ops::MemoryFormat;
    /// use ndarray::{ArrayD, Ix4};
    /// use rand::SeedableRng;
    ///
    /// let cfg = Conv2dConfig::new(3, 8, (3, 3)).with_memory_format(MemoryFormat::ChannelsLast);
    /// let mut layer = Conv2d::new(cfg, &mut rand::rngs::StdRng::seed_from_u64(0))?;
    /// let y = layer.forward(ArrayD::<f32>::ones(vec![2, 3, 6, 6]).view())?;
    /// let y = y.into_dimensionality::<Ix4>().unwrap();
    /// assert_eq!(y.shape(), &[2, 8, 4, 4]);
    /// assert_eq!(MemoryFormat::of(&y), MemoryFormat::ChannelsLast);
    /// # Ok::<(), convinit::Error>(())
    /// ```
    pub fn with_memory_format(mut self, memory_format: MemoryFormat) -> Self {
        self.memory_format = memory_format;
        self
    }

    /// The functional options (stride, padding, dilation, groups, algorithm, memory
    /// format) for [`crate::ops::conv2d`].
    pub fn options(&self) -> Conv2dOptions {
        Conv2dOptions {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
            algorithm: self.algorithm,
            memory_format: self.memory_format,
        }
    }

    /// Weight shape `(O, C / groups, kh, kw)` (with `groups` 0 counted as 1).
    pub fn weight_shape(&self) -> (usize, usize, usize, usize) {
        (
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel_size.0,
            self.kernel_size.1,
        )
    }

    /// Checks the config on its own: positive stride, dilation, groups and kernel size,
    /// groups dividing both channel counts, a forced GEMM kernel this CPU runs
    /// ([`Conv2dOptions::validate`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming `Conv2d` and the offending values.
    pub fn validate(&self) -> Result<()> {
        self.options().validate(OP)?;
        let (kh, kw) = self.kernel_size;
        if kh == 0 || kw == 0 {
            return Err(Error::config(
                OP,
                format!("kernel size must be positive, got {:?}", self.kernel_size),
            ));
        }
        if !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(Error::config(
                OP,
                format!(
                    "groups {} must divide in_channels {} and out_channels {}",
                    self.groups, self.in_channels, self.out_channels
                ),
            ));
        }
        Ok(())
    }
}

/// A 2-d convolution layer, as `torch.nn.Conv2d`: weight (O, C / groups, kh, kw), optional
/// bias (O), their gradients, and the last input (kept for backward: a copy from
/// [`Layer::forward`], the shared array itself from [`Layer::forward_shared`]).
#[derive(Debug, Clone)]
pub struct Conv2d {
    config: Conv2dConfig,
    weight: Array4<f32>,
    bias: Option<Array1<f32>>,
    weight_grad: Array4<f32>,
    bias_grad: Option<Array1<f32>>,
    input: Option<ArcArray<f32, Ix4>>,
}

impl Conv2d {
    /// A layer initialised as PyTorch does by default
    /// ([`crate::init::pytorch_default_reset`]: `kaiming_uniform_(a = sqrt 5)` weight,
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` bias).
    ///
    /// # Errors
    /// [`Error::Config`] when the config is invalid (see [`Conv2dConfig::validate`]).
    pub fn new<R: Rng + ?Sized>(config: Conv2dConfig, rng: &mut R) -> Result<Self> {
        Self::with_init(config, &Init::PytorchDefault, rng)
    }

    /// A layer initialised with the given scheme ([`Init::apply`]: the weight by the
    /// scheme, the bias by the scheme's bias rule, e.g. zeroed for kaiming).
    ///
    /// ```
    /// use convinit::init::Init;
    /// use convinit::nn::{Conv2d, Conv2dConfig};
    /// use rand::SeedableRng;
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    /// # let cfg = Conv2dConfig::new(1, 8, (5, 5));
    /// let layer = Conv2d::with_init(cfg, &Init::KAIMING_UNIFORM, &mut rng)?;
    /// assert!(layer.bias().unwrap().iter().all(|&b| b == 0.0));
    /// # Ok::<(), convinit::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] when the config or the scheme's parameters are invalid.
    pub fn with_init<R: Rng + ?Sized>(
        config: Conv2dConfig,
        init: &Init,
        rng: &mut R,
    ) -> Result<Self> {
        config.validate()?;
        let mut weight = Array4::<f32>::zeros(config.weight_shape());
        let mut bias = config
            .bias
            .then(|| Array1::<f32>::zeros(config.out_channels));
        init.apply(
            weight.view_mut().into_dyn(),
            bias.as_mut().map(|b| b.view_mut()),
            rng,
        )?;
        Self::from_parts(config, weight, bias)
    }

    /// A layer with the given weight and bias; gradients start at zero.
    ///
    /// # Errors
    /// [`Error::Config`] when the config is invalid or `bias.is_some()` disagrees with
    /// `config.bias`; [`Error::Shape`] when the weight is not
    /// [`Conv2dConfig::weight_shape`] or the bias length is not `out_channels`.
    pub fn from_parts(
        config: Conv2dConfig,
        weight: Array4<f32>,
        bias: Option<Array1<f32>>,
    ) -> Result<Self> {
        config.validate()?;
        if weight.dim() != config.weight_shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "weight is {:?}, the config needs {:?}",
                    weight.shape(),
                    config.weight_shape()
                ),
            ));
        }
        check_bias(
            OP,
            config.bias,
            bias.as_ref(),
            config.out_channels,
            weight.shape(),
        )?;
        Ok(Conv2d {
            config,
            weight_grad: Array4::zeros(weight.raw_dim()),
            bias_grad: bias.as_ref().map(|b| Array1::zeros(b.raw_dim())),
            weight,
            bias,
            input: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }

    /// The weight, (O, C / groups, kh, kw).
    pub fn weight(&self) -> &Array4<f32> {
        &self.weight
    }

    /// The weight, mutable (to apply any initialisation).
    pub fn weight_mut(&mut self) -> &mut Array4<f32> {
        &mut self.weight
    }

    /// The bias, (O), if the layer has one.
    pub fn bias(&self) -> Option<&Array1<f32>> {
        self.bias.as_ref()
    }

    /// The bias, mutable.
    pub fn bias_mut(&mut self) -> Option<&mut Array1<f32>> {
        self.bias.as_mut()
    }

    /// The accumulated weight gradient (`m[0].weight.grad` in PyTorch).
    pub fn weight_grad(&self) -> &Array4<f32> {
        &self.weight_grad
    }

    /// The accumulated weight gradient, mutable.
    pub fn weight_grad_mut(&mut self) -> &mut Array4<f32> {
        &mut self.weight_grad
    }

    /// The accumulated bias gradient, if the layer has a bias.
    pub fn bias_grad(&self) -> Option<&Array1<f32>> {
        self.bias_grad.as_ref()
    }

    /// The accumulated bias gradient, mutable.
    pub fn bias_grad_mut(&mut self) -> Option<&mut Array1<f32>> {
        self.bias_grad.as_mut()
    }

    /// The geometry this layer would use on an input of shape `x_shape`.
    ///
    /// # Errors
    /// As [`Conv2dGeometry::new`].
    pub fn geometry(&self, x_shape: [usize; 4]) -> Result<Conv2dGeometry> {
        Conv2dGeometry::new(
            OP,
            x_shape,
            self.weight.dim().into(),
            &self.config.options(),
        )
    }
}

impl Conv2d {
    /// The convolution of `x` with this layer's weight and bias.
    fn run(&self, x: ndarray::ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        conv2d(
            x,
            self.weight.view(),
            self.bias.as_ref().map(|b| b.view()),
            &self.config.options(),
        )
    }
}

impl Conv2d {
    /// The saved input and `grad_out` as (N, O, out_h, out_w), after the checks every
    /// backward makes: a forward ran, the parameters kept their gradients' shapes, and
    /// `grad_out` is the shape of the last output.
    fn checked_backward_inputs<'g>(
        &self,
        grad_out: ArrayViewD<'g, f32>,
    ) -> Result<(ArcArray<f32, Ix4>, ArrayView4<'g, f32>)> {
        let x = self.input.as_ref().ok_or_else(|| not_run(OP))?;
        check_param_shape(OP, "weight", self.weight.shape(), self.weight_grad.shape())?;
        if let (Some(b), Some(g)) = (&self.bias, &self.bias_grad) {
            check_param_shape(OP, "bias", b.shape(), g.shape())?;
        }
        let geo = self.geometry(x.dim().into())?;
        let (n, o, oh, ow) = geo.y_shape();
        check_grad_shape(OP, grad_out.shape(), &[n, o, oh, ow])?;
        let dy = to_rank::<Ix4>(OP, "grad_out", "(N, O, out_h, out_w)", grad_out)?;
        Ok((x.clone(), dy))
    }

    /// Adds a backward pass's parameter gradients to the accumulated ones.
    fn accumulate(&mut self, dw: &Array4<f32>, db: Option<&Array1<f32>>) {
        self.weight_grad += dw;
        if let (Some(acc), Some(db)) = (self.bias_grad.as_mut(), db) {
            *acc += db;
        }
    }
}

impl Layer for Conv2d {
    fn name(&self) -> &'static str {
        OP
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = to_rank::<Ix4>(OP, "input", "(N, C, H, W)", x)?;
        let y = self.run(x)?;
        let keep = try_to_owned(OP, x, || format!("the saved input {:?}", x.shape()))?;
        self.input = Some(keep.into_shared());
        Ok(y.into_dyn())
    }

    fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        // Checks the rank and gives the error message of the view path.
        to_rank::<Ix4>(OP, "input", "(N, C, H, W)", x.view())?;
        let x = x
            .into_dimensionality::<Ix4>()
            .expect("the rank was just checked");
        let y = self.run(x.view())?;
        self.input = Some(x);
        Ok(y.into_dyn().into_shared())
    }

    fn clear_saved(&mut self) {
        if let Some(x) = self.input.take() {
            crate::buffers::give_shared(x);
        }
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let (x, dy) = self.checked_backward_inputs(grad_out)?;
        let grads = conv2d_backward(
            x.view(),
            self.weight.view(),
            self.bias.is_some(),
            dy,
            &self.config.options(),
        )?;
        self.accumulate(&grads.dw, grads.db.as_ref());
        Ok(grads.dx.into_dyn())
    }

    /// As [`Layer::backward`] without the input gradient ([`conv2d_backward_params`]):
    /// the same parameter gradients, bit for bit, without the `W^T dy` product and its
    /// col2im scatter.
    fn backward_params(&mut self, grad_out: ArrayD<f32>) -> Result<()> {
        let (x, dy) = self.checked_backward_inputs(grad_out.view())?;
        let grads = conv2d_backward_params(
            x.view(),
            self.weight.view(),
            self.bias.is_some(),
            dy,
            &self.config.options(),
        )?;
        self.accumulate(&grads.dw, grads.db.as_ref());
        crate::buffers::give_array(grad_out);
        Ok(())
    }

    fn lsuv_rescales(&self) -> bool {
        true
    }

    /// As PyTorch prints it: `Conv2d(1, 8, kernel_size=(5, 5), stride=(2, 2))`, with
    /// padding, dilation, groups and `bias=False` when not the defaults.
    fn describe(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "Conv2d({}, {}, kernel_size={:?}, stride={:?}",
            c.in_channels, c.out_channels, c.kernel_size, c.stride
        );
        if c.padding != (0, 0) {
            s += &format!(", padding={:?}", c.padding);
        }
        if c.dilation != (1, 1) {
            s += &format!(", dilation={:?}", c.dilation);
        }
        if c.groups != 1 {
            s += &format!(", groups={}", c.groups);
        }
        if !c.bias {
            s += ", bias=False";
        }
        s + ")"
    }

    fn params(&self) -> Vec<Param<'_>> {
        let bias = self.bias.as_ref().zip(self.bias_grad.as_ref());
        weight_bias_params(&self.weight, &self.weight_grad, bias)
    }

    fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let bias = self.bias.as_mut().zip(self.bias_grad.as_mut());
        weight_bias_params_mut(&mut self.weight, &mut self.weight_grad, bias)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
