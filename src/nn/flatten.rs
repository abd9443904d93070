//! The `Flatten` layer.

use std::any::Any;

use ndarray::{ArrayD, ArrayViewD};

use super::{Layer, not_run};
use crate::error::Result;
use crate::ops::{flatten, flatten_backward};

/// `nn.Flatten(start_dim, end_dim)`: merges dimensions `start_dim..=end_dim` (negative
/// values count from the end). [`Default`] is PyTorch's `(1, -1)`, keeping the batch
/// dimension; `Flatten::new(0, -1)` flattens everything, as the notebook's seed net does
/// to turn (N, 1, 1, 1) into (N).
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

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let y = flatten(x.view(), self.start_dim, self.end_dim)?;
        self.input_shape = Some(x.shape().to_vec());
        Ok(y)
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
