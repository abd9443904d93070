//! Single-precision matrix multiplication: `C = alpha * A * B + beta * C`.
//!
//! Every matrix product in the crate (the conv forward and both conv backward products,
//! the linear layer) goes through [`sgemm`], so the kernel behind it can be swapped
//! without touching the ops. Operands are ndarray views with any strides: a transposed
//! operand is just `a.t()`, no copy.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::error::{Error, Result};

/// `C = alpha * A * B + beta * C` with `A` (m, k), `B` (k, n) and `C` (m, n).
///
/// Views may have any strides (use `.t()` for a transposed operand). When `beta` is
/// zero, `C` is not read, so it may hold garbage (even NaN).
///
/// # Errors
/// [`Error::Shape`] when the inner or outer dimensions do not agree.
///
/// # Examples
/// ```
/// use ndarray::array;
/// let a = array![[1.0f32, 2.0], [3.0, 4.0]];
/// let b = array![[5.0f32], [6.0]];
/// let mut c = ndarray::Array2::<f32>::zeros((2, 1));
/// convinit::gemm::sgemm(1.0, a.view(), b.view(), 0.0, c.view_mut()).unwrap();
/// assert_eq!(c, array![[17.0], [39.0]]);
/// ```
pub fn sgemm(
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    mut c: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    if k != k2 || c.dim() != (m, n) {
        return Err(Error::shape(
            "sgemm",
            format!(
                "A is {:?}, B is {:?}, C is {:?}: expected A (m, k), B (k, n), C (m, n)",
                a.dim(),
                b.dim(),
                c.dim()
            ),
        ));
    }
    if beta == 0.0 {
        // Never read C when beta is zero (it may hold NaN).
        c.fill(0.0);
    }
    ndarray::linalg::general_mat_mul(alpha, &a, &b, if beta == 0.0 { 0.0 } else { beta }, &mut c);
    Ok(())
}
