//! Parameter-free activation layers: `ReLU` and `LeakyReLU`.

use std::any::Any;

use ndarray::{ArrayD, ArrayViewD};

use super::{Layer, check_grad_shape, not_run};
use crate::error::Result;
use crate::ops::{leaky_relu, leaky_relu_backward, relu, relu_backward};

/// `nn.ReLU`: `max(x, 0)` on any shape. Keeps its last input for backward.
#[derive(Debug, Clone, Default)]
pub struct Relu {
    input: Option<ArrayD<f32>>,
}

impl Relu {
    /// A ReLU layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Relu {
    fn name(&self) -> &'static str {
        "ReLU"
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let y = relu(x.view());
        self.input = Some(x.to_owned());
        Ok(y)
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = self.input.as_ref().ok_or_else(|| not_run("ReLU"))?;
        check_grad_shape("ReLU", grad_out.shape(), x.shape())?;
        relu_backward(x.view(), grad_out)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// `nn.LeakyReLU(negative_slope)`: `x` where `x > 0`, else `negative_slope * x`. Any
/// slope works, including 0 (ReLU) and slopes above 1 (e.g. `sqrt 5`).
#[derive(Debug, Clone)]
pub struct LeakyRelu {
    negative_slope: f32,
    input: Option<ArrayD<f32>>,
}

impl Default for LeakyRelu {
    /// PyTorch's default slope, 0.01.
    fn default() -> Self {
        Self::new(0.01)
    }
}

impl LeakyRelu {
    /// A leaky ReLU with the given negative slope.
    pub fn new(negative_slope: f32) -> Self {
        LeakyRelu {
            negative_slope,
            input: None,
        }
    }

    /// The negative slope.
    pub fn negative_slope(&self) -> f32 {
        self.negative_slope
    }
}

impl Layer for LeakyRelu {
    fn name(&self) -> &'static str {
        "LeakyReLU"
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let y = leaky_relu(x.view(), self.negative_slope);
        self.input = Some(x.to_owned());
        Ok(y)
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = self.input.as_ref().ok_or_else(|| not_run("LeakyReLU"))?;
        check_grad_shape("LeakyReLU", grad_out.shape(), x.shape())?;
        leaky_relu_backward(x.view(), grad_out, self.negative_slope)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
