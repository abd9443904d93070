//! Dropout (`F.dropout`, `F.dropout2d` in training mode) with a reproducible mask.
//!
//! The mask is a pure function of `(seed, call, index)`: element (or, for
//! [`dropout2d`], channel plane) `index` of the tensor in logical order is kept when
//! the `index`-th output of SplitMix64 keyed by `(seed, call)`, as a uniform in [0, 1),
//! is at least `p`. Nothing depends on how the work is split between threads, so the
//! result is the same bit for bit at any thread count, and the backward pass recomputes
//! the same mask instead of storing it. Kept values are divided by `1 - p` (inverted
//! dropout); `p = 1` gives zeros, `p = 0` the input.

use ndarray::{ArrayD, ArrayViewD};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::limits::{try_standard_layout, try_zeroed_vec};

/// Elements per rayon task (a fixed size: the mask does not depend on it either).
const CHUNK: usize = 1 << 15;

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The stream key of one call.
fn key(seed: u64, call: u64) -> u64 {
    mix(seed ^ mix(call.wrapping_add(GAMMA)))
}

/// Whether unit `index` of the stream `key` is kept with drop probability `p`.
fn kept(key: u64, index: u64, p: f64) -> bool {
    let u = (mix(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA))) >> 11) as f64
        * (1.0 / (1u64 << 53) as f64);
    u >= p
}

/// Checks `p` in [0, 1].
pub(crate) fn check_p(op: &'static str, p: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::config(
            op,
            format!("dropout probability has to be between 0 and 1, but got {p}"),
        ));
    }
    Ok(())
}

/// `x` (any rank) with its units dropped: unit `i` covers elements
/// `i * group .. (i + 1) * group` in logical order.
fn apply(
    op: &'static str,
    x: ArrayViewD<'_, f32>,
    p: f32,
    seed: u64,
    call: u64,
    group: usize,
) -> Result<ArrayD<f32>> {
    check_p(op, p)?;
    let xs = try_standard_layout(op, x.view(), || {
        format!("a row-major copy of the input {:?}", x.shape())
    })?;
    let src = xs.as_slice().expect("standard layout");
    let mut out = try_zeroed_vec::<f32>(op, src.len(), || format!("the output {:?}", x.shape()))?;
    let (k, p64, keep) = (key(seed, call), f64::from(p), 1.0 - p);
    let group = group.max(1);
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (o, s))| {
            let start = c * CHUNK;
            for (j, (o, &v)) in o.iter_mut().zip(s).enumerate() {
                let unit = ((start + j) / group) as u64;
                *o = if kept(k, unit, p64) { v / keep } else { 0.0 };
            }
        });
    Ok(ArrayD::from_shape_vec(x.raw_dim(), out).expect("length matches the shape"))
}

/// `F.dropout(x, p, training=True)`: each element zeroed with probability `p`, the
/// others divided by `1 - p`; the mask is the one of `(seed, call)` (see the module
/// docs). Any rank and layout; the output is row-major.
///
/// ```
/// use convinit::ops::{dropout, dropout_backward};
/// use ndarray::ArrayD;
/// let x = ArrayD::<f32>::ones(ndarray::IxDyn(&[1000]));
/// let y = dropout(x.view(), 0.25, 7, 0)?;
/// assert!(y.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
/// assert_eq!(y, dropout(x.view(), 0.25, 7, 0)?); // same seed and call, same mask
/// assert_eq!(dropout_backward(x.view(), 0.25, 7, 0)?, y);
/// # Ok::<(), convinit::Error>(())
/// ```
///
/// # Errors
/// [`Error::Config`] naming `dropout` when `p` is not in [0, 1] (or NaN);
/// [`Error::Alloc`] when the output cannot be allocated.
pub fn dropout(x: ArrayViewD<'_, f32>, p: f32, seed: u64, call: u64) -> Result<ArrayD<f32>> {
    apply("dropout", x, p, seed, call, 1)
}

/// The gradient of [`dropout`] with the same `(p, seed, call)`: `dy` through the same
/// mask and scale.
///
/// # Errors
/// As [`dropout`].
pub fn dropout_backward(
    dy: ArrayViewD<'_, f32>,
    p: f32,
    seed: u64,
    call: u64,
) -> Result<ArrayD<f32>> {
    apply("dropout", dy, p, seed, call, 1)
}

/// The size of a [`dropout2d`] unit: the elements of one channel plane.
fn plane(op: &'static str, shape: &[usize]) -> Result<usize> {
    if shape.len() < 2 {
        return Err(Error::shape(
            op,
            format!("input must be (N, C, ...), got shape {shape:?}"),
        ));
    }
    Ok(shape[2..].iter().product())
}

/// `F.dropout2d(x, p, training=True)` on (N, C, H, W) (or any (N, C, ...)): each whole
/// channel plane `x[n, c]` zeroed with probability `p`, the others divided by `1 - p`;
/// plane `n * C + c` follows the mask of `(seed, call)` as element `n * C + c` of
/// [`dropout`] does.
///
/// # Errors
/// [`Error::Shape`] naming `dropout2d` for an input of rank below 2; as [`dropout`].
pub fn dropout2d(x: ArrayViewD<'_, f32>, p: f32, seed: u64, call: u64) -> Result<ArrayD<f32>> {
    let g = plane("dropout2d", x.shape())?;
    apply("dropout2d", x, p, seed, call, g)
}

/// The gradient of [`dropout2d`] with the same `(p, seed, call)`.
///
/// # Errors
/// As [`dropout2d`].
pub fn dropout2d_backward(
    dy: ArrayViewD<'_, f32>,
    p: f32,
    seed: u64,
    call: u64,
) -> Result<ArrayD<f32>> {
    let g = plane("dropout2d", dy.shape())?;
    apply("dropout2d", dy, p, seed, call, g)
}
