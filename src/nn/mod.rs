//! Layers with state: parameters, gradients and what backward needs from forward.
//!
//! Every layer implements [`Layer`]: [`Layer::forward`] keeps what the backward pass
//! needs, [`Layer::backward`] takes the gradient of the output, **adds** the parameter
//! gradients (`+=`, like PyTorch's `.grad`) and returns the gradient of the input.
//! [`Layer::zero_grad`] clears the gradients. [`Sequential`] chains layers and names
//! their parameters like PyTorch's `state_dict` (`"0.weight"`, `"0.bias"`, ...).
//!
//! The layers call the functional ops in [`crate::ops`].
//!
//! Inside a [`Sequential`], activations travel as shared arrays ([`ArcArrayD`]):
//! [`Layer::forward_shared`] lets a layer keep its input (or output) for backward
//! without copying it, and [`Layer::backward_owned`] lets it write the input gradient
//! over the output gradient's buffer. Both default to [`Layer::forward`] /
//! [`Layer::backward`], so a layer only overrides them to save copies.
//!
//! The first layer's input is the data, whose gradient nobody needs:
//! [`Sequential::backward_params`] runs the backward pass without it (through
//! [`Layer::backward_params`] on layer 0), as PyTorch does for an input without
//! `requires_grad`. [`crate::train::fit`] trains that way.
//!
//! # State: parameters, buffers, training mode
//! A layer's state is its **parameters** ([`Layer::params`]: what an optimiser updates,
//! each with its gradient) and its **buffers** ([`Layer::buffers`]: non-trainable tensors
//! such as a [`BatchNorm2d`]'s running statistics, saved with the weights but never seen
//! by an optimiser, which iterates [`Sequential::named_parameters_mut`] only). Together
//! they are PyTorch's `state_dict`: [`Sequential::named_parameters`] then
//! [`Sequential::named_buffers`] name them `"1.weight"`, `"1.running_mean"`, ...
//!
//! Every layer is in training mode or evaluation mode ([`Layer::set_training`],
//! [`Sequential::train`] / [`Sequential::eval`], training by default as in PyTorch).
//! Only layers whose computation depends on it keep the flag ([`BatchNorm2d`]: batch or
//! running statistics; [`Dropout`]: a random mask or the identity); the others ignore it.
//!
//! Inference that keeps nothing for backward is [`Sequential::infer`] (through
//! [`Layer::infer`]): PyTorch's `with torch.no_grad()`, in the layers' current mode.

use std::any::Any;
use std::fmt;

use ndarray::{ArcArrayD, Array, Array1, ArrayD, ArrayViewD, ArrayViewMutD, Dimension};

use crate::error::{Error, Result};

mod activation;
mod batch_norm;
mod conv;
mod dropout;
mod flatten;
mod general_relu;
mod linear;
mod pool;
mod sequential;

pub use activation::{LeakyRelu, Relu, Sigmoid, Tanh};
pub use batch_norm::{BatchNorm2d, BatchNorm2dConfig};
pub use conv::{Conv2d, Conv2dConfig};
pub use dropout::{Dropout, Dropout2d};
pub use flatten::Flatten;
pub use general_relu::GeneralRelu;
pub use linear::{Linear, LinearConfig};
pub use pool::{AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d};
pub use sequential::Sequential;

/// A parameter and its gradient, read-only.
#[derive(Debug, Clone)]
pub struct Param<'a> {
    /// `"weight"` or `"bias"` inside a layer; `"<index>.weight"` from
    /// [`Sequential::named_parameters`].
    pub name: String,
    /// The parameter's value.
    pub value: ArrayViewD<'a, f32>,
    /// Its accumulated gradient (same shape).
    pub grad: ArrayViewD<'a, f32>,
}

/// A parameter and its gradient, mutable (to apply an initialisation or an optimiser step).
#[derive(Debug)]
pub struct ParamMut<'a> {
    /// As [`Param::name`].
    pub name: String,
    /// The parameter's value.
    pub value: ArrayViewMutD<'a, f32>,
    /// Its accumulated gradient (same shape).
    pub grad: ArrayViewMutD<'a, f32>,
}

/// A buffer's value, read-only: `f32` (running statistics) or `i64`
/// (`num_batches_tracked`), as in PyTorch's `state_dict`.
#[derive(Debug, Clone)]
pub enum BufferView<'a> {
    /// A float32 tensor.
    F32(ArrayViewD<'a, f32>),
    /// An int64 tensor (a 0-dimensional one for `num_batches_tracked`).
    I64(ArrayViewD<'a, i64>),
}

impl BufferView<'_> {
    /// The tensor's shape (`[]` for a scalar).
    pub fn shape(&self) -> &[usize] {
        match self {
            BufferView::F32(a) => a.shape(),
            BufferView::I64(a) => a.shape(),
        }
    }
}

/// A buffer's value, mutable (to load a state dict).
#[derive(Debug)]
pub enum BufferViewMut<'a> {
    /// A float32 tensor.
    F32(ArrayViewMutD<'a, f32>),
    /// An int64 tensor.
    I64(ArrayViewMutD<'a, i64>),
}

impl BufferViewMut<'_> {
    /// The tensor's shape (`[]` for a scalar).
    pub fn shape(&self) -> &[usize] {
        match self {
            BufferViewMut::F32(a) => a.shape(),
            BufferViewMut::I64(a) => a.shape(),
        }
    }
}

/// A non-trainable tensor of a layer's state (a running statistic), read-only: saved
/// with the weights, never given to an optimiser.
#[derive(Debug, Clone)]
pub struct Buffer<'a> {
    /// `"running_mean"` inside a layer; `"<index>.running_mean"` from
    /// [`Sequential::named_buffers`].
    pub name: String,
    /// Its value.
    pub value: BufferView<'a>,
}

/// A buffer, mutable.
#[derive(Debug)]
pub struct BufferMut<'a> {
    /// As [`Buffer::name`].
    pub name: String,
    /// Its value.
    pub value: BufferViewMut<'a>,
}

/// A layer: forward keeps what backward needs; backward accumulates parameter gradients
/// and returns the input gradient.
///
/// Object safe and `Send + Sync`, so a [`Sequential`] holds `Box<dyn Layer>`. Use
/// [`Layer::as_any`] (or [`Sequential::get`]) to get back the concrete type.
pub trait Layer: Send + Sync + fmt::Debug {
    /// The layer's type name as PyTorch prints it, e.g. `"Conv2d"`.
    fn name(&self) -> &'static str;

    /// Computes the output and keeps what [`Layer::backward`] needs.
    ///
    /// # Errors
    /// [`Error::Shape`] when the input does not fit the layer (wrong rank, channels,
    /// features ...), or whatever the underlying op rejects.
    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>>;

    /// Given the gradient of the last forward output, adds the parameter gradients and
    /// returns the gradient of the last forward input.
    ///
    /// # Errors
    /// [`Error::State`] when called before [`Layer::forward`]; [`Error::Shape`] when
    /// `grad_out` is not the shape of the last output.
    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>>;

    /// As [`Layer::forward`], on a shared input and giving a shared output, so the layer
    /// can keep `x` (or its output) for backward without copying it, or compute in place
    /// when `x` is not shared. [`Sequential`] calls this for every layer (but the first
    /// when [`Sequential::forward`] was given a borrowed input).
    ///
    /// The default calls [`Layer::forward`] (which copies what it keeps).
    ///
    /// # Errors
    /// As [`Layer::forward`].
    fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        self.forward(x.view()).map(ArrayD::into_shared)
    }

    /// As [`Layer::backward`], taking the output gradient by value so the layer can
    /// return the input gradient in the same buffer (e.g. ReLU masks it in place).
    /// [`Sequential::backward`] calls this.
    ///
    /// The default calls [`Layer::backward`], then hands `grad_out`'s buffer to the
    /// buffer cache ([`crate::buffers`]) for the next large output of the same size.
    ///
    /// # Errors
    /// As [`Layer::backward`].
    fn backward_owned(&mut self, grad_out: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let dx = self.backward(grad_out.view());
        crate::buffers::give_array(grad_out);
        dx
    }

    /// As [`Layer::backward_owned`] without the input gradient: adds the parameter
    /// gradients (the same ones, bit for bit) and returns nothing. For a layer whose input
    /// needs no gradient, typically the first layer of a network, whose input is the data
    /// (PyTorch skips that gradient too, as the input has no `requires_grad`).
    /// [`Sequential::backward_params`] calls it on the first layer.
    ///
    /// The default calls [`Layer::backward_owned`] and drops the result; [`Conv2d`] and
    /// [`Linear`] skip the input-gradient product.
    ///
    /// # Errors
    /// As [`Layer::backward`].
    fn backward_params(&mut self, grad_out: ArrayD<f32>) -> Result<()> {
        self.backward_owned(grad_out).map(drop)
    }

    /// Drops what the last forward pass kept for backward (a backward before the next
    /// forward then fails with [`Error::State`]). [`Sequential::forward`] calls it on
    /// every layer before running them, so buffers the layers shared are free to reuse.
    ///
    /// The default does nothing.
    fn clear_saved(&mut self) {}

    /// As [`Layer::forward_shared`] without keeping anything for backward (PyTorch's
    /// `torch.no_grad()`), in the layer's current mode: what the last forward kept is
    /// dropped too, so a backward afterwards fails with [`Error::State`].
    /// [`Sequential::infer`] calls it.
    ///
    /// The default calls [`Layer::forward_shared`] then [`Layer::clear_saved`] (which
    /// drops the shared input or output the layer kept, at no copy).
    ///
    /// # Errors
    /// As [`Layer::forward`].
    fn infer(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        let y = self.forward_shared(x);
        self.clear_saved();
        y
    }

    /// Sets training mode (`true`, the default of every layer, as in PyTorch) or
    /// evaluation mode (`false`), as `module.train(mode)`. [`Sequential::train`] and
    /// [`Sequential::eval`] call it on every layer.
    ///
    /// The default ignores it: only layers whose computation depends on the mode
    /// ([`BatchNorm2d`], [`Dropout`], [`Dropout2d`]) keep the flag.
    fn set_training(&mut self, training: bool) {
        let _ = training;
    }

    /// Whether the layer is in training mode. The default (a layer that does not depend
    /// on the mode and keeps no flag) is `true`; [`Sequential::is_training`] says which
    /// mode a whole network was last put in.
    fn is_training(&self) -> bool {
        true
    }

    /// The parameters and their gradients (none for parameter-free layers).
    fn params(&self) -> Vec<Param<'_>> {
        Vec::new()
    }

    /// The non-trainable buffers (running statistics), in `state_dict` order (none by
    /// default). Saved and loaded with the parameters ([`crate::io`]), never given to an
    /// optimiser, not counted as parameters.
    fn buffers(&self) -> Vec<Buffer<'_>> {
        Vec::new()
    }

    /// The buffers, mutable (to load a state dict).
    fn buffers_mut(&mut self) -> Vec<BufferMut<'_>> {
        Vec::new()
    }

    /// Whether LSUV ([`crate::train::lsuv`]) rescales this layer's `weight` to bring its
    /// output to unit variance (and centres it through its `bias`). `true` for
    /// [`Conv2d`] and [`Linear`]; `false` by default, e.g. for [`BatchNorm2d`], whose
    /// weight is a learned scale LSUV must not touch.
    fn lsuv_rescales(&self) -> bool {
        false
    }

    /// A one-line description with the configuration, as PyTorch prints the module,
    /// e.g. `"Conv2d(1, 8, kernel_size=(5, 5), stride=(2, 2), padding=(2, 2))"`; what a
    /// [`Sequential`] prints per layer. The default is the name with empty parentheses
    /// (`"ReLU()"`).
    fn describe(&self) -> String {
        format!("{}()", self.name())
    }

    /// The parameters and their gradients, mutable.
    fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        Vec::new()
    }

    /// Sets every parameter gradient to zero.
    fn zero_grad(&mut self) {
        for mut p in self.params_mut() {
            p.grad.fill(0.0);
        }
    }

    /// `self` as [`Any`], to downcast to the concrete layer.
    fn as_any(&self) -> &dyn Any;

    /// `self` as mutable [`Any`], to downcast to the concrete layer.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Converts a dynamic-rank input to the rank a layer needs, or says which shape it got.
pub(crate) fn to_rank<'a, D: Dimension>(
    op: &'static str,
    what: &str,
    expected: &str,
    x: ArrayViewD<'a, f32>,
) -> Result<ndarray::ArrayView<'a, f32, D>> {
    let shape = x.shape().to_vec();
    x.into_dimensionality::<D>().map_err(|_| {
        Error::shape(
            op,
            format!("{what} must be {expected}, got shape {shape:?}"),
        )
    })
}

/// A float as Python's `repr` writes the usual ones: `0.1`, `1.0`, `1e-05`.
pub(crate) fn python_float(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-4 {
        let s = format!("{v:e}");
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        let s = format!("{v}");
        if s.contains('.') || s.contains("inf") || s.contains("NaN") {
            s
        } else {
            s + ".0"
        }
    }
}

/// The error of a backward pass that has nothing to work from.
pub(crate) fn not_run(op: &'static str) -> Error {
    Error::state(
        op,
        "backward called before forward: there is no saved input",
    )
}

/// Checks that `grad_out` has the shape the last forward produced.
pub(crate) fn check_grad_shape(op: &'static str, grad: &[usize], out: &[usize]) -> Result<()> {
    if grad != out {
        return Err(Error::shape(
            op,
            format!("grad_out is {grad:?} but the last output was {out:?}"),
        ));
    }
    Ok(())
}

/// Checks that a parameter still has its gradient's shape: `weight_mut` / `bias_mut` (or
/// the gradient accessors) may have replaced one with an array of another shape, and
/// accumulating a gradient into a differently shaped one would panic.
pub(crate) fn check_param_shape(
    op: &'static str,
    name: &str,
    param: &[usize],
    grad: &[usize],
) -> Result<()> {
    if param != grad {
        return Err(Error::shape(
            op,
            format!(
                "{name} is {param:?} but its gradient is {grad:?}: a parameter replaced \
                 through a `_mut` accessor must keep its shape"
            ),
        ));
    }
    Ok(())
}

/// Checks a given bias against the config's `bias` flag and the output count.
pub(crate) fn check_bias(
    op: &'static str,
    config_bias: bool,
    bias: Option<&Array1<f32>>,
    outputs: usize,
    weight_shape: &[usize],
) -> Result<()> {
    match (bias, config_bias) {
        (Some(b), true) if b.len() != outputs => Err(Error::shape(
            op,
            format!(
                "bias has length {}, weight {weight_shape:?} has {outputs} outputs",
                b.len()
            ),
        )),
        (Some(_), false) | (None, true) => Err(Error::config(
            op,
            format!(
                "config.bias is {config_bias} but a bias was {}given",
                if bias.is_some() { "" } else { "not " }
            ),
        )),
        _ => Ok(()),
    }
}

/// The `weight` and (if any) `bias` parameters of a layer, with their gradients.
pub(crate) fn weight_bias_params<'a, D: Dimension>(
    weight: &'a Array<f32, D>,
    weight_grad: &'a Array<f32, D>,
    bias: Option<(&'a Array1<f32>, &'a Array1<f32>)>,
) -> Vec<Param<'a>> {
    let mut out = vec![Param {
        name: "weight".into(),
        value: weight.view().into_dyn(),
        grad: weight_grad.view().into_dyn(),
    }];
    if let Some((b, g)) = bias {
        out.push(Param {
            name: "bias".into(),
            value: b.view().into_dyn(),
            grad: g.view().into_dyn(),
        });
    }
    out
}

/// As [`weight_bias_params`], mutable.
pub(crate) fn weight_bias_params_mut<'a, D: Dimension>(
    weight: &'a mut Array<f32, D>,
    weight_grad: &'a mut Array<f32, D>,
    bias: Option<(&'a mut Array1<f32>, &'a mut Array1<f32>)>,
) -> Vec<ParamMut<'a>> {
    let mut out = vec![ParamMut {
        name: "weight".into(),
        value: weight.view_mut().into_dyn(),
        grad: weight_grad.view_mut().into_dyn(),
    }];
    if let Some((b, g)) = bias {
        out.push(ParamMut {
            name: "bias".into(),
            value: b.view_mut().into_dyn(),
            grad: g.view_mut().into_dyn(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + ?Sized>() {}

    #[test]
    fn layers_are_object_safe_and_thread_safe() {
        assert_send_sync::<dyn Layer>();
        assert_send_sync::<Sequential>();
        let layers: Vec<Box<dyn Layer>> = vec![
            Box::new(Relu::new()),
            Box::new(LeakyRelu::default()),
            Box::new(Flatten::default()),
            Box::new(AdaptiveAvgPool2d::new((1, 1)).unwrap()),
        ];
        let names: Vec<_> = layers.iter().map(|l| l.name()).collect();
        assert_eq!(names, ["ReLU", "LeakyReLU", "Flatten", "AdaptiveAvgPool2d"]);
        assert_eq!(LeakyRelu::default().negative_slope(), 0.01);
        assert_eq!(Flatten::default().dims(), (1, -1));
    }

    #[test]
    fn conv_config_defaults_are_pytorchs_and_new_uses_the_default_reset() {
        use rand::SeedableRng;
        let cfg = Conv2dConfig::new(4, 6, (3, 2));
        assert_eq!(
            (cfg.stride, cfg.padding, cfg.dilation, cfg.groups, cfg.bias),
            ((1, 1), (0, 0), (1, 1), 1, true)
        );
        assert!(LinearConfig::new(3, 2).bias);
        let conv = Conv2d::new(
            cfg.with_groups(2),
            &mut rand::rngs::StdRng::seed_from_u64(3),
        )
        .unwrap();
        // fan_in = (4 / 2) * 3 * 2 = 12: both bounds are 1 / sqrt(12).
        let bound = 1.0 / 12f32.sqrt();
        let w = conv.weight();
        assert_eq!(w.dim(), (6, 2, 3, 2));
        assert!(
            w.iter()
                .chain(conv.bias().unwrap())
                .all(|v| v.abs() <= bound)
        );
        assert!(w.iter().any(|&v| v != w[[0, 0, 0, 0]]));
        assert!(conv.weight_grad().iter().all(|&g| g == 0.0));
    }
}
