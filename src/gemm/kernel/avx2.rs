//! AVX2 + FMA micro-kernel: 6 x 16 tile, 12 ymm accumulators.

use std::arch::x86_64::*;

use super::{MacroArgs, Simd};

/// The AVX2 and FMA vector operations.
pub(super) struct Avx2;

// SAFETY: every method uses AVX2 and FMA only; they are called from the wrappers below,
// which enable avx2 and fma and are only reached after `is_x86_feature_detected!("avx2") and ("fma")`.
unsafe impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: AVX2 and FMA is available (trait contract).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        // SAFETY: as above.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable f32 at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: the caller guarantees 8 writable f32 at `p`.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: AVX2 and FMA is available.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX2 and FMA is available.
        unsafe { _mm256_mul_ps(a, b) }
    }
    /// One masked store for `stride` 1 (the first `n` lanes), else the default's float
    /// loop.
    #[inline(always)]
    unsafe fn store_strided(p: *mut f32, stride: usize, n: usize, v: __m256) {
        // SAFETY: the caller guarantees `p + j * stride` writable for `j < n`; the store
        // is masked to those lanes.
        unsafe {
            if stride == 1 {
                let mask = _mm256_loadu_si256(PREFIX[n.min(8)].as_ptr().cast());
                _mm256_maskstore_ps(p, mask, v)
            } else {
                super::store_lanes::<Avx2>(p, stride, n, v)
            }
        }
    }
    /// One masked load for `stride` 1 (the other lanes zero), else the default's loop.
    #[inline(always)]
    unsafe fn load_strided(p: *const f32, stride: usize, n: usize) -> __m256 {
        // SAFETY: the caller guarantees `p + j * stride` readable for `j < n`; the load
        // is masked to those lanes (a masked-off lane neither reads nor faults).
        unsafe {
            if stride == 1 {
                let mask = _mm256_loadu_si256(PREFIX[n.min(8)].as_ptr().cast());
                _mm256_maskload_ps(p, mask)
            } else {
                super::load_lanes::<Avx2>(p, stride, n)
            }
        }
    }
    /// A full vector stored as it is; otherwise the kept lanes moved to the front by
    /// one permute (its indices from [`COMPRESS`]) and stored under a prefix mask.
    #[inline(always)]
    unsafe fn store_compressed(v: __m256, keep: u32, dst: *mut f32) {
        let keep = (keep & 0xFF) as usize;
        // SAFETY: the caller guarantees `keep.count_ones()` writable f32 at `dst`; the
        // masked store writes no more.
        unsafe {
            if keep == 0xFF {
                return _mm256_storeu_ps(dst, v);
            }
            let idx = _mm256_loadu_si256(COMPRESS[keep].as_ptr().cast());
            let packed = _mm256_permutevar8x32_ps(v, idx);
            let n = keep.count_ones() as usize;
            let mask = _mm256_loadu_si256(PREFIX[n].as_ptr().cast());
            _mm256_maskstore_ps(dst, mask, packed);
        }
    }
}

/// Per 8-bit lane mask, the indices that move its lanes to the front, lowest first.
static COMPRESS: [[i32; 8]; 256] = {
    let mut t = [[0i32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut j, mut n) = (0i32, 0usize);
        while j < 8 {
            if m >> j & 1 == 1 {
                t[m][n] = j;
                n += 1;
            }
            j += 1;
        }
        m += 1;
    }
    t
};

/// `PREFIX[n]`: the store mask of the first `n` lanes.
static PREFIX: [[i32; 8]; 9] = {
    let mut t = [[0i32; 8]; 9];
    let mut n = 0;
    while n <= 8 {
        let mut j = 0;
        while j < n {
            t[n][j] = -1;
            j += 1;
        }
        n += 1;
    }
    t
};

/// The macro-kernel compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU supports AVX2 and FMA and `args` satisfies `macro_body`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn macro_kernel(args: &MacroArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx2`.
    unsafe { super::macro_body::<Avx2, 6, 2>(args) }
}

/// The FMA peak loop compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn fma_loop(iters: u64) -> f64 {
    // SAFETY: this function enables the ISA of `Avx2`.
    unsafe { super::fma_loop_body::<Avx2>(iters) }
}

/// Positions per register tile of the indirect kernels (the AVX2 kernel).
const INDIRECT_MR: usize = 6;
/// Most vectors of channels per register tile of the indirect kernels.
const INDIRECT_NV: usize = 2;

/// Rows per register tile of the indirect kernels on rows of `nvec` vectors.
pub(super) fn indirect_tile_rows(nvec: usize) -> usize {
    super::indirect::tile_rows::<INDIRECT_MR, INDIRECT_NV>(nvec)
}

/// The indirect (direct conv) kernel compiled for AVX2 and FMA: 6 positions x up to 16
/// channels.
///
/// # Safety
/// The CPU supports AVX2 and FMA and `args` satisfies `indirect_body`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn indirect_kernel(args: &super::indirect::IndirectArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx2`.
    unsafe { super::indirect::indirect_body::<Avx2, INDIRECT_MR, INDIRECT_NV>(args) }
}

/// The indirect (direct conv) kernel, for rows of live channels, compiled for AVX2 and FMA: 6 positions x up to 16
/// channels.
///
/// # Safety
/// The CPU supports AVX2 and FMA and `args` satisfies `indirect_body`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn indirect_kernel_live(args: &super::indirect::IndirectArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx2`.
    unsafe { super::indirect::indirect_body_live::<Avx2, INDIRECT_MR, INDIRECT_NV>(args) }
}

/// The B-indirect (phase conv) kernel compiled for AVX2 and FMA: 6 x 16 tiles.
///
/// # Safety
/// The CPU supports AVX2 and FMA and `args` satisfies `indirect_b_body`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn indirect_b_kernel(args: &super::indirect::IndirectBArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx2`.
    unsafe { super::indirect::indirect_b_body::<Avx2, 6, 2>(args) }
}
