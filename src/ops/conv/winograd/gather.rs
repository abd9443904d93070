//! The gather of the Winograd input tiles with AVX-512 vectors: [`input_block`], the
//! same transform as [`super::input_block`] (and the same bits: only the data movement
//! differs), its windows read with masked vector loads and de-interleaved with
//! permutes instead of 36 (F4) scalar loads and stores per tile.
//!
//! A lane group's tiles fall into runs of consecutive tiles of one tile row: same image
//! and `iy`, `ix` stepping by `m` (a group of 16 has one to three runs on most images,
//! 16 on arbitrary origins). Row `r` of lane `l`'s window, columns `0..m`, is then
//! element `m * l + s` of a virtual row, `16 m` floats, which each run fills with masked
//! loads from its image row: the run's lanes only, and only the elements inside the
//! image (the rest stay zero, which is the padding, whatever its size). Columns `m` and
//! `m + 1` overlap the next tile's, so they come from a second virtual row, loaded `m`
//! floats further on. Column `s` of all 16 lanes is a stride-`m` de-interleave of the
//! virtual row: one `vpermt2ps` (F2) or two and a blend (F4).

use std::arch::x86_64::{
    __m512, __m512i, _MM_HINT_T0, _mm_prefetch, _mm512_loadu_ps, _mm512_loadu_si512,
    _mm512_mask_blend_ps, _mm512_mask_loadu_ps, _mm512_mask_storeu_ps, _mm512_permutex2var_ps,
    _mm512_setzero_ps, _mm512_storeu_ps,
};

use super::{
    Conv, LANES, Lane, Origin, OutBlock, Tile, in_f2, in_f4, input_block_t, out_f2, out_f4,
    output_block_t,
};

/// One masked load of a lane group's virtual row.
#[derive(Debug, Clone, Copy)]
struct Piece {
    /// The index in the input of the load's first float, in channel 0 and row 0 of the
    /// windows (signed, and possibly outside the input: only the masked floats are
    /// read).
    off: isize,
    /// Per window row `r`, the floats of the 16 the load reads (none when the row is
    /// outside the image).
    masks: [u16; 6],
}

/// The masked loads of every lane group of a task: group `b`'s virtual row `q` (0: the
/// columns `0..m`, 1: `m..2m`), its 16-float slot `k`, is filled by the `per` pieces
/// from `pieces[first + ((q * m + k) * per)..]`, `(first, per) = groups[b]`. Every slot
/// of a group has the same number of pieces (padded with empty ones): the loops have
/// no data-dependent branches but one per group (tried: a varying count per slot, whose
/// loop exits the branch predictor missed).
struct Loads {
    pieces: Vec<Piece>,
    groups: Vec<(usize, usize)>,
}

impl Loads {
    /// The loads of the tiles at `origins` for windows of `A x A`, tiles `m = A - 2`
    /// apart.
    ///
    /// # Panics
    /// If a load would read outside the input (it cannot: the masks keep to the image).
    fn new<const A: usize>(conv: &Conv<'_>, origins: &[Origin]) -> Loads {
        let m = A - 2;
        let (hi, wi) = (conv.hi as isize, conv.wi as isize);
        let mut loads = Loads {
            pieces: Vec::new(),
            groups: Vec::new(),
        };
        let empty = Piece {
            off: 0,
            masks: [0; 6],
        };
        // The pieces of one group, per slot `q * m + k`.
        let mut slots: [Vec<Piece>; 8] = Default::default();
        for lanes in origins.chunks(LANES) {
            let mut l0 = 0;
            while l0 < lanes.len() {
                let o = lanes[l0];
                let mut l1 = l0 + 1;
                while l1 < lanes.len() {
                    let p = lanes[l1];
                    let next = p.image == o.image && p.iy == o.iy;
                    if !next || p.ix != o.ix + ((l1 - l0) * m) as isize {
                        break;
                    }
                    l1 += 1;
                }
                let rows: [bool; 6] = std::array::from_fn(|r| {
                    let y = o.iy + r as isize;
                    r < A && y >= 0 && y < hi
                });
                // Element `e` of virtual row `q` is column `x0 + q m + e` of the image.
                let x0 = o.ix - (m * l0) as isize;
                for q in 0..2 {
                    let x = x0 + (q * m) as isize;
                    let lo = ((m * l0) as isize).max(-x);
                    let end = ((m * l1) as isize).min(wi - x);
                    let bits = if lo < end {
                        let ones = |n: isize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
                        ones(end) & !ones(lo)
                    } else {
                        0
                    };
                    for k in 0..m {
                        let mask = (bits >> (16 * k)) as u16;
                        if mask == 0 || !rows.contains(&true) {
                            continue;
                        }
                        let piece = Piece {
                            off: o.image as isize + o.iy * wi + x + (16 * k) as isize,
                            masks: std::array::from_fn(|r| if rows[r] { mask } else { 0 }),
                        };
                        check(conv, &piece);
                        slots[q * m + k].push(piece);
                    }
                }
                l0 = l1;
            }
            let slots = &mut slots[..2 * m];
            let per = slots.iter().map(Vec::len).max().unwrap_or(0).max(1);
            loads.groups.push((loads.pieces.len(), per));
            for slot in slots {
                slot.resize(per, empty);
                loads.pieces.append(slot);
            }
        }
        loads
    }
}

/// Asserts that every float `piece` reads, in every channel, is inside the input: the
/// safety of the masked loads.
fn check(conv: &Conv<'_>, piece: &Piece) {
    let last = (conv.cin.max(1) - 1) * conv.hi * conv.wi;
    for (r, &mask) in piece.masks.iter().enumerate() {
        if mask == 0 {
            continue;
        }
        let row = piece.off + (r * conv.wi) as isize;
        let first = row + mask.trailing_zeros() as isize;
        let end = row + (16 - mask.leading_zeros()) as isize;
        assert!(
            first >= 0 && end as usize + last <= conv.x.len(),
            "a Winograd tile load outside the input"
        );
    }
}

/// The input transform of every tile of a task into `v`, as [`super::input_block`]
/// (and the same bits), the windows gathered with AVX-512 loads and permutes.
#[target_feature(enable = "avx512f")]
pub(super) fn input_block(conv: &Conv<'_>, origins: &[Origin], v: &mut [f32], tp: usize) {
    let groups = origins.len().div_ceil(LANES);
    match conv.tile {
        Tile::F2 => {
            let loads = Loads::new::<4>(conv, origins);
            input_block_t::<4>(in_f2, conv, groups, v, tp, |c, b, dc| {
                // The closure has this function's avx512f.
                gather::<4>(conv, &loads, c, b, dc)
            })
        }
        Tile::F4 => {
            let loads = Loads::new::<6>(conv, origins);
            input_block_t::<6>(in_f4, conv, groups, v, tp, |c, b, dc| {
                gather::<6>(conv, &loads, c, b, dc)
            })
        }
    }
}

/// `vpermt2ps` indices of the stride-2 and stride-4 de-interleaves: lane `i` of column
/// `s` is element `s + m i` (modulo 32: the two halves of F4 are two permutes).
const DEINTERLEAVE: [[[i32; 16]; 4]; 2] = {
    let mut idx = [[[0; 16]; 4]; 2];
    let mut s = 0;
    while s < 4 {
        let mut i = 0;
        while i < 16 {
            idx[0][s][i] = ((s + 2 * i) & 31) as i32;
            idx[1][s][i] = ((s + 4 * i) & 31) as i32;
            i += 1;
        }
        s += 1;
    }
    idx
};

/// Column `s` of the 16 lanes from a virtual row `buf` (`m` registers): its elements
/// `s + m l`.
#[target_feature(enable = "avx512f")]
#[inline]
fn column<const M: usize>(buf: &[__m512], s: usize) -> __m512 {
    let idx = &DEINTERLEAVE[M / 2 - 1][s];
    // SAFETY: `idx` is 16 i32, 64 bytes (unaligned loads).
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast::<__m512i>()) };
    let lo = _mm512_permutex2var_ps(buf[0], idx, buf[1]);
    if M == 2 {
        lo
    } else {
        let hi = _mm512_permutex2var_ps(buf[2], idx, buf[3]);
        _mm512_mask_blend_ps(0xff00, lo, hi)
    }
}

/// Fills `dc` for channel `c` of lane group `b` (as [`super::gather_scalar`]).
#[target_feature(enable = "avx512f")]
#[inline]
fn gather<const A: usize>(
    conv: &Conv<'_>,
    loads: &Loads,
    c: usize,
    b: usize,
    dc: &mut [[Lane; A]; A],
) {
    let (first, per) = loads.groups[b];
    let pieces = &loads.pieces[first..first + 2 * (A - 2) * per];
    match per {
        1 => gather_n::<A, 1>(conv, pieces, c, per, dc),
        2 => gather_n::<A, 2>(conv, pieces, c, per, dc),
        _ => gather_n::<A, 0>(conv, pieces, c, per, dc),
    }
}

/// [`gather`] with `per` pieces per slot, `P` when not 0 (then the loops unroll).
#[target_feature(enable = "avx512f")]
#[inline]
fn gather_n<const A: usize, const P: usize>(
    conv: &Conv<'_>,
    pieces: &[Piece],
    c: usize,
    per: usize,
    dc: &mut [[Lane; A]; A],
) {
    let m = A - 2;
    let per = if P == 0 { per } else { P };
    let plane = conv.hi * conv.wi;
    let chan = (c * plane) as isize;
    let pieces = &pieces[..2 * m * per];
    for r in 0..A {
        let row = chan + (r * conv.wi) as isize;
        let mut buf = [_mm512_setzero_ps(); 8];
        // Constant indices into `buf` (registers, not the stack).
        #[allow(clippy::needless_range_loop)]
        for i in 0..8 {
            if i >= 2 * m {
                break;
            }
            for p in &pieces[i * per..(i + 1) * per] {
                let at = conv.x.as_ptr().wrapping_offset(p.off + row);
                // SAFETY: the floats of mask `p.masks[r]` are inside the input (`check`,
                // channel `c < cin`); AVX-512 masked loads do not touch the others.
                buf[i] = unsafe { _mm512_mask_loadu_ps(buf[i], p.masks[r], at) };
                if i < m {
                    let next = at.wrapping_add(plane).cast::<i8>();
                    // A prefetch reads nothing, and does not fault.
                    _mm_prefetch::<_MM_HINT_T0>(next);
                }
            }
        }
        for (s, col) in dc.iter_mut().enumerate() {
            let v = if s < m {
                if m == 2 {
                    column::<2>(&buf[..2], s)
                } else {
                    column::<4>(&buf[..4], s)
                }
            } else if m == 2 {
                column::<2>(&buf[2..4], s - m)
            } else {
                column::<4>(&buf[4..8], s - m)
            };
            // SAFETY: `col[r]` is 16 f32.
            unsafe { _mm512_storeu_ps(col[r].as_mut_ptr(), v) };
        }
    }
}

/// One masked store of a lane group's virtual output row.
#[derive(Debug, Clone, Copy)]
struct Put {
    /// The image of the tiles (its planes are `y[img * cout..]`).
    img: usize,
    /// The index in the plane of the store's first float, in the tiles' output row 0
    /// (only the masked floats are written).
    off: isize,
    /// Per tile output row `i`, the floats of the 16 the store writes (none for rows
    /// past the block's last).
    masks: [u16; 4],
}

/// The masked stores of every lane group of a task's output block: output row `i` of
/// group `b`'s tiles is a virtual row of `16 m` floats (`m` outputs of each lane in
/// turn), its 16-float slot `k` written by the `per` stores from `puts[first + k *
/// per..]`, `(first, per) = groups[b]` (as [`Loads`]).
struct Stores {
    puts: Vec<Put>,
    groups: Vec<(usize, usize)>,
}

impl Stores {
    /// The stores of the tiles at `places` (from [`super::places`]) of `blk`, `M`
    /// outputs a side, into planes of `out_rows x wo` floats.
    ///
    /// # Panics
    /// If a store would write outside its plane (it cannot: the masks clip the tiles).
    fn new<const M: usize>(blk: &OutBlock, wo: usize, places: &[(usize, usize, usize)]) -> Stores {
        let mut stores = Stores {
            puts: Vec::new(),
            groups: Vec::new(),
        };
        let empty = Put {
            img: 0,
            off: 0,
            masks: [0; 4],
        };
        let mut slots: [Vec<Put>; 4] = Default::default();
        for lanes in places.chunks(LANES) {
            let mut l0 = 0;
            while l0 < lanes.len() {
                let (img, y0, x0) = lanes[l0];
                let mut l1 = l0 + 1;
                while l1 < lanes.len() && lanes[l1] == (img, y0, x0 + (l1 - l0) * M) {
                    l1 += 1;
                }
                // Element `e` of the virtual row is output column `x0 - M l0 + e`.
                let x = x0 as isize - (M * l0) as isize;
                let end = ((M * l1) as isize).min(wo as isize - x);
                let lo = (M * l0) as isize;
                let bits = if lo < end {
                    let ones = |n: isize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
                    ones(end) & !ones(lo)
                } else {
                    0
                };
                for (k, slot) in slots.iter_mut().enumerate().take(M) {
                    let mask = (bits >> (16 * k)) as u16;
                    if mask == 0 || y0 >= blk.out_rows {
                        continue;
                    }
                    let put = Put {
                        img,
                        off: (y0 * wo) as isize + x + (16 * k) as isize,
                        masks: std::array::from_fn(|i| {
                            if i < M && y0 + i < blk.out_rows {
                                mask
                            } else {
                                0
                            }
                        }),
                    };
                    for (i, &mask) in put.masks.iter().enumerate() {
                        let row = put.off + (i * wo) as isize;
                        assert!(
                            mask == 0
                                || (row + mask.trailing_zeros() as isize >= 0
                                    && (row + 16 - mask.leading_zeros() as isize) as usize
                                        <= blk.out_rows * wo),
                            "a Winograd tile store outside its plane"
                        );
                    }
                    slot.push(put);
                }
                l0 = l1;
            }
            let slots = &mut slots[..M];
            let per = slots.iter().map(Vec::len).max().unwrap_or(0).max(1);
            stores.groups.push((stores.puts.len(), per));
            for slot in slots {
                slot.resize(per, empty);
                stores.puts.append(slot);
            }
        }
        stores
    }
}

/// The output transform of every tile of a task into its output planes, as
/// [`super::output_block`] (and the same bits), the outputs scattered with AVX-512
/// permutes and masked stores.
#[target_feature(enable = "avx512f")]
pub(super) fn output_block(conv: &Conv<'_>, blk: &OutBlock, mm: &[f32], y: &mut [&mut [f32]]) {
    let m = conv.tile.m();
    let places = super::places(blk, m);
    assert!(
        y.iter().all(|p| p.len() >= blk.out_rows * conv.wo),
        "a Winograd output plane is short"
    );
    match conv.tile {
        Tile::F2 => {
            let stores = Stores::new::<2>(blk, conv.wo, &places);
            output_block_t::<4, 2>(out_f2, conv, blk, mm, |o, b, out| {
                scatter::<2>(conv, &stores, o, b, out, y)
            })
        }
        Tile::F4 => {
            let stores = Stores::new::<4>(blk, conv.wo, &places);
            output_block_t::<6, 4>(out_f4, conv, blk, mm, |o, b, out| {
                scatter::<4>(conv, &stores, o, b, out, y)
            })
        }
    }
}

/// `vpermt2ps` indices of the interleaves of 2 and 4 columns: float `M u + j` of slot
/// `k` of the virtual row is lane `16 k / M + u` of column `j` (on F4, of column `j & 1`
/// of the pair `0, 1` or `2, 3`, blended).
const INTERLEAVE: [[[i32; 16]; 4]; 2] = {
    let mut idx = [[[0; 16]; 4]; 2];
    let mut k = 0;
    while k < 4 {
        let mut e = 0;
        while e < 16 {
            idx[0][k][e] = ((e & 1) * 16 + 8 * k + e / 2) as i32;
            idx[1][k][e] = ((e & 1) * 16 + 4 * k + e / 4) as i32;
            e += 1;
        }
        k += 1;
    }
    idx
};

/// Slot `k` of the virtual row of the `M` columns `cols`: `cols[j][lane]` at `M lane
/// + j - 16 k`.
#[target_feature(enable = "avx512f")]
#[inline]
fn interleave<const M: usize>(cols: &[__m512; 4], k: usize) -> __m512 {
    let idx = &INTERLEAVE[M / 2 - 1][k];
    // SAFETY: `idx` is 16 i32, 64 bytes (unaligned loads).
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast::<__m512i>()) };
    let lo = _mm512_permutex2var_ps(cols[0], idx, cols[1]);
    if M == 2 {
        lo
    } else {
        let hi = _mm512_permutex2var_ps(cols[2], idx, cols[3]);
        _mm512_mask_blend_ps(0xcccc, lo, hi)
    }
}

/// Writes `out` (as [`super::scatter_scalar`]) of channel `o` of lane group `b`.
#[target_feature(enable = "avx512f")]
#[inline]
fn scatter<const M: usize>(
    conv: &Conv<'_>,
    stores: &Stores,
    o: usize,
    b: usize,
    out: &[Lane],
    y: &mut [&mut [f32]],
) {
    let (first, per) = stores.groups[b];
    let puts = &stores.puts[first..first + M * per];
    match per {
        1 => scatter_n::<M, 1>(conv, puts, o, per, out, y),
        2 => scatter_n::<M, 2>(conv, puts, o, per, out, y),
        _ => scatter_n::<M, 0>(conv, puts, o, per, out, y),
    }
}

/// [`scatter`] with `per` stores per slot, `P` when not 0 (then the loops unroll).
#[target_feature(enable = "avx512f")]
#[inline]
fn scatter_n<const M: usize, const P: usize>(
    conv: &Conv<'_>,
    puts: &[Put],
    o: usize,
    per: usize,
    out: &[Lane],
    y: &mut [&mut [f32]],
) {
    let per = if P == 0 { per } else { P };
    let puts = &puts[..M * per];
    let out = &out[..M * M];
    for i in 0..M {
        let mut cols = [_mm512_setzero_ps(); 4];
        for (j, col) in cols.iter_mut().take(M).enumerate() {
            // SAFETY: `out[i * M + j]` is 16 f32.
            *col = unsafe { _mm512_loadu_ps(out[i * M + j].as_ptr()) };
        }
        let row = (i * conv.wo) as isize;
        for k in 0..M {
            let v = interleave::<M>(&cols, k);
            for p in &puts[k * per..(k + 1) * per] {
                let plane = &mut *y[p.img * conv.cout + o];
                let at = plane.as_mut_ptr().wrapping_offset(p.off + row);
                // SAFETY: the floats of mask `p.masks[i]` are inside the plane (checked
                // in `Stores::new` against `out_rows * wo`, and `output_block` checked
                // the planes' length); AVX-512 masked stores do not touch the others.
                unsafe { _mm512_mask_storeu_ps(at, p.masks[i], v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Conv, Origin, OutBlock, Tile, input_block, isa, output_block};
    use crate::gemm::Kernel;
    use crate::ops::geometry::{Conv2dGeometry, Conv2dOptions};

    /// A small xorshift: the test's geometry and data, the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn float(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        }
    }

    /// The transformed block `V` of `origins` on every kernel this CPU runs, bit for
    /// bit against the portable scalar gather.
    fn compare(
        tile: Tile,
        x: &[f32],
        (n, cin, hi, wi): (usize, usize, usize, usize),
        origins: &[Origin],
    ) {
        let a = tile.alpha();
        let geo = Conv2dGeometry::new(
            "winograd gather test",
            [n, cin, hi, wi],
            [1, cin, 3, 3],
            &Conv2dOptions::default().with_padding((2, 2)),
        )
        .expect("a geometry");
        let conv = |kernel| Conv {
            tile,
            kernel,
            x,
            cin,
            hi,
            wi,
            cout: 1,
            ho: hi,
            wo: wi,
            pad: (0, 0),
            u: &[],
            bias: None,
            geo: &geo,
        };
        let tp = origins.len().next_multiple_of(16);
        let mut want = vec![f32::NAN; a * a * cin * tp];
        input_block(&conv(Kernel::Fallback), origins, &mut want, tp);
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
            let mut got = vec![f32::NAN; a * a * cin * tp];
            isa::input_block(kernel, &conv(kernel), origins, &mut got, tp);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{tile:?} {} {n}x{cin}x{hi}x{wi}, V[{i}] of {} tiles",
                    kernel.name(),
                    origins.len()
                );
            }
        }
    }

    #[test]
    fn vector_gather_is_bit_identical_to_the_scalar_one() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let sizes = [
            (1, 1, 1, 1),
            (1, 3, 5, 7),
            (2, 1, 9, 14),
            (3, 5, 6, 6),
            (1, 2, 17, 23),
        ];
        let sizes = sizes
            .into_iter()
            .chain([(2, 3, 12, 56), (1, 1, 3, 70), (4, 1, 2, 3)]);
        for (n, cin, hi, wi) in sizes {
            let x: Vec<f32> = (0..n * cin * hi * wi).map(|_| rng.float()).collect();
            let plane = cin * hi * wi;
            for tile in [Tile::F2, Tile::F4] {
                let m = tile.m() as isize;
                // The tiles of a task, every padding (negative: the input gradient's).
                for pad in -1..=3isize {
                    let (ho, wo) = (hi as isize + 2 * pad - 2, wi as isize + 2 * pad - 2);
                    if ho < 1 || wo < 1 {
                        continue;
                    }
                    let (th, tw) = ((ho + m - 1) / m, (wo + m - 1) / m);
                    let mut origins = Vec::new();
                    for img in 0..n {
                        for ty in 0..th {
                            for tx in 0..tw {
                                origins.push(Origin {
                                    image: img * plane,
                                    iy: ty * m - pad,
                                    ix: tx * m - pad,
                                });
                            }
                        }
                    }
                    compare(tile, &x, (n, cin, hi, wi), &origins);
                    // A band of tile rows starting mid-list.
                    let skip = rng.below(origins.len());
                    compare(tile, &x, (n, cin, hi, wi), &origins[skip..]);
                }
                // Arbitrary origins: runs of random length, any offset, inside or not.
                let mut origins = Vec::new();
                while origins.len() < 100 {
                    let image = rng.below(n) * plane;
                    let iy = rng.below(hi + 8) as isize - 5;
                    let mut ix = rng.below(wi + 8) as isize - 5;
                    for _ in 0..1 + rng.below(20) {
                        origins.push(Origin { image, iy, ix });
                        ix += m;
                    }
                }
                compare(tile, &x, (n, cin, hi, wi), &origins);
            }
        }
    }

    #[test]
    fn vector_scatter_is_bit_identical_to_the_scalar_one() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        // (images, tile rows, output width, rows clipped off the last tile row, cout)
        let blocks: [(usize, usize, usize, usize, usize); 7] = [
            (1, 1, 1, 0, 1),
            (1, 3, 7, 1, 3),
            (2, 2, 56, 0, 2),
            (3, 5, 13, 3, 1),
            (1, 9, 30, 2, 5),
            (4, 1, 3, 1, 2),
            (1, 2, 70, 0, 1),
        ];
        for (nimg, rows, wo, clip, cout) in blocks {
            for tile in [Tile::F2, Tile::F4] {
                let (m, a) = (tile.m(), tile.alpha());
                let tw = wo.div_ceil(m);
                let out_rows = rows * m - clip.min(m - 1);
                let t = nimg * rows * tw;
                let tp = t.next_multiple_of(16) + 16 * rng.below(2);
                let mm: Vec<f32> = (0..a * a * cout * tp).map(|_| rng.float()).collect();
                let bias: Vec<f32> = (0..cout).map(|_| rng.float()).collect();
                let geo = Conv2dGeometry::new(
                    "winograd scatter test",
                    [nimg, 1, out_rows, wo],
                    [cout, 1, 3, 3],
                    &Conv2dOptions::default().with_padding((1, 1)),
                )
                .expect("a geometry");
                let conv = |kernel| Conv {
                    tile,
                    kernel,
                    x: &[],
                    cin: 1,
                    hi: out_rows,
                    wi: wo,
                    cout,
                    ho: out_rows,
                    wo,
                    pad: (1, 1),
                    u: &[],
                    bias: Some(&bias),
                    geo: &geo,
                };
                let blk = OutBlock {
                    tw,
                    rows,
                    out_rows,
                    t,
                    tp,
                };
                let run = |f: &dyn Fn(&mut [&mut [f32]])| {
                    let mut planes = vec![vec![f32::NAN; out_rows * wo]; nimg * cout];
                    let mut y: Vec<&mut [f32]> = planes.iter_mut().map(|p| &mut p[..]).collect();
                    f(&mut y);
                    planes
                };
                let want = run(&|y| output_block(&conv(Kernel::Fallback), &blk, &mm, y));
                for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                    let got = run(&|y| isa::output_block(kernel, &conv(kernel), &blk, &mm, y));
                    for (p, (g, w)) in got.iter().zip(&want).enumerate() {
                        for (i, (g, w)) in g.iter().zip(w).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                w.to_bits(),
                                "{tile:?} {} {nimg}x{rows}x{wo} clip {clip}: plane {p}, [{i}]",
                                kernel.name()
                            );
                        }
                    }
                }
            }
        }
    }
}
