//! Portable micro-kernel: 4 x 8 tile of plain `f32` arrays, which the compiler
//! vectorises with whatever the build target has (SSE2 on baseline x86-64).
//!
//! Uses a separate multiply and add (no fused multiply-add), so it is exact to the same
//! rounding on every target without needing an FMA unit.

use super::{MacroArgs, Simd};

/// Eight f32 in an array: the "vector" of the portable kernel.
pub(super) struct Fallback;

// SAFETY: plain Rust, no target features; only `load`/`store` touch memory, within the
// ranges their callers guarantee.
unsafe impl Simd for Fallback {
    type V = [f32; 8];
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> [f32; 8] {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 8] {
        // SAFETY: the caller guarantees 8 readable f32 at `p`.
        unsafe { p.cast::<[f32; 8]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; 8]) {
        // SAFETY: the caller guarantees 8 writable f32 at `p`.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn fma(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|l| a[l] * b[l] + c[l])
    }
    #[inline(always)]
    unsafe fn prefetch(_p: *const f32) {}
    #[inline(always)]
    unsafe fn mul(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|l| a[l] * b[l])
    }
}

/// The portable macro-kernel.
///
/// # Safety
/// `args` satisfies `macro_body`'s contract.
pub(super) unsafe fn macro_kernel(args: &MacroArgs) {
    // SAFETY: forwarded contract; `Fallback` needs no target feature.
    unsafe { super::macro_body::<Fallback, 4, 1>(args) }
}

/// The FMA peak loop in portable code (multiply and add).
pub(super) fn fma_loop(iters: u64) -> f64 {
    // SAFETY: `Fallback` needs no target feature.
    unsafe { super::fma_loop_body::<Fallback>(iters) }
}

/// Positions per register tile of the indirect kernels (the portable kernel).
const INDIRECT_MR: usize = 4;
/// Most vectors of channels per register tile of the indirect kernels.
const INDIRECT_NV: usize = 1;

/// Rows per register tile of the indirect kernels on rows of `nvec` vectors.
pub(super) fn indirect_tile_rows(nvec: usize) -> usize {
    super::indirect::tile_rows::<INDIRECT_MR, INDIRECT_NV>(nvec)
}

/// The portable indirect (direct conv) kernel: 4 positions x 8 channels.
///
/// # Safety
/// `args` satisfies `indirect_body`'s contract.
pub(super) unsafe fn indirect_kernel(args: &super::indirect::IndirectArgs) {
    // SAFETY: forwarded contract; `Fallback` needs no target feature.
    unsafe { super::indirect::indirect_body::<Fallback, INDIRECT_MR, INDIRECT_NV>(args) }
}

/// The portable indirect (direct conv) kernel: 4 positions x 8 channels.
///
/// # Safety
/// `args` satisfies `indirect_body`'s contract.
pub(super) unsafe fn indirect_kernel_live(args: &super::indirect::IndirectArgs) {
    // SAFETY: forwarded contract; `Fallback` needs no target feature.
    unsafe { super::indirect::indirect_body_live::<Fallback, INDIRECT_MR, INDIRECT_NV>(args) }
}

/// The portable B-indirect (phase conv) kernel: 4 x 8 tiles.
///
/// # Safety
/// `args` satisfies `indirect_b_body`'s contract.
pub(super) unsafe fn indirect_b_kernel(args: &super::indirect::IndirectBArgs) {
    // SAFETY: forwarded contract; `Fallback` needs no target feature.
    unsafe { super::indirect::indirect_b_body::<Fallback, 4, 1>(args) }
}
