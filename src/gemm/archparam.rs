//! Block sizes of the loop nest, derived per micro-kernel from the CPU's caches, and the
//! default micro-kernel per micro-architecture.
//!
//! The micro-tile is `MR x NR` with the `NR` side along the rows of C (vectors of B).
//! Inside one task the loop nest keeps one packed `MR x KC` micro-panel of A in L1 and
//! streams the `KC x NR` micro-panels of a `KC x NB` chunk of packed B, held in L2, past
//! it; the packed `KC x NC` block of B lives in L3.
//!
//! # Reference: the Zen 5 measurements
//! The per-kernel constants below ([`AVX512`], [`AVX2`], [`FALLBACK`]) were measured on
//! the project's first target machine, an AMD EPYC Zen 5 (L1d 48 KiB, L2 1 MiB per core,
//! L3 32 MiB per CCD). [`derive`] scales them to another CPU's caches so that on those
//! cache sizes it returns them unchanged (a unit test checks it):
//!
//! * `KC`: the A micro-panel (`MR * KC * 4` bytes) plus the B rows streaming past it fit
//!   L1d. The measured `KC` put the panel at 16 KiB (AVX-512), 6 KiB (AVX2) and 4 KiB
//!   (portable) of 48 KiB, and it stays the same on a 32 KiB L1d: on a Zen 4 (EPYC
//!   family 25 model 17, L1d 32 KiB; `examples/gemm_tune`, medians of 9 to 11
//!   interleaved rounds) `KC` 512 ran 0.5-1.3% faster than 336 (the old rule: the panel
//!   kept at a third of L1d) at 1024^3 and 2048^3 on 1 and 2 threads (1 thread 2048^3:
//!   109.4-109.7 against 108.5-108.7 GFLOP/s; 448: 108.9), and the AVX2 kernel's 256
//!   ran 2% faster than 168 (105.7 against 103.3). Below [`MIN_L1D`] (not measured)
//!   `KC` shrinks in proportion to L1d. The depth is split into equal blocks of at most
//!   `KC` (k = 576 runs as 2 x 288).
//! * `L2 budget`: the bytes of L2 for one task's B chunk (`KC * NB * 4`), which sets
//!   `NB`: half of L2 (the other half holds the A block of the task, `MC * KC * 4`, 256
//!   KiB for AVX-512, and C). 512 KiB on Zen 5; see [`l2_budget`] for Intel's 2 MiB L2.
//! * `MC`: rows of C per task (a multiple of `MR`): the task granularity, not a cache
//!   size; kept as measured.
//! * `NC`: the packed B block (`KC * NC * 4` bytes) fits half of L3, capped at the
//!   measured value (a larger `NC` gained nothing on Zen 5), rounded down to a multiple
//!   of `NR`. Only small L3s (laptops) are below the cap.
//!
//! # Forcing
//! `CONVINIT_GEMM_BLOCKS` (see [`crate::gemm`]) overrides any of `kc`, `mc`, `l2`, `nc`
//! for every kernel; [`crate::gemm::sgemm_with_blocks`] takes explicit sizes.

use std::sync::OnceLock;

use crate::cpu::{CpuInfo, Microarch};
use crate::error::{Error, Result};

use super::kernel::Kernel;

/// Block sizes of the GEMM loop nest for one micro-kernel.
///
/// [`Kernel::blocks`] gives the sizes a kernel runs with (derived from the
/// [`CpuInfo`] caches, or forced by `CONVINIT_GEMM_BLOCKS`); change fields of that value,
/// or apply a spec with [`GemmBlocks::with_spec`], and pass it to
/// [`crate::gemm::sgemm_with_blocks`] to run one product with other sizes. The
/// micro-tile `mr x nr` is fixed by the kernel.
///
/// # Examples
/// ```
/// use convinit::gemm::{GemmBlocks, Kernel};
/// let k = Kernel::Fallback;
/// let mut b = k.blocks();
/// b.kc = 64;
/// assert!(b.validate(k).is_ok());
/// let b = k.blocks().with_spec("kc=32,mc=10").unwrap();
/// assert_eq!((b.kc, b.mc), (32, 12)); // mc rounded up to a multiple of mr = 4
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmBlocks {
    /// Rows of the micro-tile (broadcast side, from packed A); fixed by the kernel.
    pub mr: usize,
    /// Columns of the micro-tile (vector side, from packed B); fixed by the kernel.
    pub nr: usize,
    /// Largest depth of one packed block (`kc` in the spec).
    pub kc: usize,
    /// Rows of C per task, a multiple of `mr` (`mc`).
    pub mc: usize,
    /// Bytes of L2 for the packed B chunk of one task, which sets the columns per task
    /// (`l2`).
    pub l2_budget: usize,
    /// Columns of one packed B block, a multiple of `nr` (`nc`).
    pub nc: usize,
}

/// AVX-512F on Zen 5: 8 x 48 tile (24 zmm accumulators, 3 vectors of B per row).
pub(crate) const AVX512: GemmBlocks = GemmBlocks {
    mr: 8,
    nr: 48,
    kc: 512,
    mc: 128,
    l2_budget: 512 * 1024,
    nc: 5760,
};

/// AVX2 + FMA on Zen 5: 6 x 16 tile (12 ymm accumulators, 2 vectors of B per row).
pub(crate) const AVX2: GemmBlocks = GemmBlocks {
    mr: 6,
    nr: 16,
    kc: 256,
    mc: 120,
    l2_budget: 512 * 1024,
    nc: 5760,
};

/// Portable on Zen 5: 4 x 8 tile of plain `f32` arithmetic the compiler can vectorise.
pub(crate) const FALLBACK: GemmBlocks = GemmBlocks {
    mr: 4,
    nr: 8,
    kc: 256,
    mc: 128,
    l2_budget: 512 * 1024,
    nc: 4096,
};

/// The smallest L1d the measured `KC` was measured to suit (Zen 4's; Zen 5 and the
/// Intel Xeon have 48 KiB).
const MIN_L1D: usize = 32 * 1024;

/// The measured reference sizes of `kernel`.
pub(crate) fn reference(kernel: Kernel) -> GemmBlocks {
    match kernel {
        Kernel::Avx512 => AVX512,
        Kernel::Avx2 => AVX2,
        Kernel::Fallback => FALLBACK,
    }
}

/// The L2 bytes for one task's B chunk on a core with `l2` bytes of L2: half of it
/// (512 KiB on Zen 5, as measured there), at least 64 KiB.
///
/// On this session's Intel Xeon (Emerald Rapids, L2 2 MiB) that is 1 MiB. Against the
/// Zen 5 value forced with `l2=524288` (`examples/gemm_tune`, interleaved, best of 7 to
/// 11 rounds, AVX-512, one thread), it measured the same within the noise of a shared
/// machine: 2048^3 149.6 / 149.4, 152.3 / 153.5 and 147.2 / 144.5 GFLOP/s, 1024^3
/// 152.6 / 151.1, 153.7 / 153.0 and 148.6 / 149.1 (1 MiB / 512 KiB); `examples/bench`
/// medians agree (2048^3: 146.6-149.9 against 143.3-149.2). On two threads, with the
/// other core quiet: 2048^3 299.2 / 299.1 and 297.0 / 293.3, 1024^3 291.3 / 289.8 and
/// 296.5 / 289.6 (best). Neither is faster, so the
/// rule that gives Zen 5's value from Zen 5's cache is kept rather than a special case.
pub(crate) fn l2_budget(l2: usize) -> usize {
    (l2 / 2).max(64 * 1024)
}

/// The block sizes of `kernel`'s loop nest on a core with the given cache sizes (bytes):
/// the reference constants scaled as the [module](self) docs say. Returns the reference
/// unchanged for Zen 5's L1d 48 KiB, L2 1 MiB, L3 32 MiB.
pub(crate) fn derive(kernel: Kernel, l1d: usize, l2: usize, l3: usize) -> GemmBlocks {
    let r = reference(kernel);
    let kc = if l1d >= MIN_L1D {
        r.kc
    } else {
        (r.kc * l1d / MIN_L1D / 8 * 8).max(32)
    };
    let nc_l3 = (l3 / 2) / (kc * size_of::<f32>()) / r.nr * r.nr;
    GemmBlocks {
        kc,
        l2_budget: l2_budget(l2),
        nc: nc_l3.clamp(r.nr, r.nc),
        ..r
    }
}

/// The sizes `kernel` runs with: derived from [`CpuInfo::get`], then
/// `CONVINIT_GEMM_BLOCKS` applied (both read once).
pub(crate) fn effective(kernel: Kernel) -> GemmBlocks {
    static EFFECTIVE: OnceLock<[GemmBlocks; 3]> = OnceLock::new();
    let all = EFFECTIVE.get_or_init(|| {
        let spec = env_spec();
        Kernel::ALL.map(|k| {
            let d = detected(k);
            match spec {
                Some(s) => s.apply(d).unwrap_or(d),
                None => d,
            }
        })
    });
    all[kernel as usize]
}

/// The sizes derived from this CPU's caches, without `CONVINIT_GEMM_BLOCKS`.
pub(crate) fn detected(kernel: Kernel) -> GemmBlocks {
    let cpu = CpuInfo::get();
    derive(kernel, cpu.l1d_bytes, cpu.l2_bytes, cpu.l3_bytes)
}

/// `CONVINIT_GEMM_BLOCKS`, parsed; `None` when unset, empty or invalid (with a warning
/// on standard error, once, saying why it is ignored).
fn env_spec() -> Option<BlockSpec> {
    let v = std::env::var("CONVINIT_GEMM_BLOCKS").ok()?;
    if v.trim().is_empty() {
        return None;
    }
    match BlockSpec::parse(&v) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("convinit: ignoring CONVINIT_GEMM_BLOCKS={v:?}: {e}");
            None
        }
    }
}

/// The default micro-kernel of a micro-architecture, before checking that the CPU
/// supports it ([`Kernel::selected`] takes the next supported one below it).
///
/// * Zen 5, Intel with AVX-512: `avx512`. Full 512-bit FMA units, so twice the flops
///   per instruction of AVX2. Measured on this session's Intel Xeon (Emerald Rapids,
///   `examples/gemm_tune --kernel`, one thread, quiet machine): 2048^3 at 153.5 against
///   80.1 GFLOP/s for `avx2`, 1024^3 at 151.7 against 80.3, so 1.9x; on two threads
///   297.0 against 155.9. Zen 5 has the same two 512-bit FMA pipes per core.
/// * Zen 4: `avx512` as well. Zen 4 has two 256-bit FMA pipes and runs a 512-bit FMA as
///   two halves, so both kernels have the same peak, 32 flops per cycle per core, but
///   the 8 x 48 AVX-512 tile needs 3 vector loads and 8 broadcasts per 24 zmm FMAs (48
///   256-bit halves) against the 6 x 16 AVX2 tile's 2 loads and 6 broadcasts per 12 ymm
///   FMAs, and moves fewer bytes of packed A and B per flop. Measured on a Zen 4 (EPYC
///   family 25 model 17, `examples/gemm_tune --kernel`, medians of 7 to 9 interleaved
///   rounds, each kernel with its own `KC`): 1 thread 2048^3 109.4 against 105.7
///   GFLOP/s for `avx2`, 1024^3 105.5 against 103.3; 2 threads 2048^3 217.4 against
///   201.4, 1024^3 209.4 against 194.0: 3-8% faster. The FMA-loop peak there is 116
///   GFLOP/s per core, so `avx512` runs at 0.94 of it.
/// * Other AVX2 + FMA CPUs: `avx2`; anything else: the portable kernel.
pub(crate) fn preferred_kernel(microarch: Microarch) -> Kernel {
    match microarch {
        Microarch::Zen4 | Microarch::Zen5 | Microarch::IntelAvx512 => Kernel::Avx512,
        Microarch::Avx2 => Kernel::Avx2,
        _ => Kernel::Fallback,
    }
}

/// A parsed block spec: `key=value` pairs separated by commas, keys `kc`, `mc`, `l2` and
/// `nc`, values positive integers (`_` allowed as a digit separator); any subset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockSpec {
    kc: Option<usize>,
    mc: Option<usize>,
    l2: Option<usize>,
    nc: Option<usize>,
}

impl BlockSpec {
    /// Parses a spec such as `kc=256,mc=96,l2=1048576,nc=4096`. Whitespace around keys
    /// and values is ignored, as is an empty item (a trailing comma).
    ///
    /// # Errors
    /// A message when an item has no `=`, names an unknown key or one already given,
    /// or its value is not a positive integer.
    pub(crate) fn parse(s: &str) -> std::result::Result<BlockSpec, String> {
        let mut spec = BlockSpec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            let n: usize = value
                .replace('_', "")
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{key}: {value:?} is not a positive integer"))?;
            let slot = match key.to_ascii_lowercase().as_str() {
                "kc" => &mut spec.kc,
                "mc" => &mut spec.mc,
                "l2" | "l2_budget" => &mut spec.l2,
                "nc" => &mut spec.nc,
                _ => return Err(format!("unknown key {key:?} (kc, mc, l2, nc)")),
            };
            if slot.replace(n).is_some() {
                return Err(format!("{key} given twice"));
            }
        }
        Ok(spec)
    }

    /// `b` with the spec's sizes, `mc` rounded up to a multiple of `b.mr` and `nc` to a
    /// multiple of `b.nr` (one spec serves kernels of different tiles).
    ///
    /// # Errors
    /// A message when the rounding overflows.
    pub(crate) fn apply(&self, b: GemmBlocks) -> std::result::Result<GemmBlocks, String> {
        let round = |x: usize, m: usize, what: &str| {
            x.checked_next_multiple_of(m)
                .ok_or_else(|| format!("{what} = {x} is too large"))
        };
        Ok(GemmBlocks {
            kc: self.kc.unwrap_or(b.kc),
            mc: round(self.mc.unwrap_or(b.mc), b.mr, "mc")?,
            l2_budget: self.l2.unwrap_or(b.l2_budget),
            nc: round(self.nc.unwrap_or(b.nc), b.nr, "nc")?,
            ..b
        })
    }
}

impl GemmBlocks {
    /// These sizes with a spec in the syntax of `CONVINIT_GEMM_BLOCKS` applied:
    /// `key=value` pairs separated by commas, keys `kc`, `mc`, `l2` (the L2 budget in
    /// bytes) and `nc`, any subset, values positive integers. `mc` is rounded up to a
    /// multiple of `mr` and `nc` to a multiple of `nr`, so the result passes
    /// [`GemmBlocks::validate`] for the kernel these sizes came from.
    ///
    /// # Errors
    /// [`Error::Config`] when an item is not `key=value`, a key is unknown or repeated,
    /// or a value is not a positive integer.
    pub fn with_spec(self, spec: &str) -> Result<GemmBlocks> {
        BlockSpec::parse(spec)
            .and_then(|s| s.apply(self))
            .map_err(|e| Error::config("gemm blocks", e))
    }

    /// Checks the sizes for `kernel`: `mr` and `nr` are the kernel's tile, `kc`, `mc`,
    /// `nc` and `l2_budget` are positive, `mc` is a multiple of `mr` (the packed A block
    /// of a task starts on a micro-panel) and `nc` a multiple of `nr` (the packed B
    /// blocks hold whole micro-panels).
    ///
    /// # Errors
    /// [`Error::Config`] saying which rule fails.
    pub fn validate(&self, kernel: Kernel) -> Result<()> {
        let tile = reference(kernel);
        let fail = |m: String| Err(Error::config("gemm blocks", m));
        if (self.mr, self.nr) != (tile.mr, tile.nr) {
            return fail(format!(
                "the {} kernel's tile is {} x {}, not {} x {}",
                kernel.name(),
                tile.mr,
                tile.nr,
                self.mr,
                self.nr
            ));
        }
        if self.kc == 0 || self.mc == 0 || self.nc == 0 || self.l2_budget == 0 {
            return fail(format!(
                "kc, mc, nc and l2_budget must be positive: {self:?}"
            ));
        }
        if !self.mc.is_multiple_of(self.mr) {
            return fail(format!(
                "mc = {} is not a multiple of mr = {}",
                self.mc, self.mr
            ));
        }
        if !self.nc.is_multiple_of(self.nr) {
            return fail(format!(
                "nc = {} is not a multiple of nr = {}",
                self.nc, self.nr
            ));
        }
        Ok(())
    }

    /// The depth block for a product of depth `k`: equal blocks of at most `kc`.
    pub(crate) fn kc_for(&self, k: usize) -> usize {
        k.div_ceil(k.div_ceil(self.kc).max(1)).max(1)
    }

    /// Columns of C per task for depth block `kc`: as many `nr` panels as fit the L2
    /// budget, at least one, at most `nc`.
    pub(crate) fn nb(&self, kc: usize) -> usize {
        let panels = self.l2_budget / kc.max(1).saturating_mul(self.nr * size_of::<f32>());
        (panels.max(1) * self.nr).min(self.nc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn zen5_caches_give_the_measured_constants() {
        for k in Kernel::ALL {
            assert_eq!(derive(k, 48 * 1024, MIB, 32 * MIB), reference(k), "{k:?}");
        }
    }

    #[test]
    fn zen4_keeps_kc_and_a_smaller_l1d_shrinks_it() {
        let b = derive(Kernel::Avx512, 32 * 1024, MIB, 32 * MIB);
        assert_eq!((b.kc, b.l2_budget, b.nc), (512, 512 * 1024, 5760));
        assert_eq!(derive(Kernel::Avx2, 32 * 1024, MIB, 32 * MIB).kc, 256);
        // A 16 KiB L1d: half the depth.
        assert_eq!(derive(Kernel::Avx512, 16 * 1024, MIB, 32 * MIB).kc, 256);
    }

    #[test]
    fn small_l3_shrinks_nc() {
        // An AVX2 laptop: L1d 48 KiB, L2 1.25 MiB, L3 8 MiB: 4 MiB / 1 KiB = 4096 columns.
        let b = derive(Kernel::Avx2, 48 * 1024, 1280 * 1024, 8 * MIB);
        assert_eq!((b.kc, b.l2_budget, b.nc), (256, 640 * 1024, 4096));
        assert!(b.validate(Kernel::Avx2).is_ok());
        // Degenerate caches still give valid sizes.
        for k in Kernel::ALL {
            assert!(derive(k, 1, 1, 1).validate(k).is_ok(), "{k:?}");
        }
    }

    #[test]
    fn spec_parsing() {
        let s = BlockSpec::parse(" kc=256, mc = 96 ,l2=1_048_576,nc=4096,").unwrap();
        assert_eq!(
            s,
            BlockSpec {
                kc: Some(256),
                mc: Some(96),
                l2: Some(MIB),
                nc: Some(4096)
            }
        );
        assert_eq!(BlockSpec::parse("").unwrap(), BlockSpec::default());
        assert_eq!(BlockSpec::parse("KC=7").unwrap().kc, Some(7));
        for bad in ["kc", "kc=0", "kc=-1", "kc=x", "mr=8", "kc=1,kc=2", "nc=1e3"] {
            assert!(BlockSpec::parse(bad).is_err(), "{bad}");
        }
        let b = BlockSpec::parse("mc=10,nc=50")
            .unwrap()
            .apply(AVX512)
            .unwrap();
        assert_eq!((b.mc, b.nc, b.kc), (16, 96, 512));
        assert!(
            BlockSpec::parse(&format!("mc={}", usize::MAX))
                .unwrap()
                .apply(AVX2)
                .is_err()
        );
    }
}
