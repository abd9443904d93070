//! The `BatchNorm2d` layer: affine parameters, running statistics (buffers), train /
//! eval mode.

use std::any::Any;

use ndarray::{ArcArray, ArcArrayD, Array0, Array1, ArrayD, ArrayView4, ArrayViewD, Ix4};

use super::{
    Buffer, BufferMut, BufferView, BufferViewMut, Layer, Param, ParamMut, check_grad_shape,
    check_param_shape, not_run, python_float, to_rank,
};
use crate::error::{Error, Result};
use crate::limits::try_to_owned;
use crate::ops::{BatchNormOptions, BatchNormStats, batch_norm2d, batch_norm2d_backward};

const OP: &str = "BatchNorm2d";

/// Configuration of a [`BatchNorm2d`], with PyTorch's `nn.BatchNorm2d` defaults.
///
/// ```
/// use convinit::nn::BatchNorm2dConfig;
/// let cfg = BatchNorm2dConfig::new(16);
/// assert_eq!((cfg.eps, cfg.momentum, cfg.affine, cfg.track_running_stats), (1e-5, Some(0.1), true, true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNorm2dConfig {
    /// Channels `C`.
    pub num_features: usize,
    /// Added to the variance before the square root. Default `1e-5`.
    pub eps: f64,
    /// The weight of each batch in the running statistics; `None` is the cumulative
    /// moving average (each batch weighted `1 / num_batches_tracked`). Default
    /// `Some(0.1)`.
    pub momentum: Option<f64>,
    /// Whether the layer has a learned `weight` (ones) and `bias` (zeros). Default `true`.
    pub affine: bool,
    /// Whether the layer keeps running statistics (`running_mean`, `running_var`,
    /// `num_batches_tracked`) and uses them in evaluation mode; without, it always
    /// normalises with the batch's statistics. Default `true`.
    pub track_running_stats: bool,
}

impl BatchNorm2dConfig {
    /// A config with PyTorch's defaults: `eps = 1e-5`, `momentum = Some(0.1)`, affine,
    /// tracking running statistics.
    pub fn new(num_features: usize) -> Self {
        BatchNorm2dConfig {
            num_features,
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }

    /// Sets `eps`.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Sets `momentum` (`None`: cumulative moving average).
    pub fn with_momentum(mut self, momentum: Option<f64>) -> Self {
        self.momentum = momentum;
        self
    }

    /// Sets `affine`.
    pub fn with_affine(mut self, affine: bool) -> Self {
        self.affine = affine;
        self
    }

    /// Sets `track_running_stats`.
    pub fn with_track_running_stats(mut self, track: bool) -> Self {
        self.track_running_stats = track;
        self
    }

    /// Checks the config: at least one channel, `eps` finite and >= 0, `momentum` (when
    /// given) finite in [0, 1].
    ///
    /// # Errors
    /// [`Error::Config`] naming `BatchNorm2d` and the offending value.
    pub fn validate(&self) -> Result<()> {
        if self.num_features == 0 {
            return Err(Error::config(OP, "num_features must be positive, got 0"));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::config(
                OP,
                format!("eps must be finite and >= 0, got {}", self.eps),
            ));
        }
        if let Some(m) = self.momentum
            && !(m.is_finite() && (0.0..=1.0).contains(&m))
        {
            return Err(Error::config(
                OP,
                format!("momentum must be in [0, 1] (or None), got {m}"),
            ));
        }
        Ok(())
    }
}

/// What forward kept for backward.
#[derive(Debug, Clone)]
struct Saved {
    x: ArcArray<f32, Ix4>,
    stats: BatchNormStats,
}

/// 2-d batch normalisation, as `torch.nn.BatchNorm2d`: per channel,
/// `y = (x - mean) / sqrt(var + eps) * weight + bias`.
///
/// In training mode (the default) `mean` and `var` are the batch's (biased variance)
/// and the running statistics are updated (`running_var` with the unbiased variance),
/// `num_batches_tracked` counting the batches; in evaluation mode
/// ([`crate::nn::Sequential::eval`]) the running statistics are used, unless
/// `track_running_stats` is off (then always the batch's, as PyTorch). Backward works in
/// both modes: through the batch statistics in training mode.
///
/// Parameters `weight` (ones) and `bias` (zeros) when affine; buffers `running_mean`
/// (zeros), `running_var` (ones) and `num_batches_tracked` (an i64 scalar, 0) when
/// tracking: the names of PyTorch's `state_dict`.
///
/// ```
/// use convinit::nn::{BatchNorm2d, BatchNorm2dConfig, Layer};
/// use ndarray::{Array4, ArrayD};
///
/// let mut bn = BatchNorm2d::new(BatchNorm2dConfig::new(2))?;
/// let x = Array4::from_shape_fn((4, 2, 3, 3), |(n, c, h, w)| (n + 2 * c + h * w) as f32);
/// let y = bn.forward(x.view().into_dyn())?;
/// assert!(y.mean().unwrap().abs() < 1e-6);
/// assert_eq!(bn.num_batches_tracked(), Some(1));
/// bn.set_training(false);
/// let z = bn.forward(x.view().into_dyn())?; // with the running statistics
/// assert_ne!(y, z);
/// # Ok::<(), convinit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    config: BatchNorm2dConfig,
    weight: Option<Array1<f32>>,
    bias: Option<Array1<f32>>,
    weight_grad: Option<Array1<f32>>,
    bias_grad: Option<Array1<f32>>,
    running_mean: Option<Array1<f32>>,
    running_var: Option<Array1<f32>>,
    num_batches_tracked: Option<ArrayD<i64>>,
    training: bool,
    saved: Option<Saved>,
    /// The last output of the shared paths, recycled by the next call once nobody else
    /// holds it (a loop over this layer alone then allocates no new output).
    last_output: Option<ArcArrayD<f32>>,
}

impl BatchNorm2d {
    /// A layer as PyTorch builds it: weight ones, bias zeros, running mean zeros,
    /// running variance ones, no batch tracked; training mode.
    ///
    /// # Errors
    /// [`Error::Config`] when the config is invalid (see [`BatchNorm2dConfig::validate`]).
    pub fn new(config: BatchNorm2dConfig) -> Result<Self> {
        config.validate()?;
        let c = config.num_features;
        let (affine, track) = (config.affine, config.track_running_stats);
        Ok(BatchNorm2d {
            config,
            weight: affine.then(|| Array1::ones(c)),
            bias: affine.then(|| Array1::zeros(c)),
            weight_grad: affine.then(|| Array1::zeros(c)),
            bias_grad: affine.then(|| Array1::zeros(c)),
            running_mean: track.then(|| Array1::zeros(c)),
            running_var: track.then(|| Array1::ones(c)),
            num_batches_tracked: track.then(|| Array0::zeros(()).into_dyn()),
            training: true,
            saved: None,
            last_output: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BatchNorm2dConfig {
        &self.config
    }

    /// The weight (C), when affine.
    pub fn weight(&self) -> Option<&Array1<f32>> {
        self.weight.as_ref()
    }

    /// The weight, mutable.
    pub fn weight_mut(&mut self) -> Option<&mut Array1<f32>> {
        self.weight.as_mut()
    }

    /// The bias (C), when affine.
    pub fn bias(&self) -> Option<&Array1<f32>> {
        self.bias.as_ref()
    }

    /// The bias, mutable.
    pub fn bias_mut(&mut self) -> Option<&mut Array1<f32>> {
        self.bias.as_mut()
    }

    /// The accumulated weight gradient, when affine.
    pub fn weight_grad(&self) -> Option<&Array1<f32>> {
        self.weight_grad.as_ref()
    }

    /// The accumulated bias gradient, when affine.
    pub fn bias_grad(&self) -> Option<&Array1<f32>> {
        self.bias_grad.as_ref()
    }

    /// The running mean (C), when tracking.
    pub fn running_mean(&self) -> Option<&Array1<f32>> {
        self.running_mean.as_ref()
    }

    /// The running mean, mutable.
    pub fn running_mean_mut(&mut self) -> Option<&mut Array1<f32>> {
        self.running_mean.as_mut()
    }

    /// The running (unbiased) variance (C), when tracking.
    pub fn running_var(&self) -> Option<&Array1<f32>> {
        self.running_var.as_ref()
    }

    /// The running variance, mutable.
    pub fn running_var_mut(&mut self) -> Option<&mut Array1<f32>> {
        self.running_var.as_mut()
    }

    /// How many training batches updated the running statistics, when tracking.
    pub fn num_batches_tracked(&self) -> Option<i64> {
        self.num_batches_tracked
            .as_ref()
            .and_then(|n| n.first().copied())
    }

    /// Hands the last shared output to the buffer cache ([`crate::buffers`]) when nobody
    /// holds it any more, for this call's output.
    fn recycle_output(&mut self) {
        if let Some(y) = self.last_output.take() {
            crate::buffers::give_shared(y);
        }
    }

    /// Shares `y`, keeping a reference for [`BatchNorm2d::recycle_output`].
    fn keep_output(&mut self, y: ArrayD<f32>) -> ArcArrayD<f32> {
        let y = y.into_shared();
        self.last_output = Some(y.clone());
        y
    }

    /// Whether this forward pass normalises with the batch's statistics.
    fn uses_batch_stats(&self) -> bool {
        self.training || self.running_mean.is_none()
    }

    /// The forward pass on `x`: checks, statistics update, output.
    fn run(&mut self, x: ArrayView4<'_, f32>) -> Result<(ArrayD<f32>, BatchNormStats)> {
        let c = self.config.num_features;
        if x.shape()[1] != c {
            return Err(Error::shape(
                OP,
                format!(
                    "input {:?} has {} channels, the layer has num_features = {c}",
                    x.shape(),
                    x.shape()[1]
                ),
            ));
        }
        for (name, p) in [("weight", &self.weight), ("bias", &self.bias)] {
            if let Some(p) = p
                && p.len() != c
            {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{name} has length {}, num_features is {c}: a parameter replaced \
                         through a `_mut` accessor must keep its shape",
                        p.len()
                    ),
                ));
            }
        }
        let batch = self.uses_batch_stats();
        let (n, _, h, w) = x.dim();
        if batch && n * h * w == 1 {
            return Err(Error::config(
                OP,
                format!(
                    "Expected more than 1 value per channel when training, got input size \
                     {:?}",
                    x.shape()
                ),
            ));
        }
        // Update the running statistics only in training mode.
        let update = self.training && self.running_mean.is_some();
        let momentum = match self.config.momentum {
            Some(m) => m,
            None => {
                let done = self.num_batches_tracked().unwrap_or(0);
                1.0 / (done.saturating_add(i64::from(update)).max(1)) as f64
            }
        };
        let options = BatchNormOptions {
            training: batch,
            momentum,
            eps: self.config.eps,
        };
        let (rm, rv) = if update || !batch {
            (
                self.running_mean.as_mut().map(|a| a.view_mut()),
                self.running_var.as_mut().map(|a| a.view_mut()),
            )
        } else {
            (None, None)
        };
        let (y, stats) = batch_norm2d(
            x,
            rm,
            rv,
            self.weight.as_ref().map(|a| a.view()),
            self.bias.as_ref().map(|a| a.view()),
            &options,
        )?;
        if update && let Some(t) = self.num_batches_tracked.as_mut() {
            t.mapv_inplace(|v| v.saturating_add(1));
        }
        Ok((y.into_dyn(), stats))
    }
}

impl Layer for BatchNorm2d {
    fn name(&self) -> &'static str {
        OP
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = to_rank::<Ix4>(OP, "input", "(N, C, H, W)", x)?;
        self.saved = None;
        let (y, stats) = self.run(x)?;
        let keep = try_to_owned(OP, x, || format!("the saved input {:?}", x.shape()))?;
        self.saved = Some(Saved {
            x: keep.into_shared(),
            stats,
        });
        Ok(y)
    }

    fn forward_shared(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        to_rank::<Ix4>(OP, "input", "(N, C, H, W)", x.view())?;
        let x = x
            .into_dimensionality::<Ix4>()
            .expect("the rank was just checked");
        self.saved = None;
        self.recycle_output();
        let (y, stats) = self.run(x.view())?;
        self.saved = Some(Saved { x, stats });
        Ok(self.keep_output(y))
    }

    fn infer(&mut self, x: ArcArrayD<f32>) -> Result<ArcArrayD<f32>> {
        let x = to_rank::<Ix4>(OP, "input", "(N, C, H, W)", x.view())?;
        self.saved = None;
        self.recycle_output();
        let y = self.run(x)?.0;
        Ok(self.keep_output(y))
    }

    fn clear_saved(&mut self) {
        if let Some(s) = self.saved.take() {
            crate::buffers::give_shared(s.x);
        }
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let saved = self.saved.as_ref().ok_or_else(|| not_run(OP))?;
        check_grad_shape(OP, grad_out.shape(), saved.x.shape())?;
        if let (Some(p), Some(g)) = (&self.weight, &self.weight_grad) {
            check_param_shape(OP, "weight", p.shape(), g.shape())?;
        }
        if let (Some(p), Some(g)) = (&self.bias, &self.bias_grad) {
            check_param_shape(OP, "bias", p.shape(), g.shape())?;
        }
        let dy = to_rank::<Ix4>(OP, "grad_out", "(N, C, H, W)", grad_out)?;
        let grads = batch_norm2d_backward(
            saved.x.view(),
            self.weight.as_ref().map(|a| a.view()),
            self.bias.is_some(),
            &saved.stats,
            dy,
        )?;
        if let (Some(acc), Some(d)) = (self.weight_grad.as_mut(), &grads.dweight) {
            *acc += d;
        }
        if let (Some(acc), Some(d)) = (self.bias_grad.as_mut(), &grads.dbias) {
            *acc += d;
        }
        Ok(grads.dx.into_dyn())
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn params(&self) -> Vec<Param<'_>> {
        let mut out = Vec::new();
        for (name, p, g) in [
            ("weight", &self.weight, &self.weight_grad),
            ("bias", &self.bias, &self.bias_grad),
        ] {
            if let (Some(p), Some(g)) = (p, g) {
                out.push(Param {
                    name: name.into(),
                    value: p.view().into_dyn(),
                    grad: g.view().into_dyn(),
                });
            }
        }
        out
    }

    fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        for (name, p, g) in [
            ("weight", &mut self.weight, &mut self.weight_grad),
            ("bias", &mut self.bias, &mut self.bias_grad),
        ] {
            if let (Some(p), Some(g)) = (p, g) {
                out.push(ParamMut {
                    name: name.into(),
                    value: p.view_mut().into_dyn(),
                    grad: g.view_mut().into_dyn(),
                });
            }
        }
        out
    }

    fn buffers(&self) -> Vec<Buffer<'_>> {
        let mut out = Vec::new();
        for (name, b) in [
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ] {
            if let Some(b) = b {
                out.push(Buffer {
                    name: name.into(),
                    value: BufferView::F32(b.view().into_dyn()),
                });
            }
        }
        if let Some(n) = &self.num_batches_tracked {
            out.push(Buffer {
                name: "num_batches_tracked".into(),
                value: BufferView::I64(n.view()),
            });
        }
        out
    }

    fn buffers_mut(&mut self) -> Vec<BufferMut<'_>> {
        let mut out = Vec::new();
        for (name, b) in [
            ("running_mean", &mut self.running_mean),
            ("running_var", &mut self.running_var),
        ] {
            if let Some(b) = b {
                out.push(BufferMut {
                    name: name.into(),
                    value: BufferViewMut::F32(b.view_mut().into_dyn()),
                });
            }
        }
        if let Some(n) = &mut self.num_batches_tracked {
            out.push(BufferMut {
                name: "num_batches_tracked".into(),
                value: BufferViewMut::I64(n.view_mut()),
            });
        }
        out
    }

    /// As PyTorch prints it:
    /// `BatchNorm2d(6, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)`.
    fn describe(&self) -> String {
        let c = &self.config;
        let momentum = c.momentum.map_or("None".to_string(), python_float);
        let py = |b: bool| if b { "True" } else { "False" };
        format!(
            "BatchNorm2d({}, eps={}, momentum={momentum}, affine={}, track_running_stats={})",
            c.num_features,
            python_float(c.eps),
            py(c.affine),
            py(c.track_running_stats)
        )
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::python_float;

    #[test]
    fn floats_print_as_python() {
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(1e-3), "0.001");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.0), "0.0");
        assert_eq!(python_float(2.5e-7), "2.5e-07");
    }
}
