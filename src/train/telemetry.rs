//! Per-layer activation and gradient statistics at every training step, without hooks.
//!
//! [`Sequential::forward`] keeps each layer's output, and backward leaves each
//! parameter's gradient in place, so after a step everything there is to know is already
//! in the model: [`Telemetry::record`] reads it. Pass it to [`super::fit`]'s callback:
//!
//! ```
//! # use convinit::nn::{Flatten, Linear, LinearConfig, Relu, Sequential};
//! # use convinit::train::{fit, FitConfig, Sgd, SgdConfig, Split, Telemetry};
//! # use ndarray::{Array1, Array2};
//! # use rand::SeedableRng;
//! # let x = Array2::<f32>::from_shape_fn((32, 4), |(i, j)| ((i * 7 + j) % 5) as f32);
//! # let y = Array1::from_shape_fn(32, |i| (i % 2) as i64);
//! # let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! # let mut net = Sequential::new()
//! #     .with(Flatten::new(1, -1))
//! #     .with(Linear::new(LinearConfig::new(4, 8), &mut rng)?)
//! #     .with(Relu::new())
//! #     .with(Linear::new(LinearConfig::new(8, 2), &mut rng)?);
//! # let mut opt = Sgd::new(SgdConfig::new(0.1))?;
//! let mut telemetry = Telemetry::new();
//! let config = FitConfig::new(1, 8).with_image_shape((1, 2, 2));
//! fit(&mut net, &mut opt, Split::new(x.view(), y.view()), None, &config, |info, net| {
//!     telemetry.record(info.step, net)
//! })?;
//! assert_eq!(telemetry.rows().len(), 4 * 4); // 4 steps x 4 layers
//! let mut csv = Vec::new();
//! telemetry.write_csv(&mut csv)?;
//! assert!(csv.starts_with(b"step,layer,name,act_mean,act_std,act_near_zero,grad_std\n"));
//! # Ok::<(), convinit::Error>(())
//! ```

use std::io::Write;

use ndarray::ArrayViewD;

use crate::error::{Error, Result};
use crate::nn::Sequential;

const OP: &str = "Telemetry";

/// The statistics of one layer at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    /// The training step (as given to [`Telemetry::record`]).
    pub step: usize,
    /// The layer's index in the [`Sequential`].
    pub layer: usize,
    /// The layer's type name, e.g. `"Conv2d"`.
    pub name: &'static str,
    /// Mean of the layer's output over the batch.
    pub act_mean: f32,
    /// Standard deviation (population, over every element) of the layer's output.
    pub act_std: f32,
    /// Fraction of output elements with `|value| <= near_zero` (for a ReLU output: the
    /// dead or inactive units).
    pub act_near_zero: f32,
    /// Standard deviation of all the layer's parameter gradients together (`None` for a
    /// layer without parameters).
    pub grad_std: Option<f32>,
}

/// Histogram of one layer's output at one step: `counts[b]` values fell in bin `b` of
/// `bins` equal bins over `range` (values outside the range are not counted, as
/// `torch.histc`; a count stops at `u32::MAX`).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// The training step.
    pub step: usize,
    /// The layer's index.
    pub layer: usize,
    /// Counts per bin.
    pub counts: Vec<u32>,
}

/// Records [`LayerStats`] and activation [`Histogram`]s of every layer of a
/// [`Sequential`] at every step; exports them as CSV.
#[derive(Debug, Clone)]
pub struct Telemetry {
    near_zero: f32,
    hist_range: (f32, f32),
    hist_bins: usize,
    rows: Vec<LayerStats>,
    hists: Vec<Histogram>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// Mean and population standard deviation, summed in f64.
fn mean_std<'a>(values: impl Iterator<Item = &'a f32> + Clone) -> (f64, f64, usize) {
    let (mut n, mut sum) = (0usize, 0.0f64);
    for &v in values.clone() {
        n += 1;
        sum += f64::from(v);
    }
    if n == 0 {
        return (f64::NAN, f64::NAN, 0);
    }
    let mean = sum / n as f64;
    let var = values.map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64;
    (mean, var.sqrt(), n)
}

impl Telemetry {
    /// The most histogram bins [`Telemetry::with_histogram`] accepts: 65 536. Every
    /// [`Telemetry::record`] keeps `bins` counts per layer, so a larger count would
    /// mostly record empty bins at great cost in memory.
    pub const MAX_HISTOGRAM_BINS: usize = 1 << 16;

    /// A recorder with `near_zero = 1e-3` and fast.ai's histogram: 40 bins over `[0, 10]`
    /// (suited to ReLU outputs; see [`Telemetry::with_histogram`]).
    pub fn new() -> Self {
        Telemetry {
            near_zero: 1e-3,
            hist_range: (0.0, 10.0),
            hist_bins: 40,
            rows: Vec::new(),
            hists: Vec::new(),
        }
    }

    /// Sets the threshold under which an activation counts as near zero.
    ///
    /// # Errors
    /// [`Error::Config`] when `near_zero` is negative or not finite.
    pub fn with_near_zero(mut self, near_zero: f32) -> Result<Self> {
        if !(near_zero.is_finite() && near_zero >= 0.0) {
            return Err(Error::config(
                OP,
                format!("near_zero = {near_zero} must be finite and >= 0"),
            ));
        }
        self.near_zero = near_zero;
        Ok(self)
    }

    /// Sets the histogram: `bins` equal bins over `[low, high]`.
    ///
    /// # Errors
    /// [`Error::Config`] when `bins` is zero or more than
    /// [`Telemetry::MAX_HISTOGRAM_BINS`], or the range is empty or not finite.
    pub fn with_histogram(mut self, bins: usize, (low, high): (f32, f32)) -> Result<Self> {
        let range_ok = low.is_finite() && high.is_finite() && low < high;
        if !(range_ok && (1..=Self::MAX_HISTOGRAM_BINS).contains(&bins)) {
            return Err(Error::config(
                OP,
                format!(
                    "histogram needs 1 to {} bins and a finite low < high, got {bins} bins over [{low}, {high}]",
                    Self::MAX_HISTOGRAM_BINS
                ),
            ));
        }
        self.hist_bins = bins;
        self.hist_range = (low, high);
        Ok(self)
    }

    /// The histogram's bin count and range.
    pub fn histogram_bins(&self) -> (usize, (f32, f32)) {
        (self.hist_bins, self.hist_range)
    }

    /// Reads every layer's last output and parameter gradients from `net` and records
    /// them under `step`. Call it after backward (as [`super::fit`]'s callback does).
    ///
    /// # Errors
    /// [`Error::State`] when a layer has no saved output (no forward pass yet, or the
    /// last one failed); nothing is recorded then.
    pub fn record(&mut self, step: usize, net: &Sequential) -> Result<()> {
        let outputs: Vec<ArrayViewD<'_, f32>> = net
            .outputs()
            .map(|(i, layer, out)| {
                out.ok_or_else(|| {
                    Error::state(
                        OP,
                        format!(
                            "layer {i} ({}) has no output: run a forward pass first",
                            layer.name()
                        ),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let params = net.named_parameters();
        for ((i, layer, _), out) in net.outputs().zip(outputs) {
            let (mean, std, n) = mean_std(out.iter());
            let near = out.iter().filter(|v| v.abs() <= self.near_zero).count();
            let prefix = format!("{i}.");
            let grads: Vec<_> = params
                .iter()
                .filter(|p| p.name.starts_with(&prefix))
                .collect();
            let grad_std = (!grads.is_empty())
                .then(|| mean_std(grads.iter().flat_map(|p| p.grad.iter())).1 as f32);
            self.rows.push(LayerStats {
                step,
                layer: i,
                name: layer.name(),
                act_mean: mean as f32,
                act_std: std as f32,
                act_near_zero: if n == 0 {
                    f32::NAN
                } else {
                    near as f32 / n as f32
                },
                grad_std,
            });
            self.hists.push(Histogram {
                step,
                layer: i,
                counts: self.histogram(out),
            });
        }
        Ok(())
    }

    /// Counts of `values` per bin (`torch.histc` semantics: the top edge is in the last
    /// bin, values outside the range and NaN are dropped). A count saturates at
    /// `u32::MAX`.
    fn histogram(&self, values: ArrayViewD<'_, f32>) -> Vec<u32> {
        let (low, high) = self.hist_range;
        let bins = self.hist_bins;
        let width = f64::from(high) - f64::from(low);
        let mut counts = vec![0u32; bins];
        for &v in values {
            if v >= low && v <= high {
                let b = ((f64::from(v) - f64::from(low)) / width * bins as f64) as usize;
                let c = &mut counts[b.min(bins - 1)];
                *c = c.saturating_add(1);
            }
        }
        counts
    }

    /// Every recorded row, in recording order (step, then layer).
    pub fn rows(&self) -> &[LayerStats] {
        &self.rows
    }

    /// The rows of layer `layer`, in step order.
    pub fn layer(&self, layer: usize) -> impl Iterator<Item = &LayerStats> + '_ {
        self.rows.iter().filter(move |r| r.layer == layer)
    }

    /// Every recorded histogram, in recording order.
    pub fn histograms(&self) -> &[Histogram] {
        &self.hists
    }

    /// Forgets everything recorded.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.hists.clear();
    }

    /// Writes the rows as CSV: the header
    /// `step,layer,name,act_mean,act_std,act_near_zero,grad_std`, then one line per layer
    /// and step (`grad_std` empty for layers without parameters).
    ///
    /// # Errors
    /// [`Error::Io`] when writing fails.
    pub fn write_csv<W: Write>(&self, mut w: W) -> Result<()> {
        let io = |e| Error::io("writing telemetry CSV", e);
        writeln!(w, "step,layer,name,act_mean,act_std,act_near_zero,grad_std").map_err(io)?;
        for r in &self.rows {
            let g = r.grad_std.map(|g| g.to_string()).unwrap_or_default();
            writeln!(
                w,
                "{},{},{},{},{},{},{g}",
                r.step, r.layer, r.name, r.act_mean, r.act_std, r.act_near_zero
            )
            .map_err(io)?;
        }
        w.flush().map_err(io)
    }

    /// Writes the histograms as CSV: the header `step,layer,bin_0,...,bin_{B-1}` (bin `b`
    /// covers `[low + b * width, low + (b + 1) * width)`), then one line per layer and step.
    ///
    /// # Errors
    /// [`Error::Io`] when writing fails.
    pub fn write_histograms_csv<W: Write>(&self, mut w: W) -> Result<()> {
        let io = |e| Error::io("writing histogram CSV", e);
        let header: Vec<String> = (0..self.hist_bins).map(|b| format!("bin_{b}")).collect();
        writeln!(w, "step,layer,{}", header.join(",")).map_err(io)?;
        for h in &self.hists {
            let counts: Vec<String> = h.counts.iter().map(u32::to_string).collect();
            writeln!(w, "{},{},{}", h.step, h.layer, counts.join(",")).map_err(io)?;
        }
        w.flush().map_err(io)
    }
}
