//! Weight initialisation, formula for formula as
//! [`torch.nn.init`](https://pytorch.org/docs/stable/nn.init.html).
//!
//! Every initialiser fills an `f32` tensor in place and cites the PyTorch formula it
//! reproduces. [`Init`] bundles the choices for layer constructors and says what happens
//! to the bias ([`BiasInit`]).
//!
//! ## Conventions
//! - **Tensors**: any [`ArrayViewMut`] of `f32` (any dimension, any memory layout). Values
//!   are written in logical (row-major) order, one after another from the caller's RNG.
//! - **Randomness**: an explicit `&mut R where R: Rng + ?Sized`; nothing runs in parallel,
//!   so a seed gives the same tensor on every run, at any thread count and for any memory
//!   layout. Every random number is drawn in `f64` (rand's `Uniform<f64>`, rand_distr's
//!   `Normal<f64>` / `StandardNormal`), the formula is evaluated in `f64` and the result is
//!   cast to `f32` once. Bit parity with PyTorch is impossible (different generator); the
//!   parity is of formulas and distributions.
//! - **Parameters** are `f64`, like the Python floats PyTorch takes. Non-finite values,
//!   `low > high`, `std < 0`, `a >= b` and friends are [`Error::Config`] naming the
//!   function and the values; a weight of rank < 2 where fans are needed is
//!   [`Error::Shape`]. Parameters are checked before anything is written, so on error the
//!   tensor is unchanged. Nothing here panics on user input.
//! - **Zero-element tensors**: PyTorch's `kaiming_*` warn and return; every initialiser
//!   here returns `Ok(())` without touching anything (after checking the rank and the
//!   parameters). This is also what makes `fan = 0` harmless: a weight of rank >= 2 with a
//!   zero fan has zero elements, so no `1 / sqrt(0)` is ever used.
//!
//! ## What [`Init`] does to the bias
//! | scheme | weight | bias ([`Init::bias_init`]) |
//! |---|---|---|
//! | [`Init::PytorchDefault`] | U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (`kaiming_uniform_(a = sqrt 5)`) | U(-1/sqrt(fan_in), 1/sqrt(fan_in)), untouched if `fan_in = 0` |
//! | every other scheme | as named | zeros |
//!
//! [`Init::apply_with_bias`] takes any other [`BiasInit`] (constant, uniform, normal,
//! unchanged, or PyTorch's rule under a different weight scheme).
//!
//! ## Example
//! ```
//! use convinit::init::{self, FanMode, Init, Nonlinearity};
//! use ndarray::{Array1, Array4};
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! let mut rng = StdRng::seed_from_u64(0);
//! let mut w = Array4::<f32>::zeros((32, 1, 5, 5));
//! // kaiming_normal_(w, mode='fan_in', nonlinearity='relu'): std = sqrt(2) / sqrt(25)
//! init::kaiming_normal(w.view_mut(), FanMode::FanIn, Nonlinearity::Relu, &mut rng)?;
//!
//! // The same through `Init`, which also zeroes the bias ("kaiming + zero bias").
//! let mut b = Array1::<f32>::ones(32);
//! let kaiming = Init::KaimingNormal { mode: FanMode::FanIn, nonlinearity: Nonlinearity::Relu };
//! kaiming.apply(w.view_mut().into_dyn(), Some(b.view_mut()), &mut rng)?;
//! assert!(b.iter().all(|&v| v == 0.0));
//! # Ok::<(), convinit::Error>(())
//! ```

mod qr;
mod scheme;
pub mod special;

pub use scheme::{BiasInit, Init};

use ndarray::{ArrayViewMut, ArrayViewMut1, ArrayViewMutD, Dimension};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

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
    ///
    /// For [`kaiming_uniform`] / [`kaiming_normal`] this slope is PyTorch's `a`:
    /// `kaiming_uniform_(w, a=0.2, nonlinearity='leaky_relu')` is
    /// `kaiming_uniform(w, FanMode::FanIn, Nonlinearity::LeakyRelu(0.2), rng)`. (PyTorch
    /// ignores `a` for every other nonlinearity, so there is nothing else to carry it.)
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
    ///
    /// # Examples
    /// ```
    /// use convinit::init::Nonlinearity;
    /// assert_eq!(Nonlinearity::from_name("tanh")?, Nonlinearity::Tanh);
    /// assert_eq!(Nonlinearity::from_name("leaky_relu")?, Nonlinearity::LeakyRelu(0.01));
    /// assert!(Nonlinearity::from_name("gelu").is_err());
    /// # Ok::<(), convinit::Error>(())
    /// ```
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
/// `sqrt(2 / (1 + a^2))` for leaky_relu with slope `a`; 3/4 for selu.
///
/// A non-finite slope gives a non-finite or zero gain here; the initialisers reject
/// non-finite gains.
///
/// # Examples
/// ```
/// use convinit::init::{calculate_gain, Nonlinearity};
/// assert_eq!(calculate_gain(Nonlinearity::Relu), 2f64.sqrt());
/// assert_eq!(calculate_gain(Nonlinearity::LeakyRelu(0.0)), 2f64.sqrt());
/// assert_eq!(calculate_gain(Nonlinearity::Tanh), 5.0 / 3.0);
/// ```
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
/// `fan_out = shape[0] * prod(shape[2..])` (PyTorch's `_calculate_fan_in_and_fan_out`:
/// the receptive field is the product of the dimensions after the first two).
///
/// For a conv weight `(C_out, C_in / groups, k...)` this is
/// `fan_in = C_in / groups * prod(k)`, `fan_out = C_out * prod(k)`.
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2, or fans that overflow `usize`.
///
/// # Examples
/// ```
/// use convinit::init::fans;
/// assert_eq!(fans(&[32, 1, 5, 5])?, (25, 800));
/// assert_eq!(fans(&[50, 784])?, (784, 50));
/// assert!(fans(&[10]).is_err());
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn fans(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::shape(
            "fans",
            format!("fan in and fan out need a weight of rank >= 2, got shape {shape:?}"),
        ));
    }
    let overflow = || Error::shape("fans", format!("fans of shape {shape:?} overflow usize"));
    let receptive = shape[2..]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let fan_in = shape[1].checked_mul(receptive).ok_or_else(overflow)?;
    let fan_out = shape[0].checked_mul(receptive).ok_or_else(overflow)?;
    Ok((fan_in, fan_out))
}

/// Which fan [`kaiming_uniform`] / [`kaiming_normal`] divide by (PyTorch's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FanMode {
    /// `mode='fan_in'` (PyTorch's default): preserves the variance of the activations in
    /// the forward pass.
    #[default]
    FanIn,
    /// `mode='fan_out'`: preserves the variance of the gradients in the backward pass.
    FanOut,
}

/// The bounds of PyTorch's default reset of `Conv2d` / `Linear` for a weight shape:
/// `(weight_bound, bias_bound)`.
///
/// The weight gets `kaiming_uniform_(a = sqrt 5)`: gain = sqrt(2 / (1 + 5)),
/// std = gain / sqrt(fan_in), bound = sqrt(3) * std (= 1 / sqrt(fan_in)); the bias gets
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)). `fan_in` comes from the weight, so for a grouped
/// conv it counts `C_in / groups`. A zero `fan_in` (only possible for a zero-element
/// weight) gives zero bounds.
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2.
///
/// # Examples
/// ```
/// use convinit::init::default_bounds;
/// let (w, b) = default_bounds(&[50, 784])?;
/// assert!((w - 1.0 / 28.0).abs() < 1e-15 && (b - 1.0 / 28.0).abs() < 1e-15);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn default_bounds(weight_shape: &[usize]) -> Result<(f64, f64)> {
    let (fan_in, _) = fans(weight_shape)?;
    if fan_in == 0 {
        return Ok((0.0, 0.0));
    }
    let gain = calculate_gain(Nonlinearity::LeakyRelu(5.0f64.sqrt()));
    let std = gain / (fan_in as f64).sqrt();
    Ok((3.0f64.sqrt() * std, 1.0 / (fan_in as f64).sqrt()))
}

/// PyTorch's default reset of `Conv2d` / `Linear` (`reset_parameters`): the weight gets
/// `kaiming_uniform_(a = sqrt 5)`, i.e. U(-w, w), then, if `fan_in != 0`, the bias gets
/// U(-b, b), with `(w, b)` from [`default_bounds`] (`w = b = 1 / sqrt(fan_in)`, `fan_in`
/// counting `C_in / groups`). As in PyTorch, the weight is drawn first, then the bias; a
/// zero-element weight is left untouched, and so is the bias when `fan_in = 0`.
///
/// The bias length is not checked against the weight (for a transposed conv it is not
/// `shape[0]`).
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2.
///
/// # Examples
/// ```
/// use convinit::init::pytorch_default_reset;
/// use ndarray::{Array1, Array4};
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut rng = StdRng::seed_from_u64(42);
/// // Conv2d(16, 32, 3, groups=4): weight (32, 4, 3, 3), fan_in = 4 * 9 = 36.
/// let mut w = Array4::<f32>::zeros((32, 4, 3, 3));
/// let mut b = Array1::<f32>::zeros(32);
/// pytorch_default_reset(w.view_mut().into_dyn(), Some(b.view_mut()), &mut rng)?;
/// let bound = 1.0 / 6.0;
/// assert!(w.iter().chain(b.iter()).all(|&v| v.abs() <= bound));
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn pytorch_default_reset<R: Rng + ?Sized>(
    weight: ArrayViewMutD<'_, f32>,
    bias: Option<ArrayViewMut1<'_, f32>>,
    rng: &mut R,
) -> Result<()> {
    Init::PytorchDefault.apply_with_bias(weight, bias, BiasInit::PytorchDefault, rng)
}

/// Fills with U(low, high): `uniform_(tensor, a=low, b=high)`.
///
/// Values lie in `[low, high)`, up to the final rounding to `f32`, which may give `high`
/// itself but never anything outside `[low as f32, high as f32]`. `low == high` fills
/// `low`, as PyTorch.
///
/// # Errors
/// [`Error::Config`] if `low` or `high` is not finite or not representable as `f32`,
/// `low > high`, or `high - low` overflows `f32` (PyTorch's checks).
///
/// # Examples
/// ```
/// use convinit::init::uniform;
/// use ndarray::Array2;
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut w = Array2::<f32>::zeros((3, 4));
/// uniform(w.view_mut(), -0.5, 0.5, &mut StdRng::seed_from_u64(1))?;
/// assert!(w.iter().all(|&v| (-0.5..=0.5).contains(&v)));
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn uniform<D: Dimension, R: Rng + ?Sized>(
    tensor: ArrayViewMut<'_, f32, D>,
    low: f64,
    high: f64,
    rng: &mut R,
) -> Result<()> {
    check_uniform("uniform", low, high)?;
    fill_uniform(tensor, low, high, rng);
    Ok(())
}

/// Fills with N(mean, std^2): `normal_(tensor, mean, std)`.
///
/// # Errors
/// [`Error::Config`] if `mean` or `std` is not finite or not representable as `f32`, or
/// `std < 0` (`std = 0` fills `mean`, as PyTorch).
///
/// # Examples
/// ```
/// use convinit::init::normal;
/// use ndarray::Array2;
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut w = Array2::<f32>::zeros((3, 4));
/// normal(w.view_mut(), 0.0, 0.02, &mut StdRng::seed_from_u64(1))?;
/// assert!(w.iter().any(|&v| v != 0.0));
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn normal<D: Dimension, R: Rng + ?Sized>(
    tensor: ArrayViewMut<'_, f32, D>,
    mean: f64,
    std: f64,
    rng: &mut R,
) -> Result<()> {
    check_normal("normal", mean, std)?;
    fill_normal(tensor, mean, std, rng);
    Ok(())
}

/// Fills with a normal N(mean, std^2) truncated to `[a, b]`: `trunc_normal_(tensor, mean,
/// std, a, b)`, by PyTorch's inverse-CDF method:
/// `l = cdf((a - mean) / std)`, `u = cdf((b - mean) / std)`, draw `p` from
/// U(2l - 1, 2u - 1), `x = erfinv(p) * std * sqrt(2) + mean`, clamped to `[a, b]`, where
/// `cdf(x) = (1 + erf(x / sqrt 2)) / 2` ([`special::norm_cdf`]). PyTorch's defaults are
/// mean 0, std 1, a = -2, b = 2 ([`Init::TRUNC_NORMAL`]).
///
/// Everything is computed in `f64` (PyTorch applies `erfinv` in the tensor's `f32`). Like
/// PyTorch's, the method loses accuracy when `[a, b]` lies far in a tail of the normal
/// (PyTorch warns when the mean is more than 2 std outside `[a, b]`); the values then pile
/// up at a bound but never leave `[a, b]` and are never NaN.
///
/// # Errors
/// [`Error::Config`] if a parameter is not finite or not representable as `f32`,
/// `std <= 0` (PyTorch divides by it) or `a >= b`.
///
/// # Examples
/// ```
/// use convinit::init::trunc_normal;
/// use ndarray::Array2;
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut w = Array2::<f32>::zeros((64, 64));
/// trunc_normal(w.view_mut(), 0.0, 1.0, -2.0, 2.0, &mut StdRng::seed_from_u64(3))?;
/// assert!(w.iter().all(|&v| (-2.0..=2.0).contains(&v)));
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn trunc_normal<D: Dimension, R: Rng + ?Sized>(
    tensor: ArrayViewMut<'_, f32, D>,
    mean: f64,
    std: f64,
    a: f64,
    b: f64,
    rng: &mut R,
) -> Result<()> {
    check_trunc_normal(mean, std, a, b)?;
    fill_trunc_normal(tensor, mean, std, a, b, rng);
    Ok(())
}

/// Fills with `value`: `constant_(tensor, val)`.
///
/// # Errors
/// [`Error::Config`] if `value` is not finite or not representable as `f32`.
///
/// # Examples
/// ```
/// use convinit::init::constant;
/// use ndarray::Array1;
///
/// let mut b = Array1::<f32>::zeros(4);
/// constant(b.view_mut(), 0.1)?;
/// assert!(b.iter().all(|&v| v == 0.1f32));
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn constant<D: Dimension>(tensor: ArrayViewMut<'_, f32, D>, value: f64) -> Result<()> {
    let v = to_f32("constant", "value", value)?;
    fill_constant(tensor, v);
    Ok(())
}

/// Fills with 0: `zeros_(tensor)`.
///
/// # Examples
/// ```
/// use convinit::init::zeros;
/// use ndarray::Array2;
///
/// let mut w = Array2::<f32>::ones((2, 3));
/// zeros(w.view_mut());
/// assert!(w.iter().all(|&v| v == 0.0));
/// ```
pub fn zeros<D: Dimension>(tensor: ArrayViewMut<'_, f32, D>) {
    fill_constant(tensor, 0.0);
}

/// Fills with 1: `ones_(tensor)`.
///
/// # Examples
/// ```
/// use convinit::init::ones;
/// use ndarray::Array2;
///
/// let mut w = Array2::<f32>::zeros((2, 3));
/// ones(w.view_mut());
/// assert!(w.iter().all(|&v| v == 1.0));
/// ```
pub fn ones<D: Dimension>(tensor: ArrayViewMut<'_, f32, D>) {
    fill_constant(tensor, 1.0);
}

/// The standard deviation `kaiming_uniform_` / `kaiming_normal_` use for a weight shape:
/// `std = gain / sqrt(fan)`, with `gain = calculate_gain(nonlinearity)` (PyTorch's `a` is
/// the slope of [`Nonlinearity::LeakyRelu`]) and `fan` the weight's `fan_in` or `fan_out`
/// per `mode`. Zero for a zero fan (zero-element weight).
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2; [`Error::Config`] for a non-finite
/// leaky-ReLU slope.
///
/// # Examples
/// ```
/// use convinit::init::{kaiming_std, FanMode, Nonlinearity};
/// let std = kaiming_std(&[32, 1, 5, 5], FanMode::FanIn, Nonlinearity::Relu)?;
/// assert!((std - 2f64.sqrt() / 5.0).abs() < 1e-15);
/// // kaiming_uniform_(w, a=math.sqrt(5)): PyTorch's default Conv2d weight.
/// let std = kaiming_std(&[50, 784], FanMode::FanIn, Nonlinearity::LeakyRelu(5f64.sqrt()))?;
/// assert!((3f64.sqrt() * std - 1.0 / 28.0).abs() < 1e-15);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn kaiming_std(shape: &[usize], mode: FanMode, nonlinearity: Nonlinearity) -> Result<f64> {
    kaiming_std_op("kaiming_std", shape, mode, nonlinearity)
}

fn kaiming_std_op(
    op: &'static str,
    shape: &[usize],
    mode: FanMode,
    nonlinearity: Nonlinearity,
) -> Result<f64> {
    let (fan_in, fan_out) = fans(shape).map_err(|e| rename(e, op))?;
    if let Nonlinearity::LeakyRelu(a) = nonlinearity
        && !a.is_finite()
    {
        return Err(Error::config(
            op,
            format!("the leaky_relu negative slope a = {a} is not finite"),
        ));
    }
    let gain = calculate_gain(nonlinearity);
    let fan = match mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    };
    Ok(if fan == 0 {
        0.0
    } else {
        gain / (fan as f64).sqrt()
    })
}

/// He / Kaiming uniform: `kaiming_uniform_(tensor, a, mode, nonlinearity)`, U(-bound,
/// bound) with `bound = sqrt(3) * std` and `std = gain / sqrt(fan)` ([`kaiming_std`]).
/// PyTorch's defaults: `a = 0`, `FanIn`, `leaky_relu` (gain sqrt 2), see
/// [`Init::KAIMING_UNIFORM`].
///
/// PyTorch's `a` (used only for `leaky_relu`) is the slope of
/// [`Nonlinearity::LeakyRelu`]: `kaiming_uniform_(w, a=0.2)` is
/// `kaiming_uniform(w, FanMode::FanIn, Nonlinearity::LeakyRelu(0.2), rng)`, so there is one
/// slope and it cannot disagree with another. A zero-element tensor is left untouched.
///
/// # Errors
/// [`Error::Shape`] for a tensor of rank < 2; [`Error::Config`] for a non-finite
/// leaky-ReLU slope.
///
/// # Examples
/// ```
/// use convinit::init::{kaiming_uniform, FanMode, Nonlinearity};
/// use ndarray::Array2;
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut w = Array2::<f32>::zeros((256, 1024));
/// kaiming_uniform(w.view_mut(), FanMode::FanIn, Nonlinearity::Relu, &mut StdRng::seed_from_u64(0))?;
/// let bound = (6.0f64 / 1024.0).sqrt() as f32; // sqrt(3) * sqrt(2) / sqrt(fan_in)
/// assert!(w.iter().all(|&v| v.abs() <= bound));
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn kaiming_uniform<D: Dimension, R: Rng + ?Sized>(
    tensor: ArrayViewMut<'_, f32, D>,
    mode: FanMode,
    nonlinearity: Nonlinearity,
    rng: &mut R,
) -> Result<()> {
    let std = kaiming_std_op("kaiming_uniform", tensor.shape(), mode, nonlinearity)?;
    if tensor.is_empty() {
        return Ok(());
    }
    let bound = 3.0f64.sqrt() * std;
    fill_uniform(tensor, -bound, bound, rng);
    Ok(())
}

/// He / Kaiming normal: `kaiming_normal_(tensor, a, mode, nonlinearity)`, N(0, std^2)
/// with `std = gain / sqrt(fan)` ([`kaiming_std`]). PyTorch's defaults: `a = 0`, `FanIn`,
/// `leaky_relu` (gain sqrt 2), see [`Init::KAIMING_NORMAL`].
///
/// PyTorch's `a` (used only for `leaky_relu`) is the slope of
/// [`Nonlinearity::LeakyRelu`]: `kaiming_normal_(w, a=0.2)` is
/// `kaiming_normal(w, FanMode::FanIn, Nonlinearity::LeakyRelu(0.2), rng)`, so there is one
/// slope and it cannot disagree with another. A zero-element tensor is left untouched.
///
/// # Errors
/// [`Error::Shape`] for a tensor of rank < 2; [`Error::Config`] for a non-finite
/// leaky-ReLU slope.
///
/// # Examples
/// ```
/// use convinit::init::{kaiming_normal, FanMode, Nonlinearity};
/// use ndarray::Array4;
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut w = Array4::<f32>::zeros((8, 1, 5, 5));
/// kaiming_normal(w.view_mut(), FanMode::FanOut, Nonlinearity::Relu, &mut StdRng::seed_from_u64(0))?;
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn kaiming_normal<D: Dimension, R: Rng + ?Sized>(
    tensor: ArrayViewMut<'_, f32, D>,
    mode: FanMode,
    nonlinearity: Nonlinearity,
    rng: &mut R,
) -> Result<()> {
    let std = kaiming_std_op("kaiming_normal", tensor.shape(), mode, nonlinearity)?;
    if tensor.is_empty() {
        return Ok(());
    }
    fill_normal(tensor, 0.0, std, rng);
    Ok(())
}

/// The standard deviation `xavier_uniform_` / `xavier_normal_` use for a weight shape:
/// `std = gain * sqrt(2 / (fan_in + fan_out))`. Zero when both fans are zero
/// (zero-element weight).
///
/// # Errors
/// [`Error::Shape`] for a weight of rank < 2; [`Error::Config`] for a non-finite or
/// negative `gain` (PyTorch's `uniform_` / `normal_` reject the negative bound / std it
/// gives).
///
/// # Examples
/// ```
/// use convinit::init::xavier_std;
/// assert!((xavier_std(&[50, 784], 1.0)? - (2.0f64 / 834.0).sqrt()).abs() < 1e-15);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn xavier_std(shape: &[usize], gain: f64) -> Result<f64> {
    xavier_std_op("xavier_std", shape, gain)
}

fn xavier_std_op(op: &'static str, shape: &[usize], gain: f64) -> Result<f64> {
    let (fan_in, fan_out) = fans(shape).map_err(|e| rename(e, op))?;
    if !gain.is_finite() || gain < 0.0 {
        return Err(Error::config(
            op,
            format!("gain = {gain} must be finite and >= 0"),
        ));
    }
    let fan_sum = fan_in as f64 + fan_out as f64;
    Ok(if fan_sum == 0.0 {
        0.0
    } else {
        gain * (2.0 / fan_sum).sqrt()
    })
}

/// Glorot / Xavier uniform: `xavier_uniform_(tensor, gain)`, U(-bound, bound) with
/// `bound = sqrt(3) * std`, `std = gain * sqrt(2 / (fan_in + fan_out))`
/// ([`xavier_std`]). PyTorch's default gain is 1. A zero-element tensor is left
/// untouched.
///
/// # Errors
/// [`Error::Shape`] for a tensor of rank < 2; [`Error::Config`] for a non-finite or
/// negative `gain`.
///
/// # Examples
/// ```
/// use convinit::init::xavier_uniform;
/// use ndarray::Array2;
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut w = Array2::<f32>::zeros((50, 784));
/// xavier_uniform(w.view_mut(), 1.0, &mut StdRng::seed_from_u64(0))?;
/// let bound = (6.0f64 / 834.0).sqrt() as f32;
/// assert!(w.iter().all(|&v| v.abs() <= bound));
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn xavier_uniform<D: Dimension, R: Rng + ?Sized>(
    tensor: ArrayViewMut<'_, f32, D>,
    gain: f64,
    rng: &mut R,
) -> Result<()> {
    let std = xavier_std_op("xavier_uniform", tensor.shape(), gain)?;
    if tensor.is_empty() {
        return Ok(());
    }
    let bound = 3.0f64.sqrt() * std;
    fill_uniform(tensor, -bound, bound, rng);
    Ok(())
}

/// Glorot / Xavier normal: `xavier_normal_(tensor, gain)`, N(0, std^2) with
/// `std = gain * sqrt(2 / (fan_in + fan_out))` ([`xavier_std`]). PyTorch's default gain
/// is 1. A zero-element tensor is left untouched.
///
/// # Errors
/// [`Error::Shape`] for a tensor of rank < 2; [`Error::Config`] for a non-finite or
/// negative `gain`.
///
/// # Examples
/// ```
/// use convinit::init::xavier_normal;
/// use ndarray::Array2;
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut w = Array2::<f32>::zeros((50, 784));
/// xavier_normal(w.view_mut(), 1.0, &mut StdRng::seed_from_u64(0))?;
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn xavier_normal<D: Dimension, R: Rng + ?Sized>(
    tensor: ArrayViewMut<'_, f32, D>,
    gain: f64,
    rng: &mut R,
) -> Result<()> {
    let std = xavier_std_op("xavier_normal", tensor.shape(), gain)?;
    if tensor.is_empty() {
        return Ok(());
    }
    fill_normal(tensor, 0.0, std, rng);
    Ok(())
}

/// A (semi-)orthogonal matrix: `orthogonal_(tensor, gain)` (Saxe et al. 2013).
///
/// As PyTorch: flatten to `rows = shape[0]`, `cols = numel / rows`; draw a `rows x cols`
/// N(0, 1) matrix (row-major); transpose it if `rows < cols`; take its QR decomposition
/// (a Householder QR in `f64` here); multiply `Q` by `sign(diag(R))`; transpose back if
/// needed; scale by `gain`. The result satisfies `W W^T = gain^2 I` when `rows <= cols`
/// and `W^T W = gain^2 I` otherwise. A zero-element tensor is left untouched.
///
/// # Errors
/// [`Error::Shape`] for a tensor of rank < 2; [`Error::Config`] for a non-finite `gain`
/// (a negative gain is allowed, as in PyTorch).
///
/// # Examples
/// ```
/// use convinit::init::orthogonal;
/// use ndarray::Array2;
/// use rand::{SeedableRng, rngs::StdRng};
///
/// let mut w = Array2::<f32>::zeros((3, 5));
/// orthogonal(w.view_mut(), 1.0, &mut StdRng::seed_from_u64(0))?;
/// let wwt = w.dot(&w.t());
/// for i in 0..3 {
///     for j in 0..3 {
///         let want = if i == j { 1.0 } else { 0.0 };
///         assert!((wwt[[i, j]] - want).abs() < 1e-5);
///     }
/// }
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn orthogonal<D: Dimension, R: Rng + ?Sized>(
    tensor: ArrayViewMut<'_, f32, D>,
    gain: f64,
    rng: &mut R,
) -> Result<()> {
    if tensor.ndim() < 2 {
        return Err(Error::shape(
            "orthogonal",
            format!(
                "only tensors with 2 or more dimensions are supported, got shape {:?}",
                tensor.shape()
            ),
        ));
    }
    if !gain.is_finite() {
        return Err(Error::config(
            "orthogonal",
            format!("gain = {gain} is not finite"),
        ));
    }
    if tensor.is_empty() {
        return Ok(());
    }
    let rows = tensor.shape()[0];
    let cols = tensor.len() / rows;
    let flat: Vec<f64> = (0..rows * cols)
        .map(|_| StandardNormal.sample(&mut *rng))
        .collect();
    let q = if rows < cols {
        // Factor flat^T (cols x rows); its column-major storage is flat's row-major one,
        // and Q^T (rows x cols) row-major is Q's column-major storage.
        let mut a = flat;
        qr::householder_q_signed(&mut a, cols, rows)
    } else {
        // Factor flat (rows x cols): transpose to column-major, and Q back to row-major.
        let mut a = vec![0.0f64; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                a[j * rows + i] = flat[i * cols + j];
            }
        }
        let q = qr::householder_q_signed(&mut a, rows, cols);
        let mut out = vec![0.0f64; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                out[i * cols + j] = q[j * rows + i];
            }
        }
        out
    };
    let mut tensor = tensor;
    tensor
        .iter_mut()
        .zip(q)
        .for_each(|(t, v)| *t = (v * gain) as f32);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Checks and fills shared by the functions above and by `Init`.

/// Re-labels a `fans` shape error with the initialiser that needed the fans.
fn rename(e: Error, op: &'static str) -> Error {
    match e {
        Error::Shape { message, .. } => Error::Shape { op, message },
        other => other,
    }
}

/// `value` as an `f32`, or a config error if it is not finite or out of `f32` range.
fn to_f32(op: &'static str, name: &str, value: f64) -> Result<f32> {
    if !value.is_finite() {
        return Err(Error::config(op, format!("{name} = {value} is not finite")));
    }
    if value.abs() > f32::MAX as f64 {
        return Err(Error::config(
            op,
            format!("{name} = {value} is out of range for f32"),
        ));
    }
    Ok(value as f32)
}

fn check_uniform(op: &'static str, low: f64, high: f64) -> Result<()> {
    to_f32(op, "low", low)?;
    to_f32(op, "high", high)?;
    if low > high {
        return Err(Error::config(
            op,
            format!("expects low <= high, got low = {low}, high = {high}"),
        ));
    }
    if high - low > f32::MAX as f64 {
        return Err(Error::config(
            op,
            format!("high - low overflows f32, got low = {low}, high = {high}"),
        ));
    }
    Ok(())
}

fn check_normal(op: &'static str, mean: f64, std: f64) -> Result<()> {
    to_f32(op, "mean", mean)?;
    to_f32(op, "std", std)?;
    if std < 0.0 {
        return Err(Error::config(
            op,
            format!("expects std >= 0, got std = {std}"),
        ));
    }
    Ok(())
}

fn check_trunc_normal(mean: f64, std: f64, a: f64, b: f64) -> Result<()> {
    let op = "trunc_normal";
    to_f32(op, "mean", mean)?;
    to_f32(op, "std", std)?;
    to_f32(op, "a", a)?;
    to_f32(op, "b", b)?;
    if std <= 0.0 {
        return Err(Error::config(
            op,
            format!("expects std > 0, got std = {std}"),
        ));
    }
    if a >= b {
        return Err(Error::config(
            op,
            format!("expects a < b, got a = {a}, b = {b}"),
        ));
    }
    Ok(())
}

/// U(low, high) in `f64`, cast to `f32`; `low == high` fills `low`. The parameters are
/// checked (finite, `low <= high`).
fn fill_uniform<D: Dimension, R: Rng + ?Sized>(
    mut tensor: ArrayViewMut<'_, f32, D>,
    low: f64,
    high: f64,
    rng: &mut R,
) {
    match Uniform::new(low, high) {
        Ok(dist) => tensor
            .iter_mut()
            .for_each(|t| *t = dist.sample(&mut *rng) as f32),
        // Only `low == high` gets here once the parameters are checked.
        Err(_) => tensor.fill(low as f32),
    }
}

/// N(mean, std^2): `mean + std * z` with `z` from rand_distr's `StandardNormal` in `f64`
/// (what `Normal<f64>` computes), cast to `f32`. The parameters are checked.
fn fill_normal<D: Dimension, R: Rng + ?Sized>(
    mut tensor: ArrayViewMut<'_, f32, D>,
    mean: f64,
    std: f64,
    rng: &mut R,
) {
    tensor.iter_mut().for_each(|t| {
        let z: f64 = StandardNormal.sample(&mut *rng);
        *t = (mean + std * z) as f32;
    });
}

fn fill_trunc_normal<D: Dimension, R: Rng + ?Sized>(
    mut tensor: ArrayViewMut<'_, f32, D>,
    mean: f64,
    std: f64,
    a: f64,
    b: f64,
    rng: &mut R,
) {
    let l = special::norm_cdf((a - mean) / std);
    let u = special::norm_cdf((b - mean) / std);
    let (lo, hi) = (2.0 * l - 1.0, 2.0 * u - 1.0);
    let dist = Uniform::new(lo, hi).ok();
    let scale = std * std::f64::consts::SQRT_2;
    tensor.iter_mut().for_each(|t| {
        // lo == hi (both bounds deep in one tail): every draw is lo, as U(lo, lo).
        let p = dist.as_ref().map_or(lo, |d| d.sample(&mut *rng));
        let x = special::erfinv(p) * scale + mean;
        *t = x.clamp(a, b) as f32;
    });
}

fn fill_constant<D: Dimension>(mut tensor: ArrayViewMut<'_, f32, D>, value: f32) {
    tensor.fill(value);
}
