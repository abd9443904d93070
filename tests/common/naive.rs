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
