//! The indirect micro-kernel behind the direct conv path: a GEMM whose A operand is
//! never formed. Row `p` of A, column `k`, is read straight from the input image at
//! `bases[p] + offs[k]`, so a convolution needs no im2col buffer:
//!
//! `out[p * ldw + o] = sum_k x[bases[p] + offs[k]] * w[k * ldw + o]`
//!
//! with `p` an output position (`bases[p]` its window's corner in the padded image), `k`
//! a tap `(c, i, j)` (`offs[k]` its offset in the window) and `o` an output channel
//! (the weights packed as `K x ldw`, `ldw` a multiple of the vector width). The register
//! tile is `MR` positions by up to `NVMAX` vectors of channels; each step loads the
//! weight vectors once and broadcasts one input value per position.

use super::Simd;

/// Most taps per depth block, so a block of the weight panel stays near the core while
/// the positions stream past. 1 thread, fwd / bwd ms by block size (unblocked, 64, 128,
/// 256, 384, 512): vgg_256 (K = 2304) 36.4 / 86, 36.7 / 90, 34.8 / 87, 33.0 / 84,
/// 33.0 / 81.6, 33.0 / 82.7; resnet_64 (K = 576) 36.4 / 74 unblocked, 35.0 / 72.6 at
/// 384.
const KB: usize = 384;

/// Raw arguments of one indirect call, checked by [`super::indirect_gemm`].
#[derive(Clone, Copy)]
pub(crate) struct IndirectArgs {
    /// The (padded) input image.
    pub x: *const f32,
    /// `rows` window corners, offsets into `x`.
    pub bases: *const usize,
    pub rows: usize,
    /// `k` tap offsets inside a window.
    pub offs: *const usize,
    pub k: usize,
    /// Packed weights, `k x ldw`; or rows of `ldw` anywhere in `w`, as `w_rows` says.
    pub w: *const f32,
    /// Row `kk` of the weights starts at `w + w_rows[kk]`; null: at `w + kk * ldw`.
    pub w_rows: *const usize,
    /// Channels per weight row and per output row (a multiple of the vector width).
    pub ldw: usize,
    /// Output, `rows` rows of `ldw` floats.
    pub c: *mut f32,
    /// Row `p` of the output starts at `c + c_rows[p]`; null: at `c + p * ldw`.
    pub c_rows: *const usize,
    /// Floats between a row's consecutive channels (1: consecutive).
    pub c_stride: usize,
    /// Only the first this many channels of each row are written (`None`: all `ldw`,
    /// with `c_stride` 1).
    pub c_channels: Option<usize>,
    /// `ldw` floats added to every output row once its sum is complete; null: none.
    pub bias: *const f32,
    /// Add the sums to what `c` holds instead of storing them.
    pub accumulate: bool,
}

/// All tiles of one indirect call.
///
/// # Safety
/// For every `p < rows` and `k' < k`, `x + bases[p] + offs[k']` is readable; `w` holds
/// `k * ldw` readable f32 (when `w_rows` is not null, which then holds `k` offsets:
/// `ldw` readable f32 from each `w + w_rows[k']`); each output row's channels (from `c + p * ldw`, or from
/// `c + c_rows[p]` when `c_rows` is not null, which then holds `rows` offsets; channel
/// `o` at `o * c_stride` from there, for `o` below `c_channels` or `ldw`) are
/// writable; `bias`, when not null, holds `ldw` readable f32; `ldw` is a positive
/// multiple of `S::LANES`; `c_stride` is 1 when `c_channels` is `None`; the caller runs
/// under `S`'s target features.
#[inline(always)]
pub(super) unsafe fn indirect_body<S: Simd, const MR: usize, const NVMAX: usize>(
    args: &IndirectArgs,
) {
    // SAFETY: the caller's contract, passed on.
    unsafe { body::<S, MR, NVMAX, AllLanes>(args, AllLanes) }
}

/// [`indirect_body`] for calls with `c_channels` (the live channels of each row,
/// `c_stride` apart): compiled apart, so that its stores do not change how the usual
/// case is compiled (sharing one function, the one-vector tiles of seed_l2 kept two of
/// their loop's values on the stack: 4-5% slower).
///
/// # Safety
/// As [`indirect_body`].
#[inline(always)]
pub(super) unsafe fn indirect_body_live<S: Simd, const MR: usize, const NVMAX: usize>(
    args: &IndirectArgs,
) {
    let out = LiveLanes {
        live: args.c_channels.unwrap_or(args.ldw),
        stride: args.c_stride,
    };
    // SAFETY: the caller's contract, passed on.
    unsafe { body::<S, MR, NVMAX, LiveLanes>(args, out) }
}

/// [`indirect_body`] with the rows' channels as `out` says.
///
/// # Safety
/// As [`indirect_body`].
#[inline(always)]
unsafe fn body<S: Simd, const MR: usize, const NVMAX: usize, O: OutCols>(
    args: &IndirectArgs,
    out: O,
) {
    // SAFETY: the caller's contract, passed on; each reads the weights as `w_rows` says.
    unsafe {
        match args.w_rows.is_null() {
            true => {
                let w = Packed {
                    w: args.w,
                    ldw: args.ldw,
                };
                panels::<S, MR, NVMAX, O, Packed>(args, out, w)
            }
            false => {
                let w = Indexed {
                    w: args.w,
                    rows: args.w_rows,
                };
                panels::<S, MR, NVMAX, O, Indexed>(args, out, w)
            }
        }
    }
}

/// [`body`] with the weight rows where `w` says.
///
/// # Safety
/// As [`indirect_body`].
#[inline(always)]
unsafe fn panels<S: Simd, const MR: usize, const NVMAX: usize, O: OutCols, W: WeightRows>(
    args: &IndirectArgs,
    out: O,
    w: W,
) {
    let nvec = args.ldw / S::LANES;
    // SAFETY: each panel covers vectors below `nvec` (`ldw`), as `panel` requires.
    unsafe {
        // Channel panels outside, positions inside: one panel of weights (`k x NR`)
        // stays in cache while every position streams past it.
        if four_vector_panels::<MR, NVMAX>(nvec) {
            // Whole panels of four vectors (64 channels on AVX-512) in 6 x 4 tiles
            // rather than 8 x 3 + 8 x 1 or 8 x 2 + 8 x 2: 10 loads per 24 FMAs, each
            // tap's broadcasts loaded once per four vectors. 1 thread, direct path, ms
            // before / after: resnet_64 (O = 64) fwd 56-59 / 53-56, bwd 126-130 /
            // 114-119; resnet_128s2 (O = 128) fwd 32-35 / 31, bwd 72-73 / 68; vgg_256
            // the same. Tried: 12 x 2 for two vectors, three times slower (twelve row
            // pointers do not fit the general registers).
            for v0 in (0..nvec).step_by(4) {
                panel::<S, 6, 4, O, W>(args, v0, out, w);
            }
            return;
        }
        // Panels as even as possible: 4 vectors run as 2 + 2, not 3 + 1 (a one-vector
        // tile does one weight load per MR broadcasts and is load-bound).
        let panels = nvec.div_ceil(NVMAX);
        let mut v0 = 0;
        for p in 0..panels {
            let nv = (nvec - v0).div_ceil(panels - p);
            match nv {
                3.. => panel::<S, MR, 3, O, W>(args, v0, out, w),
                2 => panel::<S, MR, 2, O, W>(args, v0, out, w),
                _ => panel::<S, MR, 1, O, W>(args, v0, out, w),
            }
            v0 += nv;
        }
    }
}

/// Whether [`indirect_body`] runs rows of `nvec` vectors in panels of four vectors, on
/// 6 x 4 tiles.
const fn four_vector_panels<const MR: usize, const NVMAX: usize>(nvec: usize) -> bool {
    NVMAX == 3 && MR == 8 && nvec.is_multiple_of(4)
}

/// Rows (positions) per register tile of [`indirect_body`] on rows of `nvec` vectors: a
/// call's rows run in tiles of this many, the last one possibly partial.
pub(super) const fn tile_rows<const MR: usize, const NVMAX: usize>(nvec: usize) -> usize {
    match four_vector_panels::<MR, NVMAX>(nvec) {
        true => 6,
        false => MR,
    }
}

/// [`indirect_body`] for the `NV` vectors of channels from vector `v0`, in `MR x NV`
/// tiles ([`tile_split`] for one vector).
///
/// # Safety
/// As [`indirect_body`], with `ldw >= (v0 + NV) * S::LANES`.
#[inline(always)]
unsafe fn panel<S: Simd, const MR: usize, const NV: usize, O: OutCols, W: WeightRows>(
    args: &IndirectArgs,
    v0: usize,
    out: O,
    w: W,
) {
    let IndirectArgs {
        x,
        bases,
        rows,
        offs,
        k,
        ldw,
        c,
        c_rows,
        bias,
        accumulate,
        // `out` is built from them.
        c_stride: _,
        c_channels: _,
        // `w` is built from them.
        w: _,
        w_rows: _,
    } = *args;
    // Where this panel's channels go.
    let out = out.past_lanes(v0 * S::LANES);
    // SAFETY: positions below `rows` and the `NV` vectors from `v0` only; an edge tile
    // points its missing rows at the last valid position (valid reads), and stores only
    // the valid rows.
    unsafe {
        // Depth in blocks of at most KB taps, so the block of the weight panel (KB x NR
        // floats) stays in L1 while the positions stream past; later blocks add onto
        // what the earlier ones stored.
        let blocks = k.div_ceil(KB).max(1);
        for kb in 0..blocks {
            let (k0, k1) = (kb * k / blocks, (kb + 1) * k / blocks);
            let (wv, ob) = (w.from(k0, v0 * S::LANES), offs.add(k0));
            // The bias goes onto the complete sums: after the last block.
            let bv = match bias.is_null() || kb + 1 < blocks {
                true => std::ptr::null(),
                false => bias.add(v0 * S::LANES),
            };
            for p0 in (0..rows).step_by(MR) {
                let valid = MR.min(rows - p0);
                let mut xs = [x; MR];
                let mut cs = [c; MR];
                for (i, (xi, ci)) in xs.iter_mut().zip(&mut cs).enumerate() {
                    let p = p0 + i.min(valid - 1);
                    *xi = x.add(*bases.add(p));
                    let row = match c_rows.is_null() {
                        true => p * ldw,
                        false => *c_rows.add(p),
                    };
                    *ci = c.add(row + out.offset(v0 * S::LANES));
                }
                let (kk, add) = (k1 - k0, kb > 0 || accumulate);
                if NV == 1 {
                    tile_split::<S, MR, O, W>(&xs, ob, kk, wv, &cs, out, bv, valid, add);
                } else {
                    tile::<S, MR, NV, O, W>(&xs, ob, kk, wv, &cs, out, bv, valid, add);
                }
            }
        }
    }
}

/// Where a panel's weight rows are: a type, so that packed rows (the usual case)
/// compile as before, with no index to load per tap.
trait WeightRows: Copy {
    /// The rows from row `k0` on, from their lane `lane0`.
    ///
    /// # Safety
    /// The result stays inside the weights, as [`indirect_body`] says.
    unsafe fn from(self, k0: usize, lane0: usize) -> Self;
    /// Where row `kk` starts.
    ///
    /// # Safety
    /// `kk` is a row of the call, as [`indirect_body`] says.
    unsafe fn row(self, kk: usize) -> *const f32;
}

/// Rows `ldw` floats apart.
#[derive(Clone, Copy)]
struct Packed {
    w: *const f32,
    ldw: usize,
}

impl WeightRows for Packed {
    #[inline(always)]
    unsafe fn from(self, k0: usize, lane0: usize) -> Self {
        Packed {
            // SAFETY: the caller's contract.
            w: unsafe { self.w.add(k0 * self.ldw + lane0) },
            ldw: self.ldw,
        }
    }
    #[inline(always)]
    unsafe fn row(self, kk: usize) -> *const f32 {
        // SAFETY: the caller's contract.
        unsafe { self.w.add(kk * self.ldw) }
    }
}

/// Row `kk` at `w + rows[kk]`.
#[derive(Clone, Copy)]
struct Indexed {
    w: *const f32,
    rows: *const usize,
}

impl WeightRows for Indexed {
    #[inline(always)]
    unsafe fn from(self, k0: usize, lane0: usize) -> Self {
        // SAFETY: the caller's contract.
        unsafe {
            Indexed {
                w: self.w.add(lane0),
                rows: self.rows.add(k0),
            }
        }
    }
    #[inline(always)]
    unsafe fn row(self, kk: usize) -> *const f32 {
        // SAFETY: the caller's contract.
        unsafe { self.w.add(*self.rows.add(kk)) }
    }
}

/// How a panel's output rows take its channels: a type, so that the usual case
/// ([`AllLanes`]) compiles to plain vector loads and stores. Tried as one enum matched
/// at each store: the direct path's kernels ran 5-8% slower wherever it took the
/// usual case (resnet_128s2 backward, seed_l2..l4; 1 thread, Intel Xeon 6/207).
trait OutCols: Copy {
    /// This panel's view, its first lane at channel `lane0` of the row.
    fn past_lanes(self, lane0: usize) -> Self;
    /// Floats from a row's start to its channel `lane`.
    fn offset(self, lane: usize) -> usize;
    /// Vector `v` of a row starting at `row`.
    ///
    /// # Safety
    /// `row`'s channels are readable as [`indirect_body`] says.
    unsafe fn load<S: Simd>(self, row: *const f32, v: usize) -> S::V;
    /// `x` to vector `v` of a row starting at `row`.
    ///
    /// # Safety
    /// `row`'s channels are writable as [`indirect_body`] says.
    unsafe fn store<S: Simd>(self, row: *mut f32, v: usize, x: S::V);
}

/// Every lane, consecutive.
#[derive(Clone, Copy)]
struct AllLanes;

impl OutCols for AllLanes {
    #[inline(always)]
    fn past_lanes(self, _: usize) -> Self {
        self
    }
    #[inline(always)]
    fn offset(self, lane: usize) -> usize {
        lane
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(self, row: *const f32, v: usize) -> S::V {
        // SAFETY: the caller's contract.
        unsafe { S::load(row.add(v * S::LANES)) }
    }
    #[inline(always)]
    unsafe fn store<S: Simd>(self, row: *mut f32, v: usize, x: S::V) {
        // SAFETY: the caller's contract.
        unsafe { S::store(row.add(v * S::LANES), x) }
    }
}

/// The first `live` channels from the panel's first lane (possibly none, or more
/// than it has), `stride` floats apart.
#[derive(Clone, Copy)]
struct LiveLanes {
    live: usize,
    stride: usize,
}

impl LiveLanes {
    /// The lanes of vector `v` that are live.
    #[inline(always)]
    fn lanes<S: Simd>(self, v: usize) -> usize {
        self.live.saturating_sub(v * S::LANES).min(S::LANES)
    }
}

impl OutCols for LiveLanes {
    #[inline(always)]
    fn past_lanes(self, lane0: usize) -> Self {
        LiveLanes {
            live: self.live.saturating_sub(lane0),
            stride: self.stride,
        }
    }
    #[inline(always)]
    fn offset(self, lane: usize) -> usize {
        lane * self.stride
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(self, row: *const f32, v: usize) -> S::V {
        // SAFETY: the caller's contract; only the live lanes are read.
        unsafe {
            match self.lanes::<S>(v) {
                0 => S::zero(),
                n => S::load_strided(row.add(self.offset(v * S::LANES)), self.stride, n),
            }
        }
    }
    #[inline(always)]
    unsafe fn store<S: Simd>(self, row: *mut f32, v: usize, x: S::V) {
        // SAFETY: the caller's contract; only the live lanes are written.
        unsafe {
            let n = self.lanes::<S>(v);
            if n > 0 {
                S::store_strided(row.add(self.offset(v * S::LANES)), self.stride, n, x);
            }
        }
    }
}

/// One `MR x NV` vector tile: `valid` rows, row `i` at `cs[i]` (its channels as `out`
/// says), stored, or added to what they hold when `add`; then `bias` (when not null)
/// added to them.
///
/// # Safety
/// As [`indirect_body`], for the `NV` vectors of channels at `w`, `bias` and each
/// `cs[i]`; with `add`, the `valid` rows must already be written.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<S: Simd, const MR: usize, const NV: usize, O: OutCols, W: WeightRows>(
    xs: &[*const f32; MR],
    offs: *const usize,
    k: usize,
    w: W,
    cs: &[*mut f32; MR],
    out: O,
    bias: *const f32,
    valid: usize,
    add: bool,
) {
    // SAFETY: the caller's contract covers every read and the `valid` rows written.
    unsafe {
        let mut acc = [[S::zero(); NV]; MR];
        if add {
            for (row, &ci) in acc.iter_mut().zip(cs).take(valid) {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = out.load::<S>(ci, v);
                }
            }
        }
        for kk in 0..k {
            let off = *offs.add(kk);
            let wk = w.row(kk);
            let mut bv = [S::zero(); NV];
            for (v, b) in bv.iter_mut().enumerate() {
                *b = S::load(wk.add(v * S::LANES));
            }
            for (row, xi) in acc.iter_mut().zip(xs) {
                let a = S::splat(*xi.add(off));
                for (x, b) in row.iter_mut().zip(bv) {
                    *x = S::fma(a, b, *x);
                }
            }
        }
        // A copy: the strided stores below (their lane counts depend on the vector)
        // otherwise kept the accumulators in memory through the loop above (2x slower).
        let fin = acc;
        let one = S::splat(1.0);
        for (row, &ci) in fin.iter().zip(cs).take(valid) {
            for (v, &x) in row.iter().enumerate() {
                let x = match bias.is_null() {
                    true => x,
                    // `1 * b + x`: `x + b` rounded once, as an add.
                    false => S::fma(S::load(bias.add(v * S::LANES)), one, x),
                };
                out.store::<S>(ci, v, x);
            }
        }
    }
}

/// One `MR x 1` vector tile, as [`tile`] with `NV = 1` but with the taps split in two
/// interleaved halves, each summed in its own accumulators and the halves added at the
/// end: a one-vector tile has only `MR` independent sums, too few to cover the FMA
/// latency on cores with two FMA pipes (8 in flight needed at 4 cycles each).
///
/// # Safety
/// As [`tile`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_split<S: Simd, const MR: usize, O: OutCols, W: WeightRows>(
    xs: &[*const f32; MR],
    offs: *const usize,
    k: usize,
    w: W,
    cs: &[*mut f32; MR],
    out: O,
    bias: *const f32,
    valid: usize,
    add: bool,
) {
    // SAFETY: the caller's contract covers every read and the `valid` rows written.
    unsafe {
        let mut even = [S::zero(); MR];
        let mut odd = [S::zero(); MR];
        if add {
            for (x, &ci) in even.iter_mut().zip(cs).take(valid) {
                *x = out.load::<S>(ci, 0);
            }
        }
        let pairs = k / 2;
        for kp in 0..pairs {
            let kk = 2 * kp;
            let (o0, o1) = (*offs.add(kk), *offs.add(kk + 1));
            let b0 = S::load(w.row(kk));
            let b1 = S::load(w.row(kk + 1));
            for ((e, d), xi) in even.iter_mut().zip(odd.iter_mut()).zip(xs) {
                *e = S::fma(S::splat(*xi.add(o0)), b0, *e);
                *d = S::fma(S::splat(*xi.add(o1)), b1, *d);
            }
        }
        if k % 2 == 1 {
            let kk = k - 1;
            let o0 = *offs.add(kk);
            let b0 = S::load(w.row(kk));
            for (e, xi) in even.iter_mut().zip(xs) {
                *e = S::fma(S::splat(*xi.add(o0)), b0, *e);
            }
        }
        // `odd * 1 + even`: one rounding, the exact sum rounded, as an add.
        // Copies, as in `tile`.
        let (even, odd) = (even, odd);
        let one = S::splat(1.0);
        for ((&e, &d), &ci) in even.iter().zip(&odd).zip(cs).take(valid) {
            let x = S::fma(d, one, e);
            let x = match bias.is_null() {
                true => x,
                false => S::fma(S::load(bias), one, x),
            };
            out.store::<S>(ci, 0, x);
        }
    }
}

/// Raw arguments of one B-indirect call, checked by [`super::indirect_b_gemm`].
#[derive(Clone, Copy)]
pub(crate) struct IndirectBArgs {
    /// A packed in `MR`-row micro-panels (`k` steps of `MR` values each).
    pub a: *const f32,
    /// Rows of C (and of A).
    pub m: usize,
    /// Depth.
    pub k: usize,
    /// The image B's rows are read from: row `kk` is `n` floats from `b + offs[kk]`.
    pub b: *const f32,
    pub offs: *const usize,
    /// Columns of C.
    pub n: usize,
    /// C, `m` rows of `n` at row stride `ldc` (unused with `ext`).
    pub c: *mut f32,
    pub ldc: usize,
    /// Store only the real columns of an extended grid, packed, instead of into `c`.
    pub ext: Option<ExtOut>,
}

/// The real part of an extended output grid: of each `cols` consecutive columns the
/// first `ow` are real; row `i` of C goes to `y + i * ldy` with the other columns left
/// out (column `e` to `(e / cols) * ow + e % cols`), plus `bias[i]`.
#[derive(Clone, Copy)]
pub(crate) struct ExtOut {
    pub y: *mut f32,
    pub ldy: usize,
    pub cols: usize,
    pub ow: usize,
    /// `m` floats, or null.
    pub bias: *const f32,
    /// Tile the real columns row by row ([`indirect_b_rows`]) instead of running the
    /// tiles along the whole extended grid.
    pub by_rows: bool,
}

/// Which lanes of the vector of columns `es..es + LANES` (below `n`) are real in `ext`,
/// and where the first real one goes in a row of its output.
#[inline(always)]
fn ext_lanes<S: Simd>(es: usize, n: usize, ext: &ExtOut) -> (u32, usize) {
    let start = es / ext.cols * ext.ow + (es % ext.cols).min(ext.ow);
    let mut keep = 0u32;
    let mut q = es % ext.cols;
    for j in 0..S::LANES.min(n.saturating_sub(es)) {
        if q < ext.ow {
            keep |= 1 << j;
        }
        q += 1;
        if q == ext.cols {
            q = 0;
        }
    }
    (keep, start)
}

/// One `MR x NV` tile's sums of the B-indirect kernels: `sum_kk a[i, kk] *
/// b[offs[kk] + e]` for the `MR` rows of the A panel at `ap` and the `NV` vectors of
/// columns from `b`.
///
/// # Safety
/// `ap` holds `k * MR` readable f32, `offs` `k` offsets, and `b + offs[kk]` starts
/// `NV * S::LANES` readable f32 for each; the caller runs under `S`'s target features.
#[inline(always)]
unsafe fn b_sums<S: Simd, const MR: usize, const NV: usize>(
    ap: *const f32,
    k: usize,
    b: *const f32,
    offs: *const usize,
) -> [[S::V; NV]; MR] {
    // SAFETY: the caller's contract covers every read.
    unsafe {
        let mut acc = [[S::zero(); NV]; MR];
        for kk in 0..k {
            let bp = b.add(*offs.add(kk));
            let mut bv = [S::zero(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = S::load(bp.add(v * S::LANES));
            }
            let ak = ap.add(kk * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = S::splat(*ak.add(i));
                for (x, bvv) in row.iter_mut().zip(bv) {
                    *x = S::fma(ai, bvv, *x);
                }
            }
        }
        acc
    }
}

/// [`indirect_b_body`] on an extended grid tiled row by row: each register tile covers
/// up to `NR` real columns of one extended row, so no lane computes a discarded column
/// and the tile's vectors are stored as they are (a row's last one masked to its real
/// lanes). Where the rows' real columns fill whole vectors (24 of 28 in the notebook's
/// 5x5 layer, on 8-lane vectors) it computes `ow / cols` of the flat grid's work. The
/// sums are the flat grid's, in the same order.
///
/// # Safety
/// As [`indirect_b_body`] with `ext`, except that B's rows are read, for each extended
/// row `r` with real columns, from `b + offs[kk] + r * cols` up to its real columns
/// rounded up to `NR`.
#[inline(always)]
unsafe fn indirect_b_rows<S: Simd, const MR: usize, const NV: usize>(
    args: &IndirectBArgs,
    x: &ExtOut,
) {
    let n = args.n;
    // SAFETY: each tile reads B within its row's real columns rounded up to whole
    // vectors, as the contract allows, and stores only the real columns of `m` rows of
    // `y`.
    unsafe {
        for r in 0..n.div_ceil(x.cols) {
            let real = x.ow.min(n - r * x.cols);
            // The row's vectors in tiles as even as possible: 4 as 2 + 2, 7 as 3 + 2 + 2
            // (a tile of 3 vectors with one used would compute three).
            let nvec = real.div_ceil(S::LANES);
            let tiles = nvec.div_ceil(NV);
            let mut v0 = 0;
            for t in 0..tiles {
                let nv = (nvec - v0).div_ceil(tiles - t);
                let e0 = v0 * S::LANES;
                let width = (nv * S::LANES).min(real - e0);
                match nv {
                    3.. => row_tile::<S, MR, 3>(args, x, r, e0, width),
                    2 => row_tile::<S, MR, 2>(args, x, r, e0, width),
                    _ => row_tile::<S, MR, 1>(args, x, r, e0, width),
                }
                v0 += nv;
            }
        }
    }
}

/// The tiles of [`indirect_b_rows`] for columns `e0..e0 + width` of extended row `r`
/// (`width` at most `NV` vectors), every panel of A.
///
/// # Safety
/// As [`indirect_b_rows`], for those columns.
#[inline(always)]
unsafe fn row_tile<S: Simd, const MR: usize, const NV: usize>(
    args: &IndirectBArgs,
    x: &ExtOut,
    r: usize,
    e0: usize,
    width: usize,
) {
    let IndirectBArgs {
        a, m, k, b, offs, ..
    } = *args;
    // SAFETY: the caller's contract.
    unsafe {
        let one = S::splat(1.0);
        let bb = b.add(r * x.cols + e0);
        for ip in 0..m.div_ceil(MR) {
            let rows = MR.min(m - ip * MR);
            let ap = a.add(ip * MR * k);
            let acc = b_sums::<S, MR, NV>(ap, k, bb, offs);
            for (i, row) in acc.iter().enumerate().take(rows) {
                let ri = ip * MR + i;
                let yr = x.y.add(ri * x.ldy + r * x.ow + e0);
                for (v, &val) in row.iter().enumerate() {
                    let lanes = width.saturating_sub(v * S::LANES).min(S::LANES);
                    let val = if x.bias.is_null() {
                        val
                    } else {
                        // `1 * b + v`: `v + b` rounded once, as an add.
                        S::fma(S::splat(*x.bias.add(ri)), one, val)
                    };
                    if lanes == S::LANES {
                        S::store(yr.add(v * S::LANES), val);
                    } else {
                        S::store_strided(yr.add(v * S::LANES), 1, lanes, val);
                    }
                }
            }
        }
    }
}

/// `C = A x B` with B's rows read in place at offsets: `c[i * ldc + e] = sum_kk
/// a[i, kk] * b[offs[kk] + e]`. The direct conv forward of small-channel layers on their
/// stride-phase planes: each tap is a contiguous run of the planes, so the output comes
/// out channel-major with no column matrix and no transpose.
///
/// # Safety
/// `a` holds `ceil(m / MR) * MR * k` f32; for every `kk < k`, `b + offs[kk]` starts
/// `ceil(n / NR) * NR` readable f32 (`NR = NV * S::LANES`); `c + i * ldc + e` is
/// writable for `i < m`, `e < n`, or, with `ext`, `y + i * ldy + j` for `i < m` and `j`
/// below the real columns of `n` (`(n / cols) * ow + min(n % cols, ow)`), and the bias
/// (when not null) holds `m` readable f32; the caller runs under `S`'s target features.
#[inline(always)]
pub(super) unsafe fn indirect_b_body<S: Simd, const MR: usize, const NV: usize>(
    args: &IndirectBArgs,
) {
    let IndirectBArgs {
        a,
        m,
        k,
        b,
        offs,
        n,
        c,
        ldc,
        ext,
    } = *args;
    if let Some(x) = ext.filter(|x| x.by_rows) {
        // SAFETY: the caller's contract, for the row-by-row tiling.
        return unsafe { indirect_b_rows::<S, MR, NV>(args, &x) };
    }
    let nr = NV * S::LANES;
    // SAFETY: reads stay inside the panels and B's rows as the contract allows; full
    // tiles store inside C's `m x n`, edge tiles go through a stack buffer and only
    // their valid part is copied out; with `ext`, each vector stores only its real
    // lanes, at their places among the real columns of its row.
    unsafe {
        let mut buf = [0.0f32; super::MAX_TILE];
        // Column panels outside: one panel of B (k x NR) is reused by every A panel.
        for e0 in (0..n).step_by(nr) {
            let cols = nr.min(n - e0);
            // With an extended grid, each vector's real lanes and their place in y.
            let mut lanes_of = [(0u32, 0usize); NV];
            if let Some(x) = &ext {
                for (v, l) in lanes_of.iter_mut().enumerate() {
                    let es = e0 + v * S::LANES;
                    if es < n {
                        *l = ext_lanes::<S>(es, n, x);
                    }
                }
            }
            for ip in 0..m.div_ceil(MR) {
                let rows = MR.min(m - ip * MR);
                let ap = a.add(ip * MR * k);
                let acc = b_sums::<S, MR, NV>(ap, k, b.add(e0), offs);
                if let Some(x) = &ext {
                    let one = S::splat(1.0);
                    for (i, row) in acc.iter().enumerate().take(rows) {
                        let r = ip * MR + i;
                        let yr = x.y.add(r * x.ldy);
                        for (&val, &(keep, start)) in row.iter().zip(&lanes_of) {
                            if keep == 0 {
                                continue;
                            }
                            let val = if x.bias.is_null() {
                                val
                            } else {
                                // `1 * b + v`: `v + b` rounded once, as an add.
                                S::fma(S::splat(*x.bias.add(r)), one, val)
                            };
                            S::store_compressed(val, keep, yr.add(start));
                        }
                    }
                    continue;
                }
                let ct = c.add(ip * MR * ldc + e0);
                if rows == MR && cols == nr {
                    for (i, row) in acc.iter().enumerate() {
                        for (v, &x) in row.iter().enumerate() {
                            S::store(ct.add(i * ldc + v * S::LANES), x);
                        }
                    }
                } else {
                    for (i, row) in acc.iter().enumerate() {
                        for (v, &x) in row.iter().enumerate() {
                            S::store(buf.as_mut_ptr().add(i * nr + v * S::LANES), x);
                        }
                    }
                    for i in 0..rows {
                        for e in 0..cols {
                            *ct.add(i * ldc + e) = buf[i * nr + e];
                        }
                    }
                }
            }
        }
    }
}
