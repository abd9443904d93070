//! Adam and AdamW, as `torch.optim.Adam` / `torch.optim.AdamW` (single-tensor path).

use ndarray::{ArrayD, Zip};

use super::{Optimizer, check_grad, check_lr, check_state};
use crate::error::{Error, Result};
use crate::limits::try_zeros;
use crate::nn::Sequential;

/// Hyper-parameters of [`Adam`] and [`AdamW`].
///
/// [`AdamConfig::adam`] has `torch.optim.Adam`'s defaults, [`AdamConfig::adamw`]
/// `torch.optim.AdamW`'s (the same but `weight_decay = 1e-2`).
///
/// The betas are `f64`: PyTorch computes the bias corrections `1 - beta^t` in double
/// from Python floats, and an `f32` 0.999 (0.99900001287) would move `1 - beta2` by
/// 1.3e-5 relative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (finite, `>= 0`). Default 1e-3.
    pub lr: f32,
    /// Decay rates of the first and second moment estimates, each in `[0, 1)`. Default
    /// `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Added to the square root of the bias-corrected second moment (finite, `>= 0`).
    /// Default 1e-8.
    pub eps: f32,
    /// Weight decay (finite, `>= 0`): an L2 term added to the gradient for [`Adam`],
    /// decoupled (`p *= 1 - lr * weight_decay`) for [`AdamW`]. Default 0 for Adam, 1e-2
    /// for AdamW.
    pub weight_decay: f32,
    /// Keep the running maximum of the second moments (the AMSGrad variant). Default off.
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    /// [`AdamConfig::adam`].
    fn default() -> Self {
        Self::adam()
    }
}

impl AdamConfig {
    /// `torch.optim.Adam`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight
    /// decay, no AMSGrad.
    pub fn adam() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }

    /// `torch.optim.AdamW`'s defaults: as [`AdamConfig::adam`] with weight decay 1e-2.
    pub fn adamw() -> Self {
        AdamConfig {
            weight_decay: 1e-2,
            ..Self::adam()
        }
    }

    /// Sets the learning rate.
    pub fn with_lr(mut self, lr: f32) -> Self {
        self.lr = lr;
        self
    }

    /// Sets the betas.
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }

    /// Sets `eps`.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Turns AMSGrad on or off.
    pub fn with_amsgrad(mut self, amsgrad: bool) -> Self {
        self.amsgrad = amsgrad;
        self
    }

    /// Checks the values as PyTorch does, and that they are finite: `lr >= 0`,
    /// `eps >= 0`, both betas in `[0, 1)`, `weight_decay >= 0`.
    ///
    /// # Errors
    /// [`Error::Config`] naming `Adam` and the offending value ([`AdamW::new`] names
    /// `AdamW`).
    pub fn validate(&self) -> Result<()> {
        self.check("Adam")
    }

    fn check(&self, op: &'static str) -> Result<()> {
        check_lr(op, self.lr)?;
        let bad = |what: String| Err(Error::config(op, what));
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad(format!("eps = {} must be finite and >= 0", self.eps));
        }
        for (i, b) in [self.betas.0, self.betas.1].into_iter().enumerate() {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("betas[{i}] = {b} must be in [0, 1)"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay = {} must be finite and >= 0",
                self.weight_decay
            ));
        }
        Ok(())
    }
}

/// What Adam keeps for one parameter (PyTorch's `optimizer.state[p]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState {
    /// Steps taken on this parameter.
    pub step: u64,
    /// First moment estimate `m` (PyTorch's `exp_avg`).
    pub exp_avg: ArrayD<f32>,
    /// Second moment estimate `v` (`exp_avg_sq`).
    pub exp_avg_sq: ArrayD<f32>,
    /// With AMSGrad, the running maximum of `v` (`max_exp_avg_sq`).
    pub max_exp_avg_sq: Option<ArrayD<f32>>,
}

/// The update shared by Adam and AdamW.
#[derive(Debug, Clone)]
struct Core {
    op: &'static str,
    decoupled: bool,
    /// `config.lr` is the current rate.
    config: AdamConfig,
    base_lr: f32,
    states: Vec<(String, AdamState)>,
}

impl Core {
    fn new(op: &'static str, decoupled: bool, config: AdamConfig) -> Result<Self> {
        config.check(op)?;
        Ok(Core {
            op,
            decoupled,
            config,
            base_lr: config.lr,
            states: Vec::new(),
        })
    }

    fn state(&self, name: &str) -> Option<&AdamState> {
        self.states.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        check_lr(self.op, lr)?;
        self.config.lr = lr;
        Ok(())
    }

    fn reset(&mut self) {
        self.states.clear();
        self.config.lr = self.base_lr;
    }

    fn step(&mut self, net: &mut Sequential) -> Result<()> {
        let op = self.op;
        let AdamConfig {
            lr,
            betas: (beta1, beta2),
            eps,
            weight_decay: wd,
            amsgrad,
        } = self.config;
        let mut params = net.named_parameters_mut();
        // Check everything, and make the new states, before any parameter moves.
        let mut fresh = Vec::new();
        for p in &params {
            check_grad(op, p)?;
            match self.state(&p.name) {
                Some(s) => {
                    check_state(op, p, "exp_avg", s.exp_avg.shape())?;
                    check_state(op, p, "exp_avg_sq", s.exp_avg_sq.shape())?;
                    if let Some(mx) = &s.max_exp_avg_sq {
                        check_state(op, p, "max_exp_avg_sq", mx.shape())?;
                    }
                }
                None => {
                    let zeros = || {
                        try_zeros(op, p.value.raw_dim(), || {
                            format!("the state of parameter {} {:?}", p.name, p.value.shape())
                        })
                    };
                    fresh.push((
                        p.name.clone(),
                        AdamState {
                            step: 0,
                            exp_avg: zeros()?,
                            exp_avg_sq: zeros()?,
                            max_exp_avg_sq: if amsgrad { Some(zeros()?) } else { None },
                        },
                    ));
                }
            }
        }
        self.states.extend(fresh);

        // PyTorch's scalars: Python floats (f64), cast to f32 where they meet a tensor.
        let w1 = (1.0 - beta1) as f32;
        let b2 = beta2 as f32;
        let c2 = (1.0 - beta2) as f32;
        let decay = (1.0 - f64::from(lr) * f64::from(wd)) as f32;
        for p in params.iter_mut() {
            let state = &mut self
                .states
                .iter_mut()
                .find(|(n, _)| *n == p.name)
                .expect("made above")
                .1;
            state.step += 1;
            let t = state.step as f64;
            let bias_correction1 = 1.0 - beta1.powf(t);
            let bias_correction2 = 1.0 - beta2.powf(t);
            let neg_step_size = (-(f64::from(lr) / bias_correction1)) as f32;
            let bc2_sqrt = bias_correction2.powf(0.5) as f32;
            if self.decoupled && wd != 0.0 {
                p.value.mapv_inplace(|v| v * decay);
            }
            let l2 = !self.decoupled && wd != 0.0;
            let update = |v: &mut f32, g: f32, m: &mut f32, s: &mut f32, mx: Option<&mut f32>| {
                let g = if l2 { g + wd * *v } else { g };
                *m = lerp(*m, g, w1);
                *s = *s * b2 + c2 * g * g;
                let second = match mx {
                    Some(mx) => {
                        *mx = maximum(*mx, *s);
                        *mx
                    }
                    None => *s,
                };
                let denom = second.sqrt() / bc2_sqrt + eps;
                *v += neg_step_size * *m / denom;
            };
            let AdamState {
                exp_avg,
                exp_avg_sq,
                max_exp_avg_sq,
                ..
            } = state;
            let zip = Zip::from(&mut p.value)
                .and(&p.grad)
                .and(exp_avg)
                .and(exp_avg_sq);
            match max_exp_avg_sq {
                Some(mx) => zip
                    .and(mx)
                    .for_each(|v, &g, m, s, mx| update(v, g, m, s, Some(mx))),
                None => zip.for_each(|v, &g, m, s| update(v, g, m, s, None)),
            }
        }
        Ok(())
    }
}

/// `torch.lerp(start, end, weight)` for one value, as PyTorch's CPU kernel.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// `torch.maximum`: NaN wins.
fn maximum(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// `torch.optim.Adam` over the parameters of a [`crate::nn::Sequential`].
///
/// For each parameter `p` with gradient `g`, at its step `t` (from 1), [`Adam::step`]
/// applies PyTorch's single-tensor update, in f32 with the scalars in f64 as PyTorch's
/// Python floats:
///
/// ```text
/// g      = g + weight_decay * p                    (when weight_decay != 0)
/// m      = lerp(m, g, 1 - beta1)                   (= beta1 m + (1 - beta1) g)
/// v      = beta2 v + (1 - beta2) g^2
/// v_max  = max(v_max, v)                           (amsgrad; then v_max below)
/// denom  = sqrt(v) / sqrt(1 - beta2^t) + eps       (eps outside the square root)
/// p      = p - lr / (1 - beta1^t) * m / denom
/// ```
///
/// with `lr` the current learning rate (see [`Optimizer`]). The state ([`AdamState`]) is
/// kept per parameter name, so one optimiser stays with one model.
///
/// # Examples
/// ```
/// use convinit::train::{Adam, AdamConfig, Optimizer};
/// let opt = Adam::new(AdamConfig::adam().with_lr(3e-4))?;
/// assert_eq!(opt.lr(), 3e-4);
/// assert!(Adam::new(AdamConfig::adam().with_betas(0.9, 1.0)).is_err());
/// # Ok::<(), convinit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Adam {
    core: Core,
}

/// `torch.optim.AdamW`: [`Adam`] with decoupled weight decay. Before the Adam update
/// (without the L2 term), each step multiplies the parameter by
/// `1 - lr * weight_decay` (`lr` the current rate; computed in f64, then f32).
/// [`AdamConfig::adamw`] gives its defaults (weight decay 1e-2).
#[derive(Debug, Clone)]
pub struct AdamW {
    core: Core,
}

macro_rules! adam_api {
    ($ty:ident, $op:literal, $decoupled:expr, $defaults:ident) => {
        impl Default for $ty {
            #[doc = concat!("PyTorch's defaults, [`AdamConfig::", stringify!($defaults), "`].")]
            fn default() -> Self {
                Self::new(AdamConfig::$defaults()).expect("the defaults are valid")
            }
        }

        impl $ty {
            /// An optimiser with the given hyper-parameters.
            ///
            /// # Errors
            #[doc = concat!("As [`AdamConfig::validate`], naming `", $op, "`.")]
            pub fn new(config: AdamConfig) -> Result<Self> {
                Ok($ty {
                    core: Core::new($op, $decoupled, config)?,
                })
            }

            /// The hyper-parameters, with the current learning rate as `lr`.
            pub fn config(&self) -> &AdamConfig {
                &self.core.config
            }

            /// The state of parameter `name`, once a step has made it.
            pub fn state(&self, name: &str) -> Option<&AdamState> {
                self.core.state(name)
            }

            /// Updates every parameter of `net` from its accumulated gradient (as
            /// [`Optimizer::step`]).
            ///
            /// # Errors
            /// [`Error::Shape`] naming the parameter and both shapes when a gradient or a
            /// moment does not have its parameter's shape; [`Error::Alloc`] when a new state
            /// cannot be allocated. Nothing is updated then.
            pub fn step(&mut self, net: &mut Sequential) -> Result<()> {
                self.core.step(net)
            }
        }

        impl Optimizer for $ty {
            fn name(&self) -> &'static str {
                $op
            }

            fn step(&mut self, net: &mut Sequential) -> Result<()> {
                self.core.step(net)
            }

            fn lr(&self) -> f32 {
                self.core.config.lr
            }

            fn base_lr(&self) -> f32 {
                self.core.base_lr
            }

            fn set_lr(&mut self, lr: f32) -> Result<()> {
                self.core.set_lr(lr)
            }

            fn reset(&mut self) {
                self.core.reset();
            }
        }
    };
}

adam_api!(Adam, "Adam", false, adam);
adam_api!(AdamW, "AdamW", true, adamw);
