//! `Sequential`: layers chained in order, backward in reverse.

use ndarray::{ArrayD, ArrayViewD};

use super::{Layer, Param, ParamMut};
use crate::error::{Error, Result};

/// Layers applied in order, as `torch.nn.Sequential`.
///
/// [`Sequential::forward`] keeps every layer's output (for activation statistics,
/// [`Sequential::output`]); [`Sequential::backward`] runs the layers in reverse.
/// Parameters are named like PyTorch's `state_dict`: `"0.weight"`, `"0.bias"`,
/// `"2.weight"`, ... by layer index.
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
#[derive(Debug, Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
    outputs: Vec<Option<ArrayD<f32>>>,
}

/// Adds the layer index and name to a shape or state error from inside the chain.
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
        other => other,
    }
}

impl Sequential {
    /// An empty container (its forward and backward are the identity).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer, builder style.
    pub fn with(mut self, layer: impl Layer + 'static) -> Self {
        self.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer.
    pub fn push(&mut self, layer: Box<dyn Layer>) {
        self.layers.push(layer);
        self.outputs.push(None);
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

    /// The output of layer `index` from the last forward pass (`None` before one, or for
    /// layers after one that failed).
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

    /// Runs the layers in order, keeping each output, and returns the last one.
    ///
    /// # Errors
    /// The first error of a layer, with the layer index added to its message.
    pub fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.outputs.iter_mut().for_each(|o| *o = None);
        for i in 0..self.layers.len() {
            let input = match i {
                0 => x.view(),
                _ => self.outputs[i - 1]
                    .as_ref()
                    .expect("the previous layer's output was just stored")
                    .view(),
            };
            let y = self.layers[i]
                .forward(input)
                .map_err(|e| in_layer(e, i, self.layers[i].name()))?;
            self.outputs[i] = Some(y);
        }
        Ok(match self.outputs.last() {
            Some(Some(y)) => y.clone(),
            _ => x.to_owned(),
        })
    }

    /// Runs every layer's backward in reverse order, accumulating parameter gradients, and
    /// returns the gradient of the input.
    ///
    /// # Errors
    /// [`Error::State`] before a forward pass; [`Error::Shape`] when `grad_out` is not the
    /// shape of the last output; the layer index is added to the message.
    pub fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let mut grad = grad_out.to_owned();
        for (i, layer) in self.layers.iter_mut().enumerate().rev() {
            grad = layer
                .backward(grad.view())
                .map_err(|e| in_layer(e, i, layer.name()))?;
        }
        Ok(grad)
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

    /// As [`Sequential::named_parameters`], mutable (to apply an initialisation or an
    /// optimiser step).
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
