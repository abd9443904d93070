//! Stochastic gradient descent with momentum, dampening, weight decay and Nesterov, as
//! `torch.optim.SGD`.

use ndarray::{ArrayD, Zip};

use super::{Optimizer, check_grad, check_lr, check_state};
use crate::error::{Error, Result};
use crate::nn::Sequential;

const OP: &str = "SGD";

/// Hyper-parameters of [`Sgd`], with `torch.optim.SGD`'s defaults (all zero, no
/// Nesterov) except the learning rate, which PyTorch requires too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate (must be finite and non-negative).
    pub lr: f32,
    /// Momentum factor in `[0, 1)`. Default 0 (plain SGD).
    pub momentum: f32,
    /// Dampening of the gradient added to the momentum buffer, in `[0, 1]`. Default 0.
    pub dampening: f32,
    /// L2 penalty added to the gradient: `d_p = g + weight_decay * p`. Default 0.
    pub weight_decay: f32,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`). Default off.
    pub nesterov: bool,
}

impl SgdConfig {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        SgdConfig {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }

    /// Sets the momentum factor.
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }

    /// Sets the dampening.
    pub fn with_dampening(mut self, dampening: f32) -> Self {
        self.dampening = dampening;
        self
    }

    /// Sets the weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Turns Nesterov momentum on or off.
    pub fn with_nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    /// Checks the values: finite, `lr >= 0`, `momentum` in `[0, 1)`, `dampening` in
    /// `[0, 1]`, `weight_decay >= 0`, and PyTorch's Nesterov rule.
    ///
    /// # Errors
    /// [`Error::Config`] naming `SGD` and the offending value.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32, range: &str| {
            Err(Error::config(OP, format!("{what} = {v} must be {range}")))
        };
        check_lr(OP, self.lr)?;
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", self.momentum, "in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.dampening) {
            return bad("dampening", self.dampening, "in [0, 1]");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay, "finite and >= 0");
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::config(
                OP,
                format!(
                    "Nesterov momentum requires momentum > 0 and zero dampening, got momentum {} and dampening {}",
                    self.momentum, self.dampening
                ),
            ));
        }
        Ok(())
    }
}

/// `torch.optim.SGD` over the parameters of a [`Sequential`].
///
/// For each parameter `p` with gradient `g`, [`Sgd::step`] applies PyTorch's update rule:
///
/// ```text
/// d_p = g + weight_decay * p
/// buf = d_p                                         (first step)
/// buf = momentum * buf + (1 - dampening) * d_p      (later steps)
/// d_p = d_p + momentum * buf   if nesterov,  else  d_p = buf      (when momentum > 0)
/// p  -= lr * d_p
/// ```
///
/// with `lr` the current learning rate ([`Optimizer`] describes the base and current
/// rates). With `momentum == 0` there is no buffer: `p -= lr * (g + weight_decay * p)`.
///
/// The momentum buffers are kept per parameter name (`"0.weight"`, ...), so one
/// optimiser must stay with one model. Gradients are not cleared: call
/// [`Sequential::zero_grad`] before the next backward pass, as in PyTorch.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// The hyper-parameters, `config.lr` the current rate.
    config: SgdConfig,
    base_lr: f32,
    buffers: Vec<(String, ArrayD<f32>)>,
}

impl Sgd {
    /// An optimiser with the given hyper-parameters.
    ///
    /// # Errors
    /// As [`SgdConfig::validate`].
    pub fn new(config: SgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Sgd {
            config,
            base_lr: config.lr,
            buffers: Vec::new(),
        })
    }

    /// The hyper-parameters, with the current learning rate as `lr`.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The current learning rate (as [`Optimizer::lr`]).
    pub fn lr(&self) -> f32 {
        self.config.lr
    }

    /// Sets the current learning rate (as [`Optimizer::set_lr`]).
    ///
    /// # Errors
    /// [`Error::Config`] when `lr` is negative or not finite (the rate is then unchanged).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        check_lr(OP, lr)?;
        self.config.lr = lr;
        Ok(())
    }

    /// The momentum buffer of parameter `name`, once a step has created it.
    pub fn momentum_buffer(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.buffers.iter().find(|(n, _)| n == name).map(|(_, b)| b)
    }

    /// Back to as built (as [`Optimizer::reset`]): forgets the momentum buffers (the next
    /// step is a "first step" again) and sets the learning rate back to the base rate.
    pub fn reset(&mut self) {
        self.buffers.clear();
        self.config.lr = self.base_lr;
    }

    /// Updates every parameter of `net` from its accumulated gradient.
    ///
    /// Every parameter is checked before any is updated, so on error the model (and the
    /// momentum buffers) are exactly as they were.
    ///
    /// # Errors
    /// [`Error::Shape`] naming the parameter and both shapes when a gradient does not
    /// have its parameter's shape (possible after [`crate::nn::Linear::weight_grad_mut`]
    /// and friends), or when a parameter no longer has the shape of its momentum buffer
    /// (the optimiser was used with another model).
    pub fn step(&mut self, net: &mut Sequential) -> Result<()> {
        let SgdConfig {
            lr,
            momentum,
            dampening,
            weight_decay: wd,
            nesterov,
        } = self.config;
        let mut params = net.named_parameters_mut();
        // Check everything first so that a mismatch updates nothing.
        for p in &params {
            check_grad(OP, p)?;
            if let Some(buf) = self.momentum_buffer(&p.name) {
                check_state(OP, p, "momentum buffer", buf.shape())?;
            }
        }
        for p in params.iter_mut() {
            if momentum == 0.0 {
                Zip::from(&mut p.value)
                    .and(&p.grad)
                    .for_each(|v, &g| *v -= lr * (g + wd * *v));
                continue;
            }
            match self.buffers.iter_mut().find(|(n, _)| *n == p.name) {
                None => {
                    let buf = Zip::from(&p.value)
                        .and(&p.grad)
                        .map_collect(|&v, &g| g + wd * v);
                    Zip::from(&mut p.value).and(&buf).for_each(|v, &b| {
                        let d = if nesterov { b + momentum * b } else { b };
                        *v -= lr * d;
                    });
                    self.buffers.push((p.name.clone(), buf));
                }
                Some((_, buf)) => {
                    Zip::from(&mut p.value)
                        .and(&p.grad)
                        .and(buf)
                        .for_each(|v, &g, b| {
                            let d = g + wd * *v;
                            *b = momentum * *b + (1.0 - dampening) * d;
                            let d = if nesterov { d + momentum * *b } else { *b };
                            *v -= lr * d;
                        });
                }
            }
        }
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        OP
    }

    fn step(&mut self, net: &mut Sequential) -> Result<()> {
        Sgd::step(self, net)
    }

    fn lr(&self) -> f32 {
        self.config.lr
    }

    fn base_lr(&self) -> f32 {
        self.base_lr
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        Sgd::set_lr(self, lr)
    }

    fn reset(&mut self) {
        Sgd::reset(self);
    }
}
