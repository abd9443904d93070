//! Layer-sequential unit-variance initialisation (Mishkin & Matas 2015, "All you need is
//! a good init"), with fast.ai's mean correction through the bias.

use ndarray::{ArcArrayD, ArrayD, ArrayViewD};

use crate::error::{Error, Result};
use crate::nn::{BufferView, BufferViewMut, Sequential};

const OP: &str = "lsuv";

/// Where LSUV measures a layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LsuvPoint {
    /// The layer's own output (before its activation), as Mishkin & Matas.
    #[default]
    LayerOutput,
    /// The output of the last parameter-free layer that follows it (its activation,
    /// pooling ...), as fast.ai's `lsuv_module` on a conv + `GeneralRelu` block.
    /// Centering there only makes sense with an activation that can be negative, e.g.
    /// [`crate::nn::GeneralRelu`] with a shift.
    AfterActivation,
}

/// Settings of [`lsuv`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LsuvConfig {
    /// The standard deviation to reach. Default 1.
    pub target_std: f32,
    /// Stop when `|std - target_std| <= tol` (and `|mean| <= tol` when centering a layer
    /// with a bias).
    /// Default 1e-3.
    pub tol: f32,
    /// At most this many measure-and-rescale rounds per layer. Default 10. Any value from
    /// 1 up is accepted (nothing is allocated per round; the rounds stop as soon as the
    /// layer converges), but each round is a forward pass over the batch, so a huge value
    /// with an unreachable `tol` runs as long as it says.
    pub max_iters: usize,
    /// Also subtract the output mean through the bias (fast.ai's variant). Default true.
    pub center: bool,
    /// Where the output is measured. Default [`LsuvPoint::LayerOutput`].
    pub point: LsuvPoint,
}

impl Default for LsuvConfig {
    fn default() -> Self {
        LsuvConfig {
            target_std: 1.0,
            tol: 1e-3,
            max_iters: 10,
            center: true,
            point: LsuvPoint::LayerOutput,
        }
    }
}

/// What [`lsuv`] did to one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LsuvLayer {
    /// The layer's index in the [`Sequential`].
    pub layer: usize,
    /// The layer's type name.
    pub name: &'static str,
    /// Rescaling rounds applied.
    pub iterations: usize,
    /// Whether the tolerance was reached within `max_iters`.
    pub converged: bool,
    /// Output mean before LSUV.
    pub mean_before: f32,
    /// Output standard deviation before LSUV.
    pub std_before: f32,
    /// Output mean after.
    pub mean: f32,
    /// Output standard deviation after.
    pub std: f32,
}

fn mean_std(y: ArrayViewD<'_, f32>) -> (f64, f64) {
    let n = y.len().max(1) as f64;
    let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = y
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// Runs layers `from..=to` of `net` on `input` (or, when `None`, on `x`, read in
/// place), keeping nothing for backward ([`crate::nn::Layer::infer`]).
fn run(
    net: &mut Sequential,
    x: ArrayViewD<'_, f32>,
    input: Option<&ArcArrayD<f32>>,
    from: usize,
    to: usize,
) -> Result<ArcArrayD<f32>> {
    let mut y: Option<ArcArrayD<f32>> = input.cloned();
    for i in from..=to {
        let layer = net
            .layer_mut(i)
            .ok_or_else(|| Error::state(OP, format!("layer {i} vanished")))?;
        y = Some(match y {
            Some(y) => layer.infer(y)?,
            None => {
                let out = layer.forward(x.view());
                layer.clear_saved();
                out?.into_shared()
            }
        });
    }
    y.ok_or_else(|| Error::state(OP, format!("no layer in {from}..={to}")))
}

/// A copy of a buffer's value, to put back after the measuring passes.
enum Saved {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

/// Copies of every buffer of `net`.
fn save_buffers(net: &Sequential) -> Vec<Saved> {
    net.named_buffers()
        .into_iter()
        .map(|b| match b.value {
            BufferView::F32(a) => Saved::F32(a.to_owned()),
            BufferView::I64(a) => Saved::I64(a.to_owned()),
        })
        .collect()
}

/// Puts the buffers [`save_buffers`] copied back.
fn restore_buffers(net: &mut Sequential, saved: &[Saved]) {
    for (b, s) in net.named_buffers_mut().into_iter().zip(saved) {
        match (b.value, s) {
            (BufferViewMut::F32(mut a), Saved::F32(s)) => a.assign(s),
            (BufferViewMut::I64(mut a), Saved::I64(s)) => a.assign(s),
            _ => {}
        }
    }
}

/// LSUV: for each layer that says so ([`crate::nn::Layer::lsuv_rescales`]: convolutions
/// and linear layers, not batch norm) in order, measure its output on the batch `x`
/// (see [`LsuvPoint`]), then divide its `weight` by `std / target_std` (and, when
/// `center`, subtract the output mean from its `bias` and divide the bias likewise, so
/// the centred output is rescaled exactly), until the output's standard deviation is
/// within `tol` of `target_std` or `max_iters` rounds are done. Earlier layers are fixed
/// before later ones are measured, so each sees its final input.
///
/// Only those weights and biases change: without `center` the biases are left alone,
/// and so is every other layer's parameters (a batch norm's `weight` and `bias`) and
/// every buffer (the measuring passes run in the layers' current mode, keeping nothing
/// for backward; running statistics they update are put back afterwards).
/// Layers without a bias are only rescaled (their mean is left as it is). Returns what
/// was done per layer (layers that did not converge are reported with
/// `converged: false`, not as an error). Parameter gradients are untouched, and so are
/// the outputs [`Sequential::output`] keeps: run a forward pass to refresh them. What the
/// measured layers kept for backward is dropped.
///
/// # Errors
/// [`Error::Config`] for a non-positive or non-finite `target_std` or `tol`, or zero
/// `max_iters`; [`Error::State`] when a layer's output has zero (or non-finite) standard
/// deviation, which no rescaling can fix (the message names the layer); any layer error.
///
/// # Examples
/// ```
/// use convinit::nn::{Conv2d, Conv2dConfig, Relu, Sequential};
/// use convinit::train::{lsuv, LsuvConfig};
/// use ndarray::Array4;
/// use rand::SeedableRng;
/// use rand_distr::{Distribution, StandardNormal};
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut net = Sequential::new()
///     .with(Conv2d::new(Conv2dConfig::new(1, 4, (3, 3)), &mut rng)?)
///     .with(Relu::new())
///     .with(Conv2d::new(Conv2dConfig::new(4, 4, (3, 3)), &mut rng)?);
/// let x = Array4::<f32>::from_shape_fn((8, 1, 10, 10), |_| StandardNormal.sample(&mut rng));
/// let report = lsuv(&mut net, x.view().into_dyn(), &LsuvConfig::default())?;
/// assert_eq!(report.len(), 2);
/// assert!(report.iter().all(|l| l.converged && (l.std - 1.0).abs() <= 1e-3));
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn lsuv(
    net: &mut Sequential,
    x: ArrayViewD<'_, f32>,
    config: &LsuvConfig,
) -> Result<Vec<LsuvLayer>> {
    let LsuvConfig {
        target_std,
        tol,
        max_iters,
        ..
    } = *config;
    if !(target_std.is_finite() && target_std > 0.0 && tol.is_finite() && tol > 0.0)
        || max_iters == 0
    {
        return Err(Error::config(
            OP,
            format!(
                "target_std ({target_std}) and tol ({tol}) must be finite and positive, max_iters ({max_iters}) at least 1"
            ),
        ));
    }
    let saved = save_buffers(net);
    let report = rescale_layers(net, x, config);
    restore_buffers(net, &saved);
    report
}

/// [`lsuv`] after its checks.
fn rescale_layers(
    net: &mut Sequential,
    x: ArrayViewD<'_, f32>,
    config: &LsuvConfig,
) -> Result<Vec<LsuvLayer>> {
    let LsuvConfig {
        target_std,
        tol,
        max_iters,
        center,
        point,
    } = *config;
    let chosen: Vec<usize> = (0..net.len())
        .filter(|&i| net.layer(i).is_some_and(|l| l.lsuv_rescales()))
        .collect();
    let mut report = Vec::with_capacity(chosen.len());
    // The input of the next layer to process (`None`: the caller's batch itself, not a
    // copy), and that layer's index.
    let mut input: Option<ArcArrayD<f32>> = None;
    let mut at = 0;
    for &i in &chosen {
        if i > at {
            input = Some(run(net, x.view(), input.as_ref(), at, i - 1)?);
        }
        at = i;
        // The measuring point: layer i, or the last parameter-free layer after it.
        let end = match point {
            LsuvPoint::LayerOutput => i,
            LsuvPoint::AfterActivation => {
                let mut e = i;
                while e + 1 < net.len() && net.layer(e + 1).is_some_and(|l| l.params().is_empty()) {
                    e += 1;
                }
                e
            }
        };
        let name = net.layer(i).map_or("?", |l| l.name());
        // A layer without a bias cannot be centred: only its std is brought to target.
        let center = center
            && net
                .layer(i)
                .is_some_and(|l| l.params().iter().any(|p| p.name == "bias"));
        let measure = |net: &mut Sequential| -> Result<(f64, f64)> {
            let (mean, std) = mean_std(run(net, x.view(), input.as_ref(), i, end)?.view());
            if !(std.is_finite() && std > 1e-12 && mean.is_finite()) {
                return Err(Error::state(
                    OP,
                    format!(
                        "the output of layer {end} (measuring layer {i}, {name}) has mean {mean} and std {std}: no rescaling of the weight can give it std {target_std}"
                    ),
                ));
            }
            Ok((mean, std))
        };
        let (mean_before, std_before) = measure(net)?;
        let (mut mean, mut std) = (mean_before, std_before);
        let mut iterations = 0;
        let done = |mean: f64, std: f64| {
            (std - f64::from(target_std)).abs() <= f64::from(tol)
                && (!center || mean.abs() <= f64::from(tol))
        };
        while !done(mean, std) && iterations < max_iters {
            let scale = (f64::from(target_std) / std) as f32;
            let layer = net
                .layer_mut(i)
                .ok_or_else(|| Error::state(OP, format!("layer {i} vanished")))?;
            for mut p in layer.params_mut() {
                match p.name.as_str() {
                    "weight" => p.value.mapv_inplace(|v| v * scale),
                    "bias" if center => p.value.mapv_inplace(|b| (b - mean as f32) * scale),
                    _ => {}
                }
            }
            iterations += 1;
            (mean, std) = measure(net)?;
        }
        report.push(LsuvLayer {
            layer: i,
            name,
            iterations,
            converged: done(mean, std),
            mean_before: mean_before as f32,
            std_before: std_before as f32,
            mean: mean as f32,
            std: std as f32,
        });
    }
    Ok(report)
}
