//! Tensor operations on ndarray (NCHW), each forward beside its hand-written backward.
//!
//! Functional and stateless: a forward takes its inputs and parameters, a backward takes
//! what the forward saw plus the upstream gradient and returns the gradients. The layers
//! in [`crate::nn`] keep that state for you.
//!
//! - [`conv2d`] / [`conv2d_backward`] / [`conv2d_backward_params`], geometry in
//!   [`Conv2dGeometry`] (output size from [`conv_out_size`], the one place it is
//!   computed). Each pass runs one algorithm, picked per shape in one place, always on
//!   the crate's GEMM kernels:
//!   - a 1x1, stride-1, unpadded conv is a plain GEMM on the input (`Pointwise`),
//!     forward and input gradient;
//!   - other groups-of-1 convs with at least 8 input channels take the `Direct`
//!     algorithm forward and for the input gradient, with no column matrix: an indirect
//!     GEMM kernel reads every tap in place from a zero-padded copy of the image;
//!   - fewer input channels, and grouped convs, run forward on the stride-phase planes
//!     (`Phase`, read in place by the kernel) and take their input gradient from column
//!     matrices in bounded tiles (the phase planes' contiguous copies for strided convs
//!     with long output rows, else im2col);
//!   - the weight gradient of every groups-of-1 conv is `Direct`; a grouped conv's runs
//!     fused with its input gradient, on the same column tiles.
//!
//!   [`Conv2dOptions::algorithm`] (and `Conv2dConfig::with_algorithm` on the layer)
//!   changes that: [`ConvAlgorithm::Fixed`] forces the algorithm of any pass
//!   ([`ConvAlgos`]; one that cannot run the shape is an error, never a silent
//!   fallback), [`ConvAlgorithm::Autotune`] times the candidates on the first call and
//!   caches the fastest ([`autotuned_plan`] tells which). Benchmarks force every knob
//!   (tile size, index map, parallel split, GEMM kernel) through a [`ConvPlan`] and
//!   [`conv2d_with_plan`] / [`conv2d_backward_with_plan`]; `examples/convbench` times
//!   every algorithm on any shape.
//!
//!   Every buffer (outputs, gradients, copies of broadcast or strided inputs, padded
//!   images, columns) is reserved fallibly: one that cannot be allocated is
//!   [`crate::Error::Alloc`].
//! - [`relu`], [`leaky_relu`], [`tanh`], [`sigmoid`] and their backwards.
//! - Pooling, each with its backward: [`max_pool2d`] (argmax indices from
//!   [`max_pool2d_with_indices`], options in [`MaxPool2dOptions`]), [`avg_pool2d`]
//!   ([`AvgPool2dOptions`]), [`adaptive_max_pool2d`] and [`adaptive_avg_pool2d`].
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
mod lanes;
mod linear;
mod loss;
mod pool;

pub use activation::{
    leaky_relu, leaky_relu_backward, relu, relu_backward, sigmoid, sigmoid_backward, tanh,
    tanh_backward,
};
pub(crate) use activation::{
    leaky_relu_grad_value, leaky_relu_value, map_array, map_slice, relu_grad_value, relu_value,
    sigmoid_grad_value, sigmoid_value, tanh_grad_value, tanh_value, update_array,
    update_array_with, zip_map_array,
};
pub use batch_norm::{
    BatchNormGrads, BatchNormOptions, BatchNormStats, batch_norm2d, batch_norm2d_backward,
    batch_norm2d_into,
};
pub use conv::{
    Conv2dGrads, Conv2dParamGrads, ConvAlgorithm, ConvAlgos, ConvPass, ConvPlan, ForwardAlgo,
    InputGradAlgo, REDUCTION_CHUNK, WeightGradAlgo, autotuned_plan, clear_autotune_cache, conv2d,
    conv2d_backward, conv2d_backward_params, conv2d_backward_with_plan, conv2d_into,
    conv2d_with_plan, to_memory_format,
};
pub(crate) use dropout::check_p as dropout_check_p;
pub use dropout::{dropout, dropout_backward, dropout2d, dropout2d_backward};
pub use flatten::{flatten, flatten_backward, flatten_shape};
pub use geometry::{Conv2dGeometry, Conv2dOptions, MemoryFormat, conv_out_size};
pub(crate) use linear::linear_backward_params;
pub use linear::{LinearGrads, linear, linear_backward};
pub use loss::{mse, mse_backward};
pub use pool::{
    AvgPool2dOptions, MaxPool2dOptions, adaptive_avg_pool2d, adaptive_avg_pool2d_backward,
    adaptive_max_pool2d, adaptive_max_pool2d_backward, adaptive_max_pool2d_with_indices,
    avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward, max_pool2d_into,
    max_pool2d_with_indices,
};

/// Checks the caller's output of an `_into` op: the shape the op computes, in standard
/// (row-major) layout, which the kernels write as one slice.
pub(crate) fn check_out(
    op: &'static str,
    what: &str,
    got: &[usize],
    want: &[usize],
    standard: bool,
) -> crate::Result<()> {
    if got != want {
        return Err(crate::Error::shape(
            op,
            format!("{what} is {got:?}, the op computes {want:?}"),
        ));
    }
    if !standard {
        return Err(crate::Error::shape(
            op,
            format!("{what} {got:?} must be in standard (row-major) layout"),
        ));
    }
    Ok(())
}
