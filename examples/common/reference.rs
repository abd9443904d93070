//! A naive conv2d in f64, forward and backward, straight from the definition (PyTorch's
//! cross-correlation): the reference `convbench` measures every path's error against.
//! Every product is summed in f64, so its own error (about 1e-16 relative) is far below
//! any f32 path's. Plain loops over slices, parallel over images (forward, input
//! gradient) or output channels (weight gradient) with rayon.

use ndarray::{Array1, Array4, ArrayView, ArrayView1, ArrayView4, Dimension};
use rayon::prelude::*;

use super::shapes::ConvShape;

/// `a` in f64, in standard layout.
fn to64<D: Dimension>(a: ArrayView<'_, f32, D>) -> Vec<f64> {
    a.iter().map(|&v| f64::from(v)).collect()
}

/// One axis of the conv: output `o` and kernel tap `k` read input `o * stride + k * dil -
/// pad` when that is inside `0..size`.
#[derive(Clone, Copy)]
struct Axis {
    stride: usize,
    pad: usize,
    dil: usize,
    size: usize,
    out: usize,
}

impl Axis {
    /// The outputs whose tap `k` falls inside the input, and the input coordinate of
    /// the first of them (output `lo + t` reads input `first + t * stride`).
    fn span(&self, k: usize) -> (std::ops::Range<usize>, usize) {
        let off = k * self.dil;
        // o * stride + off >= pad, and o * stride + off - pad < size.
        let lo = self.pad.saturating_sub(off).div_ceil(self.stride);
        let hi = (self.size + self.pad)
            .checked_sub(off)
            .map_or(0, |end| end.div_ceil(self.stride))
            .min(self.out);
        let lo = lo.min(hi);
        (lo..hi, (lo * self.stride + off).saturating_sub(self.pad))
    }
}

/// The (height, width) axes of `s`.
fn axes(s: &ConvShape) -> (Axis, Axis) {
    let axis = |stride, pad, dil, size, out| Axis {
        stride,
        pad,
        dil,
        size,
        out,
    };
    (
        axis(s.stride.0, s.padding.0, s.dilation.0, s.h, s.out.0),
        axis(s.stride.1, s.padding.1, s.dilation.1, s.w, s.out.1),
    )
}

/// Calls `f(output index, input index)`, both flat in their planes, for every output
/// position whose kernel tap (`i`, `j`) reads inside the input.
fn taps(ay: &Axis, ax: &Axis, i: usize, j: usize, mut f: impl FnMut(usize, usize)) {
    let (ys, iy0) = ay.span(i);
    let (xs, ix0) = ax.span(j);
    for (t, oy) in ys.enumerate() {
        let iy = iy0 + t * ay.stride;
        for (u, ox) in xs.clone().enumerate() {
            f(oy * ax.out + ox, iy * ax.size + ix0 + u * ax.stride);
        }
    }
}

/// The forward pass: `y` (N, O, out_h, out_w).
pub fn forward(
    s: &ConvShape,
    x: ArrayView4<'_, f32>,
    w: ArrayView4<'_, f32>,
    b: Option<ArrayView1<'_, f32>>,
) -> Array4<f64> {
    let (x, w) = (to64(x), to64(w));
    let (ay, ax) = axes(s);
    let (_, o, oh, ow) = s.y_dim();
    let (_, cg, kh, kw) = s.w_dim();
    let og = o / s.groups;
    let plane_in = s.h * s.w;
    let mut y = vec![0.0f64; s.n * o * oh * ow];
    // One output plane (image n, channel oc) per task.
    y.par_chunks_mut((oh * ow).max(1))
        .enumerate()
        .for_each(|(plane, yp)| {
            let (n, oc) = (plane / o, plane % o);
            let g = oc / og;
            yp.fill(b.map_or(0.0, |b| f64::from(b[oc])));
            for ci in 0..cg {
                let xc = &x[((n * s.c + g * cg + ci) * plane_in)..][..plane_in];
                for i in 0..kh {
                    for j in 0..kw {
                        let wv = w[((oc * cg + ci) * kh + i) * kw + j];
                        taps(&ay, &ax, i, j, |out, inp| yp[out] += wv * xc[inp]);
                    }
                }
            }
        });
    Array4::from_shape_vec((s.n, o, oh, ow), y).expect("the output has N * O * out_h * out_w")
}

/// The gradients `(dx, dw, db)` for the upstream gradient `dy`: the forward's loops, each
/// product's contribution sent back.
pub fn backward(
    s: &ConvShape,
    x: ArrayView4<'_, f32>,
    w: ArrayView4<'_, f32>,
    dy: ArrayView4<'_, f32>,
) -> (Array4<f64>, Array4<f64>, Array1<f64>) {
    let (x, w, dy) = (to64(x), to64(w), to64(dy));
    let (ay, ax) = axes(s);
    let (_, o, oh, ow) = s.y_dim();
    let (_, cg, kh, kw) = s.w_dim();
    let og = o / s.groups;
    let (plane_in, plane_out) = (s.h * s.w, oh * ow);
    // dx: one image per task.
    let mut dx = vec![0.0f64; s.n * s.c * plane_in];
    dx.par_chunks_mut((s.c * plane_in).max(1))
        .enumerate()
        .for_each(|(n, dxn)| {
            for oc in 0..o {
                let g = oc / og;
                let dyp = &dy[((n * o + oc) * plane_out)..][..plane_out];
                for ci in 0..cg {
                    let dxc = &mut dxn[((g * cg + ci) * plane_in)..][..plane_in];
                    for i in 0..kh {
                        for j in 0..kw {
                            let wv = w[((oc * cg + ci) * kh + i) * kw + j];
                            taps(&ay, &ax, i, j, |out, inp| dxc[inp] += wv * dyp[out]);
                        }
                    }
                }
            }
        });
    // dw: one output channel per task, summed over every image and position.
    let mut dw = vec![0.0f64; o * cg * kh * kw];
    dw.par_chunks_mut((cg * kh * kw).max(1))
        .enumerate()
        .for_each(|(oc, dwo)| {
            let g = oc / og;
            for n in 0..s.n {
                let dyp = &dy[((n * o + oc) * plane_out)..][..plane_out];
                for ci in 0..cg {
                    let xc = &x[((n * s.c + g * cg + ci) * plane_in)..][..plane_in];
                    for i in 0..kh {
                        for j in 0..kw {
                            let mut sum = 0.0f64;
                            taps(&ay, &ax, i, j, |out, inp| sum += xc[inp] * dyp[out]);
                            dwo[(ci * kh + i) * kw + j] += sum;
                        }
                    }
                }
            }
        });
    let db = (0..o)
        .map(|oc| {
            (0..s.n)
                .map(|n| {
                    dy[((n * o + oc) * plane_out)..][..plane_out]
                        .iter()
                        .sum::<f64>()
                })
                .sum()
        })
        .collect();
    (
        Array4::from_shape_vec(s.x_dim(), dx).expect("dx has N * C * H * W"),
        Array4::from_shape_vec(s.w_dim(), dw).expect("dw has O * C / groups * kh * kw"),
        db,
    )
}

/// The largest `|ours - reference|`: NaN when any difference is NaN (a NaN in `ours`),
/// infinite when the shapes differ, so a wrong path never shows a small error.
pub fn max_abs_err<D: Dimension>(
    ours: ArrayView<'_, f32, D>,
    reference: &ndarray::Array<f64, D>,
) -> f64 {
    if ours.shape() != reference.shape() {
        return f64::INFINITY;
    }
    ours.iter()
        .zip(reference.iter())
        .map(|(&a, &b)| (f64::from(a) - b).abs())
        .fold(0.0, |m: f64, e| {
            if m.is_nan() || e.is_nan() {
                f64::NAN
            } else {
                m.max(e)
            }
        })
}
