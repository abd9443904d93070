//! AVX-512F micro-kernel: 8 x 48 tile, 24 zmm accumulators.
//!
//! The AVX-512 intrinsics and `#[target_feature(enable = "avx512f")]` are stable since
//! Rust 1.89, which is why the crate's `rust-version` is 1.89.

use std::arch::x86_64::*;

use super::{MacroArgs, Simd};

/// The AVX-512F vector operations.
pub(super) struct Avx512;

// SAFETY: every method uses AVX-512F only; they are called from the wrappers below,
// which enable avx512f and are only reached after `is_x86_feature_detected!("avx512f")`.
unsafe impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: AVX-512F is available (trait contract).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        // SAFETY: as above.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable f32 at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: the caller guarantees 16 writable f32 at `p`.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F is available.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is available.
        unsafe { _mm512_mul_ps(a, b) }
    }
    /// One register compress and one masked store.
    #[inline(always)]
    unsafe fn store_compressed(v: __m512, keep: u32, dst: *mut f32) {
        let n = keep.count_ones();
        let first = if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
        // SAFETY: the caller guarantees `n` writable f32 at `dst`; the store is masked
        // to them.
        unsafe {
            if keep & 0xFFFF == 0xFFFF {
                return _mm512_storeu_ps(dst, v);
            }
            _mm512_mask_storeu_ps(dst, first, _mm512_maskz_compress_ps(keep as u16, v))
        }
    }
    /// Eight rows at consecutive addresses (one image's positions) go through an
    /// in-register 8 x 16 transpose, two channels per vector, stored with masks; other
    /// tiles (rows across two images) are spilled and stored float by float.
    #[inline(always)]
    unsafe fn store_transposed<const MR: usize>(
        rows: &[__m512; MR],
        valid: usize,
        cols: usize,
        dst: &[*mut f32; MR],
        ld: usize,
    ) {
        let contiguous = MR == 8 && (1..valid).all(|i| dst[i] == dst[0].wrapping_add(i));
        // SAFETY: the caller's contract covers every address written: row `i < valid`,
        // channel `j < cols`, at `dst[0] + i + j * ld` when contiguous.
        unsafe {
            if !contiguous {
                return super::store_transposed_spilled::<Self, MR>(rows, valid, cols, dst, ld);
            }
            let r: [__m512; 8] = std::array::from_fn(|i| rows[i]);
            // Pairs of rows interleaved by floats, then quads by float pairs: u[4g + c]
            // holds, per 128-bit lane L, rows 4g..4g + 4 at channel 4L + c.
            let t: [__m512; 8] = std::array::from_fn(|i| {
                let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            let pd = |v: __m512| _mm512_castps_pd(v);
            let u: [__m512; 8] = std::array::from_fn(|i| {
                let (g, c) = (i / 4, i % 4);
                let (x, y) = (pd(t[4 * g + c / 2]), pd(t[4 * g + 2 + c / 2]));
                _mm512_castpd_ps(if c % 2 == 0 {
                    _mm512_unpacklo_pd(x, y)
                } else {
                    _mm512_unpackhi_pd(x, y)
                })
            });
            // Channel j = 4L + c in the low half (rows 0..8), channel j + 8 in the high.
            let idx = [
                _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31),
            ];
            let low = if valid >= 8 {
                0xFFu16
            } else {
                (1u16 << valid) - 1
            };
            let d0 = dst[0];
            for (l, &ix) in idx.iter().enumerate() {
                for c in 0..4 {
                    let j = 4 * l + c;
                    if j >= cols {
                        continue;
                    }
                    let v = _mm512_permutex2var_ps(u[c], ix, u[4 + c]);
                    _mm512_mask_storeu_ps(d0.add(j * ld), low, v);
                    if j + 8 < cols {
                        // Lanes 8..16 land at the row of channel j + 8.
                        let hi = d0.add((j + 8) * ld).wrapping_sub(8);
                        _mm512_mask_storeu_ps(hi, low << 8, v);
                    }
                }
            }
        }
    }
}

/// The macro-kernel compiled for AVX-512F.
///
/// # Safety
/// The CPU supports AVX-512F and `args` satisfies `macro_body`'s contract.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn macro_kernel(args: &MacroArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx512`.
    unsafe { super::macro_body::<Avx512, 8, 3>(args) }
}

/// The FMA peak loop compiled for AVX-512F.
///
/// # Safety
/// The CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn fma_loop(iters: u64) -> f64 {
    // SAFETY: this function enables the ISA of `Avx512`.
    unsafe { super::fma_loop_body::<Avx512>(iters) }
}

/// The indirect (direct conv) kernel compiled for AVX-512F: 8 positions x up to 48
/// channels.
///
/// # Safety
/// The CPU supports AVX-512F and `args` satisfies `indirect_body`'s contract.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn indirect_kernel(args: &super::indirect::IndirectArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx512`.
    unsafe { super::indirect::indirect_body::<Avx512, 8, 3>(args) }
}

/// The B-indirect (phase conv) kernel compiled for AVX-512F: 8 x 48 tiles.
///
/// # Safety
/// The CPU supports AVX-512F and `args` satisfies `indirect_b_body`'s contract.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn indirect_b_kernel(args: &super::indirect::IndirectBArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx512`.
    unsafe { super::indirect::indirect_b_body::<Avx512, 8, 3>(args) }
}
