//! The pointwise algorithm: a 1x1, stride-1, unpadded conv is a plain GEMM on the
//! input, `y_n = W x_n`, with no column matrix to build (the input of one image is read
//! in place; several small images per tile are copied side by side). It runs on the
//! tiles of the column algorithms (`columns.rs`), with the input as the lowering.

use ndarray::{Array2, ArrayView1, ArrayView3, ArrayViewMut2, ArrayViewMut3};

use super::columns::{self, Lowering};
use super::common::Operands;
use crate::error::Result;
use crate::ops::geometry::Conv2dGeometry;

/// A 1x1 kernel, stride 1 and no padding (any dilation and groups).
pub(super) fn supports(geo: &Conv2dGeometry) -> bool {
    columns::pointwise_fits(geo)
}

/// Forward into `y` (N, O, L).
pub(super) fn forward(
    ops: &Operands<'_>,
    bias: Option<ArrayView1<'_, f32>>,
    y: ArrayViewMut3<'_, f32>,
) -> Result<()> {
    columns::forward(ops, Lowering::Pointwise, bias, y)
}

/// The input gradient of images `n0..n0 + nb` into `dxc` (their rows of dx, zeroed).
pub(super) fn input_grad(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
    dxc: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    columns::input_grad(ops, Lowering::Pointwise, dy, chunk, dxc)
}

/// The weight gradient of images `n0..n0 + nb`.
pub(super) fn weight_grad(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
) -> Result<Array2<f32>> {
    columns::weight_grad(ops, Lowering::Pointwise, dy, chunk)
}

/// Both gradients of images `n0..n0 + nb`, one tile operand for both.
pub(super) fn gradients(
    ops: &Operands<'_>,
    dy: ArrayView3<'_, f32>,
    chunk: (usize, usize),
    dxc: ArrayViewMut2<'_, f32>,
) -> Result<Array2<f32>> {
    columns::gradients(ops, Lowering::Pointwise, dy, chunk, dxc)
}
