//! Optimisers: [`Sgd`], [`Adam`] and [`AdamW`], with PyTorch's exact update rules,
//! behind one trait, [`Optimizer`], which [`super::fit`] takes.
//!
//! # The learning rate
//! An optimiser holds two rates: its **base** rate ([`Optimizer::base_lr`]), the one it
//! was built with, which never changes (PyTorch's `initial_lr`), and its **current** rate
//! ([`Optimizer::lr`]), the one [`Optimizer::step`] uses. They start equal;
//! [`Optimizer::set_lr`] moves the current one (a schedule does, once per step, as a
//! function of the base rate) and [`Optimizer::reset`] brings it back to the base. The
//! optimiser is the only place a learning rate lives: [`super::FitConfig`] holds none.

mod adam;
mod sgd;

pub use adam::{Adam, AdamConfig, AdamState, AdamW};
pub use sgd::{Sgd, SgdConfig};

use crate::error::{Error, Result};
use crate::nn::{ParamMut, Sequential};

/// An optimiser over the parameters of a [`Sequential`]: what [`super::fit`] drives.
///
/// Implementations keep their per-parameter state (momentum buffers, moments) by
/// parameter name (`"0.weight"`, ...), so one optimiser stays with one model, and check
/// every gradient's and every state's shape before any parameter moves: a step that
/// fails leaves the model and the state exactly as they were.
pub trait Optimizer: std::fmt::Debug + Send {
    /// PyTorch's class name (`"SGD"`, `"Adam"`, `"AdamW"`), the `op` of its errors.
    fn name(&self) -> &'static str;

    /// Updates every parameter of `net` from its accumulated gradient (gradients are not
    /// cleared: call [`Sequential::zero_grad`] before the next backward pass).
    ///
    /// # Errors
    /// [`Error::Shape`] naming the parameter and both shapes when a gradient or a piece
    /// of state does not have its parameter's shape; nothing is updated then.
    fn step(&mut self, net: &mut Sequential) -> Result<()>;

    /// The current learning rate, the one the next [`Optimizer::step`] uses.
    fn lr(&self) -> f32;

    /// The learning rate the optimiser was built with (never changed by
    /// [`Optimizer::set_lr`]): what a schedule scales.
    fn base_lr(&self) -> f32;

    /// Sets the current learning rate (the base rate stays).
    ///
    /// # Errors
    /// [`Error::Config`] naming the optimiser and the value when `lr` is negative or not
    /// finite; the rate is then unchanged.
    fn set_lr(&mut self, lr: f32) -> Result<()>;

    /// Back to as built: forgets every per-parameter state (the next step is a first
    /// step again) and sets the current learning rate back to the base rate.
    fn reset(&mut self);
}

/// `Err(Config)` unless `lr` is finite and non-negative.
pub(crate) fn check_lr(op: &'static str, lr: f32) -> Result<()> {
    if !(lr.is_finite() && lr >= 0.0) {
        return Err(Error::config(
            op,
            format!("lr = {lr} must be finite and >= 0"),
        ));
    }
    Ok(())
}

/// `Err(Shape)` when the gradient of `p` does not have its shape.
pub(crate) fn check_grad(op: &'static str, p: &ParamMut<'_>) -> Result<()> {
    if p.grad.shape() != p.value.shape() {
        return Err(Error::shape(
            op,
            format!(
                "parameter {} is {:?} but its gradient is {:?}",
                p.name,
                p.value.shape(),
                p.grad.shape()
            ),
        ));
    }
    Ok(())
}

/// `Err(Shape)` when a piece of state (`what`) kept for `p` does not have its shape (the
/// optimiser was used with another model).
pub(crate) fn check_state(
    op: &'static str,
    p: &ParamMut<'_>,
    what: &str,
    state: &[usize],
) -> Result<()> {
    if state != p.value.shape() {
        return Err(Error::shape(
            op,
            format!(
                "parameter {} is {:?} but its {what} is {state:?}",
                p.name,
                p.value.shape(),
            ),
        ));
    }
    Ok(())
}
