//! The `Flatten` layer.

use std::any::Any;

use ndarray::{ArcArrayD, ArrayD, ArrayViewD, IxDyn};

use super::{Layer, not_run};
use crate::error::Result;
use crate::ops::{flatten, flatten_backward, flatten_shape};

/// `nn.Flatten(start_dim, end_dim)`: merges dimensions `start_dim..=end_dim` (negative
/// values count from the end). [`Default`] is PyTorch's `(1, -1)`, keeping the batch
/// dimension; `Flatten::new(0, -1)` flattens everything, as the notebook's seed net does
/// to turn (N, 1, 1, 1) into (N). In a [`super::Sequential`] a row-major input is
/// reshaped in place, sharing its buffer, and so is the gradient in backward.
#[derive(Debug, Clone)]
pub struct Flatten {
    start_dim: isize,
    end_dim: isize,
    input_shape: Option<Vec<usize>>,
}

impl Default for Flatten {
    fn default() -> Self {
        Self::new(1, -1)
    }
}

impl Flatten {
    /// Flattens dimensions `start_dim..=end_dim`.
    pub fn new(start_dim: isize, end_dim: isize) -> Self {
        Flatten {
            start_dim,
            end_dim,
            input_shape: None,
        }
    }

    /// `(start_dim, end_dim)` as given.
    pub fn dims(&self) -> (isize, isize) {
        (self.start_dim, self.end_dim)
    }
}

impl Layer for Flatten {
    fn name(&self) -> &'static str {
        "Flatten"
    }

    /// As PyTorch prints it: `Flatten(start_dim=1, end_dim=-1)`.
    fn describe(&self) -> String {
        format!(
            "Flatten(start_dim={}, end_dim={})",
            self.start_dim, self.end_dim
        )
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let y = flatten(x.view(), self.start_dim, self.end_dim)?;
        self.input_shape = Some(x.shape().to_vec());
        Ok(y)
    }

    fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        let shape = flatten_shape(x.shape(), self.start_dim, self.end_dim)?;
        self.input_shape = Some(x.shape().to_vec());
        if x.is_standard_layout() {
            let x = x
                .into_shape_with_order(IxDyn(&shape))
                .expect("a row-major array takes any shape of the same size");
            return Ok(x);
        }
        Ok(flatten(x.view(), self.start_dim, self.end_dim)?.into_shared())
    }

    fn backward_owned(&mut self, grad_out: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let shape = self
            .input_shape
            .as_ref()
            .ok_or_else(|| not_run("Flatten"))?;
        let expected = flatten_shape(shape, self.start_dim, self.end_dim)?;
        if grad_out.shape() == expected.as_slice() && grad_out.is_standard_layout() {
            return Ok(grad_out
                .into_shape_with_order(IxDyn(shape))
                .expect("a row-major array takes any shape of the same size"));
        }
        flatten_backward(shape, grad_out.view(), self.start_dim, self.end_dim)
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let shape = self
            .input_shape
            .as_ref()
            .ok_or_else(|| not_run("Flatten"))?;
        flatten_backward(shape, grad_out, self.start_dim, self.end_dim)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
