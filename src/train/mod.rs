//! Training, and watching what an initialisation does to it.
//!
//! - [`cross_entropy`] / [`cross_entropy_backward`] (softmax cross-entropy on logits,
//!   `torch.nn.functional.cross_entropy`), with label smoothing and a sum reduction
//!   through [`CrossEntropyOptions`] and the `_with` functions; [`softmax`], [`accuracy`],
//!   and [`predict`] (the class per row from a network's logits).
//! - [`Optimizer`], the trait [`fit`] drives, and its implementations with PyTorch's
//!   exact updates: [`Sgd`] (`torch.optim.SGD`: momentum, dampening, weight decay,
//!   Nesterov), [`Adam`] and [`AdamW`] (bias correction, AMSGrad, L2 or decoupled weight
//!   decay).
//! - [`batch_indices`] and [`gather_images`]: seeded shuffled mini-batches.
//! - [`fit`]: the training loop, reporting loss and accuracy per epoch ([`EpochReport`]),
//!   with a per-step callback and an [`LrSchedule`]; [`evaluate`] for a held-out split.
//! - [`Telemetry`]: per-layer activation mean, std, near-zero fraction, gradient std and
//!   activation histograms at every step, as CSV.
//! - [`lsuv`]: layer-sequential unit-variance initialisation.

mod data;
mod fit;
mod loss;
mod lsuv;
mod optim;
mod telemetry;

pub use data::{batch_indices, gather_images, gather_rows};
pub use fit::{EpochReport, FitConfig, LrSchedule, Split, StepInfo, evaluate, fit, predict};
pub use loss::{
    CrossEntropyOptions, Reduction, accuracy, argmax, cross_entropy, cross_entropy_backward,
    cross_entropy_backward_with, cross_entropy_with, cross_entropy_with_grad,
    cross_entropy_with_grad_with, softmax,
};
pub use lsuv::{LsuvConfig, LsuvLayer, LsuvPoint, lsuv};
pub use optim::{Adam, AdamConfig, AdamState, AdamW, Optimizer, Sgd, SgdConfig};
pub use telemetry::{Histogram, LayerStats, Telemetry};
