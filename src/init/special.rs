//! The error function, its complement and its inverse in `f64`, and the standard normal
//! CDF, as [`trunc_normal`](super::trunc_normal) needs them.
//!
//! `erf` and `erfc` are FreeBSD's `s_erf.c` (fdlibm, via the `libm` crate's port; error
//! below one ulp). `erfinv` starts from Giles' single-precision approximation and polishes
//! it with Halley steps on `erf` (or on `erfc` for |y| > 1/2, where `1 - |y|` is exact), so
//! it is accurate to a few ulp over all of (-1, 1).
//!
//! The `erf`/`erfc` coefficients and method carry this notice:
//!
//! ```text
//! Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
//!
//! Developed at SunPro, a Sun Microsystems, Inc. business.
//! Permission to use, copy, modify, and distribute this
//! software is freely granted, provided that this notice
//! is preserved.
//! ```

// fdlibm's coefficients, verbatim (to 21 digits), so they can be checked against s_erf.c.
#![allow(clippy::excessive_precision)]

const ERX: f64 = 8.45062911510467529297e-01;
// erf on [0, 0.84375]
const EFX8: f64 = 1.02703333676410069053e+00;
const PP0: f64 = 1.28379167095512558561e-01;
const PP1: f64 = -3.25042107247001499370e-01;
const PP2: f64 = -2.84817495755985104766e-02;
const PP3: f64 = -5.77027029648944159157e-03;
const PP4: f64 = -2.37630166566501626084e-05;
const QQ1: f64 = 3.97917223959155352819e-01;
const QQ2: f64 = 6.50222499887672944485e-02;
const QQ3: f64 = 5.08130628187576562776e-03;
const QQ4: f64 = 1.32494738004321644526e-04;
const QQ5: f64 = -3.96022827877536812320e-06;
// erf on [0.84375, 1.25]
const PA0: f64 = -2.36211856075265944077e-03;
const PA1: f64 = 4.14856118683748331666e-01;
const PA2: f64 = -3.72207876035701323847e-01;
const PA3: f64 = 3.18346619901161753674e-01;
const PA4: f64 = -1.10894694282396677476e-01;
const PA5: f64 = 3.54783043256182359371e-02;
const PA6: f64 = -2.16637559486879084300e-03;
const QA1: f64 = 1.06420880400844228286e-01;
const QA2: f64 = 5.40397917702171048937e-01;
const QA3: f64 = 7.18286544141962662868e-02;
const QA4: f64 = 1.26171219808761642112e-01;
const QA5: f64 = 1.36370839120290507362e-02;
const QA6: f64 = 1.19844998467991074170e-02;
// erfc on [1.25, 1/0.35]
const RA0: f64 = -9.86494403484714822705e-03;
const RA1: f64 = -6.93858572707181764372e-01;
const RA2: f64 = -1.05586262253232909814e+01;
const RA3: f64 = -6.23753324503260060396e+01;
const RA4: f64 = -1.62396669462573470355e+02;
const RA5: f64 = -1.84605092906711035994e+02;
const RA6: f64 = -8.12874355063065934246e+01;
const RA7: f64 = -9.81432934416914548592e+00;
const SA1: f64 = 1.96512716674392571292e+01;
const SA2: f64 = 1.37657754143519042600e+02;
const SA3: f64 = 4.34565877475229228821e+02;
const SA4: f64 = 6.45387271733267880336e+02;
const SA5: f64 = 4.29008140027567833386e+02;
const SA6: f64 = 1.08635005541779435134e+02;
const SA7: f64 = 6.57024977031928170135e+00;
const SA8: f64 = -6.04244152148580987438e-02;
// erfc on [1/0.35, 28]
const RB0: f64 = -9.86494292470009928597e-03;
const RB1: f64 = -7.99283237680523006574e-01;
const RB2: f64 = -1.77579549177547519889e+01;
const RB3: f64 = -1.60636384855821916062e+02;
const RB4: f64 = -6.37566443368389627722e+02;
const RB5: f64 = -1.02509513161107724954e+03;
const RB6: f64 = -4.83519191608651397019e+02;
const SB1: f64 = 3.03380607434824582924e+01;
const SB2: f64 = 3.25792512996573918826e+02;
const SB3: f64 = 1.53672958608443695994e+03;
const SB4: f64 = 3.19985821950859553908e+03;
const SB5: f64 = 2.55305040643316442583e+03;
const SB6: f64 = 4.74528541206955367215e+02;
const SB7: f64 = -2.24409524465858183362e+01;

/// The high 32 bits of an `f64`, as fdlibm's `GET_HIGH_WORD`.
fn high_word(x: f64) -> u32 {
    (x.to_bits() >> 32) as u32
}

/// `erfc(|x|)` for 0.84375 <= |x| < 28 (`ix` is the high word of |x|).
fn erfc_mid(ix: u32, x: f64) -> f64 {
    let x = x.abs();
    if ix < 0x3ff4_0000 {
        // |x| < 1.25
        let s = x - 1.0;
        let p = PA0 + s * (PA1 + s * (PA2 + s * (PA3 + s * (PA4 + s * (PA5 + s * PA6)))));
        let q = 1.0 + s * (QA1 + s * (QA2 + s * (QA3 + s * (QA4 + s * (QA5 + s * QA6)))));
        return 1.0 - ERX - p / q;
    }
    let s = 1.0 / (x * x);
    let (r, big_s) = if ix < 0x4006_db6d {
        // |x| < 1/0.35
        (
            RA0 + s * (RA1 + s * (RA2 + s * (RA3 + s * (RA4 + s * (RA5 + s * (RA6 + s * RA7)))))),
            1.0 + s
                * (SA1
                    + s * (SA2
                        + s * (SA3 + s * (SA4 + s * (SA5 + s * (SA6 + s * (SA7 + s * SA8))))))),
        )
    } else {
        (
            RB0 + s * (RB1 + s * (RB2 + s * (RB3 + s * (RB4 + s * (RB5 + s * RB6))))),
            1.0 + s * (SB1 + s * (SB2 + s * (SB3 + s * (SB4 + s * (SB5 + s * (SB6 + s * SB7)))))),
        )
    };
    // z = x with its low word cleared, so that -z*z is exact.
    let z = f64::from_bits(x.to_bits() & 0xffff_ffff_0000_0000);
    (-z * z - 0.5625).exp() * ((z - x) * (z + x) + r / big_s).exp() / x
}

/// The error function `erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt` (fdlibm's
/// `s_erf.c`, error below one ulp). `erf(±inf) = ±1`, `erf(NaN) = NaN`.
///
/// # Examples
/// ```
/// use convinit::init::special::erf;
/// assert!((erf(1.0) - 0.8427007929497149).abs() < 1e-15);
/// ```
pub fn erf(x: f64) -> f64 {
    let ix = high_word(x) & 0x7fff_ffff;
    if ix >= 0x7ff0_0000 {
        // NaN or ±inf
        return if x.is_nan() { x } else { x.signum() };
    }
    if ix < 0x3feb_0000 {
        // |x| < 0.84375
        if ix < 0x3e30_0000 {
            // |x| < 2^-28: avoid underflow
            return 0.125 * (8.0 * x + EFX8 * x);
        }
        let z = x * x;
        let r = PP0 + z * (PP1 + z * (PP2 + z * (PP3 + z * PP4)));
        let s = 1.0 + z * (QQ1 + z * (QQ2 + z * (QQ3 + z * (QQ4 + z * QQ5))));
        return x + x * (r / s);
    }
    let y = if ix < 0x4018_0000 {
        // 0.84375 <= |x| < 6
        1.0 - erfc_mid(ix, x)
    } else {
        1.0 - f64::MIN_POSITIVE
    };
    if x < 0.0 { -y } else { y }
}

/// The complementary error function `erfc(x) = 1 - erf(x)`, computed directly so that it
/// keeps its relative accuracy for large `x` (fdlibm's `s_erf.c`).
///
/// # Examples
/// ```
/// use convinit::init::special::erfc;
/// assert!((erfc(4.5) / 1.9661604415428876e-10 - 1.0).abs() < 1e-13);
/// ```
pub fn erfc(x: f64) -> f64 {
    let ix = high_word(x) & 0x7fff_ffff;
    if ix >= 0x7ff0_0000 {
        // erfc(NaN) = NaN, erfc(+inf) = 0, erfc(-inf) = 2
        return if x.is_nan() {
            x
        } else if x > 0.0 {
            0.0
        } else {
            2.0
        };
    }
    if ix < 0x3feb_0000 {
        // |x| < 0.84375
        if ix < 0x3c70_0000 {
            // |x| < 2^-56
            return 1.0 - x;
        }
        let z = x * x;
        let r = PP0 + z * (PP1 + z * (PP2 + z * (PP3 + z * PP4)));
        let s = 1.0 + z * (QQ1 + z * (QQ2 + z * (QQ3 + z * (QQ4 + z * QQ5))));
        let y = r / s;
        if x < 0.25 {
            return 1.0 - (x + x * y);
        }
        return 0.5 - (x - 0.5 + x * y);
    }
    if ix < 0x403c_0000 {
        // 0.84375 <= |x| < 28
        let r = erfc_mid(ix, x);
        return if x < 0.0 { 2.0 - r } else { r };
    }
    if x < 0.0 {
        2.0 - f64::MIN_POSITIVE
    } else {
        0.0
    }
}

/// The inverse error function: `erfinv(erf(x)) = x`. `erfinv(±1) = ±inf`; NaN outside
/// [-1, 1] and for NaN.
///
/// Giles' single-precision approximation ("Approximating the erfinv function", GPU
/// Computing Gems, 2011) as the starting point, then Halley steps on `erf(x) - y` (on
/// `(1 - y) - erfc(x)` when |y| > 1/2, where `1 - y` is exact), which converge to a few
/// ulp for every `f64` in (-1, 1).
///
/// # Examples
/// ```
/// use convinit::init::special::{erf, erfinv};
/// assert!((erfinv(0.5) - 0.4769362762044699).abs() < 1e-15);
/// assert!((erf(erfinv(-0.9)) + 0.9).abs() < 1e-15);
/// ```
pub fn erfinv(y: f64) -> f64 {
    if y.is_nan() || y.abs() > 1.0 {
        return f64::NAN;
    }
    if y.abs() == 1.0 {
        return y * f64::INFINITY;
    }
    if y == 0.0 {
        return y;
    }
    let t = y.abs();
    // Giles (single precision), accurate to ~1e-7 relative; w = -ln(1 - t^2).
    let w = -((1.0 - t) * (1.0 + t)).ln();
    let mut x = if w < 5.0 {
        let w = w - 2.5;
        let mut p = 2.810_226_36e-08;
        p = 3.432_739_39e-07 + p * w;
        p = -3.523_387_7e-06 + p * w;
        p = -4.391_506_54e-06 + p * w;
        p = 0.000_218_580_87 + p * w;
        p = -0.001_253_725_03 + p * w;
        p = -0.004_177_681_64 + p * w;
        p = 0.246_640_727 + p * w;
        p = 1.501_409_41 + p * w;
        p * t
    } else if w < 16.0 {
        let w = w.sqrt() - 3.0;
        let mut p = -0.000_200_214_257;
        p = 0.000_100_950_558 + p * w;
        p = 0.001_349_343_22 + p * w;
        p = -0.003_673_428_44 + p * w;
        p = 0.005_739_507_73 + p * w;
        p = -0.007_622_461_3 + p * w;
        p = 0.009_438_870_47 + p * w;
        p = 1.001_674_06 + p * w;
        p = 2.832_976_82 + p * w;
        p * t
    } else {
        // Beyond single precision (1 - t < 1e-7), where Giles' fit extrapolates badly: the
        // tail asymptote erfc(x) ~ exp(-x^2) / (x sqrt(pi)) = 1 - t, solved by one
        // fixed-point step from x0 = sqrt(-ln(1 - t)); within 1e-3 of the root.
        let lc = -(1.0 - t).ln();
        let x0 = lc.sqrt();
        (lc - (x0 * std::f64::consts::PI.sqrt()).ln()).sqrt()
    };
    // Halley on f(x) = erf(x) - t: f' = 2/sqrt(pi) exp(-x^2), f''/f' = -2x, so
    // x <- x - d / (1 + x d) with d = f / f'. Cubic convergence: two steps suffice from
    // 1e-3; the loop stops once the step is below an ulp or so.
    let two_over_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    for _ in 0..8 {
        let f = if t <= 0.5 {
            erf(x) - t
        } else {
            (1.0 - t) - erfc(x)
        };
        let d = f / (two_over_sqrt_pi * (-x * x).exp());
        let step = d / (1.0 + x * d);
        x -= step;
        if step.abs() <= 1e-16 * x.abs() {
            break;
        }
    }
    if y < 0.0 { -x } else { x }
}

/// The standard normal CDF as PyTorch's `trunc_normal_` writes it:
/// `norm_cdf(x) = (1 + erf(x / sqrt(2))) / 2`.
///
/// # Examples
/// ```
/// use convinit::init::special::norm_cdf;
/// assert_eq!(norm_cdf(0.0), 0.5);
/// assert!((norm_cdf(-2.0) - 0.022750131948179195).abs() < 1e-15);
/// ```
pub fn norm_cdf(x: f64) -> f64 {
    (1.0 + erf(x / std::f64::consts::SQRT_2)) / 2.0
}
