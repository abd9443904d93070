//! Weight initialisation, formula for formula as `torch.nn.init`.
//!
//! (Work in progress: only PyTorch's default reset is here so far.)

use ndarray::{ArrayViewMut1, ArrayViewMutD};
use rand::Rng;
use rand_distr::{Distribution, Uniform};

use crate::error::{Error, Result};

/// A nonlinearity, as named by `torch.nn.init.calculate_gain`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Nonlinearity {
    /// `linear`: gain 1.
    Linear,
    /// `conv1d`: gain 1.
    Conv1d,
    /// `conv2d`: gain 1.
    Conv2d,
    /// `conv3d`: gain 1.
    Conv3d,
    /// `conv_transpose1d`: gain 1.
    ConvTranspose1d,
    /// `conv_transpose2d`: gain 1.
    ConvTranspose2d,
    /// `conv_transpose3d`: gain 1.
    ConvTranspose3d,
    /// `sigmoid`: gain 1.
    Sigmoid,
    /// `tanh`: gain 5/3.
    Tanh,
    /// `relu`: gain sqrt(2).
    Relu,
    /// `leaky_relu` with the given negative slope: gain sqrt(2 / (1 + slope^2)).
    /// PyTorch's default slope is 0.01 ([`Nonlinearity::LEAKY_RELU_DEFAULT`]).
    LeakyRelu(f64),
    /// `selu`: gain 3/4.
    Selu,
}

impl Nonlinearity {
    /// `leaky_relu` with PyTorch's default slope 0.01.
    pub const LEAKY_RELU_DEFAULT: Nonlinearity = Nonlinearity::LeakyRelu(0.01);

    /// Parses PyTorch's name (`"relu"`, `"tanh"`, `"leaky_relu"` with slope 0.01, ...).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown name.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "linear" => Nonlinearity::Linear,
            "conv1d" => Nonlinearity::Conv1d,
            "conv2d" => Nonlinearity::Conv2d,
            "conv3d" => Nonlinearity::Conv3d,
            "conv_transpose1d" => Nonlinearity::ConvTranspose1d,
            "conv_transpose2d" => Nonlinearity::ConvTranspose2d,
            "conv_transpose3d" => Nonlinearity::ConvTranspose3d,
            "sigmoid" => Nonlinearity::Sigmoid,
            "tanh" => Nonlinearity::Tanh,
            "relu" => Nonlinearity::Relu,
            "leaky_relu" => Nonlinearity::LEAKY_RELU_DEFAULT,
            "selu" => Nonlinearity::Selu,
            other => {
                return Err(Error::config(
                    "calculate_gain",
                    format!("unsupported nonlinearity {other:?}"),
                ));
            }
        })
    }
}

/// The recommended gain for a nonlinearity, as `torch.nn.init.calculate_gain`:
/// 1 for linear, conv and sigmoid; 5/3 for tanh; sqrt(2) for relu;
/// sqrt(2 / (1 + a^2)) for leaky_relu with slope `a`; 3/4 for selu.
pub fn calculate_gain(nonlinearity: Nonlinearity) -> f64 {
    match nonlinearity {
        Nonlinearity::Linear
        | Nonlinearity::Conv1d
        | Nonlinearity::Conv2d
        | Nonlinearity::Conv3d
        | Nonlinearity::ConvTranspose1d
        | Nonlinearity::ConvTranspose2d
        | Nonlinearity::ConvTranspose3d
        | Nonlinearity::Sigmoid => 1.0,
        Nonlinearity::Tanh => 5.0 / 3.0,
        Nonlinearity::Relu => 2.0f64.sqrt(),
        Nonlinearity::LeakyRelu(a) => (2.0 / (1.0 + a * a)).sqrt(),
        Nonlinearity::Selu => 3.0 / 4.0,
    }
}

/// `fan_in` and `fan_out` of a weight of rank >= 2: `fan_in = shape[1] * prod(shape[2..])`,
/// `fan_out = shape[0] * prod(shape[2..])` (PyTorch's `_calculate_fan_in_and_fan_out`).
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2.
pub fn fans(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::shape(
            "fans",
            format!("fan in and fan out need a weight of rank >= 2, got shape {shape:?}"),
        ));
    }
    let receptive: usize = shape[2..].iter().product();
    Ok((shape[1] * receptive, shape[0] * receptive))
}

/// The bounds of PyTorch's default reset of `Conv2d` / `Linear` for a weight shape:
/// `(weight_bound, bias_bound)`.
///
/// The weight gets `kaiming_uniform_(a = sqrt 5)`: gain = sqrt(2 / (1 + 5)),
/// std = gain / sqrt(fan_in), bound = sqrt(3) * std (= 1 / sqrt(fan_in)); the bias gets
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)). `fan_in` comes from the weight, so for a grouped
/// conv it counts `C_in / groups`. A zero `fan_in` gives zero bounds.
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2.
pub fn default_bounds(weight_shape: &[usize]) -> Result<(f64, f64)> {
    let (fan_in, _) = fans(weight_shape)?;
    if fan_in == 0 {
        return Ok((0.0, 0.0));
    }
    let gain = calculate_gain(Nonlinearity::LeakyRelu(5.0f64.sqrt()));
    let std = gain / (fan_in as f64).sqrt();
    Ok((3.0f64.sqrt() * std, 1.0 / (fan_in as f64).sqrt()))
}

/// PyTorch's default reset of `Conv2d` / `Linear`: weight U(-w, w) and bias U(-b, b)
/// with `(w, b)` from [`default_bounds`].
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2.
pub fn pytorch_default_reset<R: Rng + ?Sized>(
    mut weight: ArrayViewMutD<'_, f32>,
    bias: Option<ArrayViewMut1<'_, f32>>,
    rng: &mut R,
) -> Result<()> {
    let (wb, bb) = default_bounds(weight.shape())?;
    let fill = |bound: f64| -> Result<Uniform<f32>> {
        Uniform::new_inclusive(-bound as f32, bound as f32)
            .map_err(|e| Error::config("pytorch_default_reset", e.to_string()))
    };
    let dist = fill(wb)?;
    weight.iter_mut().for_each(|w| *w = dist.sample(rng));
    if let Some(mut b) = bias {
        let dist = fill(bb)?;
        b.iter_mut().for_each(|v| *v = dist.sample(rng));
    }
    Ok(())
}
