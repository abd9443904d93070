//! The reference: a naive triple loop accumulating in f64.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::error::Result;

/// `C = alpha * A * B + beta * C` by the textbook triple loop, each dot product summed in
/// f64 in increasing `k`, rounded once to f32. With `beta == 0`, C is not read.
///
/// The oracle the fast kernels are tested against, and the baseline of the benchmarks.
///
/// # Errors
/// [`crate::error::Error::Shape`] when the shapes do not agree, as [`super::sgemm`].
pub fn sgemm_naive(
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    mut c: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    super::check_shapes(&a, &b, &c)?;
    let (m, n) = c.dim();
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = a
                .row(i)
                .iter()
                .zip(b.column(j))
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum();
            let old = if beta == 0.0 {
                0.0
            } else {
                f64::from(beta) * f64::from(c[[i, j]])
            };
            c[[i, j]] = (f64::from(alpha) * dot + old) as f32;
        }
    }
    Ok(())
}
