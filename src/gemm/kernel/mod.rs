//! Micro-kernels and the macro-kernel that drives them: all the `unsafe` of the GEMM.
//!
//! One generic `#[inline(always)]` body ([`macro_body`], [`micro_body`]) is written
//! against the small [`Simd`] trait; each ISA implements the trait over its vector type
//! and adds a thin `#[target_feature]` wrapper, so the three kernels share one source:
//!
//! | kernel      | vector   | tile (MR x NR) | accumulators |
//! |-------------|----------|----------------|--------------|
//! | `avx512`    | `__m512` | 8 x 48         | 24 zmm       |
//! | `avx2`      | `__m256` | 6 x 16         | 12 ymm       |
//! | `fallback`  | `[f32;8]`| 4 x 8          | plain Rust   |
//!
//! On a Zen 4 the AVX-512 kernel's indirect GEMMs (the direct and phase conv paths)
//! also run 8 x 24 tiles of 256-bit vectors, the AVX2 vector operations compiled with
//! AVX-512VL (32 registers), where 512-bit vectors would run half empty
//! ([`Kernel::indirect_ldw`], `half_vectors`).
//!
//! The tile's `NR` side runs along the rows of C (C is made row-major by the loop nest
//! when it can be), so full tiles load and store C with unit stride. Edge tiles and C
//! with other strides go through a stack buffer holding the tile, so every element of C
//! sees exactly the same arithmetic wherever it sits.
//!
//! The kernel chosen for [`Kernel::selected`] is detected once at run time with
//! `is_x86_feature_detected!` and can be forced with `CONVINIT_GEMM_KERNEL`.

use std::sync::OnceLock;

use ndarray::{ArrayView2, ArrayViewMut2};

use super::archparam::{self, GemmBlocks};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod fallback;
mod indirect;

/// A micro-kernel implementation (instruction set) of the GEMM.
///
/// Every product runs on [`Kernel::selected`]; [`crate::gemm::sgemm_with_kernel`], a
/// conv plan's [`kernel`](crate::ops::ConvPlan::kernel) and
/// [`ConvAlgos::with_kernel`](crate::ops::ConvAlgos::with_kernel) run another one, so
/// one process can test and benchmark every instruction-set path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// AVX-512F, 512-bit FMA.
    Avx512,
    /// AVX2 with FMA, 256-bit.
    Avx2,
    /// Portable Rust, no target features.
    Fallback,
}

impl Kernel {
    /// All kernels, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Fallback];

    /// The name used by `CONVINIT_GEMM_KERNEL` and in benchmark names.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Fallback => "fallback",
        }
    }

    /// Parses a name as written by [`Kernel::name`].
    pub fn from_name(name: &str) -> Option<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the kernel (detected once).
    pub fn is_supported(self) -> bool {
        static DETECTED: OnceLock<[bool; 2]> = OnceLock::new();
        let [avx512, avx2] = *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                [
                    std::is_x86_feature_detected!("avx512f"),
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
                ]
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                [false, false]
            }
        });
        match self {
            Kernel::Avx512 => avx512,
            Kernel::Avx2 => avx2,
            Kernel::Fallback => true,
        }
    }

    /// The kernel `sgemm` uses: `CONVINIT_GEMM_KERNEL` (`avx512`, `avx2` or `fallback`)
    /// if set, else the default of this CPU's [`Microarch`](crate::cpu::Microarch)
    /// (`avx512` wherever AVX-512F is usable, Zen 4 included: see
    /// [the module docs](crate::gemm#default-kernel)). Read once per process; a
    /// requested kernel this CPU cannot run is replaced by the fastest supported one
    /// below it.
    pub fn selected() -> Kernel {
        static SELECTED: OnceLock<Kernel> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let wanted = std::env::var("CONVINIT_GEMM_KERNEL")
                .ok()
                .and_then(|v| Kernel::from_name(&v))
                .unwrap_or_else(|| {
                    archparam::preferred_kernel(crate::cpu::CpuInfo::get().microarch)
                });
            Kernel::ALL
                .into_iter()
                .skip_while(|&k| k != wanted)
                .find(|k| k.is_supported())
                .unwrap_or(Kernel::Fallback)
        })
    }

    /// Floats per vector of the kernel (the indirect kernel's channel granularity).
    pub(crate) fn lanes(self) -> usize {
        match self {
            Kernel::Avx512 => 16,
            Kernel::Avx2 | Kernel::Fallback => 8,
        }
    }

    /// Whether this kernel runs the conv paths' narrow rows on 256-bit vectors in this
    /// process: the AVX-512 kernel on a Zen 4 (where a 256-bit FMA costs half a
    /// 512-bit one), or as `CONVINIT_HALF_VECTORS=on|off` forces it (see
    /// [the module docs](crate::gemm#default-kernel)). For benchmark reports.
    pub fn half_vectors(self) -> bool {
        self == Kernel::Avx512 && half_vectors()
    }

    /// The row width of an [`indirect_gemm`] whose rows hold `channels` channels: a
    /// multiple of [`Kernel::lanes`], except that the AVX-512 kernel runs rows whose
    /// last 512-bit vector would be at most half used (1 to 8 channels past a multiple
    /// of 16) on 256-bit vectors (a multiple of 8) where [`half_vectors`] says so. At
    /// least one vector.
    pub(crate) fn indirect_ldw(self, channels: usize) -> usize {
        let half = (1..=8).contains(&(channels % 16)) && self.half_vectors();
        let lanes = if half { 8 } else { self.lanes() };
        channels.next_multiple_of(lanes).max(lanes)
    }

    /// Rows (positions) per register tile of an [`indirect_gemm`] on rows of `ldw` floats
    /// (from [`Kernel::indirect_ldw`]): a call's rows run in tiles of this many, the last
    /// one partial unless the caller makes its rows a multiple of it.
    pub(crate) fn indirect_tile_rows(self, ldw: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if half_rows(self, ldw) => avx512::indirect_tile_rows(ldw / 8),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::indirect_tile_rows(ldw / 16),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::indirect_tile_rows(ldw / 8),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 | Kernel::Avx2 => unreachable!("not supported on this arch"),
            Kernel::Fallback => fallback::indirect_tile_rows(ldw / 8),
        }
    }

    /// Columns of one register tile (`NR`): the B-indirect kernel's reads of a row run
    /// up to a multiple of this.
    pub(crate) fn tile_cols(self) -> usize {
        self.tile().1
    }

    /// The block sizes this kernel's loop nest runs with in [`crate::gemm::sgemm`]: the
    /// sizes derived from this CPU's caches ([`Kernel::detected_blocks`]) with
    /// `CONVINIT_GEMM_BLOCKS` applied, if set and valid (read once per process).
    pub fn blocks(self) -> GemmBlocks {
        archparam::effective(self)
    }

    /// The block sizes derived from this CPU's caches ([`crate::cpu::CpuInfo`]) alone,
    /// ignoring `CONVINIT_GEMM_BLOCKS`.
    pub fn detected_blocks(self) -> GemmBlocks {
        archparam::detected(self)
    }

    /// The micro-tile `(MR, NR)` of this kernel.
    pub(crate) fn tile(self) -> (usize, usize) {
        let r = archparam::reference(self);
        (r.mr, r.nr)
    }
}

/// Largest `MR * NR` of any kernel: the size of the stack buffer for edge tiles.
const MAX_TILE: usize = 512;

/// The vector operations the generic kernel body needs.
///
/// # Safety
/// Implementations use instructions of one ISA; callers must only call the methods from
/// code compiled (inlined) under that ISA's `#[target_feature]` on a CPU that has it.
pub(crate) unsafe trait Simd {
    /// A vector of `LANES` f32.
    type V: Copy;
    /// Number of f32 in [`Simd::V`].
    const LANES: usize;
    /// All zeros.
    unsafe fn zero() -> Self::V;
    /// `x` in every lane.
    unsafe fn splat(x: f32) -> Self::V;
    /// `LANES` f32 from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self::V;
    /// `LANES` f32 to `p` (unaligned).
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c` (fused where the ISA has FMA).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a * b`.
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// Hints that the cache line holding `p` is about to be used (may do nothing).
    unsafe fn prefetch(p: *const f32);
    /// Lanes `j < n` (`n <= LANES`) of `v` stored to `p + j * stride`: one output
    /// position's channels in a channel-major tensor (`stride` its plane), or the first
    /// `n` channels of a row (`stride` 1).
    ///
    /// This default spills `v` and stores float by float.
    ///
    /// # Safety
    /// `p + j * stride` is writable for `j < n`.
    #[inline(always)]
    unsafe fn store_strided(p: *mut f32, stride: usize, n: usize, v: Self::V) {
        // SAFETY: the caller's contract, passed on.
        unsafe { store_lanes::<Self>(p, stride, n, v) }
    }
    /// Lanes `j < n` (`n <= LANES`) loaded from `p + j * stride`, the others zero: the
    /// inverse of [`Simd::store_strided`].
    ///
    /// This default loads float by float into a buffer.
    ///
    /// # Safety
    /// `p + j * stride` is readable for `j < n`.
    #[inline(always)]
    unsafe fn load_strided(p: *const f32, stride: usize, n: usize) -> Self::V {
        // SAFETY: the caller's contract, passed on.
        unsafe { load_lanes::<Self>(p, stride, n) }
    }
    /// The lanes of `v` whose bits are set in `keep` (below `LANES`), stored to
    /// consecutive floats from `dst`, lowest lane first.
    ///
    /// This default spills `v` and stores float by float.
    ///
    /// # Safety
    /// `dst` is valid for writes of `keep.count_ones()` f32.
    #[inline(always)]
    unsafe fn store_compressed(v: Self::V, keep: u32, dst: *mut f32) {
        // SAFETY: the spill buffer holds `LANES <= 16` floats; the writes are the
        // caller's.
        unsafe {
            let mut buf = [0.0f32; 16];
            Self::store(buf.as_mut_ptr(), v);
            let mut at = dst;
            for (j, &x) in buf.iter().enumerate().take(Self::LANES) {
                if keep >> j & 1 == 1 {
                    *at = x;
                    at = at.add(1);
                }
            }
        }
    }
}

/// [`Simd::store_strided`] float by float through a spill buffer: the trait's default,
/// and the ISAs' path for strides other than 1.
///
/// # Safety
/// As [`Simd::store_strided`]; the caller runs under `S`'s target features.
#[inline(always)]
pub(super) unsafe fn store_lanes<S: Simd + ?Sized>(p: *mut f32, stride: usize, n: usize, v: S::V) {
    // SAFETY: the spill buffer holds `LANES <= 16` floats; the writes are the caller's.
    unsafe {
        let mut buf = [0.0f32; 16];
        S::store(buf.as_mut_ptr(), v);
        for (j, &x) in buf.iter().enumerate().take(n.min(S::LANES)) {
            *p.add(j * stride) = x;
        }
    }
}

/// [`Simd::load_strided`] float by float into a buffer: the trait's default, and the
/// ISAs' path for strides other than 1.
///
/// # Safety
/// As [`Simd::load_strided`]; the caller runs under `S`'s target features.
#[inline(always)]
pub(super) unsafe fn load_lanes<S: Simd + ?Sized>(p: *const f32, stride: usize, n: usize) -> S::V {
    // SAFETY: the buffer holds `LANES <= 16` floats; the reads are the caller's.
    unsafe {
        let mut buf = [0.0f32; 16];
        for (j, x) in buf.iter_mut().enumerate().take(n.min(S::LANES)) {
            *x = *p.add(j * stride);
        }
        S::load(buf.as_ptr())
    }
}

/// Where a macro-kernel reads the B micro-panels of its columns.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BPanels<'a> {
    /// `ceil(n / NR)` packed micro-panels (`kc` steps of `NR` values), zero-padded.
    Packed(&'a [f32]),
    /// B itself (`kc x n`, unit column stride), read in place for the full panels; the
    /// last, partial panel (if `n % NR != 0`) packed in `edge`. Saves the copy of B when
    /// each panel is used only once or twice (few rows of C).
    Direct {
        /// The `kc x n` block of B.
        b: ArrayView2<'a, f32>,
        /// The packed last panel (`kc * NR` values), unused when `n % NR == 0`.
        edge: &'a [f32],
    },
}

/// Arguments of one macro-kernel call: an `m x n` block of C, the packed A panels for its
/// rows and the B panels for its columns, all of depth `kc`.
#[derive(Clone, Copy)]
pub(crate) struct MacroArgs {
    m: usize,
    n: usize,
    kc: usize,
    a: *const f32,
    /// Packed panels, or B itself when `direct`.
    b: *const f32,
    /// B is read in place with row stride `rsb` for full panels, `b_edge` for the last.
    direct: bool,
    rsb: isize,
    b_edge: *const f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
    alpha: f32,
    beta: f32,
}

/// `C = alpha * A * B + beta * C` for one `MR x NR` tile whose rows are contiguous.
///
/// Accumulates over `k` in increasing order, then updates C once. With `beta == 0`, C is
/// written without being read.
///
/// # Safety
/// `a` holds `k * MR` readable f32; `b + p * rsb` starts `NR = NV * S::LANES` readable
/// f32 for `p < k`; for `i < MR`, `c + i * rsc` starts `NR` writable (and, unless
/// `beta == 0`, readable) contiguous f32; the caller runs under `S`'s target features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_body<S: Simd, const MR: usize, const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    rsb: isize,
    c: *mut f32,
    rsc: isize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: the caller guarantees the panel lengths, the tile and the ISA (see above);
    // every pointer below stays inside those ranges.
    unsafe {
        // Start pulling the C tile in now; it is needed after the k loop.
        for i in 0..MR {
            let ci = c.offset(i as isize * rsc);
            for v in 0..NV {
                S::prefetch(ci.add(v * S::LANES));
            }
        }
        let mut acc = [[S::zero(); NV]; MR];
        let mut a = a;
        let mut b = b;
        for _ in 0..k {
            let mut bv = [S::zero(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = S::load(b.add(v * S::LANES));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = S::splat(*a.add(i));
                for (x, bvv) in row.iter_mut().zip(bv) {
                    *x = S::fma(ai, bvv, *x);
                }
            }
            a = a.add(MR);
            b = b.offset(rsb);
        }
        let alpha_v = S::splat(alpha);
        if beta == 0.0 {
            for (i, row) in acc.iter().enumerate() {
                let ci = c.offset(i as isize * rsc);
                for (v, &x) in row.iter().enumerate() {
                    S::store(ci.add(v * S::LANES), S::mul(alpha_v, x));
                }
            }
        } else {
            let beta_v = S::splat(beta);
            for (i, row) in acc.iter().enumerate() {
                let ci = c.offset(i as isize * rsc);
                for (v, &x) in row.iter().enumerate() {
                    let p = ci.add(v * S::LANES);
                    S::store(p, S::fma(alpha_v, x, S::mul(beta_v, S::load(p))));
                }
            }
        }
    }
}

/// All tiles of one macro block: for each A micro-panel (kept in L1), every B micro-panel.
///
/// # Safety
/// `args` describes valid memory: `a` holds `ceil(m / MR) * MR * kc` f32, `b` holds
/// `ceil(n / NR) * NR * kc` f32, and `c + i * rsc + j * csc` is a valid, exclusively
/// borrowed f32 for `i < m, j < n`; the caller runs under `S`'s target features.
#[inline(always)]
unsafe fn macro_body<S: Simd, const MR: usize, const NV: usize>(args: &MacroArgs) {
    let nr = NV * S::LANES;
    let MacroArgs {
        m,
        n,
        kc,
        a,
        b,
        direct,
        rsb,
        b_edge,
        c,
        rsc,
        csc,
        alpha,
        beta,
    } = *args;
    // Edge panels use 1 or 2 vectors, full ones NV: NV must be at most 3.
    debug_assert!(MR * nr <= MAX_TILE && NV <= 3);
    // SAFETY: tile offsets stay below (m, n) and panel offsets below the panel counts,
    // as the caller guarantees; the stack buffer is MAX_TILE >= MR * NR long.
    unsafe {
        // Edge tiles are computed here and copied out. Entries outside the valid part may
        // hold values of an earlier tile: they feed only padding lanes, never copied out.
        let mut buf = [0.0f32; MAX_TILE];
        for ip in 0..m.div_ceil(MR) {
            let a_panel = a.add(ip * MR * kc);
            let rows = MR.min(m - ip * MR);
            for jp in 0..n.div_ceil(nr) {
                let (b_panel, rsb) = if !direct {
                    (b.add(jp * nr * kc), nr as isize)
                } else if (jp + 1) * nr <= n {
                    (b.add(jp * nr), rsb)
                } else {
                    (b_edge, nr as isize)
                };
                let cols = nr.min(n - jp * nr);
                let c_tile = c.offset((ip * MR) as isize * rsc + (jp * nr) as isize * csc);
                // The last panel may be narrower: use only the vectors it needs.
                let nv = cols.div_ceil(S::LANES);
                let width = nv * S::LANES;
                let direct = rows == MR && cols == width && csc == 1;
                let (dst, rsd) = if direct {
                    (c_tile, rsc)
                } else {
                    if beta != 0.0 {
                        for i in 0..rows {
                            for j in 0..cols {
                                buf[i * width + j] =
                                    *c_tile.offset(i as isize * rsc + j as isize * csc);
                            }
                        }
                    }
                    (buf.as_mut_ptr(), width as isize)
                };
                match nv {
                    1 => micro_body::<S, MR, 1>(kc, a_panel, b_panel, rsb, dst, rsd, alpha, beta),
                    2 => micro_body::<S, MR, 2>(kc, a_panel, b_panel, rsb, dst, rsd, alpha, beta),
                    _ => micro_body::<S, MR, NV>(kc, a_panel, b_panel, rsb, dst, rsd, alpha, beta),
                }
                if !direct {
                    for i in 0..rows {
                        for j in 0..cols {
                            *c_tile.offset(i as isize * rsc + j as isize * csc) =
                                buf[i * width + j];
                        }
                    }
                }
            }
        }
    }
}

/// `C = alpha * A * B + beta * C` for a block of C, from packed panels.
///
/// `a` holds `ceil(m / MR)` A micro-panels (`MR * kc` f32 each, `kc` steps of `MR`
/// values, zero-padded past the last row, as written by `pack`); `b` gives the B panels.
///
/// # Panics
/// If the panels are shorter than that or a direct B has the wrong shape or strides, or
/// the CPU cannot run `kernel` (callers check [`Kernel::is_supported`] first).
pub(crate) fn macro_kernel(
    kernel: Kernel,
    kc: usize,
    a: &[f32],
    b: BPanels<'_>,
    alpha: f32,
    beta: f32,
    mut c: ArrayViewMut2<'_, f32>,
) {
    let (m, n) = c.dim();
    if m == 0 || n == 0 {
        return;
    }
    let (mr, nr) = kernel.tile();
    assert!(a.len() >= m.div_ceil(mr) * mr * kc, "packed A too short");
    let (b, direct, rsb, b_edge) = match b {
        BPanels::Packed(p) => {
            assert!(p.len() >= n.div_ceil(nr) * nr * kc, "packed B too short");
            (p.as_ptr(), false, 0, p.as_ptr())
        }
        BPanels::Direct { b, edge } => {
            assert_eq!(b.dim(), (kc, n), "direct B has the wrong shape");
            assert!(
                n < nr || b.strides()[1] == 1,
                "direct B needs unit column stride"
            );
            assert!(
                n % nr == 0 || edge.len() >= nr * kc,
                "packed edge of B too short"
            );
            (b.as_ptr(), true, b.strides()[0], edge.as_ptr())
        }
    };
    assert!(
        kernel.is_supported(),
        "{kernel:?} not supported by this CPU"
    );
    let (rsc, csc) = (c.strides()[0], c.strides()[1]);
    let args = MacroArgs {
        m,
        n,
        kc,
        a: a.as_ptr(),
        b,
        direct,
        rsb,
        b_edge,
        c: c.as_mut_ptr(),
        rsc,
        csc,
        alpha,
        beta,
    };
    // SAFETY: the asserts above check the panel lengths, the direct B's shape and unit
    // column stride (so a full panel `b + p * rsb + jp * NR .. + NR`, p < kc, lies inside
    // its rows) and the CPU; `c` is an exclusive view, so `as_mut_ptr + i * rsc + j * csc`
    // is valid for every i < m, j < n (ndarray views keep that invariant, negative
    // strides included).
    unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::macro_kernel(&args),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::macro_kernel(&args),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 | Kernel::Avx2 => unreachable!("not supported on this arch"),
            Kernel::Fallback => fallback::macro_kernel(&args),
        }
    }
}

/// Whether the AVX-512 kernel runs narrow rows of [`indirect_gemm`] on 256-bit vectors
/// ([`Kernel::indirect_ldw`]): `CONVINIT_HALF_VECTORS=on` or `off` if set, else on a
/// Zen 4 only (another value is ignored with a warning on standard error). Needs
/// AVX-512VL (for 32 registers) besides AVX2 and FMA; off without. Read once per
/// process.
///
/// Zen 4 issues a 512-bit FMA as two 256-bit halves, one a cycle, and a 256-bit FMA
/// two a cycle: a 512-bit vector half empty costs a full vector's time there, twice
/// its 256-bit half's. Measured there (1 thread, off -> on, medians of 5-12
/// interleaved runs): the notebook net's layers at N = 1000, channels-last, the first
/// (1 -> 8 channels, 5x5, stride 2) forward 2.09 -> 1.46 ms, its backward 8.7 -> 7.8;
/// the second's backward (8 input channels) 4.39 -> 4.06; the last's forward (1
/// output channel) 0.39 -> 0.30; seed_l1 / seed_l2 backward 0.60 / 0.45 -> 0.53 /
/// 0.39. Zen 5's desktop and server parts and Intel's AVX-512 cores run a 512-bit
/// FMA at the rate of a 256-bit one, so a half-empty 512-bit vector costs them
/// nothing more; they keep 512 bits (not measured there).
pub(crate) fn half_vectors() -> bool {
    static HALF: OnceLock<bool> = OnceLock::new();
    *HALF.get_or_init(|| {
        let zen4 = || crate::cpu::CpuInfo::get().microarch == crate::cpu::Microarch::Zen4;
        let wanted = match std::env::var("CONVINIT_HALF_VECTORS").as_deref() {
            Ok("on") => true,
            Ok("off") => false,
            Ok("") | Err(_) => zen4(),
            Ok(v) => {
                // A mistyped setting still runs correctly, and says so.
                eprintln!("convinit: ignoring CONVINIT_HALF_VECTORS={v:?} (want on or off)");
                zen4()
            }
        };
        wanted && half_supported()
    })
}

/// Whether this CPU can run the AVX-512 kernel's 256-bit indirect tiles.
fn half_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Kernel::Avx512.is_supported()
            && Kernel::Avx2.is_supported()
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Offsets with an upper bound on them, found once when they are made, so that
/// [`indirect_gemm`]'s bounds checks are one comparison per call instead of a scan of
/// every offset (those scans, per call, were 1.9% of `train_mnist`'s profile). The
/// fields are private: a bound comes from [`Offsets::new`]'s scan, or is a larger set's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Offsets {
    v: Vec<usize>,
    /// Every element is at most this (0 when there are none).
    bound: usize,
}

impl Offsets {
    /// `v` and its largest element.
    pub(crate) fn new(v: Vec<usize>) -> Self {
        let bound = v.iter().max().copied().unwrap_or(0);
        Offsets { v, bound }
    }

    /// The offsets.
    pub(crate) fn as_slice(&self) -> &[usize] {
        &self.v
    }

    /// All of them, for [`indirect_gemm`].
    pub(crate) fn all(&self) -> OffsetsRef<'_> {
        self.prefix(self.v.len())
    }

    /// The first `n`: with this set's bound when they are all of them, else with their
    /// own (a scan of them: a shorter call, such as a batch's last, may read a shorter
    /// buffer).
    ///
    /// # Panics
    /// If there are fewer than `n`.
    pub(crate) fn prefix(&self, n: usize) -> OffsetsRef<'_> {
        let v = &self.v[..n];
        let bound = match n == self.v.len() {
            true => self.bound,
            false => v.iter().max().copied().unwrap_or(0),
        };
        OffsetsRef { v, bound }
    }
}

impl Offsets {
    /// Those at `range`, with their own bound (a scan of them).
    ///
    /// # Panics
    /// If the range runs past them.
    pub(crate) fn range(&self, range: std::ops::Range<usize>) -> OffsetsRef<'_> {
        let v = &self.v[range];
        let bound = v.iter().max().copied().unwrap_or(0);
        OffsetsRef { v, bound }
    }
}

/// Some offsets of an [`Offsets`] with its bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OffsetsRef<'a> {
    v: &'a [usize],
    bound: usize,
}

impl OffsetsRef<'_> {
    /// How many.
    pub(crate) fn len(&self) -> usize {
        self.v.len()
    }
}

/// Where [`indirect_gemm`] writes: `rows` rows of channels in `c`, packed (row `p`
/// at `p * ldw`) or each at its own offset, their channels consecutive or strided,
/// stored or added to what `c` holds, with an optional bias added to the complete sums.
pub(crate) struct IndirectOut<'a> {
    /// The output.
    pub c: &'a mut [f32],
    /// Row `p` at `c[row_starts[p]..]` instead of `c[p * ldw..]` (a channels-last
    /// input gradient's pixels of one class, say).
    pub row_starts: Option<OffsetsRef<'a>>,
    /// How each row's channels lie from its start.
    pub channels: Channels,
    /// `ldw` floats added to every row after its sum (`sum + b`, one rounding), as a
    /// conv's bias.
    pub bias: Option<&'a [f32]>,
    /// Add the sums to what the rows hold (`+=`) instead of storing them.
    pub accumulate: bool,
}

/// How the channels of one output row of [`indirect_gemm`] lie in its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channels {
    /// All `ldw` of them, consecutive (the padding lanes written too).
    All,
    /// Only the first `channels` (at most `ldw`), channel `o` at `o * stride` from the
    /// row's start: a channel-major output (`stride` its plane), or a channels-last one
    /// whose channels are not whole vectors (`stride` 1).
    Strided {
        /// How many channels are written.
        channels: usize,
        /// Floats between a row's consecutive channels.
        stride: usize,
    },
}

impl Channels {
    /// The first `channels` of rows of `ldw`, consecutive: [`Channels::All`] when they
    /// are all of them (whole vectors), else masked ([`Channels::Strided`], stride 1).
    pub(crate) fn first(channels: usize, ldw: usize) -> Self {
        match channels == ldw {
            true => Channels::All,
            false => Channels::Strided {
                channels,
                stride: 1,
            },
        }
    }

    /// Floats from a row's start to just past its last channel, for rows of `ldw`.
    fn span(self, ldw: usize) -> usize {
        match self {
            Channels::All => ldw,
            Channels::Strided { channels: 0, .. } => 0,
            Channels::Strided { channels, stride } => (channels - 1) * stride + 1,
        }
    }
}

impl<'a> IndirectOut<'a> {
    /// Rows packed in `c`, no bias.
    pub(crate) fn packed(c: &'a mut [f32], accumulate: bool) -> Self {
        IndirectOut {
            c,
            row_starts: None,
            channels: Channels::All,
            bias: None,
            accumulate,
        }
    }
}

/// Whether [`indirect_gemm`] runs rows of `ldw` floats on 256-bit vectors: the AVX-512
/// kernel's rows of odd multiples of 8.
fn half_rows(kernel: Kernel, ldw: usize) -> bool {
    kernel == Kernel::Avx512 && ldw.is_multiple_of(8) && !ldw.is_multiple_of(16)
}

/// The indirect GEMM of the direct conv path:
/// `out[p][o] = sum_k x[bases[p] + offs[k]] * w[k * ldw + o] (+ bias[o])` for every
/// position `p < bases.len()` and channel `o < ldw` (see the `indirect` module), row `p`
/// where `out` puts it; with `out.accumulate`, the sum is added to what the row holds
/// (`+=`).
///
/// `w` is `offs.len() x ldw` (the weights packed tap-major, channels padded with zeros
/// to `ldw`, a multiple of [`Kernel::lanes`]; for the AVX-512 kernel an odd multiple of
/// 8 runs on 256-bit vectors, see [`Kernel::indirect_ldw`]).
///
/// # Panics
/// If `ldw` is not a positive multiple of the kernel's vector width, `w`, the output
/// rows or the bias are too short, some `bases[p] + offs[k]` is outside `x`, or the CPU
/// cannot run `kernel`: all bugs of the caller, checked before any unsafe code runs.
pub(crate) fn indirect_gemm(
    kernel: Kernel,
    x: &[f32],
    bases: OffsetsRef<'_>,
    offs: OffsetsRef<'_>,
    w: &[f32],
    ldw: usize,
    out: IndirectOut<'_>,
) {
    indirect_gemm_rows(kernel, x, bases, offs, (w, None), ldw, out);
}

/// [`indirect_gemm`] with row `k` of the weights at `w[w_rows[k]..]` (`ldw` floats from
/// there) when `w_rows` is given, instead of at `w[k * ldw..]`: a subset of a conv's
/// packed taps, read in place (the clipped forward's classes).
///
/// # Panics
/// As [`indirect_gemm`], and if there are fewer row offsets than taps or a row runs
/// past `w`.
pub(crate) fn indirect_gemm_rows(
    kernel: Kernel,
    x: &[f32],
    bases: OffsetsRef<'_>,
    offs: OffsetsRef<'_>,
    (w, w_rows): (&[f32], Option<OffsetsRef<'_>>),
    ldw: usize,
    out: IndirectOut<'_>,
) {
    let (rows, k) = (bases.len(), offs.len());
    let half = half_rows(kernel, ldw);
    let lanes = if half { 8 } else { kernel.lanes() };
    assert!(
        ldw > 0 && ldw.is_multiple_of(lanes),
        "indirect: ldw {ldw} is not a multiple of {lanes}"
    );
    match w_rows {
        None => assert!(w.len() >= k * ldw, "indirect: packed weights too short"),
        Some(r) => {
            assert!(r.len() >= k, "indirect: fewer weight rows than taps");
            assert!(
                k == 0 || r.bound.checked_add(ldw).is_some_and(|e| e <= w.len()),
                "indirect: a weight row past the weights"
            );
        }
    }
    let IndirectOut {
        c,
        row_starts,
        channels,
        bias,
        accumulate,
    } = out;
    let (live, stride) = match channels {
        Channels::All => (ldw, 1),
        Channels::Strided { channels, stride } => {
            assert!(channels <= ldw, "indirect: more channels than ldw");
            assert!(stride > 0, "indirect: a channel stride of 0");
            (channels, stride)
        }
    };
    let span = channels.span(ldw);
    if rows > 0 {
        let last = match row_starts {
            Some(r) => {
                assert!(r.len() >= rows, "indirect: fewer row starts than rows");
                r.bound
            }
            None => (rows - 1)
                .checked_mul(ldw)
                .expect("indirect: rows overflow"),
        };
        assert!(
            last.checked_add(span).is_some_and(|e| e <= c.len()),
            "indirect: an output row past the output"
        );
    }
    if let Some(b) = bias {
        assert!(b.len() >= ldw, "indirect: bias shorter than ldw");
    }
    if rows == 0 || live == 0 {
        return;
    }
    if k == 0 {
        // No taps: the sums are zero.
        for p in 0..rows {
            let start = row_starts.map_or(p * ldw, |r| r.v[p]);
            for o in 0..live {
                let v = &mut c[start + o * stride];
                if !accumulate {
                    *v = 0.0;
                }
                if let Some(b) = bias {
                    *v += b[o];
                }
            }
        }
        return;
    }
    assert!(
        bases
            .bound
            .checked_add(offs.bound)
            .is_some_and(|last| last < x.len()),
        "indirect: a window reads past the input"
    );
    assert!(
        kernel.is_supported(),
        "{kernel:?} not supported by this CPU"
    );
    assert!(
        !half || half_supported(),
        "indirect: ldw {ldw} needs AVX-512VL for 256-bit vectors"
    );
    let args = indirect::IndirectArgs {
        x: x.as_ptr(),
        bases: bases.v.as_ptr(),
        rows,
        offs: offs.v.as_ptr(),
        k,
        w: w.as_ptr(),
        w_rows: w_rows.map_or(std::ptr::null(), |r| r.v.as_ptr()),
        ldw,
        c: c.as_mut_ptr(),
        c_rows: row_starts.map_or(std::ptr::null(), |r| r.v.as_ptr()),
        c_stride: stride,
        c_channels: match channels {
            Channels::All => None,
            Channels::Strided { channels, .. } => Some(channels),
        },
        bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
        accumulate,
    };
    // SAFETY: the asserts above check every read of `x` (a bound on the bases plus a
    // bound on the offsets is inside it), the lengths of `w` (or every row `w_rows`
    // points at: a bound on them plus `ldw` inside it) and the bias, every output
    // row against `c` (through the bound on the row starts and the span of a row's
    // channels), `ldw` against the vector width (8 floats for the AVX-512 kernel's
    // 256-bit tiles), and the CPU (AVX-512VL too for those).
    unsafe {
        let live = args.c_channels.is_some();
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if half && live => avx512::indirect_kernel_half_live(&args),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if half => avx512::indirect_kernel_half(&args),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if live => avx512::indirect_kernel_live(&args),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::indirect_kernel(&args),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if live => avx2::indirect_kernel_live(&args),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::indirect_kernel(&args),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 | Kernel::Avx2 => unreachable!("not supported on this arch"),
            Kernel::Fallback if live => fallback::indirect_kernel_live(&args),
            Kernel::Fallback => fallback::indirect_kernel(&args),
        }
    }
}

/// The B-indirect GEMM of the phase conv path: `c[i * ldc + e] = sum_kk a[i, kk] *
/// b[offs[kk] + e]` for `i < m`, `e < n` (see the `indirect` module).
///
/// `a` is A (`m x k`) packed by [`pack_a_panels`] for this kernel; B's row `kk` is read
/// in place from `b` at `offs[kk]`, and the reads of a row run up to `n` rounded up to
/// the kernel's [`Kernel::tile_cols`], so `b` needs that much slack past the last row.
///
/// # Panics
/// If `a` is too short, `offs` is not `k` long, some row's reads (with the slack) run
/// past `b`, C does not hold `m` rows of `n` at stride `ldc`, or the CPU cannot run
/// `kernel`: all bugs of the caller, checked before any unsafe code runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn indirect_b_gemm(
    kernel: Kernel,
    a: &[f32],
    m: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let k = offs.len();
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "indirect B: ldc {ldc} < n {n}");
    assert!(c.len() >= (m - 1) * ldc + n, "indirect B: C too short");
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    let args = indirect::IndirectBArgs {
        c: c.as_mut_ptr(),
        ldc,
        ..b_args(kernel, a, m, b, offs, n)
    };
    // SAFETY: `b_args` checked the packed A's length, every read of B (largest offset
    // plus the padded row length inside `b`) and the CPU; the asserts above C's extent.
    unsafe { run_indirect_b(kernel, &args) }
}

/// The checked A and B arguments of a B-indirect call with `k > 0` (no output yet).
///
/// # Panics
/// As [`indirect_b_gemm`], for A, B and the CPU.
fn b_args(
    kernel: Kernel,
    a: &[f32],
    m: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
) -> indirect::IndirectBArgs {
    let (mr, nr) = kernel.tile();
    let k = offs.len();
    assert!(
        a.len() >= m.div_ceil(mr) * mr * k,
        "indirect B: packed A too short"
    );
    let last = offs.iter().max().copied().unwrap_or(0) + n.next_multiple_of(nr);
    assert!(
        last <= b.len(),
        "indirect B: a row of B reads past its image"
    );
    assert!(
        kernel.is_supported(),
        "{kernel:?} not supported by this CPU"
    );
    indirect::IndirectBArgs {
        a: a.as_ptr(),
        m,
        k,
        b: b.as_ptr(),
        offs: offs.as_ptr(),
        n,
        c: std::ptr::null_mut(),
        ldc: 0,
        ext: None,
    }
}

/// Runs checked B-indirect arguments on `kernel`.
///
/// # Safety
/// `args` comes from [`b_args`], with an output whose extent its caller checked.
unsafe fn run_indirect_b(kernel: Kernel, args: &indirect::IndirectBArgs) {
    // SAFETY: the caller's contract.
    unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::indirect_b_kernel(args),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::indirect_b_kernel(args),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 | Kernel::Avx2 => unreachable!("not supported on this arch"),
            Kernel::Fallback => fallback::indirect_b_kernel(args),
        }
    }
}

/// Where [`indirect_b_gemm_real`] puts its result: the real columns of an extended grid.
#[derive(Clone, Copy)]
pub(crate) struct RealColumns<'a> {
    /// Columns per extended row.
    pub cols: usize,
    /// Real columns per extended row (the first ones, `<= cols`).
    pub ow: usize,
    /// Added to each row, `m` floats.
    pub bias: Option<&'a [f32]>,
}

/// [`indirect_b_gemm`] on an extended grid, storing only its real columns: column `e`
/// of row `i` goes to `y[i * ldy + (e / cols) * ow + e % cols]` when `e % cols < ow`
/// (plus `bias[i]`), the others are dropped. The phase path's forward, which so needs
/// no buffer for the extended output and no copy out of it.
///
/// # Panics
/// As [`indirect_b_gemm`], and if `ow > cols`, `y` does not hold `m` rows of the real
/// columns at stride `ldy`, or the bias is shorter than `m`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn indirect_b_gemm_real(
    kernel: Kernel,
    a: &[f32],
    m: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    out: RealColumns<'_>,
    y: &mut [f32],
    ldy: usize,
) {
    let by_rows = rows_pay(kernel, out.cols, out.ow);
    real_columns(kernel, a, m, b, offs, n, out, y, ldy, by_rows);
}

/// [`indirect_b_gemm_real`], tiled row by row on the AVX-512 kernel's 256-bit tiles
/// when `by_rows` (which needs the AVX-512 kernel and [`half_supported`]).
#[allow(clippy::too_many_arguments)]
fn real_columns(
    kernel: Kernel,
    a: &[f32],
    m: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    out: RealColumns<'_>,
    y: &mut [f32],
    ldy: usize,
    by_rows: bool,
) {
    let RealColumns { cols, ow, bias } = out;
    assert!(
        cols > 0 && ow <= cols,
        "indirect B: {ow} real of {cols} columns"
    );
    let real = n / cols * ow + (n % cols).min(ow);
    if m == 0 || real == 0 {
        return;
    }
    assert!(ldy >= real, "indirect B: ldy {ldy} < {real} real columns");
    assert!(y.len() >= (m - 1) * ldy + real, "indirect B: y too short");
    if let Some(b) = bias {
        assert!(b.len() >= m, "indirect B: bias shorter than m");
    }
    let k = offs.len();
    if k == 0 {
        for (i, row) in y.chunks_mut(ldy).take(m).enumerate() {
            row[..real].fill(bias.map_or(0.0, |b| b[i]));
        }
        return;
    }
    assert!(
        !by_rows || (kernel == Kernel::Avx512 && half_supported()),
        "indirect B: row tiles need the AVX-512 kernel with AVX-512VL"
    );
    let args = indirect::IndirectBArgs {
        ext: Some(indirect::ExtOut {
            y: y.as_mut_ptr(),
            ldy,
            cols,
            ow,
            bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            by_rows,
        }),
        ..b_args(kernel, a, m, b, offs, n)
    };
    if by_rows {
        // Each row's tiles read its real columns rounded up to whole 8-lane vectors:
        // the last row's reach past the furthest tap's start must be inside `b`.
        let last_row = (n - 1) / cols * cols;
        let reach = last_row + (n - last_row).min(ow).next_multiple_of(8);
        let furthest = offs.iter().max().copied().unwrap_or(0);
        assert!(
            furthest + reach <= b.len(),
            "indirect B: a row of B reads past its image"
        );
        // SAFETY: as below; the CPU runs the 256-bit tiles (asserted above), and every
        // row's reads stay within `b` (the last row reaches furthest).
        #[cfg(target_arch = "x86_64")]
        return unsafe { avx512::indirect_b_kernel_half(&args) };
    }
    // SAFETY: `b_args` checked A, B and the CPU; every real column of every row lands
    // below `(m - 1) * ldy + real` in `y` (checked above), and the bias holds `m` floats.
    unsafe { run_indirect_b(kernel, &args) }
}

/// Whether [`indirect_b_gemm_real`] tiles an extended grid of `cols` columns, `ow`
/// real, row by row on 256-bit vectors: with the AVX-512 kernel where
/// [`half_vectors`] says (a Zen 4, on which a 256-bit FMA costs half a 512-bit one),
/// when a row's real columns rounded up to whole 8-lane vectors are no more than the
/// extended grid's columns. The row tiles then compute no more columns, and store
/// whole vectors where the flat grid compresses each vector's real lanes.
///
/// Zen 4, 1 thread, phase forward, flat -> rows (medians of 6 interleaved runs):
/// nb_32x1x5 (24 real of 28 columns) 2.89 -> 2.15 ms; 100 x 3 -> 16, 32x32, 3x3 pad 1
/// (32 of 34) 1.19 -> 1.03; 100 x 4 -> 16, 56x56 (56 of 58) 5.10 -> 4.78. With as
/// many columns either way (14 real of 16): seed_l1 0.146 -> 0.122; 100 x 1 -> 16,
/// 14x14, 3x3 0.128 -> 0.094-0.114; with more taps per tile the stores weigh less:
/// 100 x 2 -> 16, 28x28, 5x5 stride 2 0.432 -> 0.426, 100 x 6 -> 16, 14x14, 3x3
/// 0.444 -> 0.441, and 100 x 3 -> 16, 28x28, 5x5 stride 2 0.615 -> 0.628, the one
/// loss measured.
fn rows_pay(kernel: Kernel, cols: usize, ow: usize) -> bool {
    ow > 0 && ow.next_multiple_of(8) <= cols && kernel.half_vectors()
}

/// A (`m x k`) packed in `kernel`'s `MR`-row micro-panels, zero-padded, as
/// [`indirect_b_gemm`] reads it; reserved fallibly, an error naming `op`.
pub(crate) fn pack_a_panels(
    kernel: Kernel,
    a: ArrayView2<'_, f32>,
    op: &'static str,
) -> crate::Result<Vec<f32>> {
    let mut out = Vec::new();
    pack_a_panels_into(kernel, a, &mut out, op)?;
    Ok(out)
}

/// [`pack_a_panels`] into `out`, resized (fallibly) to the panels' length: a buffer
/// reused across calls. Every float of the panels is written (padding rows as zeros).
pub(crate) fn pack_a_panels_into(
    kernel: Kernel,
    a: ArrayView2<'_, f32>,
    out: &mut Vec<f32>,
    op: &'static str,
) -> crate::Result<()> {
    let mr = kernel.tile().0;
    let (m, k) = a.dim();
    let describe = || format!("a packed {m} x {k} operand");
    let len = crate::limits::checked_len(op, &[m.div_ceil(mr), mr, k], describe)?;
    crate::limits::try_resize(op, out, len, 0.0, describe)?;
    out.truncate(len);
    if !out.is_empty() {
        super::pack::pack_a(a, mr, out, false);
    }
    Ok(())
}

/// Measured peak of fused multiply-adds on this machine, in GFLOP/s (2 flops per lane
/// per FMA), over `threads` OS threads each running `iters` rounds of independent FMA
/// chains (the widest supported vectors: 512-bit, else 256-bit, else scalar mul+add).
///
/// A yardstick to read GEMM and conv figures as a fraction of the machine's peak
/// (`examples/bench` and `examples/convbench` print it). `iters` = 50 000 000 takes
/// about 0.1 s on a 4 GHz AVX-512 core.
pub fn fma_peak_gflops(threads: usize, iters: u64) -> f64 {
    let threads = threads.max(1);
    let kernel = Kernel::ALL
        .into_iter()
        .find(|k| k.is_supported())
        .unwrap_or(Kernel::Fallback);
    let start = std::time::Instant::now();
    let flops: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || fma_loop(kernel, iters)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    flops / start.elapsed().as_secs_f64() / 1e9
}

/// Runs the FMA loop of `kernel`, returns the flops done.
fn fma_loop(kernel: Kernel, iters: u64) -> f64 {
    match kernel {
        // SAFETY: `kernel` was chosen among the supported ones.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::fma_loop(iters) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::fma_loop(iters) },
        _ => fallback::fma_loop(iters),
    }
}

/// The generic FMA loop: 16 independent accumulators, `iters` rounds.
///
/// # Safety
/// The caller runs under `S`'s target features.
#[inline(always)]
unsafe fn fma_loop_body<S: Simd>(iters: u64) -> f64 {
    // SAFETY: only register arithmetic and one store to a local array of LANES f32.
    unsafe {
        let x = S::splat(std::hint::black_box(0.999_999));
        let y = S::splat(std::hint::black_box(1e-7));
        let mut acc = [S::splat(1.0); 16];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = S::fma(*r, x, y);
            }
        }
        let mut sum = S::zero();
        for r in acc {
            sum = S::fma(r, x, sum);
        }
        let mut out = [0.0f32; 16];
        S::store(out.as_mut_ptr(), sum);
        std::hint::black_box(out);
        (iters * 16 * 2 * S::LANES as u64) as f64
    }
}

/// Packs a `kc x w` block whose rows are contiguous into one micro-panel of width
/// `width >= w` (`kc` steps of `width` values, columns past `w` zero), with fixed-size
/// row copies for full panels. Returns `false`, doing nothing, when the rows of the block
/// are not contiguous.
///
/// Used for B (rows of a row-major B) and for A given transposed (columns of A).
pub(crate) fn pack_copy(x: ArrayView2<'_, f32>, width: usize, out: &mut [f32]) -> bool {
    let (kc, w) = x.dim();
    if (w > 1 && x.strides()[1] != 1) || w > width || out.len() < kc * width {
        return false;
    }
    let (src, rs, dst) = (x.as_ptr(), x.strides()[0], out.as_mut_ptr());
    // SAFETY: `x` is a `kc x w` view with unit column stride (or one column), so
    // `src + p * rs` starts `w` readable f32 for p < kc; `out` holds at least
    // `kc * width` f32 and `w <= width`.
    unsafe {
        match (w == width, w) {
            (true, 48) => copy_rows::<48>(src, rs, kc, dst),
            (true, 16) => copy_rows::<16>(src, rs, kc, dst),
            (true, 8) => copy_rows::<8>(src, rs, kc, dst),
            (true, 6) => copy_rows::<6>(src, rs, kc, dst),
            (true, 4) => copy_rows::<4>(src, rs, kc, dst),
            _ => {
                for p in 0..kc {
                    let d = dst.add(p * width);
                    std::ptr::copy_nonoverlapping(src.offset(p as isize * rs), d, w);
                    std::ptr::write_bytes(d.add(w), 0, width - w);
                }
            }
        }
    }
    true
}

/// Copies `kc` rows of `N` f32, `rs` apart, to `dst` back to back.
///
/// # Safety
/// `src + p * rs` starts `N` readable f32 for `p < kc`; `dst` has `kc * N` writable f32.
#[inline(always)]
unsafe fn copy_rows<const N: usize>(src: *const f32, rs: isize, kc: usize, dst: *mut f32) {
    for p in 0..kc {
        // SAFETY: in range by the contract above; unaligned reads and writes.
        unsafe {
            let row = src
                .offset(p as isize * rs)
                .cast::<[f32; N]>()
                .read_unaligned();
            dst.add(p * N).cast::<[f32; N]>().write_unaligned(row);
        }
    }
}

/// Packs an `h x kc` block whose rows are contiguous into one micro-panel of width
/// `width >= h` (`kc` steps of `width` values, entries past `h` zero), reading the rows
/// side by side. Returns `false`, doing nothing, when the rows are not contiguous.
///
/// Used for A (rows of a row-major A) and for B given transposed (columns of B).
pub(crate) fn pack_interleave(x: ArrayView2<'_, f32>, width: usize, out: &mut [f32]) -> bool {
    let (h, kc) = x.dim();
    if (kc > 1 && x.strides()[1] != 1) || h > width || out.len() < kc * width {
        return false;
    }
    let (src, rs, dst) = (x.as_ptr(), x.strides()[0], out.as_mut_ptr());
    // SAFETY: `x` is an `h x kc` view with unit column stride (or one column), so
    // `src + i * rs + p` is readable for i < h, p < kc; `out` holds at least `kc * width`
    // f32 and `h <= width`, so every `dst + p * width + i` written is inside it.
    unsafe {
        match (h == width, h) {
            (true, 48) => gather_rows::<48>(src, rs, kc, dst),
            (true, 16) => gather_rows::<16>(src, rs, kc, dst),
            (true, 8) => gather_rows::<8>(src, rs, kc, dst),
            (true, 6) => gather_rows::<6>(src, rs, kc, dst),
            (true, 4) => gather_rows::<4>(src, rs, kc, dst),
            _ => {
                std::ptr::write_bytes(dst, 0, kc * width);
                let full = h / 8 * 8;
                for i0 in (0..full).step_by(8) {
                    let s0 = src.offset(i0 as isize * rs);
                    gather_group::<8>(s0, rs, kc, dst.add(i0), width);
                }
                for i in full..h {
                    let row = src.offset(i as isize * rs);
                    for p in 0..kc {
                        *dst.add(p * width + i) = *row.add(p);
                    }
                }
            }
        }
    }
    true
}

/// Interleaves `M` rows of `kc` f32 (`rs` apart) into `dst`: `dst[p * M + i] = row_i[p]`,
/// 8 rows at a time (so the row pointers stay in registers) when `M` is a multiple of 8.
///
/// # Safety
/// `src + i * rs + p` is readable for `i < M`, `p < kc`; `dst` has `kc * M` writable f32.
#[inline(always)]
unsafe fn gather_rows<const M: usize>(src: *const f32, rs: isize, kc: usize, dst: *mut f32) {
    // SAFETY: in range by the contract above: rows `i0 .. i0 + G` with `i0 + G <= M`.
    unsafe {
        if M.is_multiple_of(8) {
            for i0 in (0..M).step_by(8) {
                gather_group::<8>(src.offset(i0 as isize * rs), rs, kc, dst.add(i0), M);
            }
        } else {
            gather_group::<M>(src, rs, kc, dst, M);
        }
    }
}

/// `dst[p * stride + i] = row_i[p]` for `G` rows `rs` apart.
///
/// # Safety
/// `src + i * rs + p` is readable for `i < G`, `p < kc`; `dst + p * stride + i` is
/// writable for the same range, `G <= stride`.
#[inline(always)]
unsafe fn gather_group<const G: usize>(
    src: *const f32,
    rs: isize,
    kc: usize,
    dst: *mut f32,
    stride: usize,
) {
    // SAFETY: in range by the contract above.
    unsafe {
        let rows: [*const f32; G] = std::array::from_fn(|i| src.offset(i as isize * rs));
        for p in 0..kc {
            let col: [f32; G] = std::array::from_fn(|i| *rows[i].add(p));
            dst.add(p * stride).cast::<[f32; G]>().write_unaligned(col);
        }
    }
}

#[cfg(test)]
mod indirect_tests {
    use super::*;

    /// The 256-bit rows: the AVX-512 kernel's only, on a Zen 4 or as the setting says,
    /// and then exactly for rows whose last 512-bit vector would be at most half used.
    #[test]
    fn narrow_rows_run_on_256_bit_vectors_where_chosen() {
        assert!(!Kernel::Avx2.half_vectors() && !Kernel::Fallback.half_vectors());
        let zen4 = crate::cpu::CpuInfo::get().microarch == crate::cpu::Microarch::Zen4;
        let wanted = match std::env::var("CONVINIT_HALF_VECTORS").as_deref() {
            Ok("on") => true,
            Ok("off") => false,
            _ => zen4,
        };
        let half = Kernel::Avx512.half_vectors();
        assert_eq!(half, wanted && half_supported());
        for channels in 0..=70 {
            let ldw = Kernel::Avx512.indirect_ldw(channels);
            let narrow = (1..=8).contains(&(channels % 16));
            let want = match half && narrow {
                true => channels.next_multiple_of(8),
                false => channels.next_multiple_of(16).max(16),
            };
            assert_eq!(ldw, want, "{channels} channels, 256-bit rows {half}");
            for k in [Kernel::Avx2, Kernel::Fallback] {
                assert_eq!(
                    k.indirect_ldw(channels),
                    channels.next_multiple_of(8).max(8)
                );
            }
        }
    }

    #[test]
    fn tile_rows_follow_the_panels_each_row_width_runs_in() {
        // AVX-512: 8 positions per tile, but 6 in the 6 x 4 tiles of rows of whole
        // four-vector panels (64, 128, ... channels); 256-bit rows (odd multiples of 8)
        // in 8 x 3 tiles. AVX2 6, portable 4.
        #[cfg(target_arch = "x86_64")]
        {
            for (ldw, rows) in [(16, 8), (32, 8), (48, 8), (64, 6), (80, 8), (128, 6)] {
                assert_eq!(Kernel::Avx512.indirect_tile_rows(ldw), rows, "{ldw}");
            }
            for ldw in [8, 24, 40] {
                assert_eq!(Kernel::Avx512.indirect_tile_rows(ldw), 8, "{ldw}");
            }
            for ldw in [8, 16, 64, 128] {
                assert_eq!(Kernel::Avx2.indirect_tile_rows(ldw), 6, "{ldw}");
            }
        }
        for ldw in [8, 16, 64] {
            assert_eq!(Kernel::Fallback.indirect_tile_rows(ldw), 4, "{ldw}");
        }
    }

    /// Distinct floats of both signs.
    fn vals(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    /// Weight rows read through an index are the rows of a packed copy, bit for bit:
    /// a subset of a larger matrix's rows, out of order and repeated, for every kernel
    /// and panel split (one-vector tiles split their sums: the same split either way),
    /// depths past the tap block, and an index shorter than a copy would be.
    #[test]
    fn indexed_weight_rows_match_a_packed_copy() {
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
            let lanes = kernel.lanes();
            let mut widths: Vec<usize> = [1, 2, 3, 4, 8].map(|v| v * lanes).into();
            if kernel == Kernel::Avx512 && half_supported() {
                widths.extend([8, 24]);
            }
            for ldw in widths {
                for (rows, k) in [(1, 1), (9, 7), (14, 450)] {
                    let all = k + 5;
                    let x = vals(rows * 2 + k * 3 + 1, ldw);
                    let bases = Offsets::new((0..rows).map(|p| p * 2).collect());
                    let offs = Offsets::new((0..k).map(|t| t * 3).collect());
                    let w = vals(all * ldw, 9);
                    // Rows picked backwards with a stride, some twice.
                    let pick: Vec<usize> = (0..k).map(|t| (all - 1 - t * 7 % all) * ldw).collect();
                    let copy: Vec<f32> =
                        pick.iter().flat_map(|&r| w[r..r + ldw].to_vec()).collect();
                    let pick = Offsets::new(pick);
                    let bias = vals(ldw, 3);
                    let run = |w: (&[f32], Option<OffsetsRef<'_>>)| {
                        let mut out = vals(rows * ldw, 4);
                        let y = IndirectOut {
                            bias: Some(&bias),
                            ..IndirectOut::packed(&mut out, false)
                        };
                        indirect_gemm_rows(kernel, &x, bases.all(), offs.all(), w, ldw, y);
                        out
                    };
                    let (indexed, packed) = (run((&w, Some(pick.all()))), run((&copy, None)));
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&indexed),
                        bits(&packed),
                        "{kernel:?} ldw {ldw} {rows}x{k}"
                    );
                }
            }
        }
    }

    /// `indirect_gemm` against a plain loop for every kernel, with channel widths that
    /// take each panel split (one to six vectors, eight, twelve: the 6 x 4 panels of
    /// AVX-512 among them), depths past the tap block, edge tiles and accumulation.
    #[test]
    fn indirect_gemm_matches_a_plain_loop_for_every_kernel() {
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
            let lanes = kernel.lanes();
            let mut widths: Vec<usize> = [1, 2, 3, 4, 5, 6, 8, 12].map(|v| v * lanes).into();
            if kernel == Kernel::Avx512 && half_supported() {
                // Rows of odd multiples of 8 floats, on 256-bit vectors.
                widths.extend([8, 24, 40, 56]);
            }
            for ldw in widths {
                for (rows, k) in [(3, 0), (1, 1), (7, 9), (13, 30), (25, 400)] {
                    let x = vals(rows * 2 + k * 3 + 1, ldw / 8);
                    let bases = Offsets::new((0..rows).map(|p| p * 2).collect());
                    let offs = Offsets::new((0..k).map(|t| t * 3).collect());
                    let (bases_v, offs_v) = (bases.as_slice(), offs.as_slice());
                    let w = vals(k * ldw, 7);
                    let init = vals(rows * ldw, 8);
                    for accumulate in [false, true] {
                        let mut out = init.clone();
                        indirect_gemm(
                            kernel,
                            &x,
                            bases.all(),
                            offs.all(),
                            &w,
                            ldw,
                            IndirectOut::packed(&mut out, accumulate),
                        );
                        for p in 0..rows {
                            for o in 0..ldw {
                                let mut want = if accumulate {
                                    init[p * ldw + o] as f64
                                } else {
                                    0.0
                                };
                                for t in 0..k {
                                    want +=
                                        x[bases_v[p] + offs_v[t]] as f64 * w[t * ldw + o] as f64;
                                }
                                let got = out[p * ldw + o] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                    "{kernel:?} ldw {ldw} rows {rows} k {k} acc {accumulate} \
                                     at ({p}, {o}): {got} against {want}"
                                );
                            }
                        }
                        // The same rows placed in reverse order with gaps between them,
                        // a bias added: each row is the packed one plus the bias, bit for
                        // bit, and the gaps are left as they were.
                        let bias = vals(ldw, 9);
                        let gap = 3;
                        let starts = Offsets::new(
                            (0..rows)
                                .map(|p| (rows - 1 - p) * (ldw + gap) + gap)
                                .collect(),
                        );
                        let starts_v = starts.as_slice();
                        let mut placed = vals(rows * (ldw + gap) + gap, 10);
                        let before = placed.clone();
                        for p in 0..rows {
                            placed[starts_v[p]..starts_v[p] + ldw]
                                .copy_from_slice(&init[p * ldw..(p + 1) * ldw]);
                        }
                        let out2 = IndirectOut {
                            c: &mut placed,
                            row_starts: Some(starts.all()),
                            channels: Channels::All,
                            bias: Some(&bias),
                            accumulate,
                        };
                        indirect_gemm(kernel, &x, bases.all(), offs.all(), &w, ldw, out2);
                        for (e, (&got, &was)) in placed.iter().zip(&before).enumerate() {
                            let row = starts_v.iter().position(|&s| (s..s + ldw).contains(&e));
                            let want = match row {
                                Some(p) => out[p * ldw + e - starts_v[p]] + bias[e - starts_v[p]],
                                None => was,
                            };
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{kernel:?} ldw {ldw} rows {rows} k {k} acc {accumulate} \
                                 placed, at {e}"
                            );
                        }
                        // Only the first `live` channels of each row, `stride` apart
                        // (channels-last rows of channels that are not whole vectors;
                        // channel-major columns): the packed sums plus the bias, bit
                        // for bit, and nothing else written.
                        for (live, stride) in [(ldw - 3, 1), (1, 1), (ldw - 1, 2), (0, 1)] {
                            let span = live.saturating_sub(1) * stride + 1;
                            let row_len = span + gap;
                            let starts = Offsets::new(
                                (0..rows).map(|p| (rows - 1 - p) * row_len + gap).collect(),
                            );
                            let starts_v = starts.as_slice();
                            let mut placed = vals(rows * row_len + gap + span, 11);
                            let mut want = placed.clone();
                            for p in 0..rows {
                                for o in 0..live {
                                    let e = starts_v[p] + o * stride;
                                    placed[e] = init[p * ldw + o];
                                    want[e] = out[p * ldw + o] + bias[o];
                                }
                            }
                            let out3 = IndirectOut {
                                c: &mut placed,
                                row_starts: Some(starts.all()),
                                channels: Channels::Strided {
                                    channels: live,
                                    stride,
                                },
                                bias: Some(&bias),
                                accumulate,
                            };
                            indirect_gemm(kernel, &x, bases.all(), offs.all(), &w, ldw, out3);
                            for (e, (&got, &w)) in placed.iter().zip(&want).enumerate() {
                                assert_eq!(
                                    got.to_bits(),
                                    w.to_bits(),
                                    "{kernel:?} ldw {ldw} rows {rows} k {k} acc \
                                     {accumulate} live {live} stride {stride}, at {e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn real_columns_are_the_extended_output_compacted_for_every_kernel() {
        // (m, taps, rows of the grid, cols, real cols): grids narrower than a vector
        // (a vector across several rows), all columns real, one real column, rows of
        // A off the tile.
        let cases: [(usize, usize, usize, usize, usize); 9] = [
            (1, 1, 1, 1, 1),
            (16, 25, 24, 28, 24),
            (8, 9, 14, 16, 14),
            (13, 30, 7, 8, 7),
            (5, 4, 5, 5, 1),
            (33, 10, 3, 20, 20),
            // Rows of 7 and 4 vectors of 8 (row tiles of 3 + 2 + 2 and 2 + 2), and 9.
            (12, 7, 4, 60, 56),
            (9, 5, 3, 40, 32),
            (8, 3, 2, 11, 9),
        ];
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
            // The AVX-512 kernel also tiled row by row, on 256-bit vectors.
            let rows_too = kernel == Kernel::Avx512 && half_supported();
            for (m, k, h, cols, ow, by_rows) in cases
                .into_iter()
                .flat_map(|(m, k, h, c, o)| [(m, k, h, c, o, false), (m, k, h, c, o, true)])
                .filter(|c| !c.5 || rows_too)
            {
                let n = h * cols;
                let nr = kernel.tile().1;
                let b = vals(k * 3 + n.next_multiple_of(nr) + 1, 4);
                let offs: Vec<usize> = (0..k).map(|t| t * 3).collect();
                let w = vals(m * k, 5);
                let wa = ndarray::ArrayView2::from_shape((m, k), &w).unwrap();
                let a = pack_a_panels(kernel, wa, "test").unwrap();
                let mut full = vec![0.0; m * n];
                indirect_b_gemm(kernel, &a, m, &b, &offs, n, &mut full, n);
                let bias = vals(m, 6);
                let ldy = h * ow + 3;
                for bs in [None, Some(&bias[..])] {
                    let mut want = vec![7.5f32; m * ldy];
                    for i in 0..m {
                        for e in (0..n).filter(|e| e % cols < ow) {
                            let v = full[i * n + e];
                            want[i * ldy + e / cols * ow + e % cols] = bs.map_or(v, |b| v + b[i]);
                        }
                    }
                    let mut y = vec![7.5f32; m * ldy];
                    let to = RealColumns { cols, ow, bias: bs };
                    real_columns(kernel, &a, m, &b, &offs, n, to, &mut y, ldy, by_rows);
                    let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{kernel:?} m {m} k {k} grid {h}x{cols} real {ow} bias {} rows \
                         {by_rows}",
                        bs.is_some()
                    );
                }
            }
        }
    }
}
