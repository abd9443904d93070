//! Block sizes of the loop nest, one constant per micro-kernel.
//!
//! The micro-tile is `MR x NR` with the `NR` side along the rows of C (vectors of B).
//! Inside one task the loop nest keeps one packed `MR x KC` micro-panel of A in L1 and
//! streams the `KC x NR` micro-panels of a `KC x NB` chunk of packed B, held in L2, past
//! it; the packed `KC x NC` block of B lives in L3. Sizes are from this project's target
//! machine (AMD EPYC Zen 5: L1d 48 KiB, L2 1 MiB per core, L3 32 MiB shared), measured
//! there, and sensible on any x86-64 with L1d >= 32 KiB and L2 >= 512 KiB:
//!
//! * `KC`: the A micro-panel (`MR * KC * 4` bytes) plus a few B micro-panels fit L1d.
//!   The depth is split into equal blocks of at most `KC` (k = 576 runs as 2 x 288).
//! * `NB`: the B chunk of one task (`KC * NB * 4` bytes) takes about half of L2
//!   (`L2_BUDGET` bytes); computed from the actual depth block, so short k gets wide
//!   chunks.
//! * `MC`: rows of C per task (a multiple of `MR`): sets the task granularity.
//! * `NC`: the packed B block (`KC * NC * 4` bytes) fits a share of L3.

/// Block sizes for one micro-kernel.
///
/// The depth block is at most `kc`; the columns per task are
/// [`BlockSizes::nb`]`(depth)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockSizes {
    /// Rows of the micro-tile (broadcast side, from packed A).
    pub mr: usize,
    /// Columns of the micro-tile (vector side, from packed B).
    pub nr: usize,
    /// Depth of one packed block.
    pub kc: usize,
    /// Rows of C per task (a multiple of `mr`).
    pub mc: usize,
    /// Bytes of L2 for the packed B chunk of one task (sets `NB`).
    pub l2_budget: usize,
    /// Columns of one packed B block (a multiple of `nb`).
    pub nc: usize,
}

/// AVX-512F: 8 x 48 tile (24 zmm accumulators, 3 vectors of B per row).
pub(crate) const AVX512: BlockSizes = BlockSizes {
    mr: 8,
    nr: 48,
    kc: 512,
    mc: 128,
    l2_budget: 512 * 1024,
    nc: 5760,
};

/// AVX2 + FMA: 6 x 16 tile (12 ymm accumulators, 2 vectors of B per row).
pub(crate) const AVX2: BlockSizes = BlockSizes {
    mr: 6,
    nr: 16,
    kc: 256,
    mc: 120,
    l2_budget: 512 * 1024,
    nc: 5760,
};

/// Portable: 4 x 8 tile of plain `f32` arithmetic the compiler can vectorise.
pub(crate) const FALLBACK: BlockSizes = BlockSizes {
    mr: 4,
    nr: 8,
    kc: 256,
    mc: 128,
    l2_budget: 512 * 1024,
    nc: 4096,
};

impl BlockSizes {
    /// The depth block for a product of depth `k`: equal blocks of at most `kc`.
    pub(crate) fn kc_for(&self, k: usize) -> usize {
        k.div_ceil(k.div_ceil(self.kc).max(1)).max(1)
    }

    /// Columns of C per task for depth block `kc`: as many `nr` panels as fit the L2
    /// budget, at least one, at most `nc`.
    pub(crate) fn nb(&self, kc: usize) -> usize {
        let panels = self.l2_budget / (kc.max(1) * self.nr * size_of::<f32>());
        (panels.max(1) * self.nr).min(self.nc)
    }
}
