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

/// [`super::phase_row`] for strides 1 and 2: each 16 floats of the row from masked
/// loads of the image (stride 2: two loads, their even floats picked by one permute),
/// the lanes outside `qlo..qhi` zero.
///
/// # Safety
/// The CPU has AVX-512F; `qlo <= qhi <= row.len()`; `x` holds `xoff + (qhi - qlo - 1) *
/// sw + 1` floats when `qhi > qlo`; `sw` is 1 or 2.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn phase_row(
    row: &mut [f32],
    x: &[f32],
    xoff: usize,
    (qlo, qhi): (usize, usize),
    sw: usize,
) {
    let (rp, xp) = (row.as_mut_ptr(), x.as_ptr());
    // Lanes `j` of the block at `q0` with `lo <= q0 + j < hi`.
    let within = |q0: usize, lo: usize, hi: usize| -> u16 {
        let (a, b) = (lo.saturating_sub(q0).min(16), hi.saturating_sub(q0).min(16));
        if b <= a { 0 } else { lanes(b) & !lanes(a) }
    };
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    // SAFETY: every load is masked to the lanes of `qlo..qhi`, whose image floats are
    // inside `x` (the contract); the pointer for masked-off lanes is only formed
    // (wrapping), never read. Stores are masked to the row.
    unsafe {
        for q0 in (0..row.len()).step_by(16) {
            let store = within(q0, 0, row.len());
            let real = within(q0, qlo, qhi);
            // Image index of the block's lane 0 (before `x` when `q0 < qlo`).
            let at = |d: isize| xp.wrapping_offset(xoff as isize + d);
            let v = if real == 0 {
                _mm512_setzero_ps()
            } else if sw == 1 {
                _mm512_maskz_loadu_ps(real, at(q0 as isize - qlo as isize))
            } else {
                // Lane j reads float 2j of the 32 from the block's first image index.
                let (mut ma, mut mb) = (0u16, 0u16);
                for j in 0..8 {
                    ma |= ((real >> j) & 1) << (2 * j);
                    mb |= ((real >> (j + 8)) & 1) << (2 * j);
                }
                let base = 2 * (q0 as isize - qlo as isize);
                let a = _mm512_maskz_loadu_ps(ma, at(base));
                let b = _mm512_maskz_loadu_ps(mb, at(base + 16));
                _mm512_maskz_permutex2var_ps(real, a, even, b)
            };
            _mm512_mask_storeu_ps(rp.add(q0), store, v);
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
