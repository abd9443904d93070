//! The rounding error of the Winograd conv algorithms (F(2x2, 3x3), F(4x4, 3x3)) beside
//! the direct one, against a naive f64 conv, on realistic data: 3x3 convs of stride 1
//! and padding 1, C = O in {16, 64, 256} at 28x28 and 56x56, 512 and 1024 at 14x14,
//! kaiming-normal
//! weights (std `sqrt(2 / (9 C))`), inputs N(0, 1) or post-ReLU (`max(0, N(0, 1))`).
//! Prints the max and mean absolute error relative to `max|ref|`, of the forward pass,
//! the input gradient and the weight gradient (`dy` N(0, 1)). The tests' tolerance is `1e-5 * max(1,
//! max|ref|)`.
//!
//!     cargo run --release --example winograd_error

use convinit::ops::{
    Conv2dOptions, ConvAlgorithm, ConvAlgos, ForwardAlgo, InputGradAlgo, WeightGradAlgo, conv2d,
    conv2d_backward,
};
use ndarray::{Array4, ArrayView4};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

/// `y[o] = sum_c w[o, c] * x[c]` (3x3, stride 1, padding `p`) in f64, one image.
fn naive(x: ArrayView4<'_, f32>, w: ArrayView4<'_, f32>, p: usize) -> Array4<f64> {
    let (n, c, h, wd) = x.dim();
    let o = w.dim().0;
    let (oh, ow) = (h + 2 * p - 2, wd + 2 * p - 2);
    let mut y = Array4::<f64>::zeros((n, o, oh, ow));
    // The input zero-padded, in f64.
    let (hp, wp) = (h + 2 * p, wd + 2 * p);
    let mut xp = vec![0.0f64; n * c * hp * wp];
    for ((ni, ci, i, j), &v) in x.indexed_iter() {
        xp[((ni * c + ci) * hp + i + p) * wp + j + p] = f64::from(v);
    }
    for ni in 0..n {
        for oi in 0..o {
            let mut plane = vec![0.0f64; oh * ow];
            for ci in 0..c {
                let xc = &xp[(ni * c + ci) * hp * wp..(ni * c + ci + 1) * hp * wp];
                for a in 0..3 {
                    for b in 0..3 {
                        let wv = f64::from(w[[oi, ci, a, b]]);
                        for i in 0..oh {
                            let src = &xc[(i + a) * wp + b..(i + a) * wp + b + ow];
                            for (d, &s) in plane[i * ow..(i + 1) * ow].iter_mut().zip(src) {
                                *d += wv * s;
                            }
                        }
                    }
                }
            }
            for (d, &v) in y
                .slice_mut(ndarray::s![ni, oi, .., ..])
                .iter_mut()
                .zip(&plane)
            {
                *d = v;
            }
        }
    }
    y
}

/// `dw[o, c, a, b] = sum_{i, j} dy[o, i, j] * x[c, i + a - p, j + b - p]` (3x3,
/// stride 1, padding `p`) in f64, over the batch.
fn naive_dw(x: ArrayView4<'_, f32>, dy: ArrayView4<'_, f32>, p: usize) -> Array4<f64> {
    let (n, c, h, wd) = x.dim();
    let (o, oh, ow) = (dy.dim().1, dy.dim().2, dy.dim().3);
    let (hp, wp) = (h + 2 * p, wd + 2 * p);
    let mut xp = vec![0.0f64; c * hp * wp];
    let mut dw = Array4::<f64>::zeros((o, c, 3, 3));
    for ni in 0..n {
        for ((ci, i, j), &v) in x.index_axis(ndarray::Axis(0), ni).indexed_iter() {
            xp[(ci * hp + i + p) * wp + j + p] = f64::from(v);
        }
        for oi in 0..o {
            let g: Vec<f64> = dy
                .slice(ndarray::s![ni, oi, .., ..])
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            for ci in 0..c {
                let xc = &xp[ci * hp * wp..(ci + 1) * hp * wp];
                for a in 0..3 {
                    for b in 0..3 {
                        let mut acc = 0.0;
                        for i in 0..oh {
                            let src = &xc[(i + a) * wp + b..(i + a) * wp + b + ow];
                            acc += g[i * ow..(i + 1) * ow]
                                .iter()
                                .zip(src)
                                .map(|(d, s)| d * s)
                                .sum::<f64>();
                        }
                        dw[[oi, ci, a, b]] += acc;
                    }
                }
            }
        }
    }
    dw
}

/// (max, mean) of `|got - want|`, relative to `max|want|`.
fn errors(got: ArrayView4<'_, f32>, want: &Array4<f64>) -> (f64, f64) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (mut max, mut sum) = (0.0f64, 0.0f64);
    for (&g, &r) in got.iter().zip(want) {
        let e = (f64::from(g) - r).abs();
        max = max.max(e);
        sum += e;
    }
    (max / scale, sum / want.len() as f64 / scale)
}

fn main() -> Result<(), convinit::Error> {
    let mut rng = StdRng::seed_from_u64(0x3a11);
    let normal = Normal::new(0.0f32, 1.0).expect("a valid normal");
    let algos: [(&str, ForwardAlgo, InputGradAlgo, WeightGradAlgo); 3] = [
        (
            "direct",
            ForwardAlgo::Direct,
            InputGradAlgo::Direct,
            WeightGradAlgo::Direct,
        ),
        (
            "winograd2",
            ForwardAlgo::WinogradF2,
            InputGradAlgo::WinogradF2,
            WeightGradAlgo::WinogradF2,
        ),
        (
            "winograd4",
            ForwardAlgo::WinogradF4,
            InputGradAlgo::WinogradF4,
            WeightGradAlgo::WinogradF4,
        ),
    ];
    println!(
        "{:<8} {:>4} {:>6} {:<10} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "input",
        "C=O",
        "HxW",
        "algorithm",
        "y max",
        "y mean",
        "dx max",
        "dx mean",
        "dw max",
        "dw mean"
    );
    for relu in [false, true] {
        for (c, sizes) in [
            (16, &[28, 56][..]),
            (64, &[28, 56]),
            (256, &[28, 56]),
            (512, &[14]),
            (1024, &[14]),
        ] {
            for &hw in sizes {
                let x = Array4::from_shape_simple_fn((1, c, hw, hw), || {
                    let v = normal.sample(&mut rng);
                    if relu { v.max(0.0) } else { v }
                });
                let std = (2.0 / (9.0 * c as f32)).sqrt();
                let w =
                    Array4::from_shape_simple_fn((c, c, 3, 3), || std * normal.sample(&mut rng));
                let dy = Array4::from_shape_simple_fn((1, c, hw, hw), || normal.sample(&mut rng));
                let y_ref = naive(x.view(), w.view(), 1);
                // dx = the conv of dy with the filter rotated and transposed (padding
                // 2 - 1 = 1).
                let mut wt = Array4::<f32>::zeros((c, c, 3, 3));
                for ((o, ci, a, b), &v) in w.indexed_iter() {
                    wt[[ci, o, 2 - a, 2 - b]] = v;
                }
                let dx_ref = naive(dy.view(), wt.view(), 1);
                let dw_ref = naive_dw(x.view(), dy.view(), 1);
                for (name, fwd, dx, dw) in algos {
                    let opts = Conv2dOptions::new().with_padding((1, 1)).with_algorithm(
                        ConvAlgorithm::Fixed(
                            ConvAlgos::new()
                                .with_forward(fwd)
                                .with_input_grad(dx)
                                .with_weight_grad(dw),
                        ),
                    );
                    let y = conv2d(x.view(), w.view(), None, &opts)?;
                    let g = conv2d_backward(x.view(), w.view(), false, dy.view(), &opts)?;
                    let (ym, ya) = errors(y.view(), &y_ref);
                    let (dm, da) = errors(g.dx.view(), &dx_ref);
                    let (wm, wa) = errors(g.dw.view(), &dw_ref);
                    println!(
                        "{:<8} {c:>4} {:>6} {name:<10} {ym:>11.3e} {ya:>11.3e} {dm:>11.3e} {da:>11.3e} \
                         {wm:>11.3e} {wa:>11.3e}",
                        if relu { "relu" } else { "normal" },
                        format!("{hw}x{hw}"),
                    );
                }
            }
        }
    }
    Ok(())
}
