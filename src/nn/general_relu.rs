//! fast.ai's `GeneralRelu`: a ReLU with an optional leak, shift and clamp.

use std::any::Any;

use ndarray::{ArcArrayD, ArrayD, ArrayViewD};

use super::{Layer, check_grad_shape, not_run};
use crate::error::{Error, Result};
use crate::limits::try_to_owned;
use crate::ops::{map_array, update_array_with, zip_map_array};

const OP: &str = "GeneralRelu";

/// fast.ai's `GeneralRelu` (course 2019, lesson 10), as a layer:
///
/// ```text
/// y = leaky_relu(x, leak) if leak is set, else relu(x)
/// y = y - sub             if sub is set
/// y = min(y, maxv)        if maxv is set
/// ```
///
/// Shifting by `sub` (e.g. 0.4) brings the mean of the activations back towards zero,
/// and the leak keeps units from dying. Backward follows PyTorch's autograd exactly: the
/// gradient is `dy` where `x > 0`, `leak * dy` (or 0 without leak) where `x <= 0`, and 0
/// where the clamp is active (the shifted value `>= maxv`, as `clamp_max`'s backward).
///
/// # Examples
/// ```
/// use convinit::nn::{GeneralRelu, Layer};
/// use ndarray::array;
/// let mut act = GeneralRelu::new(Some(0.1), Some(0.4), Some(6.0))?;
/// let y = act.forward(array![-1.0f32, 1.0, 8.0].into_dyn().view())?;
/// assert_eq!(y, array![-0.5f32, 0.6, 6.0].into_dyn());
/// # Ok::<(), convinit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GeneralRelu {
    leak: Option<f32>,
    sub: Option<f32>,
    maxv: Option<f32>,
    input: Option<ArcArrayD<f32>>,
}

impl Default for GeneralRelu {
    /// A plain ReLU (no leak, shift or clamp).
    fn default() -> Self {
        GeneralRelu {
            leak: None,
            sub: None,
            maxv: None,
            input: None,
        }
    }
}

impl GeneralRelu {
    /// A `GeneralRelu` with an optional negative slope `leak`, shift `sub` and upper
    /// clamp `maxv`.
    ///
    /// # Errors
    /// [`Error::Config`] when a given value is not finite.
    pub fn new(leak: Option<f32>, sub: Option<f32>, maxv: Option<f32>) -> Result<Self> {
        for (what, v) in [("leak", leak), ("sub", sub), ("maxv", maxv)] {
            if let Some(v) = v.filter(|v| !v.is_finite()) {
                return Err(Error::config(OP, format!("{what} = {v} must be finite")));
            }
        }
        Ok(GeneralRelu {
            leak,
            sub,
            maxv,
            input: None,
        })
    }

    /// The negative slope, if any.
    pub fn leak(&self) -> Option<f32> {
        self.leak
    }

    /// The shift subtracted after the (leaky) ReLU, if any.
    pub fn sub(&self) -> Option<f32> {
        self.sub
    }

    /// The upper clamp, if any.
    pub fn maxv(&self) -> Option<f32> {
        self.maxv
    }

    /// The (leaky) ReLU then shift, before the clamp.
    fn unclamped(&self, v: f32) -> f32 {
        let r = match self.leak {
            _ if v > 0.0 => v,
            Some(leak) => v * leak,
            // `v <= 0` is false for NaN: relu(NaN) = NaN, as torch.
            None if v <= 0.0 => 0.0,
            None => v,
        };
        match self.sub {
            Some(s) => r - s,
            None => r,
        }
    }

    /// The forward of one value.
    fn value(&self, v: f32) -> f32 {
        let u = self.unclamped(v);
        match self.maxv {
            // `u > m` is false for NaN, so NaN passes through, as torch.clamp_max.
            Some(m) if u > m => m,
            _ => u,
        }
    }

    /// The gradient at input `v` given the output gradient `g`.
    fn grad(&self, v: f32, g: f32) -> f32 {
        if let Some(m) = self.maxv
            && self.unclamped(v) >= m
        {
            return 0.0;
        }
        match self.leak {
            _ if v > 0.0 => g,
            Some(leak) => g * leak,
            None if v <= 0.0 => 0.0,
            None => g,
        }
    }

    fn saved_input(&self, grad: &[usize]) -> Result<&ArcArrayD<f32>> {
        let x = self.input.as_ref().ok_or_else(|| not_run(OP))?;
        check_grad_shape(OP, grad, x.shape())?;
        Ok(x)
    }
}

impl Layer for GeneralRelu {
    fn name(&self) -> &'static str {
        OP
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.input = None;
        let y = map_array(OP, x.view(), |v| self.value(v))?;
        let kept = try_to_owned(OP, x.view(), || {
            format!("the copy of the input kept for backward, x {:?}", x.shape())
        })?;
        self.input = Some(kept.into_shared());
        Ok(y)
    }

    fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        self.input = None;
        let y = map_array(OP, x.view(), |v| self.value(v))?.into_shared();
        self.input = Some(x);
        Ok(y)
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = self.saved_input(grad_out.shape())?;
        zip_map_array(OP, x.view(), grad_out, |v, g| self.grad(v, g))
    }

    fn backward_owned(&mut self, mut grad_out: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let x = self.saved_input(grad_out.shape())?;
        update_array_with(grad_out.view_mut(), x.view(), |v, g| self.grad(v, g));
        Ok(grad_out)
    }

    fn clear_saved(&mut self) {
        if let Some(x) = self.input.take() {
            crate::buffers::give_shared(x);
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
