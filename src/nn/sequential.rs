//! `Sequential`: layers chained in order, backward in reverse.

use ndarray::{ArcArrayD, ArrayD, ArrayViewD};

use std::fmt;

use super::{Buffer, BufferMut, Layer, Param, ParamMut};
use crate::error::{Error, Result};
use crate::limits::{try_into_owned, try_to_owned};

const OP: &str = "Sequential";

/// Layers applied in order, as `torch.nn.Sequential`.
///
/// [`Sequential::forward`] keeps every layer's output (for activation statistics,
/// [`Sequential::output`]); [`Sequential::backward`] runs the layers in reverse.
///
/// Activations are handed from layer to layer as shared arrays
/// ([`Layer::forward_shared`]), so keeping them costs no copy: the output a layer
/// returns, the copy [`Sequential::output`] shows and the input the next layer keeps
/// for backward are one buffer. Retaining the outputs is the default (the notebook's
/// activation statistics need them);
/// [`Sequential::with_retain_outputs`]`(false)` keeps only what backward needs, which
/// lets ReLU compute in place over the convolution's output (less memory, one
/// allocation less per ReLU).
/// Parameters are named like PyTorch's `state_dict`: `"0.weight"`, `"0.bias"`,
/// `"2.weight"`, ... by layer index; buffers (running statistics) likewise by
/// [`Sequential::named_buffers`].
///
/// A new container is in training mode, as PyTorch's; [`Sequential::eval`] and
/// [`Sequential::train`] switch every layer. [`Sequential::infer`] runs the layers
/// keeping nothing for backward (for evaluation and prediction).
///
/// `println!("{net}")` (and `{net:?}`) prints a PyTorch-style summary: one line per
/// layer with its configuration ([`Layer::describe`]) and parameter count, then the
/// total.
///
/// # Examples
/// ```
/// use convinit::nn::{AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Layer, Relu, Sequential};
/// use convinit::ops::{mse, mse_backward};
/// use ndarray::{Array1, Array4};
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let conv = Conv2dConfig::new(1, 4, (3, 3)).with_stride((2, 2)).with_padding((1, 1));
/// let mut net = Sequential::new()
///     .with(Conv2d::new(conv, &mut rng)?)
///     .with(Relu::new())
///     .with(AdaptiveAvgPool2d::new((1, 1))?)
///     .with(Flatten::new(1, -1));
///
/// let x = Array4::<f32>::ones((2, 1, 8, 8)).into_dyn();
/// let out = net.forward(x.view())?; // (2, 4)
/// assert_eq!(out.shape(), &[2, 4]);
///
/// // Inspect what the first layer produced, then backpropagate a gradient.
/// assert_eq!(net.output(0).unwrap().shape(), &[2, 4, 4, 4]);
/// for (i, layer, out) in net.outputs() {
///     let out = out.unwrap();
///     println!("{i} {}: mean {:.3}", layer.name(), out.mean().unwrap());
/// }
/// let dx = net.backward(ndarray::ArrayD::<f32>::ones(out.raw_dim()).view())?;
/// assert_eq!(dx.shape(), x.shape());
///
/// let names: Vec<String> = net.named_parameters().into_iter().map(|p| p.name).collect();
/// assert_eq!(names, ["0.weight", "0.bias"]);
/// let conv: &Conv2d = net.get(0).unwrap();
/// assert_eq!(conv.weight_grad().dim(), (4, 1, 3, 3));
/// net.zero_grad();
/// assert!(net.get::<Conv2d>(0).unwrap().weight_grad().iter().all(|&g| g == 0.0));
/// # Ok::<(), convinit::Error>(())
/// ```
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
    outputs: Vec<Option<ArcArrayD<f32>>>,
    retain_outputs: bool,
    training: bool,
}

impl Default for Sequential {
    fn default() -> Self {
        Sequential {
            layers: Vec::new(),
            outputs: Vec::new(),
            retain_outputs: true,
            training: true,
        }
    }
}

/// The PyTorch-style summary: `Sequential(`, one line per layer (`  (i): description`,
/// then its parameter count when it has parameters), `)`, and the totals.
impl fmt::Display for Sequential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<(String, usize)> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("({i}): {}", l.describe()), param_count(l.as_ref())))
            .collect();
        let width = rows
            .iter()
            .map(|(d, _)| d.chars().count())
            .max()
            .unwrap_or(0);
        writeln!(f, "Sequential(")?;
        for (d, n) in &rows {
            if *n == 0 {
                writeln!(f, "  {d}")?;
            } else {
                writeln!(f, "  {d:<width$}  # {} params", group_digits(*n))?;
            }
        }
        let buffers: usize = self
            .named_buffers()
            .iter()
            .map(|b| b.value.shape().iter().product::<usize>())
            .sum();
        write!(
            f,
            ")  # {} params in total, {} mode",
            group_digits(self.num_parameters()),
            if self.training { "training" } else { "eval" }
        )?;
        if buffers > 0 {
            write!(f, ", {} buffer values", group_digits(buffers))?;
        }
        Ok(())
    }
}

/// As [`fmt::Display`]: the summary, not every weight.
impl fmt::Debug for Sequential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The number of parameter values of a layer.
fn param_count(layer: &dyn Layer) -> usize {
    layer.params().iter().map(|p| p.value.len()).sum()
}

/// `n` with a comma every three digits (`6,305`).
fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Adds the layer index and name to a shape, state or allocation error from inside the
/// chain.
fn in_layer(e: Error, index: usize, name: &str) -> Error {
    match e {
        Error::Shape { op, message } => Error::Shape {
            op,
            message: format!("{message} (in layer {index}, {name})"),
        },
        Error::State { op, message } => Error::State {
            op,
            message: format!("{message} (in layer {index}, {name})"),
        },
        Error::Alloc { op, bytes, message } => Error::Alloc {
            op,
            bytes,
            message: format!("{message} (in layer {index}, {name})"),
        },
        other => other,
    }
}

impl Sequential {
    /// An empty container (its forward and backward are the identity).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets whether [`Sequential::forward`] keeps every layer's output for
    /// [`Sequential::output`] (default `true`), builder style. Without, `output` is `None`
    /// and each layer keeps only what its backward needs.
    pub fn with_retain_outputs(mut self, retain: bool) -> Self {
        self.set_retain_outputs(retain);
        self
    }

    /// As [`Sequential::with_retain_outputs`]; turning retention off drops the outputs
    /// kept so far.
    pub fn set_retain_outputs(&mut self, retain: bool) {
        self.retain_outputs = retain;
        if !retain {
            self.outputs.iter_mut().for_each(|o| *o = None);
        }
    }

    /// Whether [`Sequential::forward`] keeps every layer's output.
    pub fn retains_outputs(&self) -> bool {
        self.retain_outputs
    }

    /// Appends a layer, builder style.
    pub fn with(mut self, layer: impl Layer + 'static) -> Self {
        self.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer. (Its mode is left as it is: call [`Sequential::train`] or
    /// [`Sequential::eval`] after building to set every layer's.)
    pub fn push(&mut self, layer: Box<dyn Layer>) {
        self.layers.push(layer);
        self.outputs.push(None);
    }

    /// Puts every layer in training mode (`model.train()`), the default.
    pub fn train(&mut self) {
        self.set_training(true);
    }

    /// Puts every layer in evaluation mode (`model.eval()`): batch norm uses its running
    /// statistics, dropout is the identity.
    pub fn eval(&mut self) {
        self.set_training(false);
    }

    /// Sets training (`true`) or evaluation mode on every layer (`model.train(mode)`).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
        self.layers
            .iter_mut()
            .for_each(|l| l.set_training(training));
    }

    /// The mode [`Sequential::train`] / [`Sequential::eval`] last set (training for a
    /// new container).
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// The number of parameter values (every element of every parameter; buffers are
    /// not parameters).
    pub fn num_parameters(&self) -> usize {
        self.layers.iter().map(|l| param_count(l.as_ref())).sum()
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Layer `index`, as `m[index]` in PyTorch.
    pub fn layer(&self, index: usize) -> Option<&dyn Layer> {
        self.layers.get(index).map(|l| l.as_ref())
    }

    /// Layer `index`, mutable.
    pub fn layer_mut(&mut self, index: usize) -> Option<&mut (dyn Layer + 'static)> {
        self.layers.get_mut(index).map(|l| l.as_mut())
    }

    /// Layer `index` as its concrete type, e.g. `seq.get::<Conv2d>(0)`; `None` when the
    /// index is out of range or the layer is another type.
    pub fn get<T: Layer + 'static>(&self, index: usize) -> Option<&T> {
        self.layers.get(index)?.as_any().downcast_ref()
    }

    /// Layer `index` as its concrete type, mutable.
    pub fn get_mut<T: Layer + 'static>(&mut self, index: usize) -> Option<&mut T> {
        self.layers.get_mut(index)?.as_any_mut().downcast_mut()
    }

    /// The layers in order.
    pub fn layers(&self) -> impl Iterator<Item = &dyn Layer> + '_ {
        self.layers.iter().map(|l| l.as_ref())
    }

    /// The output of layer `index` from the last forward pass (`None` before one, for
    /// layers after one that failed, or when outputs are not retained, see
    /// [`Sequential::with_retain_outputs`]).
    pub fn output(&self, index: usize) -> Option<ArrayViewD<'_, f32>> {
        self.outputs.get(index)?.as_ref().map(|o| o.view())
    }

    /// Every layer with its output from the last forward pass, in order: `(index, layer,
    /// output)`, e.g. to print activation means and standard deviations per layer.
    pub fn outputs(
        &self,
    ) -> impl Iterator<Item = (usize, &dyn Layer, Option<ArrayViewD<'_, f32>>)> + '_ {
        self.layers
            .iter()
            .zip(&self.outputs)
            .enumerate()
            .map(|(i, (l, o))| (i, l.as_ref(), o.as_ref().map(|o| o.view())))
    }

    /// Runs the layers in order, keeping each output (unless retention is off), and
    /// returns the last one. The first layer copies what it keeps of `x`; to save that
    /// copy, hand over a shared array with [`Sequential::forward_shared`].
    ///
    /// What the layers kept from the previous pass is dropped first; a retained output
    /// of the previous pass is dropped then too when it shares its buffer (e.g. with a
    /// ReLU, which writes over it), else once its layer has produced the new one.
    ///
    /// # Errors
    /// The first error of a layer, with the layer index added to its message. The
    /// failing layer and those after it then keep nothing (a backward pass fails with
    /// [`Error::State`]; [`Sequential::output`] is `None` for them).
    pub fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        if self.layers.is_empty() {
            return try_to_owned(OP, x.view(), || {
                format!("a copy of the input {:?}", x.shape())
            });
        }
        self.clear_saved();
        let first = &mut self.layers[0];
        match first.forward(x) {
            Ok(y) => self.run_from(1, y.into_shared()),
            Err(e) => {
                let e = in_layer(e, 0, first.name());
                self.clear_from(0);
                Err(e)
            }
        }
    }

    /// As [`Sequential::forward`] on a shared input, which the first layer keeps for
    /// backward without copying it (e.g. `net.forward_shared(x.clone())` on an
    /// `ArcArrayD` `x` used step after step, or `xb.into_shared()` on a fresh batch).
    ///
    /// # Errors
    /// As [`Sequential::forward`].
    pub fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArrayD<f32>> {
        if self.layers.is_empty() {
            let shape = x.shape().to_vec();
            return try_into_owned(OP, x, || format!("a copy of the input {shape:?}"));
        }
        self.clear_saved();
        self.run_from(0, x)
    }

    /// Runs the layers in order keeping nothing for backward ([`Layer::infer`], PyTorch's
    /// `torch.no_grad()`), in the layers' current mode (call [`Sequential::eval`] first to
    /// evaluate, as in PyTorch), and returns the last output. Each activation is freed
    /// once the next layer has read it, so memory stays at about two activations;
    /// what the layers kept from an earlier forward pass and the retained outputs are
    /// dropped (a backward pass afterwards fails with [`Error::State`]).
    ///
    /// The first layer reads `x` in place; the result is the same, bit for bit, as
    /// [`Sequential::forward`]'s.
    ///
    /// # Errors
    /// As [`Sequential::forward`].
    pub fn infer(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.clear_all();
        let Some(first) = self.layers.first_mut() else {
            return try_to_owned(OP, x.view(), || {
                format!("a copy of the input {:?}", x.shape())
            });
        };
        let y = first.forward(x).map_err(|e| in_layer(e, 0, first.name()));
        first.clear_saved();
        self.infer_from(1, y?.into_shared())
    }

    /// As [`Sequential::infer`] on a shared input (no copy of it is made; a unique one
    /// may be written over by an in-place layer).
    ///
    /// # Errors
    /// As [`Sequential::forward`].
    pub fn infer_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArrayD<f32>> {
        self.clear_all();
        self.infer_from(0, x)
    }

    /// Drops every layer's saved state and every retained output.
    fn clear_all(&mut self) {
        self.layers.iter_mut().for_each(|l| l.clear_saved());
        self.outputs.iter_mut().for_each(|o| *o = None);
    }

    /// [`Layer::infer`] through layers `start..`.
    fn infer_from(&mut self, start: usize, mut x: ArcArrayD<f32>) -> Result<ArrayD<f32>> {
        for (i, layer) in self.layers.iter_mut().enumerate().skip(start) {
            x = layer.infer(x).map_err(|e| in_layer(e, i, layer.name()))?;
        }
        let shape = x.shape().to_vec();
        try_into_owned(OP, x, || format!("a copy of the output {shape:?}"))
    }

    /// Drops what every layer kept for backward and the previous pass's retained
    /// outputs, handing the buffers nothing else holds any more to the buffer cache
    /// ([`crate::buffers`]), where this pass's outputs and gradients find them.
    ///
    /// Freed to the allocator instead, glibc hands large blocks back to the system and
    /// every new conv output and input gradient is faulted in page by page again (seed
    /// net training steps, long runs: 559 page faults per step against 10 at N = 100,
    /// 5770 against about 520 at N = 1000, before this cache; an earlier workaround kept
    /// the retained outputs alive across the pass instead).
    fn clear_saved(&mut self) {
        self.layers.iter_mut().for_each(|l| l.clear_saved());
        for o in &mut self.outputs {
            if let Some(o) = o.take() {
                crate::buffers::give_shared(o);
            }
        }
    }

    /// Drops the outputs and saved state of layers `start..`, so none of them has stale
    /// state from an earlier pass after a forward pass failed at `start`.
    fn clear_from(&mut self, start: usize) {
        self.outputs[start..].iter_mut().for_each(|o| *o = None);
        self.layers[start..]
            .iter_mut()
            .for_each(|l| l.clear_saved());
    }

    /// Runs layers `start..` on `x`, the output of layer `start - 1` (or the input when
    /// `start` is 0), and returns the last output.
    fn run_from(&mut self, start: usize, mut x: ArcArrayD<f32>) -> Result<ArrayD<f32>> {
        if start > 0 && self.retain_outputs {
            self.outputs[start - 1] = Some(x.clone());
        }
        for i in start..self.layers.len() {
            let layer = &mut self.layers[i];
            match layer.forward_shared(x) {
                Ok(y) => x = y,
                Err(e) => {
                    let e = in_layer(e, i, layer.name());
                    self.clear_from(i);
                    return Err(e);
                }
            }
            if self.retain_outputs {
                self.outputs[i] = Some(x.clone());
            }
        }
        // Shared with the retained outputs: the caller gets its own copy.
        let shape = x.shape().to_vec();
        try_into_owned(OP, x, || format!("a copy of the output {shape:?}"))
    }

    /// Runs every layer's backward in reverse order, accumulating parameter gradients, and
    /// returns the gradient of the input.
    ///
    /// # Errors
    /// [`Error::State`] before a forward pass; [`Error::Shape`] when `grad_out` is not the
    /// shape of the last output; the layer index is added to the message.
    pub fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let g = try_to_owned(OP, grad_out.view(), || {
            format!("a copy of grad_out {:?}", grad_out.shape())
        })?;
        self.backward_owned(g)
    }

    /// As [`Sequential::backward`], taking the gradient by value (its buffer may be
    /// reused for the returned gradient).
    ///
    /// # Errors
    /// As [`Sequential::backward`].
    pub fn backward_owned(&mut self, grad_out: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let mut grad = grad_out;
        for (i, layer) in self.layers.iter_mut().enumerate().rev() {
            grad = layer
                .backward_owned(grad)
                .map_err(|e| in_layer(e, i, layer.name()))?;
        }
        Ok(grad)
    }

    /// As [`Sequential::backward_owned`] without the gradient of the network's input:
    /// layers from the last down to 1 run [`Layer::backward_owned`], layer 0 runs
    /// [`Layer::backward_params`], which adds its parameter gradients and skips its input
    /// gradient. Every parameter gradient is the one [`Sequential::backward`] gives, bit
    /// for bit. Use it to train, where the input is the data (PyTorch skips that gradient
    /// too: the input has no `requires_grad`); a first [`crate::nn::Conv2d`] then skips
    /// its input-gradient product and col2im scatter.
    ///
    /// # Examples
    /// ```
    /// use convinit::nn::{Conv2d, Conv2dConfig, Flatten, Sequential};
    /// use ndarray::{ArrayD, IxDyn};
    /// use rand::SeedableRng;
    ///
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    /// let mut net = Sequential::new()
    ///     .with(Conv2d::new(Conv2dConfig::new(1, 2, (3, 3)), &mut rng)?)
    ///     .with(Flatten::new(1, -1));
    /// let x = ArrayD::<f32>::ones(IxDyn(&[4, 1, 5, 5]));
    /// let out = net.forward(x.view())?;
    /// net.backward_params(ArrayD::ones(out.raw_dim()))?;
    /// let conv: &Conv2d = net.get(0).unwrap();
    /// assert_eq!(conv.bias_grad().unwrap()[0], 4.0 * 9.0);
    /// # Ok::<(), convinit::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Sequential::backward`].
    pub fn backward_params(&mut self, grad_out: ArrayD<f32>) -> Result<()> {
        let mut grad = grad_out;
        for (i, layer) in self.layers.iter_mut().enumerate().skip(1).rev() {
            grad = layer
                .backward_owned(grad)
                .map_err(|e| in_layer(e, i, layer.name()))?;
        }
        match self.layers.first_mut() {
            Some(first) => first
                .backward_params(grad)
                .map_err(|e| in_layer(e, 0, first.name())),
            None => Ok(()),
        }
    }

    /// Sets every parameter gradient of every layer to zero.
    pub fn zero_grad(&mut self) {
        self.layers.iter_mut().for_each(|l| l.zero_grad());
    }

    /// Every parameter with its gradient, named `"<layer index>.<name>"` as PyTorch's
    /// `state_dict` (`"0.weight"`, `"0.bias"`, `"2.weight"`, ...).
    pub fn named_parameters(&self) -> Vec<Param<'_>> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.params().into_iter().map(move |mut p| {
                    p.name = format!("{i}.{}", p.name);
                    p
                })
            })
            .collect()
    }

    /// Every buffer (running statistics: non-trainable, saved with the weights),
    /// named `"<layer index>.<name>"` as PyTorch's `state_dict` (`"1.running_mean"`,
    /// `"1.running_var"`, `"1.num_batches_tracked"`, ...). Not among the parameters.
    pub fn named_buffers(&self) -> Vec<Buffer<'_>> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.buffers().into_iter().map(move |mut b| {
                    b.name = format!("{i}.{}", b.name);
                    b
                })
            })
            .collect()
    }

    /// As [`Sequential::named_buffers`], mutable (to load a state dict).
    pub fn named_buffers_mut(&mut self) -> Vec<BufferMut<'_>> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, l)| {
                l.buffers_mut().into_iter().map(move |mut b| {
                    b.name = format!("{i}.{}", b.name);
                    b
                })
            })
            .collect()
    }

    /// As [`Sequential::named_parameters`], mutable (to apply an initialisation or an
    /// optimiser step). Buffers are not among them.
    pub fn named_parameters_mut(&mut self) -> Vec<ParamMut<'_>> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, l)| {
                l.params_mut().into_iter().map(move |mut p| {
                    p.name = format!("{i}.{}", p.name);
                    p
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{
        AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, GeneralRelu, LeakyRelu, Relu,
    };
    use ndarray::{Array4, ArrayD, IxDyn};
    use rand::{Rng, SeedableRng};

    fn bits(a: &ArrayD<f32>) -> Vec<u32> {
        a.iter().map(|v| v.to_bits()).collect()
    }

    /// A net exercising every activation's shared path, with NaN and negative slopes.
    fn net(seed: u64) -> Sequential {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let cfg = |i, o| {
            Conv2dConfig::new(i, o, (3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1))
        };
        Sequential::new()
            .with(Conv2d::new(cfg(2, 4), &mut rng).unwrap())
            .with(Relu::new())
            .with(Conv2d::new(cfg(4, 4), &mut rng).unwrap())
            .with(LeakyRelu::new(-0.5))
            .with(Conv2d::new(cfg(4, 6), &mut rng).unwrap())
            .with(LeakyRelu::new(0.1))
            .with(GeneralRelu::new(Some(0.1), Some(0.4), Some(6.0)).unwrap())
            .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
            .with(Flatten::new(1, -1))
    }

    /// Runs two steps (so buffers are reused) and returns output, input gradient and
    /// parameter gradients, as bits.
    fn run(net: &mut Sequential, shared: bool) -> Vec<Vec<u32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut x =
            Array4::from_shape_simple_fn((20, 2, 64, 64), || rng.random_range(-1.0f32..1.0))
                .into_dyn();
        x[[1, 0, 5, 7]] = f32::NAN;
        let mut out = Vec::new();
        for _ in 0..2 {
            net.zero_grad();
            let y = if shared {
                net.forward_shared(x.clone().into_shared()).unwrap()
            } else {
                net.forward(x.view()).unwrap()
            };
            let dx = net.backward(ArrayD::ones(y.raw_dim()).view()).unwrap();
            out = vec![bits(&y), bits(&dx)];
            out.extend(
                net.named_parameters()
                    .iter()
                    .map(|p| p.grad.iter().map(|v| v.to_bits()).collect::<Vec<_>>()),
            );
        }
        out
    }

    /// The layer-by-layer view path, as reference.
    fn run_views(net: &mut Sequential) -> Vec<Vec<u32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut x =
            Array4::from_shape_simple_fn((20, 2, 64, 64), || rng.random_range(-1.0f32..1.0))
                .into_dyn();
        x[[1, 0, 5, 7]] = f32::NAN;
        net.zero_grad();
        let mut y = x;
        for i in 0..net.len() {
            y = net.layer_mut(i).unwrap().forward(y.view()).unwrap();
        }
        let mut g = ArrayD::ones(y.raw_dim());
        for i in (0..net.len()).rev() {
            g = net.layer_mut(i).unwrap().backward(g.view()).unwrap();
        }
        let mut out = vec![bits(&y), bits(&g)];
        out.extend(
            net.named_parameters()
                .iter()
                .map(|p| p.grad.iter().map(|v| v.to_bits()).collect::<Vec<_>>()),
        );
        out
    }

    #[test]
    fn shared_in_place_and_retained_paths_agree_bit_for_bit() {
        let want = run_views(&mut net(1));
        assert!(want[0].iter().any(|&b| f32::from_bits(b).is_nan()));
        for (shared, retain) in [(false, true), (true, true), (false, false), (true, false)] {
            let mut n = net(1).with_retain_outputs(retain);
            assert_eq!(run(&mut n, shared), want, "shared {shared} retain {retain}");
            assert_eq!(n.retains_outputs(), retain);
            assert_eq!(n.output(0).is_some(), retain);
        }
    }

    #[test]
    fn retained_outputs_are_each_layers_own() {
        let mut n = net(2);
        let x = ArrayD::from_elem(IxDyn(&[2, 2, 8, 8]), -1.0f32);
        n.forward(x.view()).unwrap();
        // The conv output keeps its negative values although ReLU ran after it.
        let conv = n.output(0).unwrap().to_owned();
        let relu = n.output(1).unwrap();
        assert_eq!(relu, conv.mapv(|v| v.max(0.0)));
        assert!(conv.iter().any(|&v| v < 0.0));
        n.set_retain_outputs(false);
        assert!(n.outputs().all(|(_, _, o)| o.is_none()));
    }

    #[test]
    fn a_failed_forward_leaves_no_stale_state_for_backward() {
        let mut n = net(3);
        let y = n
            .forward(ArrayD::zeros(IxDyn(&[1, 2, 8, 8])).view())
            .unwrap();
        assert!(
            n.forward(ArrayD::zeros(IxDyn(&[1, 3, 8, 8])).view())
                .is_err()
        );
        let e = n.backward(ArrayD::zeros(y.raw_dim()).view()).unwrap_err();
        assert!(matches!(e, Error::State { .. }), "{e}");
    }

    /// Conv, ReLU, Flatten, Linear(64 -> 3): 8x8 inputs fit, 10x10 ones fail at layer 3.
    fn net_failing_late() -> Sequential {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let cfg = Conv2dConfig::new(2, 4, (3, 3))
            .with_stride((2, 2))
            .with_padding((1, 1));
        Sequential::new()
            .with(Conv2d::new(cfg, &mut rng).unwrap())
            .with(Relu::new())
            .with(Flatten::new(1, -1))
            .with(crate::nn::Linear::new(crate::nn::LinearConfig::new(64, 3), &mut rng).unwrap())
    }

    #[test]
    fn a_forward_failing_late_leaves_no_stale_state_behind_it() {
        for shared in [false, true] {
            let mut n = net_failing_late();
            let x = ArrayD::from_elem(IxDyn(&[2, 2, 8, 8]), 0.5f32);
            let y = n.forward(x.view()).unwrap();
            n.backward(ArrayD::ones(y.raw_dim()).view()).unwrap();
            let grads: Vec<ArrayD<f32>> = n
                .named_parameters()
                .iter()
                .map(|p| p.grad.to_owned())
                .collect();
            let big = ArrayD::from_elem(IxDyn(&[2, 2, 10, 10]), 0.5f32);
            let e = if shared {
                n.forward_shared(big.into_shared()).unwrap_err()
            } else {
                n.forward(big.view()).unwrap_err()
            };
            assert!(e.to_string().contains("layer 3, Linear"), "{e}");
            let kept: Vec<_> = (0..4)
                .map(|i| n.output(i).map(|o| o.shape().to_vec()))
                .collect();
            assert_eq!(
                kept,
                [
                    Some(vec![2, 4, 5, 5]),
                    Some(vec![2, 4, 5, 5]),
                    Some(vec![2, 100]),
                    None
                ]
            );
            // Neither the failed layer nor the earlier ones take a gradient for the old
            // output shape (which would add stale gradients), nor for the new one.
            for g in [y.raw_dim(), IxDyn(&[2, 3])] {
                let e = n.backward(ArrayD::ones(g).view()).unwrap_err();
                assert!(matches!(e, Error::State { .. }), "{e}");
            }
            let after: Vec<ArrayD<f32>> = n
                .named_parameters()
                .iter()
                .map(|p| p.grad.to_owned())
                .collect();
            assert_eq!(after, grads);
            // The net still works afterwards.
            let y2 = n.forward(x.view()).unwrap();
            assert_eq!(y2, y);
        }
    }

    #[test]
    fn a_relu_in_the_chain_writes_over_its_previous_output() {
        let mut n = net_failing_late();
        let x = ArrayD::from_elem(IxDyn(&[2, 2, 8, 8]), 0.5f32).into_shared();
        n.forward_shared(x.clone()).unwrap();
        let first = n.output(1).unwrap().as_ptr();
        n.backward(ArrayD::ones(IxDyn(&[2, 3])).view()).unwrap();
        n.forward_shared(x).unwrap();
        assert_eq!(n.output(1).unwrap().as_ptr(), first);
    }

    /// The notebook's seed net (PyTorch default init).
    fn notebook_net() -> Sequential {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let c = |i, o, k, p| {
            Conv2dConfig::new(i, o, (k, k))
                .with_stride((2, 2))
                .with_padding((p, p))
        };
        Sequential::new()
            .with(Conv2d::new(c(1, 8, 5, 2), &mut rng).unwrap())
            .with(Relu::new())
            .with(Conv2d::new(c(8, 16, 3, 1), &mut rng).unwrap())
            .with(Relu::new())
            .with(Conv2d::new(c(16, 32, 3, 1), &mut rng).unwrap())
            .with(Relu::new())
            .with(Conv2d::new(c(32, 1, 3, 1), &mut rng).unwrap())
            .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
            .with(Flatten::new(0, -1))
    }

    #[test]
    fn the_summary_is_one_line_per_layer_with_parameter_counts() {
        let mut net = notebook_net();
        let want = "\
Sequential(
  (0): Conv2d(1, 8, kernel_size=(5, 5), stride=(2, 2), padding=(2, 2))    # 208 params
  (1): ReLU()
  (2): Conv2d(8, 16, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))   # 1,168 params
  (3): ReLU()
  (4): Conv2d(16, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))  # 4,640 params
  (5): ReLU()
  (6): Conv2d(32, 1, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))   # 289 params
  (7): AdaptiveAvgPool2d(output_size=(1, 1))
  (8): Flatten(start_dim=0, end_dim=-1)
)  # 6,305 params in total, training mode";
        assert_eq!(net.to_string(), want);
        assert_eq!(format!("{net:?}"), want);
        assert_eq!(net.num_parameters(), 6305);
        net.eval();
        assert!(
            net.to_string()
                .ends_with("6,305 params in total, eval mode")
        );
        assert_eq!(
            Sequential::new().to_string(),
            "Sequential(\n)  # 0 params in total, training mode"
        );
        assert_eq!(group_digits(1_234_567), "1,234,567");
        assert_eq!(group_digits(999), "999");
    }

    #[test]
    fn train_and_eval_set_every_layer_and_the_container() {
        let mut net = notebook_net();
        assert!(net.is_training());
        net.eval();
        assert!(!net.is_training());
        net.train();
        assert!(net.is_training());
        net.set_training(false);
        assert!(!net.is_training());
        // No buffers in the notebook net; parameters are what they were.
        assert!(net.named_buffers().is_empty());
        assert!(net.named_buffers_mut().is_empty());
        assert_eq!(net.named_parameters_mut().len(), 8);
    }

    #[test]
    fn infer_gives_forwards_output_and_keeps_nothing() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let x = Array4::from_shape_simple_fn((5, 2, 16, 16), || rng.random_range(-1.0f32..1.0))
            .into_dyn();
        let mut a = net(3);
        let y = a.forward(x.view()).unwrap();
        let mut b = net(3);
        // After a forward pass: infer drops what it kept, and the outputs.
        b.forward(x.view()).unwrap();
        let inferred = b.infer(x.view()).unwrap();
        assert_eq!(bits(&inferred), bits(&y));
        assert!((0..b.len()).all(|i| b.output(i).is_none()));
        let e = b.backward(ArrayD::ones(y.raw_dim()).view()).unwrap_err();
        assert!(matches!(e, Error::State { .. }), "{e}");
        let shared = b.infer_shared(x.clone().into_shared()).unwrap();
        assert_eq!(bits(&shared), bits(&y));
        let e = b.backward_params(ArrayD::ones(y.raw_dim())).unwrap_err();
        assert!(matches!(e, Error::State { .. }), "{e}");
        // An error names the layer, as forward's.
        let e = b
            .infer(ArrayD::<f32>::zeros(IxDyn(&[2, 3])).view())
            .unwrap_err();
        assert!(e.to_string().contains("in layer 0"), "{e}");
        // The empty container is the identity.
        assert_eq!(Sequential::new().infer(x.view()).unwrap(), x);
    }
}
