//! The AVX-512 versions of [`super`]'s copies: rows moved with masked vector loads and
//! stores (no `memcpy` call per short row), and transposes done 16 x 16 in registers
//! (64 shuffles per block of 256 floats, against a scalar load and insert per float).
//! Same floats moved, same bias added: the same bits as the portable loops.

use std::arch::x86_64::{
    __m512, _mm512_add_ps, _mm512_castpd_ps, _mm512_castps_pd, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_maskz_permutex2var_ps, _mm512_set1_ps, _mm512_setr_epi32,
    _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_unpackhi_pd, _mm512_unpackhi_ps,
    _mm512_unpacklo_pd, _mm512_unpacklo_ps,
};

/// The first `n` of 16 lanes (`n <= 16`).
#[inline(always)]
fn lanes(n: usize) -> u16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

/// Transposes the 16 x 16 block `r` in place: `r[j][i]` becomes the old `r[i][j]`.
#[inline(always)]
unsafe fn transpose16(r: &mut [__m512; 16]) {
    // SAFETY: register shuffles only, under the caller's AVX-512F.
    unsafe {
        // Pairs of rows interleaved by single floats: t[2k] holds, per 128-bit lane L,
        // rows 2k, 2k + 1 at columns 4L, 4L + 1; t[2k + 1] at columns 4L + 2, 4L + 3.
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // Quads of rows by float pairs: u[4g + c] holds, per lane L, rows 4g..4g + 4
        // at column 4L + c.
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let pd = |v: __m512| _mm512_castps_pd(v);
            let (a, b, c, d) = (
                pd(t[4 * g]),
                pd(t[4 * g + 1]),
                pd(t[4 * g + 2]),
                pd(t[4 * g + 3]),
            );
            u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
            u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
            u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
            u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
        }
        // Column 4L + c gathers lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
        for c in 0..4 {
            let lo01 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
            let lo23 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
            let hi01 = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
            let hi23 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
            r[c] = _mm512_shuffle_f32x4::<0x88>(lo01, lo23);
            r[4 + c] = _mm512_shuffle_f32x4::<0xDD>(lo01, lo23);
            r[8 + c] = _mm512_shuffle_f32x4::<0x88>(hi01, hi23);
            r[12 + c] = _mm512_shuffle_f32x4::<0xDD>(hi01, hi23);
        }
    }
}

/// [`super::transpose_add`] in 16 x 16 blocks, the edges masked, the blocks in the
/// order [`super::rows_outer`] gives.
///
/// # Safety
/// The CPU has AVX-512F; `t` holds `(n - 1) * ldt + m` floats, `y` `(m - 1) * ldy + n`,
/// `add` (when given) `m`; `n, m > 0`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_add(
    t: &[f32],
    ldt: usize,
    (n, m): (usize, usize),
    add: Option<&[f32]>,
    y: &mut [f32],
    ldy: usize,
) {
    let (tp, yp) = (t.as_ptr(), y.as_mut_ptr());
    // SAFETY: row `i0 + i < n` of `t` is read at columns `j0 + j < m` only (masked), and
    // row `j0 + j < m` of `y` written at `i0 + i < n` only, inside the lengths given.
    unsafe {
        let block = |i0: usize, j0: usize| {
            let ni = (n - i0).min(16);
            let imask = lanes(ni);
            let nj = (m - j0).min(16);
            let jmask = lanes(nj);
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate().take(ni) {
                *v = _mm512_maskz_loadu_ps(jmask, tp.add((i0 + i) * ldt + j0));
            }
            transpose16(&mut r);
            for (j, &v) in r.iter().enumerate().take(nj) {
                let v = match add {
                    Some(a) => _mm512_add_ps(v, _mm512_set1_ps(a[j0 + j])),
                    None => v,
                };
                _mm512_mask_storeu_ps(yp.add((j0 + j) * ldy + i0), imask, v);
            }
        };
        if super::rows_outer(ldt, ldy) {
            for i0 in (0..n).step_by(16) {
                for j0 in (0..m).step_by(16) {
                    block(i0, j0);
                }
            }
        } else {
            for j0 in (0..m).step_by(16) {
                for i0 in (0..n).step_by(16) {
                    block(i0, j0);
                }
            }
        }
    }
}

/// [`super::pad_into`] with each row moved in 16-float vectors, the last one masked.
///
/// # Safety
/// The CPU has AVX-512F; `src` holds `channels` planes of `h x w`, `dst` `channels`
/// planes of `rows x cols`; `top + hh <= rows`, `left + ww <= cols`, `hh <= h`,
/// `ww <= w`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pad_into(
    src: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (top, left): (usize, usize),
    (rows, cols): (usize, usize),
    (hh, ww): (usize, usize),
    dst: &mut [f32],
) {
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let (full, tail) = (ww / 16 * 16, lanes(ww % 16));
    // A mask the compiler cannot see is all ones: with a constant one, it turns the
    // loop below back into a `memcpy` call per row.
    let all = std::hint::black_box(u16::MAX);
    // SAFETY: rows `r < hh` of each plane, floats `k < ww`, which the contract keeps
    // inside both planes.
    unsafe {
        for c in 0..channels {
            let s = sp.add(c * h * w);
            let d = dp.add(c * rows * cols + top * cols + left);
            for r in 0..hh {
                let (sr, dr) = (s.add(r * w), d.add(r * cols));
                // Masked moves even for whole vectors, under a mask the compiler does
                // not know: plain loads and stores in a loop (or masked ones under a
                // constant full mask) are turned into a `memcpy` call per row, the cost
                // this function is here to avoid (6.6% of resnet_128s2's forward).
                for k in (0..full).step_by(16) {
                    let v = _mm512_maskz_loadu_ps(all, sr.add(k));
                    _mm512_mask_storeu_ps(dr.add(k), all, v);
                }
                if full < ww {
                    let v = _mm512_maskz_loadu_ps(tail, sr.add(full));
                    _mm512_mask_storeu_ps(dr.add(full), tail, v);
                }
            }
        }
    }
}

/// [`super::phase_planes`] for strides 1 and 2: each 16 floats of a real row from masked
/// loads of the image (stride 2: two loads, their even floats picked by one permute),
/// the lanes outside the real columns zero; the masks of a column block worked out once
/// per plane and used for all its real rows.
///
/// # Safety
/// The CPU has AVX-512F; `sw` is 1 or 2; every plane passes `PhasePlane::check` for
/// `planes`, `x` and `sw` (what `super::phase_planes` checks).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn phase_planes(
    planes: &mut [f32],
    x: &[f32],
    sw: usize,
    planes_of: impl Iterator<Item = super::PhasePlane>,
) {
    let (pp, xp) = (planes.as_mut_ptr(), x.as_ptr());
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let zero = _mm512_setzero_ps();
    // Lanes `lo..hi` as a mask, `hi <= 16`.
    let bits = |lo: usize, hi: usize| if hi <= lo { 0 } else { lanes(hi) & !lanes(lo) };
    // Zeroes `n` floats from `p`.
    let fill_zero = |p: *mut f32, n: usize| {
        for j in (0..n).step_by(16) {
            // SAFETY: masked to the `n` floats, inside the plane (the contract).
            unsafe { _mm512_mask_storeu_ps(p.add(j), lanes(n - j), zero) };
        }
    };
    for p in planes_of {
        let (cols, (r0, r1), (qlo, qhi)) = (p.cols, p.rows_real, p.cols_real);
        // SAFETY: the plane is inside `planes` (the contract).
        let base = unsafe { pp.add(p.start) };
        if !p.has_pixels() {
            fill_zero(base, p.len());
            continue;
        }
        // The rows above, and those below with the slack.
        fill_zero(base, r0 * cols);
        // SAFETY: as `base`.
        fill_zero(unsafe { base.add(r1 * cols) }, p.len() - r1 * cols);
        for q0 in (0..cols).step_by(16) {
            let store = lanes(cols - q0);
            // The lanes `a..b` of the block that hold pixels.
            let (a, b) = (
                qlo.saturating_sub(q0).min(16),
                qhi.saturating_sub(q0).min(16),
            );
            let real = bits(a, b);
            // Stride 2: lanes a..b are the even floats 2a..2b of two loads of 16.
            let (ma, mb) = (
                bits((2 * a).min(16), (2 * b).min(16)) & 0x5555,
                bits((2 * a).max(16) - 16, (2 * b).max(16) - 16) & 0x5555,
            );
            // Image index of the block's lane 0 in the first real row (before `x` when
            // `q0 < qlo`).
            let first = (p.xoff as isize) + (q0 as isize - qlo as isize) * sw as isize;
            for i in 0..r1 - r0 {
                let at = xp.wrapping_offset(first + (i * p.xstep) as isize);
                // SAFETY: every load is masked to the lanes of `qlo..qhi`, whose image
                // floats are inside `x` (the contract); the pointer for masked-off lanes
                // is only formed (wrapping), never read. The store is masked to the row.
                unsafe {
                    let v = if real == 0 {
                        zero
                    } else if sw == 1 {
                        _mm512_maskz_loadu_ps(real, at)
                    } else {
                        let lo = _mm512_maskz_loadu_ps(ma, at);
                        let hi = _mm512_maskz_loadu_ps(mb, at.wrapping_add(16));
                        _mm512_maskz_permutex2var_ps(real, lo, even, hi)
                    };
                    _mm512_mask_storeu_ps(base.add((r0 + i) * cols + q0), store, v);
                }
            }
        }
    }
}

/// Rows `i < n` of `m` floats moved to `dst(i)`: `y[dst(i) + j] = t[i * ldt + j]
/// (+ add[j])`, in 16-float masked moves (the portable rows move 4 floats an
/// instruction on baseline x86-64).
///
/// # Safety
/// The CPU has AVX-512F; `t` holds `(n - 1) * ldt + m` floats when `n > 0`; `y` holds
/// `dst(i) + m` floats for every `i < n`; `add`, when given, holds `m`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn copy_rows(
    t: &[f32],
    ldt: usize,
    (n, m): (usize, usize),
    add: Option<&[f32]>,
    y: &mut [f32],
    dst: impl Fn(usize) -> usize,
) {
    let (tp, yp) = (t.as_ptr(), y.as_mut_ptr());
    // SAFETY: floats `j < m` of row `i < n` of `t`, of `y` from `dst(i)` and of `add`,
    // each move masked to them, which the contract keeps inside the slices.
    unsafe {
        for i in 0..n {
            let (s, d) = (tp.add(i * ldt), yp.add(dst(i)));
            for j0 in (0..m).step_by(16) {
                let mask = lanes(m - j0);
                let mut v = _mm512_maskz_loadu_ps(mask, s.add(j0));
                if let Some(a) = add {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.as_ptr().add(j0)));
                }
                _mm512_mask_storeu_ps(d.add(j0), mask, v);
            }
        }
    }
}
