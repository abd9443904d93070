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
    /// A masked store for `stride` 1, else the default's float loop. Tried: one masked
    /// scatter per vector, for a channel-major output written by the direct forward's
    /// kernel: 1.8x slower than its transposed tile (resnet_128s2, 1 thread, Intel Xeon
    /// 6/207), and no faster float by float: each tile's stores touch a page per channel.
    #[inline(always)]
    unsafe fn store_strided(p: *mut f32, stride: usize, n: usize, v: __m512) {
        // SAFETY: the caller guarantees `p + j * stride` writable for `j < n`; the store
        // is masked to those lanes.
        unsafe {
            if stride == 1 {
                _mm512_mask_storeu_ps(p, lane_mask(n), v)
            } else {
                super::store_lanes::<Avx512>(p, stride, n, v)
            }
        }
    }
    /// A masked load for `stride` 1, else the default's float loop.
    #[inline(always)]
    unsafe fn load_strided(p: *const f32, stride: usize, n: usize) -> __m512 {
        // SAFETY: the caller guarantees `p + j * stride` readable for `j < n`; the load
        // is masked to those lanes (the others zero).
        unsafe {
            if stride == 1 {
                _mm512_maskz_loadu_ps(lane_mask(n), p)
            } else {
                super::load_lanes::<Avx512>(p, stride, n)
            }
        }
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
}

/// The low `n` lanes (all 16 from `n >= 16`).
#[inline(always)]
fn lane_mask(n: usize) -> __mmask16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
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

/// Positions per register tile of the indirect kernels (the AVX-512 kernel (either vector width)).
const INDIRECT_MR: usize = 8;
/// Most vectors of channels per register tile of the indirect kernels.
const INDIRECT_NV: usize = 3;

/// Rows per register tile of the indirect kernels on rows of `nvec` vectors.
pub(super) fn indirect_tile_rows(nvec: usize) -> usize {
    super::indirect::tile_rows::<INDIRECT_MR, INDIRECT_NV>(nvec)
}

/// The indirect (direct conv) kernel compiled for AVX-512F: 8 positions x up to 48
/// channels.
///
/// # Safety
/// The CPU supports AVX-512F and `args` satisfies `indirect_body`'s contract.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn indirect_kernel(args: &super::indirect::IndirectArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx512`.
    unsafe { super::indirect::indirect_body::<Avx512, INDIRECT_MR, INDIRECT_NV>(args) }
}

/// The indirect (direct conv) kernel, for rows of live channels, compiled for AVX-512F: 8 positions x up to 48
/// channels.
///
/// # Safety
/// The CPU supports AVX-512F and `args` satisfies `indirect_body`'s contract.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn indirect_kernel_live(args: &super::indirect::IndirectArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx512`.
    unsafe { super::indirect::indirect_body_live::<Avx512, INDIRECT_MR, INDIRECT_NV>(args) }
}

/// The indirect kernel on 256-bit vectors, for rows whose channels would leave half of
/// a 512-bit vector empty ([`super::Kernel::indirect_ldw`]): the AVX2 vector operations
/// compiled with AVX-512VL, so the tile has 32 registers (8 positions x up to 24
/// channels) instead of AVX2's 16.
///
/// # Safety
/// The CPU supports AVX-512F, AVX-512VL, AVX2 and FMA, and `args` satisfies
/// `indirect_body`'s contract for 8-lane vectors.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn indirect_kernel_half(args: &super::indirect::IndirectArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx2` and more.
    unsafe { super::indirect::indirect_body::<super::avx2::Avx2, INDIRECT_MR, INDIRECT_NV>(args) }
}

/// [`indirect_kernel_half`] for rows of live channels.
///
/// # Safety
/// As [`indirect_kernel_half`].
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn indirect_kernel_half_live(args: &super::indirect::IndirectArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx2` and more.
    unsafe {
        super::indirect::indirect_body_live::<super::avx2::Avx2, INDIRECT_MR, INDIRECT_NV>(args)
    }
}

/// The B-indirect kernel on 256-bit vectors, 8 x 24 tiles in 32 registers (the AVX2
/// vector operations compiled with AVX-512VL): the phase forward's row-by-row tiling
/// on a Zen 4 (see `indirect_b_gemm_real`).
///
/// # Safety
/// The CPU supports AVX-512F, AVX-512VL, AVX2 and FMA, and `args` satisfies
/// `indirect_b_body`'s contract for 8 x 24 tiles.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn indirect_b_kernel_half(args: &super::indirect::IndirectBArgs) {
    // SAFETY: forwarded contract; this function enables the ISA of `Avx2` and more.
    unsafe { super::indirect::indirect_b_body::<super::avx2::Avx2, 8, 3>(args) }
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
