//! The `Linear` layer: owns its weight, bias and their gradients.

use std::any::Any;

use ndarray::{ArcArray, ArcArrayD, Array1, Array2, ArrayD, ArrayView2, ArrayViewD, Ix2};
use rand::Rng;

use super::{
    Layer, Param, ParamMut, check_bias, check_grad_shape, check_param_shape, not_run, to_rank,
    weight_bias_params, weight_bias_params_mut,
};
use crate::error::{Error, Result};
use crate::init::Init;
use crate::limits::try_to_owned;
use crate::ops::{linear, linear_backward, linear_backward_params};

const OP: &str = "Linear";

/// Configuration of a [`Linear`] layer, with PyTorch's `nn.Linear` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinearConfig {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the layer has a bias. Default `true`.
    pub bias: bool,
}

impl LinearConfig {
    /// A config with a bias, as PyTorch's default.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        LinearConfig {
            in_features,
            out_features,
            bias: true,
        }
    }

    /// Sets whether the layer has a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
}

/// A fully connected layer, as `torch.nn.Linear`: `y = x W^T + b` on inputs (N, in).
#[derive(Debug, Clone)]
pub struct Linear {
    config: LinearConfig,
    weight: Array2<f32>,
    bias: Option<Array1<f32>>,
    weight_grad: Array2<f32>,
    bias_grad: Option<Array1<f32>>,
    input: Option<ArcArray<f32, Ix2>>,
}

impl Linear {
    /// A layer initialised as PyTorch does by default
    /// ([`crate::init::pytorch_default_reset`]).
    ///
    /// # Errors
    /// Only if the initialisation fails (it does not for finite bounds).
    pub fn new<R: Rng + ?Sized>(config: LinearConfig, rng: &mut R) -> Result<Self> {
        Self::with_init(config, &Init::PytorchDefault, rng)
    }

    /// A layer initialised with the given scheme ([`Init::apply`]: the weight by the
    /// scheme, the bias by the scheme's bias rule, e.g. zeroed for kaiming).
    ///
    /// ```
    /// use convinit::init::Init;
    /// use convinit::nn::{Linear, LinearConfig};
    /// use rand::SeedableRng;
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    /// # let cfg = LinearConfig::new(784, 50);
    /// let layer = Linear::with_init(cfg, &Init::KAIMING_UNIFORM, &mut rng)?;
    /// assert!(layer.bias().unwrap().iter().all(|&b| b == 0.0));
    /// # Ok::<(), convinit::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] when the config or the scheme's parameters are invalid.
    pub fn with_init<R: Rng + ?Sized>(
        config: LinearConfig,
        init: &Init,
        rng: &mut R,
    ) -> Result<Self> {
        let mut weight = Array2::<f32>::zeros((config.out_features, config.in_features));
        let mut bias = config
            .bias
            .then(|| Array1::<f32>::zeros(config.out_features));
        init.apply(
            weight.view_mut().into_dyn(),
            bias.as_mut().map(|b| b.view_mut()),
            rng,
        )?;
        Self::from_parts(config, weight, bias)
    }

    /// A layer with the given weight (out, in) and bias (out); gradients start at zero.
    ///
    /// # Errors
    /// [`Error::Shape`] when the weight or bias shape does not match the config;
    /// [`Error::Config`] when `bias.is_some()` disagrees with `config.bias`.
    pub fn from_parts(
        config: LinearConfig,
        weight: Array2<f32>,
        bias: Option<Array1<f32>>,
    ) -> Result<Self> {
        let expected = (config.out_features, config.in_features);
        if weight.dim() != expected {
            return Err(Error::shape(
                OP,
                format!(
                    "weight is {:?}, the config needs {expected:?}",
                    weight.shape()
                ),
            ));
        }
        check_bias(
            OP,
            config.bias,
            bias.as_ref(),
            config.out_features,
            weight.shape(),
        )?;
        Ok(Linear {
            config,
            weight_grad: Array2::zeros(weight.raw_dim()),
            bias_grad: bias.as_ref().map(|b| Array1::zeros(b.raw_dim())),
            weight,
            bias,
            input: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LinearConfig {
        &self.config
    }

    /// The weight, (out, in).
    pub fn weight(&self) -> &Array2<f32> {
        &self.weight
    }

    /// The weight, mutable.
    pub fn weight_mut(&mut self) -> &mut Array2<f32> {
        &mut self.weight
    }

    /// The bias, (out), if any.
    pub fn bias(&self) -> Option<&Array1<f32>> {
        self.bias.as_ref()
    }

    /// The bias, mutable.
    pub fn bias_mut(&mut self) -> Option<&mut Array1<f32>> {
        self.bias.as_mut()
    }

    /// The accumulated weight gradient.
    pub fn weight_grad(&self) -> &Array2<f32> {
        &self.weight_grad
    }

    /// The accumulated weight gradient, mutable.
    pub fn weight_grad_mut(&mut self) -> &mut Array2<f32> {
        &mut self.weight_grad
    }

    /// The accumulated bias gradient, if any.
    pub fn bias_grad(&self) -> Option<&Array1<f32>> {
        self.bias_grad.as_ref()
    }

    /// The accumulated bias gradient, mutable.
    pub fn bias_grad_mut(&mut self) -> Option<&mut Array1<f32>> {
        self.bias_grad.as_mut()
    }
}

impl Linear {
    /// The saved input and `grad_out` as (N, out), after the checks every backward
    /// makes: a forward ran, the parameters kept their gradients' shapes, and `grad_out`
    /// is the shape of the last output.
    fn checked_backward_inputs<'g>(
        &self,
        grad_out: ArrayViewD<'g, f32>,
    ) -> Result<(ArcArray<f32, Ix2>, ArrayView2<'g, f32>)> {
        let x = self.input.as_ref().ok_or_else(|| not_run(OP))?;
        check_param_shape(OP, "weight", self.weight.shape(), self.weight_grad.shape())?;
        if let (Some(b), Some(g)) = (&self.bias, &self.bias_grad) {
            check_param_shape(OP, "bias", b.shape(), g.shape())?;
        }
        check_grad_shape(OP, grad_out.shape(), &[x.nrows(), self.weight.nrows()])?;
        let dy = to_rank::<Ix2>(OP, "grad_out", "(N, out_features)", grad_out)?;
        Ok((x.clone(), dy))
    }

    /// Adds a backward pass's parameter gradients to the accumulated ones.
    fn accumulate(&mut self, dw: &Array2<f32>, db: Option<&Array1<f32>>) {
        self.weight_grad += dw;
        if let (Some(acc), Some(db)) = (self.bias_grad.as_mut(), db) {
            *acc += db;
        }
    }
}

impl Layer for Linear {
    fn name(&self) -> &'static str {
        OP
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = to_rank::<Ix2>(OP, "input", "(N, in_features)", x)?;
        let y = linear(x, self.weight.view(), self.bias.as_ref().map(|b| b.view()))?;
        let keep = try_to_owned(OP, x, || format!("the saved input {:?}", x.shape()))?;
        self.input = Some(keep.into_shared());
        Ok(y.into_dyn())
    }

    fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        to_rank::<Ix2>(OP, "input", "(N, in_features)", x.view())?;
        let x = x
            .into_dimensionality::<Ix2>()
            .expect("the rank was just checked");
        let y = linear(
            x.view(),
            self.weight.view(),
            self.bias.as_ref().map(|b| b.view()),
        )?;
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
        let grads = linear_backward(x.view(), self.weight.view(), self.bias.is_some(), dy)?;
        self.accumulate(&grads.dw, grads.db.as_ref());
        Ok(grads.dx.into_dyn())
    }

    /// As [`Layer::backward`] without the input gradient: the same parameter gradients,
    /// bit for bit, without the `dy W` product.
    fn backward_params(&mut self, grad_out: ArrayD<f32>) -> Result<()> {
        let (x, dy) = self.checked_backward_inputs(grad_out.view())?;
        let (dw, db) =
            linear_backward_params(x.view(), self.weight.view(), self.bias.is_some(), dy)?;
        self.accumulate(&dw, db.as_ref());
        crate::buffers::give_array(grad_out);
        Ok(())
    }

    fn lsuv_rescales(&self) -> bool {
        true
    }

    /// As PyTorch prints it: `Linear(in_features=400, out_features=120, bias=True)`.
    fn describe(&self) -> String {
        let c = self.config();
        let bias = if c.bias { "True" } else { "False" };
        format!(
            "Linear(in_features={}, out_features={}, bias={bias})",
            c.in_features, c.out_features
        )
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
