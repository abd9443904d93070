//! The `Dropout` and `Dropout2d` layers: seeded, reproducible, identity in eval mode.

use std::any::Any;

use ndarray::{ArrayD, ArrayViewD};

use super::{Layer, check_grad_shape, not_run, python_float};
use crate::error::Result;
use crate::limits::try_to_owned;
use crate::ops::{dropout, dropout_backward, dropout2d, dropout2d_backward};

/// What a forward pass did, for backward.
#[derive(Debug, Clone)]
enum Saved {
    /// Training mode: the mask of this call, on this shape.
    Mask { call: u64, shape: Vec<usize> },
    /// Evaluation mode: the identity, on this shape.
    Identity { shape: Vec<usize> },
}

/// The state both layers share.
#[derive(Debug, Clone)]
struct State {
    p: f32,
    seed: u64,
    calls: u64,
    training: bool,
    saved: Option<Saved>,
}

impl State {
    fn new(op: &'static str, p: f32, seed: u64) -> Result<Self> {
        crate::ops::dropout_check_p(op, p)?;
        Ok(State {
            p,
            seed,
            calls: 0,
            training: true,
            saved: None,
        })
    }

    fn forward(
        &mut self,
        x: ArrayViewD<'_, f32>,
        op: &'static str,
        f: fn(ArrayViewD<'_, f32>, f32, u64, u64) -> Result<ArrayD<f32>>,
    ) -> Result<ArrayD<f32>> {
        self.saved = None;
        let shape = x.shape().to_vec();
        if !self.training {
            let y = try_to_owned(op, x.view(), || format!("a copy of the input {shape:?}"))?;
            self.saved = Some(Saved::Identity { shape });
            return Ok(y);
        }
        let call = self.calls;
        let y = f(x, self.p, self.seed, call)?;
        self.calls = self.calls.wrapping_add(1);
        self.saved = Some(Saved::Mask { call, shape });
        Ok(y)
    }

    fn backward(
        &mut self,
        dy: ArrayViewD<'_, f32>,
        op: &'static str,
        f: fn(ArrayViewD<'_, f32>, f32, u64, u64) -> Result<ArrayD<f32>>,
    ) -> Result<ArrayD<f32>> {
        match self.saved.as_ref().ok_or_else(|| not_run(op))? {
            Saved::Mask { call, shape } => {
                check_grad_shape(op, dy.shape(), shape)?;
                f(dy, self.p, self.seed, *call)
            }
            Saved::Identity { shape } => {
                check_grad_shape(op, dy.shape(), shape)?;
                try_to_owned(op, dy.view(), || {
                    format!("a copy of grad_out {:?}", dy.shape())
                })
            }
        }
    }
}

macro_rules! dropout_layer {
    ($name:ident, $op:literal, $fwd:ident, $bwd:ident, $doc:literal) => {
        #[doc = $doc]
        ///
        /// In training mode (the default) each forward pass draws a new mask: the mask of
        /// `(seed, call)` where `call` counts this layer's training-mode forward passes
        /// (see [`crate::ops::dropout`]), so a run is reproducible from the seed and the
        /// same at any thread count; backward uses the same mask. Kept values are divided
        /// by `1 - p`. In evaluation mode the layer is the identity. Give each dropout
        /// layer of a network its own seed (the same seed and call give the same mask).
        #[derive(Debug, Clone)]
        pub struct $name {
            state: State,
        }

        impl $name {
            /// A layer dropping with probability `p`, its masks drawn from `seed`.
            ///
            /// # Errors
            #[doc = concat!("[`crate::Error::Config`] naming `", $op, "` when `p` is not in [0, 1].")]
            pub fn new(p: f32, seed: u64) -> Result<Self> {
                Ok($name {
                    state: State::new($op, p, seed)?,
                })
            }

            /// The drop probability.
            pub fn p(&self) -> f32 {
                self.state.p
            }

            /// The seed.
            pub fn seed(&self) -> u64 {
                self.state.seed
            }

            /// How many training-mode forward passes ran (the `call` of the next mask).
            pub fn calls(&self) -> u64 {
                self.state.calls
            }

            /// Sets the call counter (e.g. to replay a mask, or resume a run).
            pub fn set_calls(&mut self, calls: u64) {
                self.state.calls = calls;
            }
        }

        impl Layer for $name {
            fn name(&self) -> &'static str {
                $op
            }

            fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
                self.state.forward(x, $op, $fwd)
            }

            fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
                self.state.backward(grad_out, $op, $bwd)
            }

            fn clear_saved(&mut self) {
                self.state.saved = None;
            }

            fn set_training(&mut self, training: bool) {
                self.state.training = training;
            }

            fn is_training(&self) -> bool {
                self.state.training
            }

            /// As PyTorch prints it: `Dropout(p=0.5, inplace=False)`.
            fn describe(&self) -> String {
                format!(
                    "{}(p={}, inplace=False)",
                    $op,
                    // Through the f32's shortest decimal: 0.3, not 0.30000001192092896.
                    python_float(self.state.p.to_string().parse().unwrap_or(f64::NAN))
                )
            }

            fn as_any(&self) -> &dyn Any {
                self
            }

            fn as_any_mut(&mut self) -> &mut dyn Any {
                self
            }
        }
    };
}

dropout_layer!(
    Dropout,
    "Dropout",
    dropout,
    dropout_backward,
    "Dropout, as `torch.nn.Dropout(p)`: each element zeroed with probability `p`."
);

dropout_layer!(
    Dropout2d,
    "Dropout2d",
    dropout2d,
    dropout2d_backward,
    "Channel dropout, as `torch.nn.Dropout2d(p)`: each whole channel plane `x[n, c]` of an (N, C, H, W) input zeroed with probability `p`."
);
