//! Loading the data people actually have: numpy pickles (gzipped or not), numpy's
//! `.npy` and `.npz` files, and MNIST.
//!
//! - [`pickle`]: a streaming numpy pickle reader returning typed [`ndarray`] arrays.
//! - [`idx`]: the IDX format of the original MNIST files.
//! - [`npy`] and [`npz`]: numpy's own `.npy` files and `.npz` archives, as [`NdArray`]s.
//! - [`mnist`]: MNIST from `mnist.pkl.gz`, an IDX directory, or the embedded sample.
//!
//! The statistics helpers of [`crate::stats`] are re-exported here by name.

pub mod idx;
pub mod mnist;
pub mod npy;
pub mod npz;
pub mod pickle;

pub use crate::stats::{normalize, stats, to_images};
pub use mnist::Mnist;
pub use pickle::{DType, NdArray, Value};
