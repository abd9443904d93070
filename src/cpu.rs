//! What the GEMM needs to know about the CPU: vendor, family and model, the vector
//! extensions, a coarse micro-architecture class and the data cache sizes.
//!
//! [`CpuInfo::get`] reads it once per process with the `cpuid` instruction (x86-64), and
//! [`crate::gemm`] derives its block sizes and default micro-kernel from it. Where a
//! figure cannot be read (another architecture, a hypervisor that hides a leaf), the
//! cache sizes fall back to [`CpuInfo::DEFAULT_L1D`], [`CpuInfo::DEFAULT_L2`] and
//! [`CpuInfo::DEFAULT_L3`], the sizes of the machine the GEMM was first tuned on, so the
//! GEMM then behaves as it did before it read the caches.
//!
//! # Examples
//! ```
//! use convinit::cpu::{CpuInfo, Microarch};
//! let cpu = CpuInfo::get();
//! println!("{} ({:?}): L1d {} B, L2 {} B, L3 {} B", cpu.brand, cpu.microarch,
//!          cpu.l1d_bytes, cpu.l2_bytes, cpu.l3_bytes);
//! assert!(cpu.l1d_bytes > 0 && cpu.l2_bytes > 0 && cpu.l3_bytes > 0);
//! if cpu.microarch == Microarch::Zen4 {
//!     assert!(cpu.avx512f);
//! }
//! ```

use std::sync::OnceLock;

/// A coarse micro-architecture class: the distinctions the GEMM's choices depend on.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Microarch {
    /// AMD Zen 4 (family 0x19 with AVX-512F): AVX-512 on a 256-bit datapath, each
    /// 512-bit operation issued as two halves.
    Zen4,
    /// AMD Zen 5 (family 0x1A with AVX-512F): AVX-512 on a full 512-bit datapath on the
    /// desktop and server parts. The mobile parts (Strix Point) share the family but
    /// issue 512-bit operations as two halves, like Zen 4; the class does not tell them
    /// apart.
    Zen5,
    /// An Intel core with AVX-512F (Skylake-SP and later server cores).
    IntelAvx512,
    /// Any other x86-64 with AVX2 and FMA but no AVX-512F (laptops, older servers,
    /// Zen 1 to 3).
    Avx2,
    /// Anything else: x86-64 without AVX2 + FMA, or another architecture.
    Other,
}

impl Microarch {
    /// A short lower-case name, as printed by the benchmarks (`"zen4"`, `"zen5"`,
    /// `"intel-avx512"`, `"avx2"`, `"other"`).
    pub fn name(self) -> &'static str {
        match self {
            Microarch::Zen4 => "zen4",
            Microarch::Zen5 => "zen5",
            Microarch::IntelAvx512 => "intel-avx512",
            Microarch::Avx2 => "avx2",
            Microarch::Other => "other",
        }
    }
}

/// The CPU the process runs on, as far as the GEMM cares. See the [module](self) docs.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// The 12-character vendor string (`"GenuineIntel"`, `"AuthenticAMD"`), empty when
    /// unknown.
    pub vendor: String,
    /// The display family (base family plus extended family), 0 when unknown.
    pub family: u32,
    /// The display model (with the extended model where the vendor defines it), 0 when
    /// unknown.
    pub model: u32,
    /// The processor brand string, trimmed; empty when unknown.
    pub brand: String,
    /// Whether AVX-512F is usable (the CPU has it and the OS saves the registers).
    pub avx512f: bool,
    /// Whether AVX2 and FMA are both usable.
    pub avx2_fma: bool,
    /// The micro-architecture class.
    pub microarch: Microarch,
    /// Level-1 data cache of one core, in bytes.
    pub l1d_bytes: usize,
    /// Level-2 cache of one core, in bytes.
    pub l2_bytes: usize,
    /// Level-3 cache as one core sees it (one CCD's on AMD), in bytes.
    pub l3_bytes: usize,
    /// Whether the cache sizes were read from the CPU (`false`: the defaults).
    pub caches_detected: bool,
}

impl CpuInfo {
    /// L1d assumed when the CPU does not say: 48 KiB, a Zen 5 or Intel Golden Cove core.
    pub const DEFAULT_L1D: usize = 48 * 1024;
    /// L2 assumed when the CPU does not say: 1 MiB, a Zen 4 or Zen 5 core.
    pub const DEFAULT_L2: usize = 1024 * 1024;
    /// L3 assumed when the CPU does not say: 32 MiB, one Zen 4 or Zen 5 CCD.
    pub const DEFAULT_L3: usize = 32 * 1024 * 1024;

    /// The CPU this process runs on, detected on the first call.
    pub fn get() -> &'static CpuInfo {
        static INFO: OnceLock<CpuInfo> = OnceLock::new();
        INFO.get_or_init(CpuInfo::detect)
    }

    /// Reads the CPU (not cached; [`CpuInfo::get`] keeps the first reading).
    fn detect() -> CpuInfo {
        #[cfg(target_arch = "x86_64")]
        {
            x86::detect()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuInfo {
                vendor: String::new(),
                family: 0,
                model: 0,
                brand: String::new(),
                avx512f: false,
                avx2_fma: false,
                microarch: Microarch::Other,
                l1d_bytes: CpuInfo::DEFAULT_L1D,
                l2_bytes: CpuInfo::DEFAULT_L2,
                l3_bytes: CpuInfo::DEFAULT_L3,
                caches_detected: false,
            }
        }
    }
}

/// The class of a CPU from its vendor, family and features.
fn classify(vendor: &str, family: u32, avx512f: bool, avx2_fma: bool) -> Microarch {
    match (vendor, family) {
        ("AuthenticAMD", 0x1A) if avx512f => Microarch::Zen5,
        ("AuthenticAMD", 0x19) if avx512f => Microarch::Zen4,
        ("GenuineIntel", _) if avx512f => Microarch::IntelAvx512,
        _ if avx2_fma => Microarch::Avx2,
        _ => Microarch::Other,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CpuInfo, classify};

    /// The four registers of one `cpuid` leaf.
    #[derive(Clone, Copy)]
    struct Regs {
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    }

    /// `cpuid` with `leaf` and `sub`: the crate's one call of the instruction.
    fn cpuid(leaf: u32, sub: u32) -> Regs {
        // The intrinsic is a safe function in current Rust; it was `unsafe` in older
        // releases within this crate's `rust-version`, hence the allowed block.
        // SAFETY: `cpuid` exists on every x86-64 CPU, has no memory operands and only
        // writes the four returned registers; an unsupported leaf returns data of the
        // highest basic leaf, which callers avoid by checking the maximum leaf first.
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid_count(leaf, sub) };
        Regs {
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
        }
    }

    /// Appends the 4 bytes of `x` (little-endian, as `cpuid` packs strings) to `s`.
    fn push_str(s: &mut Vec<u8>, x: u32) {
        s.extend_from_slice(&x.to_le_bytes());
    }

    pub(super) fn detect() -> CpuInfo {
        let avx512f = std::is_x86_feature_detected!("avx512f");
        let avx2_fma =
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let l0 = cpuid(0, 0);
        let max_leaf = l0.eax;
        let mut v = Vec::with_capacity(12);
        for x in [l0.ebx, l0.edx, l0.ecx] {
            push_str(&mut v, x);
        }
        let vendor = String::from_utf8_lossy(&v).trim_matches('\0').to_string();
        let (family, model) = if max_leaf >= 1 {
            let eax = cpuid(1, 0).eax;
            let base_family = (eax >> 8) & 0xF;
            let base_model = (eax >> 4) & 0xF;
            let family = if base_family == 0xF {
                base_family + ((eax >> 20) & 0xFF)
            } else {
                base_family
            };
            let model = if base_family == 0x6 || base_family == 0xF {
                base_model | (((eax >> 16) & 0xF) << 4)
            } else {
                base_model
            };
            (family, model)
        } else {
            (0, 0)
        };
        let max_ext = cpuid(0x8000_0000, 0).eax;
        let brand = if max_ext >= 0x8000_0004 {
            let mut b = Vec::with_capacity(48);
            for leaf in 0x8000_0002..=0x8000_0004 {
                let r = cpuid(leaf, 0);
                for x in [r.eax, r.ebx, r.ecx, r.edx] {
                    push_str(&mut b, x);
                }
            }
            String::from_utf8_lossy(&b)
                .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string()
        } else {
            String::new()
        };
        let amd = vendor == "AuthenticAMD" || vendor == "HygonGenuine";
        // Deterministic cache parameters: leaf 4 (Intel) or 0x8000001D (AMD, when the
        // topology extensions bit, 0x80000001 ECX[22], says it is there).
        let leaf = if amd {
            (max_ext >= 0x8000_001D && (cpuid(0x8000_0001, 0).ecx >> 22) & 1 == 1)
                .then_some(0x8000_001D)
        } else {
            (max_leaf >= 4).then_some(4)
        };
        let mut caches = leaf.map(deterministic_caches).unwrap_or_default();
        // Older AMD parts: the legacy size leaves.
        if amd && caches == Caches::default() && max_ext >= 0x8000_0006 {
            let l1 = cpuid(0x8000_0005, 0);
            let l2 = cpuid(0x8000_0006, 0);
            caches = Caches {
                l1d: (l1.ecx >> 24) as usize * 1024,
                l2: (l2.ecx >> 16) as usize * 1024,
                l3: (l2.edx >> 18) as usize * 512 * 1024,
            };
        }
        let detected = caches.l1d > 0 && caches.l2 > 0;
        let or = |x: usize, d: usize| if x > 0 { x } else { d };
        CpuInfo {
            microarch: classify(&vendor, family, avx512f, avx2_fma),
            vendor,
            family,
            model,
            brand,
            avx512f,
            avx2_fma,
            l1d_bytes: or(caches.l1d, CpuInfo::DEFAULT_L1D),
            l2_bytes: or(caches.l2, CpuInfo::DEFAULT_L2),
            l3_bytes: or(caches.l3, CpuInfo::DEFAULT_L3),
            caches_detected: detected,
        }
    }

    /// Data / unified cache sizes by level, 0 when not reported.
    #[derive(Clone, Copy, Default, PartialEq, Eq)]
    struct Caches {
        l1d: usize,
        l2: usize,
        l3: usize,
    }

    /// Walks the sub-leaves of a deterministic cache parameters leaf (4 or 0x8000001D,
    /// which share one layout) until the null entry.
    fn deterministic_caches(leaf: u32) -> Caches {
        let mut c = Caches::default();
        for sub in 0..16 {
            let r = cpuid(leaf, sub);
            let kind = r.eax & 0x1F; // 0 none, 1 data, 2 instruction, 3 unified
            if kind == 0 {
                break;
            }
            if kind == 2 {
                continue;
            }
            let level = (r.eax >> 5) & 0x7;
            let ways = ((r.ebx >> 22) & 0x3FF) as usize + 1;
            let partitions = ((r.ebx >> 12) & 0x3FF) as usize + 1;
            let line = (r.ebx & 0xFFF) as usize + 1;
            let sets = r.ecx as usize + 1;
            let size = ways * partitions * line * sets;
            match level {
                1 => c.l1d = size,
                2 => c.l2 = size,
                3 => c.l3 = size,
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(classify("AuthenticAMD", 0x19, true, true), Microarch::Zen4);
        // Zen 3 is family 0x19 too, without AVX-512.
        assert_eq!(classify("AuthenticAMD", 0x19, false, true), Microarch::Avx2);
        assert_eq!(classify("AuthenticAMD", 0x1A, true, true), Microarch::Zen5);
        assert_eq!(
            classify("GenuineIntel", 6, true, true),
            Microarch::IntelAvx512
        );
        assert_eq!(classify("GenuineIntel", 6, false, true), Microarch::Avx2);
        assert_eq!(classify("", 0, false, false), Microarch::Other);
    }
}
