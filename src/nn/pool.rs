//! The `AdaptiveAvgPool2d` layer.

use std::any::Any;

use ndarray::{ArrayD, ArrayViewD, Ix4};

use super::{Layer, check_grad_shape, not_run, to_rank};
use crate::error::{Error, Result};
use crate::ops::{adaptive_avg_pool2d, adaptive_avg_pool2d_backward};

const OP: &str = "AdaptiveAvgPool2d";

/// `nn.AdaptiveAvgPool2d(output_size)` on (N, C, H, W) inputs, with PyTorch's window
/// rule. Keeps only the input shape for backward.
#[derive(Debug, Clone)]
pub struct AdaptiveAvgPool2d {
    output_size: (usize, usize),
    input_shape: Option<(usize, usize, usize, usize)>,
}

impl AdaptiveAvgPool2d {
    /// Pooling to `(oh, ow)`; `(1, 1)` is global average pooling.
    ///
    /// # Errors
    /// [`Error::Config`] when either output size is zero.
    pub fn new(output_size: (usize, usize)) -> Result<Self> {
        if output_size.0 == 0 || output_size.1 == 0 {
            return Err(Error::config(
                OP,
                format!("output size must be positive, got {output_size:?}"),
            ));
        }
        Ok(AdaptiveAvgPool2d {
            output_size,
            input_shape: None,
        })
    }

    /// The output size `(oh, ow)`.
    pub fn output_size(&self) -> (usize, usize) {
        self.output_size
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn name(&self) -> &'static str {
        OP
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = to_rank::<Ix4>(OP, "input", "(N, C, H, W)", x)?;
        let y = adaptive_avg_pool2d(x, self.output_size)?;
        self.input_shape = Some(x.dim());
        Ok(y.into_dyn())
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let shape = self.input_shape.ok_or_else(|| not_run(OP))?;
        let (oh, ow) = self.output_size;
        check_grad_shape(OP, grad_out.shape(), &[shape.0, shape.1, oh, ow])?;
        let dy = to_rank::<Ix4>(OP, "grad_out", "(N, C, oh, ow)", grad_out)?;
        Ok(adaptive_avg_pool2d_backward(shape, dy)?.into_dyn())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
