//! Single-precision matrix multiplication: `C = alpha * A * B + beta * C`.
//!
//! Every matrix product in the crate goes through this module: [`sgemm`] (the linear
//! layer, the column conv paths, whose plan names the kernel) or, for the direct conv path, an *indirect* GEMM whose
//! A operand is read in place at `base + offset` from an image (crate-internal
//! `indirect_gemm`; the micro-kernel is generic over the same per-ISA vector trait as
//! sgemm's, so each instruction set is written once). Operands are ndarray views with any strides: a transposed
//! operand is just `a.t()`, no copy.
//!
//! # Design
//! A BLIS-style packed, cache-blocked GEMM: blocks of A and B are packed from their
//! strides into contiguous micro-panels (so transposed and strided operands cost no
//! extra copy), and a register micro-kernel computes one `MR x NR` tile of C at a time.
//! Three micro-kernels share one generic source: AVX-512F (8 x 48), AVX2 + FMA (6 x 16)
//! and portable Rust (4 x 8); the fastest the CPU supports is chosen once at run time,
//! or forced with the environment variable `CONVINIT_GEMM_KERNEL=avx512|avx2|fallback`
//! (read once). All `unsafe` code of the crate lives in the kernel module (and the one
//! `cpuid` call of [`crate::cpu`]).
//!
//! # Default kernel
//! `avx512` wherever AVX-512F is usable, `avx2` on other AVX2 + FMA CPUs, else the
//! portable kernel. On Zen 4, whose 256-bit datapath runs a 512-bit FMA as two halves,
//! both SIMD kernels peak at 32 flops per cycle per core; `avx512` stays the default
//! there because its 8 x 48 tile, in 32 registers, needs 0.23 vector loads per 256-bit
//! FMA against 0.67 for the 6 x 16 AVX2 tile, and moves 0.15 floats of packed A and B
//! per multiply-add against 0.23: measured on a Zen 4, 3-8% faster than `avx2` on
//! 1024^3 and 2048^3 at 1 and 2 threads (see `archparam::preferred_kernel`).
//! `CONVINIT_GEMM_KERNEL=avx2` tries the other.
//!
//! The indirect GEMM of the AVX-512 kernel runs rows whose last 512-bit vector would be
//! at most half used (1 to 8 channels past a multiple of 16) on 256-bit vectors on a
//! Zen 4, in 8 x 24 tiles (32 registers with AVX-512VL): there a 256-bit FMA issues
//! twice a cycle and a 512-bit one once, so the notebook's 8- and 1-channel layers run
//! their direct path 10-30% faster. Elsewhere a half-empty 512-bit vector costs no more
//! than a full 256-bit one. `CONVINIT_HALF_VECTORS=on|off` forces the choice (read
//! once).
//!
//! # Block sizes
//! The block sizes ([`GemmBlocks`]: `KC`, `MC`, the L2 budget, `NC`) of each kernel are
//! derived once from the caches [`crate::cpu::CpuInfo`] reads: the values measured on a
//! Zen 5 (L1d 48 KiB, L2 1 MiB), kept on Zen 4's 32 KiB L1d (measured) and scaled down
//! for a smaller one, the L2 budget half of L2, and `NC` limited by half of L3. [`Kernel::blocks`] gives the
//! sizes in effect, [`Kernel::detected_blocks`] the derived ones.
//!
//! `CONVINIT_GEMM_BLOCKS` overrides them for the whole process, for every kernel: a
//! comma-separated subset of `kc=N`, `mc=N`, `l2=BYTES`, `nc=N` (e.g.
//! `kc=256,mc=96,l2=1048576,nc=4096`; syntax of [`GemmBlocks::with_spec`]), read once.
//! `mc` and `nc` are rounded up to multiples of each kernel's `MR` and `NR`. A value that
//! does not parse (unknown key, zero, not a number) makes the whole variable ignored,
//! with one warning on standard error: a mistyped tuning run then still computes
//! correctly and says so, rather than failing or half-applying the spec.
//! [`sgemm_with_blocks`] runs one product with explicit sizes instead.
//!
//! On the project's 2-core AVX-512 EPYC, 1024^3 and 2048^3 run at about 0.9 of the
//! measured FMA peak (`fma_peak_gflops`), on par with OpenBLAS. On a 2-core Intel Xeon
//! (Emerald Rapids, L2 2 MiB, a shared machine: four rounds in which the other core was
//! idle), `examples/bench` against `torch_anchor.py`'s numpy OpenBLAS: 0.88-0.92x at
//! 2048^3 and 0.92-0.97x at 1024^3 on one thread (about 146 against 160 GFLOP/s), 0.93-0.97x
//! at 2048^3 and 0.97-1.2x at 1024^3 on two (about 290 against 305).
//!
//! Products of at least 1.5 M multiply-adds (about 116^3) run on the rayon pool, split
//! over tiles of C only; smaller ones run on the calling thread. The result does not
//! depend on the number of threads, bit for bit.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::error::{Error, Result};

mod archparam;
mod kernel;
mod loops;
mod naive;
mod pack;

pub use archparam::GemmBlocks;
pub(crate) use kernel::{
    Channels, IndirectOut, Offsets, RealColumns, indirect_b_gemm, indirect_b_gemm_real,
    indirect_gemm, indirect_gemm_rows, pack_a_panels, pack_a_panels_into,
};
pub use kernel::{Kernel, fma_peak_gflops};
pub use naive::sgemm_naive;

/// `C = alpha * A * B + beta * C` with `A` (m, k), `B` (k, n) and `C` (m, n).
///
/// Views may have any strides (use `.t()` for a transposed operand). When `beta` is
/// zero, `C` is not read, so it may hold garbage (even NaN).
///
/// # Errors
/// [`Error::Shape`] when the inner or outer dimensions do not agree.
///
/// # Examples
/// ```
/// use ndarray::array;
/// let a = array![[1.0f32, 2.0], [3.0, 4.0]];
/// let b = array![[5.0f32], [6.0]];
/// let mut c = ndarray::Array2::<f32>::zeros((2, 1));
/// convinit::gemm::sgemm(1.0, a.view(), b.view(), 0.0, c.view_mut()).unwrap();
/// assert_eq!(c, array![[17.0], [39.0]]);
/// ```
pub fn sgemm(
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    check_shapes(&a, &b, &c)?;
    let kernel = Kernel::selected();
    loops::gemm(
        kernel,
        kernel.blocks(),
        alpha,
        a,
        b,
        beta,
        c,
        rayon::current_num_threads(),
    );
    Ok(())
}

/// [`sgemm`] on `kernel` (which the caller has checked this CPU supports) that runs on
/// the calling thread alone when `parallel` is false (for callers that already split
/// their work over rayon tasks), else as [`sgemm`]. Same result, bit for bit, either
/// way.
pub(crate) fn sgemm_par(
    kernel: Kernel,
    parallel: bool,
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    check_shapes(&a, &b, &c)?;
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    loops::gemm(kernel, kernel.blocks(), alpha, a, b, beta, c, threads);
    Ok(())
}

/// [`sgemm`] with an explicit micro-kernel, so one process can test and benchmark every
/// instruction-set path.
///
/// # Errors
/// [`Error::Shape`] as [`sgemm`]; [`Error::Config`] when this CPU cannot run `kernel`.
pub fn sgemm_with_kernel(
    kernel: Kernel,
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    sgemm_with_blocks(kernel, kernel.blocks(), alpha, a, b, beta, c)
}

/// [`sgemm_with_kernel`] with explicit block sizes, so tests and benchmarks can run any
/// blocking in one process (the environment variable `CONVINIT_GEMM_BLOCKS` sets them
/// for the whole process instead). Start from [`Kernel::blocks`] and change fields, or
/// use [`GemmBlocks::with_spec`]. The result is bit-identical at any thread count for
/// given sizes; other sizes may round differently (another split of the depth).
///
/// # Errors
/// [`Error::Shape`] as [`sgemm`]; [`Error::Config`] when this CPU cannot run `kernel` or
/// `blocks` fails [`GemmBlocks::validate`] for it.
///
/// # Examples
/// ```
/// use convinit::gemm::{Kernel, sgemm_with_blocks};
/// use ndarray::Array2;
/// let a = Array2::<f32>::ones((30, 20));
/// let b = Array2::<f32>::ones((20, 10));
/// let mut c = Array2::<f32>::zeros((30, 10));
/// let k = Kernel::Fallback;
/// let blocks = k.blocks().with_spec("kc=8,mc=4,nc=8")?;
/// sgemm_with_blocks(k, blocks, 1.0, a.view(), b.view(), 0.0, c.view_mut())?;
/// assert!(c.iter().all(|&x| x == 20.0));
/// let mut bad = blocks;
/// bad.mc = 3; // not a multiple of mr = 4
/// assert!(sgemm_with_blocks(k, bad, 1.0, a.view(), b.view(), 0.0, c.view_mut()).is_err());
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn sgemm_with_blocks(
    kernel: Kernel,
    blocks: GemmBlocks,
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    check_shapes(&a, &b, &c)?;
    if !kernel.is_supported() {
        return Err(Error::config(
            "sgemm",
            format!("the {} kernel is not supported by this CPU", kernel.name()),
        ));
    }
    blocks.validate(kernel)?;
    loops::gemm(
        kernel,
        blocks,
        alpha,
        a,
        b,
        beta,
        c,
        rayon::current_num_threads(),
    );
    Ok(())
}

/// Checks that A is (m, k), B (k, n) and C (m, n).
fn check_shapes(
    a: &ArrayView2<'_, f32>,
    b: &ArrayView2<'_, f32>,
    c: &ArrayViewMut2<'_, f32>,
) -> Result<()> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    if k != k2 || c.dim() != (m, n) {
        return Err(Error::shape(
            "sgemm",
            format!(
                "A is {:?}, B is {:?}, C is {:?}: expected A (m, k), B (k, n), C (m, n)",
                a.dim(),
                b.dim(),
                c.dim()
            ),
        ));
    }
    Ok(())
}
