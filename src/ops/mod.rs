//! Tensor operations on ndarray (NCHW), each forward beside its hand-written backward.
//!
//! Functional and stateless: a forward takes its inputs and parameters, a backward takes
//! what the forward saw plus the upstream gradient and returns the gradients. The layers
//! in [`crate::nn`] keep that state for you.
//!
//! - [`conv2d`] / [`conv2d_backward`] / [`conv2d_backward_params`], geometry in
//!   [`Conv2dGeometry`] (output size from [`conv_out_size`], the one place it is
//!   computed). The path depends on the shape, always on the crate's GEMM kernels:
//!   - a 1x1, stride-1, unpadded conv is a plain GEMM on the input;
//!   - other groups-of-1 convs with at least 8 input channels take the direct path, with
//!     no column matrix: an indirect GEMM kernel reads every tap in place from a
//!     zero-padded copy of the image, forward and backward;
//!   - fewer input channels, and grouped convs, run forward on the stride-phase path
//!     (the image split into its stride phases, read in place by the kernel) and
//!     backward on column matrices in bounded tiles (im2col, or contiguous copies of
//!     the phase planes for strided convs with long output rows); the weight gradient
//!     of a groups-of-1 conv still comes from the direct path.
//!
//!   Every buffer (outputs, gradients, copies of broadcast or strided inputs, padded
//!   images, columns) is reserved fallibly: one that cannot be allocated is
//!   [`crate::Error::Alloc`].
//! - [`relu`], [`leaky_relu`] and their backwards.
//! - [`adaptive_avg_pool2d`] and its backward.
//! - [`batch_norm2d`] and [`batch_norm2d_backward`] (batch or running statistics).
//! - [`dropout`] / [`dropout2d`] (training mode, a mask reproducible from a seed and a
//!   call count) and their backwards.
//! - [`flatten`] and its backward.
//! - [`linear`] and its backward.
//! - [`mse`] and [`mse_backward`].

mod activation;
mod batch_norm;
mod conv;
mod dropout;
mod flatten;
mod geometry;
mod im2col;
mod linear;
mod loss;
mod pool;

pub use activation::{leaky_relu, leaky_relu_backward, relu, relu_backward};
pub(crate) use activation::{
    leaky_relu_grad_value, leaky_relu_value, map_array, map_slice, relu_grad_value, relu_value,
    update_array, update_array_with, zip_map_array,
};
pub use batch_norm::{
    BatchNormGrads, BatchNormOptions, BatchNormStats, batch_norm2d, batch_norm2d_backward,
};
pub use conv::{
    Conv2dGrads, Conv2dParamGrads, REDUCTION_CHUNK, conv2d, conv2d_backward, conv2d_backward_params,
};
#[doc(hidden)]
pub use conv::{ConvPlan, ForwardPath, Lowering, conv2d_backward_with_plan, conv2d_with_plan};
pub(crate) use dropout::check_p as dropout_check_p;
pub use dropout::{dropout, dropout_backward, dropout2d, dropout2d_backward};
pub use flatten::{flatten, flatten_backward, flatten_shape};
pub use geometry::{Conv2dGeometry, Conv2dOptions, conv_out_size};
pub(crate) use linear::linear_backward_params;
pub use linear::{LinearGrads, linear, linear_backward};
pub use loss::{mse, mse_backward};
pub use pool::{adaptive_avg_pool2d, adaptive_avg_pool2d_backward};
