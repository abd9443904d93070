//! [`Init`]: an initialisation scheme as a value, for layer constructors, and
//! [`BiasInit`]: what it does to the bias.

use ndarray::{ArrayViewMut1, ArrayViewMutD};
use rand::Rng;

use super::{
    FanMode, Nonlinearity, check_normal, check_uniform, default_bounds, fill_constant, fill_normal,
    fill_uniform, kaiming_normal, kaiming_uniform, orthogonal, to_f32, trunc_normal, xavier_normal,
    xavier_uniform,
};
use crate::error::Result;

/// An initialisation scheme for a layer's weight, each variant one `torch.nn.init`
/// function with its parameters.
///
/// [`Init::apply`] initialises a weight and, if there is one, its bias: the bias follows
/// [`Init::bias_init`], which is **PyTorch's default bias rule for
/// [`Init::PytorchDefault`] and zeros for every other scheme** (the notebook's
/// "kaiming + zero bias"). [`Init::apply_with_bias`] takes an explicit [`BiasInit`]
/// instead.
///
/// The associated constants (`Init::KAIMING_UNIFORM`, ...) hold PyTorch's default
/// parameters; [`Init::default()`] is [`Init::PytorchDefault`], what `nn.Conv2d` and
/// `nn.Linear` do on construction.
///
/// # Examples
/// ```
/// use convinit::init::{FanMode, Init, Nonlinearity};
/// use ndarray::{Array1, Array2};
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut rng = StdRng::seed_from_u64(7);
/// let mut w = Array2::<f32>::zeros((50, 784));
/// let mut b = Array1::<f32>::ones(50);
/// let init = Init::KaimingUniform { mode: FanMode::FanIn, nonlinearity: Nonlinearity::Relu };
/// init.apply(w.view_mut().into_dyn(), Some(b.view_mut()), &mut rng)?;
/// assert!(b.iter().all(|&v| v == 0.0)); // every scheme but PytorchDefault zeroes the bias
///
/// Init::default().apply(w.view_mut().into_dyn(), Some(b.view_mut()), &mut rng)?;
/// assert!(b.iter().all(|&v| v.abs() <= 1.0 / 28.0)); // U(-1/sqrt(784), 1/sqrt(784))
/// # Ok::<(), convinit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Init {
    /// PyTorch's default reset of `Conv2d` / `Linear`
    /// ([`pytorch_default_reset`](super::pytorch_default_reset)): weight
    /// `kaiming_uniform_(a = sqrt 5)` = U(-1/sqrt(fan_in), 1/sqrt(fan_in)); bias
    /// [`BiasInit::PytorchDefault`].
    #[default]
    PytorchDefault,
    /// [`kaiming_uniform`](super::kaiming_uniform): U(-bound, bound),
    /// `bound = sqrt(3) * gain / sqrt(fan)`. Bias zeroed.
    KaimingUniform {
        /// Which fan to divide by (PyTorch: `FanIn`).
        mode: FanMode,
        /// Gives the gain; PyTorch's `a` is the slope of
        /// [`Nonlinearity::LeakyRelu`] (PyTorch: `leaky_relu` with `a = 0`).
        nonlinearity: Nonlinearity,
    },
    /// [`kaiming_normal`](super::kaiming_normal): N(0, std^2), `std = gain / sqrt(fan)`.
    /// Bias zeroed.
    KaimingNormal {
        /// Which fan to divide by (PyTorch: `FanIn`).
        mode: FanMode,
        /// Gives the gain; PyTorch's `a` is the slope of
        /// [`Nonlinearity::LeakyRelu`] (PyTorch: `leaky_relu` with `a = 0`).
        nonlinearity: Nonlinearity,
    },
    /// [`xavier_uniform`](super::xavier_uniform): U(-bound, bound),
    /// `bound = sqrt(3) * gain * sqrt(2 / (fan_in + fan_out))`. Bias zeroed.
    XavierUniform {
        /// Scale factor (PyTorch: 1).
        gain: f64,
    },
    /// [`xavier_normal`](super::xavier_normal): N(0, std^2),
    /// `std = gain * sqrt(2 / (fan_in + fan_out))`. Bias zeroed.
    XavierNormal {
        /// Scale factor (PyTorch: 1).
        gain: f64,
    },
    /// [`uniform`](super::uniform): U(low, high). Bias zeroed.
    Uniform {
        /// Lower bound (PyTorch: 0).
        low: f64,
        /// Upper bound (PyTorch: 1).
        high: f64,
    },
    /// [`normal`](super::normal): N(mean, std^2). Bias zeroed.
    Normal {
        /// Mean (PyTorch: 0).
        mean: f64,
        /// Standard deviation (PyTorch: 1).
        std: f64,
    },
    /// [`trunc_normal`](super::trunc_normal): N(mean, std^2) truncated to `[a, b]`.
    /// Bias zeroed.
    TruncNormal {
        /// Mean of the untruncated normal (PyTorch: 0).
        mean: f64,
        /// Standard deviation of the untruncated normal (PyTorch: 1).
        std: f64,
        /// Lower cut-off (PyTorch: -2).
        a: f64,
        /// Upper cut-off (PyTorch: 2).
        b: f64,
    },
    /// [`constant`](super::constant): every weight `value`. Bias zeroed.
    Constant(f64),
    /// [`zeros`](super::zeros). Bias zeroed.
    Zeros,
    /// [`ones`](super::ones). Bias zeroed.
    Ones,
    /// [`orthogonal`](super::orthogonal): a (semi-)orthogonal matrix times `gain`. Bias
    /// zeroed.
    Orthogonal {
        /// Scale factor (PyTorch: 1).
        gain: f64,
    },
}

impl Init {
    /// `kaiming_uniform_` with PyTorch's defaults: `FanIn`, `leaky_relu` with `a = 0`
    /// (gain sqrt 2).
    pub const KAIMING_UNIFORM: Init = Init::KaimingUniform {
        mode: FanMode::FanIn,
        nonlinearity: Nonlinearity::LeakyRelu(0.0),
    };
    /// `kaiming_normal_` with PyTorch's defaults: `FanIn`, `leaky_relu` with `a = 0`
    /// (gain sqrt 2).
    pub const KAIMING_NORMAL: Init = Init::KaimingNormal {
        mode: FanMode::FanIn,
        nonlinearity: Nonlinearity::LeakyRelu(0.0),
    };
    /// `xavier_uniform_` with PyTorch's default gain 1.
    pub const XAVIER_UNIFORM: Init = Init::XavierUniform { gain: 1.0 };
    /// `xavier_normal_` with PyTorch's default gain 1.
    pub const XAVIER_NORMAL: Init = Init::XavierNormal { gain: 1.0 };
    /// `uniform_` with PyTorch's defaults: U(0, 1).
    pub const UNIFORM: Init = Init::Uniform {
        low: 0.0,
        high: 1.0,
    };
    /// `normal_` with PyTorch's defaults: N(0, 1).
    pub const NORMAL: Init = Init::Normal {
        mean: 0.0,
        std: 1.0,
    };
    /// `trunc_normal_` with PyTorch's defaults: mean 0, std 1, truncated to [-2, 2].
    pub const TRUNC_NORMAL: Init = Init::TruncNormal {
        mean: 0.0,
        std: 1.0,
        a: -2.0,
        b: 2.0,
    };
    /// `orthogonal_` with PyTorch's default gain 1.
    pub const ORTHOGONAL: Init = Init::Orthogonal { gain: 1.0 };

    /// The bias rule [`Init::apply`] uses: [`BiasInit::PytorchDefault`] for
    /// [`Init::PytorchDefault`], [`BiasInit::Zeros`] for every other scheme.
    pub fn bias_init(&self) -> BiasInit {
        match self {
            Init::PytorchDefault => BiasInit::PytorchDefault,
            _ => BiasInit::Zeros,
        }
    }

    /// Initialises `weight` with this scheme, then `bias` (if any) with
    /// [`Init::bias_init`]. Draws come from `rng` in that order (weight, then bias), as in
    /// PyTorch's `reset_parameters`.
    ///
    /// # Errors
    /// As the scheme's function: [`Error::Shape`](crate::Error::Shape) for a weight of rank < 2 where fans are
    /// needed (every scheme but `Uniform`, `Normal`, `TruncNormal`, `Constant`, `Zeros`,
    /// `Ones`), [`Error::Config`](crate::Error::Config) for bad parameters. Everything is checked before
    /// anything is written.
    ///
    /// # Examples
    /// See [`Init`].
    pub fn apply<R: Rng + ?Sized>(
        &self,
        weight: ArrayViewMutD<'_, f32>,
        bias: Option<ArrayViewMut1<'_, f32>>,
        rng: &mut R,
    ) -> Result<()> {
        self.apply_with_bias(weight, bias, self.bias_init(), rng)
    }

    /// Initialises `weight` with this scheme, then `bias` (if any) with `bias_init`
    /// (its [`BiasInit::PytorchDefault`] takes `fan_in` from `weight`).
    ///
    /// # Errors
    /// As [`Init::apply`], plus [`Error::Config`](crate::Error::Config) for bad `bias_init` parameters and
    /// [`Error::Shape`](crate::Error::Shape) for [`BiasInit::PytorchDefault`] with a weight of rank < 2.
    /// Everything is checked before anything is written.
    ///
    /// # Examples
    /// ```
    /// use convinit::init::{BiasInit, Init};
    /// use ndarray::{Array1, Array2};
    /// use rand::{SeedableRng, rngs::StdRng};
    ///
    /// let mut w = Array2::<f32>::zeros((10, 20));
    /// let mut b = Array1::<f32>::zeros(10);
    /// Init::XAVIER_UNIFORM.apply_with_bias(
    ///     w.view_mut().into_dyn(), Some(b.view_mut()), BiasInit::Constant(0.1),
    ///     &mut StdRng::seed_from_u64(0))?;
    /// assert!(b.iter().all(|&v| v == 0.1f32));
    /// # Ok::<(), convinit::Error>(())
    /// ```
    pub fn apply_with_bias<R: Rng + ?Sized>(
        &self,
        weight: ArrayViewMutD<'_, f32>,
        bias: Option<ArrayViewMut1<'_, f32>>,
        bias_init: BiasInit,
        rng: &mut R,
    ) -> Result<()> {
        // Check the bias rule first, so a bad one leaves the weight untouched too.
        let bias_bound = bias_init.check(weight.shape())?;
        match *self {
            Init::PytorchDefault => {
                let (wb, _) = default_bounds(weight.shape())
                    .map_err(|e| super::rename(e, "pytorch_default_reset"))?;
                // = kaiming_uniform(FanIn, LeakyRelu(sqrt 5)), bound computed once in
                // `default_bounds`.
                if !weight.is_empty() {
                    fill_uniform(weight, -wb, wb, rng);
                }
            }
            Init::KaimingUniform { mode, nonlinearity } => {
                kaiming_uniform(weight, mode, nonlinearity, rng)?
            }
            Init::KaimingNormal { mode, nonlinearity } => {
                kaiming_normal(weight, mode, nonlinearity, rng)?
            }
            Init::XavierUniform { gain } => xavier_uniform(weight, gain, rng)?,
            Init::XavierNormal { gain } => xavier_normal(weight, gain, rng)?,
            Init::Uniform { low, high } => super::uniform(weight, low, high, rng)?,
            Init::Normal { mean, std } => super::normal(weight, mean, std, rng)?,
            Init::TruncNormal { mean, std, a, b } => trunc_normal(weight, mean, std, a, b, rng)?,
            Init::Constant(v) => super::constant(weight, v)?,
            Init::Zeros => fill_constant(weight, 0.0),
            Init::Ones => fill_constant(weight, 1.0),
            Init::Orthogonal { gain } => orthogonal(weight, gain, rng)?,
        }
        if let Some(b) = bias {
            bias_init.fill(b, bias_bound, rng);
        }
        Ok(())
    }
}

/// What [`Init::apply_with_bias`] does to the bias.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum BiasInit {
    /// PyTorch's default for `Conv2d` / `Linear`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    /// `fan_in` from the weight (`C_in / groups * prod(k)`), as
    /// [`default_bounds`](super::default_bounds). Like PyTorch (`if fan_in != 0`), a zero
    /// `fan_in` leaves the bias untouched.
    PytorchDefault,
    /// Every bias 0 (what every [`Init`] but `PytorchDefault` uses).
    #[default]
    Zeros,
    /// Every bias the given value (`constant_`).
    Constant(f64),
    /// U(low, high) (`uniform_`).
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// N(mean, std^2) (`normal_`).
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Leave the bias as it is.
    Unchanged,
}

impl BiasInit {
    /// Checks the parameters against the weight shape; for `PytorchDefault`, returns the
    /// bound (`None` when `fan_in == 0`).
    fn check(&self, weight_shape: &[usize]) -> Result<Option<f64>> {
        match *self {
            BiasInit::PytorchDefault => {
                let (fan_in, _) = super::fans(weight_shape)
                    .map_err(|e| super::rename(e, "pytorch_default_reset"))?;
                let (_, bb) = default_bounds(weight_shape)?;
                Ok((fan_in != 0).then_some(bb))
            }
            BiasInit::Constant(v) => to_f32("BiasInit::Constant", "value", v).map(|_| None),
            BiasInit::Uniform { low, high } => {
                check_uniform("BiasInit::Uniform", low, high).map(|_| None)
            }
            BiasInit::Normal { mean, std } => {
                check_normal("BiasInit::Normal", mean, std).map(|_| None)
            }
            BiasInit::Zeros | BiasInit::Unchanged => Ok(None),
        }
    }

    /// Fills a bias whose parameters [`BiasInit::check`] accepted.
    fn fill<R: Rng + ?Sized>(&self, bias: ArrayViewMut1<'_, f32>, bound: Option<f64>, rng: &mut R) {
        match *self {
            BiasInit::PytorchDefault => {
                if let Some(bb) = bound {
                    fill_uniform(bias, -bb, bb, rng);
                }
            }
            BiasInit::Zeros => fill_constant(bias, 0.0),
            BiasInit::Constant(v) => fill_constant(bias, v as f32),
            BiasInit::Uniform { low, high } => fill_uniform(bias, low, high, rng),
            BiasInit::Normal { mean, std } => fill_normal(bias, mean, std, rng),
            BiasInit::Unchanged => {}
        }
    }
}
