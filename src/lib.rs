//! # convinit
//!
//! Build, initialise, train and *understand* small convolutional networks on the CPU,
//! in pure Rust on [`ndarray`] tensors (NCHW, `f32`).
//!
//! The crate grew from the fast.ai lesson "why sqrt(5)": what does an initialisation do
//! to the statistics of a conv net, and why is PyTorch's default
//! `kaiming_uniform_(a = sqrt 5)` a poor one for ReLU networks?
//!
//! ## Modules
//! - [`data`]: numpy pickle reader (gzip detected), MNIST from `mnist.pkl.gz` or IDX files.
//! - [`gemm`]: the single matrix-multiply entry point all ops use.
//! - [`cpu`]: the CPU's micro-architecture class and cache sizes, which the GEMM tunes to.
//! - [`ops`]: conv2d, activations, pooling, flatten, linear and MSE, forward and backward.
//! - [`nn`]: layers owning parameters and gradients, and a `Sequential` container.
//! - [`init`]: `torch.nn.init`, formula for formula.
//! - [`stats`]: mean / std with PyTorch's conventions, normalisation, (N, 784) to NCHW.
//! - [`io`]: save and load a model's parameters as safetensors, with PyTorch's key names.
//! - [`train`]: cross-entropy, SGD, mini-batches, the training loop, telemetry, LSUV.
//! - [`limits`]: the size limits of every loader, and fallible allocation in the ops.
//! - [`buffers`]: the cache of large buffers the layers recycle, so a training loop
//!   runs at the same speed in a long-running process.
//! - [`error`]: the crate's [`Error`] and [`Result`].
//!
//! ## Threads
//! Every parallel kernel runs on rayon's global pool: `RAYON_NUM_THREADS=N` in the
//! environment, or `rayon::ThreadPoolBuilder::new().num_threads(n).build_global()`
//! before the first op, sets its size; `ThreadPool::install` runs a part of a program on
//! another pool. Results are bit-identical at any thread count (unless a conv opts into
//! [`ops::ConvAlgorithm::Autotune`], whose choice of algorithm depends on timing).
//!
//! A program whose main thread drives many small ops, as a training loop does, is
//! faster with that thread in the pool:
//! `rayon::ThreadPoolBuilder::new().use_current_thread().build_global()` at the start
//! of `main` makes it worker 0 of `N` (one thread fewer is spawned), so every op's
//! parallel part starts on it and ends there, instead of handing the work to the pool
//! and sleeping until a worker wakes it. `examples/train_mnist` does this (2 threads,
//! Intel Xeon 6/207: 5.2 s to 4.8-4.9 s for 3 epochs, the same bits).
//!
//! Between such ops, rayon's idle workers go to sleep within tens of microseconds and
//! take tens more to wake. A [`threads::KeepAwake`] guard, taken around each step of the
//! loop, keeps the other workers polling for work instead, as OpenMP runtimes spin
//! before sleeping; [`train::fit`] takes one per step (`train_mnist`: 4.7-4.8 s to
//! 4.2-4.3 s, the same bits).
//!
//! ## Memory layout
//! Tensors are `(N, C, H, W)` arrays, channel-major by default. A conv layer can put its
//! output channels-last instead ([`ops::MemoryFormat::ChannelsLast`], PyTorch's
//! `channels_last`: the same shape, NHWC strides), which the direct conv path reads and
//! writes without transposes; element-wise layers keep the layout they are given, and a
//! conv takes its input in either. [`ops::to_memory_format`] converts an array.
//! `examples/train_mnist` keeps its hidden activations channels-last (4.2-4.6 s to
//! 3.9-4.3 s for 3 epochs at 2 threads, Intel Xeon 6/207).
//!
//! ## Build profile
//! In a debug build of a crate that depends on this one, `convinit`'s kernels are not
//! optimised and run about 100x slower. Optimise this crate alone with
//! `[profile.dev.package.convinit] opt-level = 3` in your `Cargo.toml`.
#![warn(missing_docs)]

pub mod buffers;
pub mod cpu;
pub mod data;
pub mod error;
pub mod gemm;
pub mod init;
pub mod io;
pub mod limits;
pub mod nn;
pub mod ops;
pub mod stats;
pub mod threads;
pub mod train;

pub use error::{Error, Result};

/// The README's code blocks, compiled and run as doc tests so the README stays true
/// (with the embedded sample they load, so only in builds that have it).
#[cfg(all(doctest, feature = "embedded-sample"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
