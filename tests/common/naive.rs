//! A naive direct convolution in f64, forward and backward, written as plain loops over
//! the definition (PyTorch's cross-correlation), independent of im2col.

use ndarray::{Array1, Array4};

/// Stride, padding, dilation (h, w) and groups.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

/// Output size, straight from PyTorch's docs (floor division of a non-negative value).
pub fn out_size(input: usize, k: usize, s: usize, p: usize, d: usize) -> usize {
    let num = input as i64 + 2 * p as i64 - d as i64 * (k as i64 - 1) - 1;
    assert!(num >= 0, "kernel larger than padded input");
    (num / s as i64 + 1) as usize
}

/// Input coordinate of output `o` and tap `k`, if it is inside the input.
fn at(o: usize, k: usize, s: usize, p: usize, d: usize, size: usize) -> Option<usize> {
    let pos = (o * s + k * d) as i64 - p as i64;
    (pos >= 0 && (pos as usize) < size).then_some(pos as usize)
}

pub fn conv2d(x: &Array4<f64>, w: &Array4<f64>, b: Option<&Array1<f64>>, p: Params) -> Array4<f64> {
    let (n, c, h, wd) = x.dim();
    let (o, cg, kh, kw) = w.dim();
    assert_eq!(cg * p.groups, c);
    let og = o / p.groups;
    let oh = out_size(h, kh, p.stride.0, p.padding.0, p.dilation.0);
    let ow = out_size(wd, kw, p.stride.1, p.padding.1, p.dilation.1);
    let mut y = Array4::zeros((n, o, oh, ow));
    for ni in 0..n {
        for oi in 0..o {
            let g = oi / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = b.map_or(0.0, |b| b[oi]);
                    for ci in 0..cg {
                        for i in 0..kh {
                            let Some(iy) = at(oy, i, p.stride.0, p.padding.0, p.dilation.0, h)
                            else {
                                continue;
                            };
                            for j in 0..kw {
                                let Some(ix) = at(ox, j, p.stride.1, p.padding.1, p.dilation.1, wd)
                                else {
                                    continue;
                                };
                                sum += x[[ni, g * cg + ci, iy, ix]] * w[[oi, ci, i, j]];
                            }
                        }
                    }
                    y[[ni, oi, oy, ox]] = sum;
                }
            }
        }
    }
    y
}

/// The same loops, each product's contribution sent back: (dx, dw, db).
pub fn conv2d_backward(
    x: &Array4<f64>,
    w: &Array4<f64>,
    dy: &Array4<f64>,
    p: Params,
) -> (Array4<f64>, Array4<f64>, Array1<f64>) {
    let (n, c, h, wd) = x.dim();
    let (o, cg, kh, kw) = w.dim();
    assert_eq!(cg * p.groups, c);
    let og = o / p.groups;
    let (_, _, oh, ow) = dy.dim();
    let mut dx = Array4::zeros(x.raw_dim());
    let mut dw = Array4::zeros(w.raw_dim());
    let mut db = Array1::zeros(o);
    for ni in 0..n {
        for oi in 0..o {
            let g = oi / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let gy = dy[[ni, oi, oy, ox]];
                    db[oi] += gy;
                    for ci in 0..cg {
                        for i in 0..kh {
                            let Some(iy) = at(oy, i, p.stride.0, p.padding.0, p.dilation.0, h)
                            else {
                                continue;
                            };
                            for j in 0..kw {
                                let Some(ix) = at(ox, j, p.stride.1, p.padding.1, p.dilation.1, wd)
                                else {
                                    continue;
                                };
                                dx[[ni, g * cg + ci, iy, ix]] += w[[oi, ci, i, j]] * gy;
                                dw[[oi, ci, i, j]] += x[[ni, g * cg + ci, iy, ix]] * gy;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

/// A seeded array of uniform values in [-1, 1).
pub fn random_array<Sh: ndarray::ShapeBuilder>(
    rng: &mut rand::rngs::StdRng,
    shape: Sh,
) -> ndarray::Array<f32, Sh::Dim> {
    use rand::Rng;
    ndarray::Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// The same array in f64, for the reference.
pub fn to64<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> ndarray::Array<f64, D> {
    a.mapv(f64::from)
}

/// f32 results against the f64 reference: |ours - ref| <= 1e-5 * max(1, max |ref|).
/// Each element sums at most a few hundred products of values in [-1, 1], so f32
/// rounding stays below ~1e-6 relative; a wrong or missing tap changes an element by
/// O(0.1) and fails. `ctx` names the configuration in the failure message.
pub fn assert_close<D: ndarray::Dimension>(
    what: &str,
    ctx: &dyn std::fmt::Debug,
    ours: ndarray::ArrayView<'_, f32, D>,
    reference: &ndarray::Array<f64, D>,
) {
    assert_eq!(ours.shape(), reference.shape(), "{what} shape, {ctx:?}");
    let scale = reference.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = ours
        .iter()
        .zip(reference.iter())
        .map(|(&a, &b)| (f64::from(a) - b).abs())
        .fold(0.0f64, f64::max);
    assert!(err <= 1e-5 * scale, "{what}: max error {err:e} for {ctx:?}");
}

/// A conv shape as the tests write it: N, C, H, W, O, (kh, kw), stride, padding,
/// dilation, groups.
pub type Shape = (
    usize,
    usize,
    usize,
    usize,
    usize,
    (usize, usize),
    (usize, usize),
    (usize, usize),
    (usize, usize),
    usize,
);

/// One conv case: seeded operands for a [`Shape`] (x, weight, bias, then `dy`), its
/// options and geometry, and the naive f64 results every path is checked against.
pub struct Case {
    pub x: Array4<f32>,
    pub w: Array4<f32>,
    pub b: Array1<f32>,
    pub dy: Array4<f32>,
    pub opts: convinit::ops::Conv2dOptions,
    pub geo: convinit::ops::Conv2dGeometry,
    pub y_ref: Array4<f64>,
    pub dx_ref: Array4<f64>,
    pub dw_ref: Array4<f64>,
    pub db_ref: Array1<f64>,
}

impl Case {
    /// The case of `s`, its operands drawn from `rng`.
    pub fn new(s: Shape, rng: &mut rand::rngs::StdRng) -> Case {
        let (n, c, h, w, o, k, stride, padding, dilation, groups) = s;
        let p = Params {
            stride,
            padding,
            dilation,
            groups,
        };
        let x: Array4<f32> = random_array(rng, (n, c, h, w));
        let wt: Array4<f32> = random_array(rng, (o, c / groups, k.0, k.1));
        let b: Array1<f32> = random_array(rng, o);
        let opts = convinit::ops::Conv2dOptions::new()
            .with_stride(stride)
            .with_padding(padding)
            .with_dilation(dilation)
            .with_groups(groups);
        let geo = convinit::ops::Conv2dGeometry::new(
            "test",
            [n, c, h, w],
            [o, c / groups, k.0, k.1],
            &opts,
        )
        .unwrap();
        let y_ref = conv2d(&to64(&x), &to64(&wt), Some(&to64(&b)), p);
        let dy: Array4<f32> = random_array(rng, y_ref.raw_dim());
        let (dx_ref, dw_ref, db_ref) = conv2d_backward(&to64(&x), &to64(&wt), &to64(&dy), p);
        Case {
            x,
            w: wt,
            b,
            dy,
            opts,
            geo,
            y_ref,
            dx_ref,
            dw_ref,
            db_ref,
        }
    }
}
