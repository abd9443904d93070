//! The direct conv path, forward beside backward: no column matrix at all. Every product
//! runs on the indirect GEMM kernel ([`crate::gemm::indirect_gemm`]), which reads its
//! A operand in place at `base + offset` from a zero-padded copy of one image:
//!
//! - forward: `y[p, o] = sum_k xpad[bases[p] + offs[k]] * W[k, o]` (positions by
//!   output channels, [`DirectIndex`]), then written channel-major with the bias;
//! - weight gradient: the same gather with the roles swapped,
//!   `dW[k, o] += sum_p xpad[offs[k] + bases[p]] * dy[p, o]`, summed per image;
//! - input gradient: a transposed conv, run per pixel class as a gather from a
//!   zero-padded `dy` ([`TransposeIndex`]): `dx[pix, c] = sum_(o, tap)
//!   dypad[bases[pix] + off(o, tap)] * W[o, c, tap]`.
//!
//! It pays where im2col does not: the column matrix costs a gather per element to build
//! and a scatter per element to fold back, which dominated the notebook's small layers
//! (two thirds of their forward time), and an extra pass over memory on large ones.
//! Groups of 1 only.

use std::cell::RefCell;

use ndarray::{Array1, Array2, ArrayView1, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s};

use super::gemm_path::{Operands, bias_partial};
use super::{for_each_image_tile, with_scratch};
use crate::error::Result;
use crate::gemm::{Kernel, indirect_gemm};
use crate::limits::{checked_len, try_resize, try_zeroed_vec};
use crate::ops::geometry::{Conv2dGeometry, DirectIndex, TransposeIndex};

const OP: &str = super::OP;

/// Resizes one of the path's reused buffers to `dims` multiplied, fallibly: a padded
/// image (far padding, stride or dilation) may be far larger than memory.
fn resize(buf: &mut Vec<f32>, dims: &[usize], what: &str, geo: &Conv2dGeometry) -> Result<()> {
    let describe = || format!("{what} of the direct path, {}", geo.describe());
    let len = checked_len(OP, dims, describe)?;
    try_resize(OP, buf, len, 0.0, describe)
}

/// Most bytes of (padded) images per kernel call. Small images go several to a call,
/// so the last register tile of one image is not left half empty (seed_l4 has 4
/// positions per image, half of an 8-position tile) and per-call work is shared.
const CALL_BYTES: usize = 128 << 10;

thread_local! {
    /// Each thread's forward buffers (padded images, output tile), reused across calls:
    /// fresh ones cost page faults and zeroing on every call.
    static FORWARD: RefCell<[Vec<f32>; 2]> = RefCell::default();
    /// Each thread's backward buffers, kept apart from the forward's so that a training
    /// step's alternating passes each find their own buffers at the size they need.
    static BACKWARD: RefCell<[Vec<f32>; 6]> = RefCell::default();
}

/// Weights `(O, K)` packed `K x ldw`, tap-major, channels padded with zeros.
fn pack_weights(w: ndarray::ArrayView2<'_, f32>, ldw: usize) -> Result<Vec<f32>> {
    let mut out = try_zeroed_vec(OP, w.ncols() * ldw, || {
        format!("the packed weights {:?}", w.shape())
    })?;
    for (oi, row) in w.outer_iter().enumerate() {
        for (ki, &v) in row.iter().enumerate() {
            out[ki * ldw + oi] = v;
        }
    }
    Ok(out)
}

/// Forward into `y` (N, O, L), on the rayon pool when the plan says so.
pub(super) fn forward(
    ops: &Operands<'_>,
    bias: Option<ArrayView1<'_, f32>>,
    mut y: ArrayViewMut3<'_, f32>,
) -> Result<()> {
    if y.is_empty() {
        return Ok(());
    }
    if ops.x.ncols() == 0 {
        // An empty image (no channels, or zero height or width, all padding): the output
        // is the bias.
        for (oi, mut yo) in y.axis_iter_mut(Axis(1)).enumerate() {
            yo.fill(bias.map_or(0.0, |b| b[oi]));
        }
        return Ok(());
    }
    let geo = ops.geo;
    let kernel = Kernel::selected();
    let o = y.len_of(Axis(1));
    let ldw = o.next_multiple_of(kernel.lanes());
    let idx = geo.direct_index(OP)?;
    let w = pack_weights(ops.w, ldw)?;
    for_each_image_tile(y, ops.plan.parallel, |n0, yt| {
        with_scratch(&FORWARD, |bufs| {
            forward_tile(ops, &idx, kernel, &w, ldw, bias, n0, yt, bufs)
        })
    })
}

/// Images `n0..n0 + b` into `yt` (b, O, L), [`images_per_call`] images per kernel call.
#[allow(clippy::too_many_arguments)]
fn forward_tile(
    ops: &Operands<'_>,
    idx: &DirectIndex,
    kernel: Kernel,
    w: &[f32],
    ldw: usize,
    bias: Option<ArrayView1<'_, f32>>,
    n0: usize,
    mut yt: ArrayViewMut3<'_, f32>,
    [padded, out]: &mut [Vec<f32>; 2],
) -> Result<()> {
    let geo = ops.geo;
    let l = geo.col_cols();
    let copy = !idx.is_input(geo);
    let img = image_len(geo, idx);
    let (b, o) = (yt.len_of(Axis(0)), yt.len_of(Axis(1)));
    let per_call = images_per_call(img, b);
    let bases = multi_bases(&idx.bases, img, per_call);
    if copy {
        // The borders stay zero for every image of the tile.
        padded.clear();
        resize(padded, &[per_call, img], "the padded images", geo)?;
    }
    resize(out, &[per_call, l, ldw], "the output tile", geo)?;
    let bias_v: Vec<f32> = bias.map_or_else(|| vec![0.0; o], |b| b.to_vec());
    for c0 in (0..b).step_by(per_call) {
        let nc = per_call.min(b - c0);
        let xs = ops.x.slice(s![n0 + c0..n0 + c0 + nc, ..]);
        let xs = xs.to_slice().expect("input rows are contiguous");
        let src = if copy {
            for (x, dst) in xs
                .chunks_exact(ops.x.ncols())
                .zip(padded.chunks_exact_mut(img))
            {
                pad_into(
                    x,
                    geo.in_channels,
                    (geo.in_h, geo.in_w),
                    geo.options.padding,
                    (idx.rows, idx.cols),
                    dst,
                );
            }
            &padded[..]
        } else {
            xs
        };
        indirect_gemm(kernel, src, &bases[..nc * l], &idx.offs, w, ldw, out);
        for (bi, t) in out.chunks_exact(l * ldw).take(nc).enumerate() {
            let mut yn = yt.index_axis_mut(Axis(0), c0 + bi);
            let yn = yn.as_slice_mut().expect("output images are contiguous");
            transpose_add(t, ldw, (l, o), Some(&bias_v), yn, l);
        }
    }
    Ok(())
}

/// Floats of one image as the direct kernels read it: its padded region, or the input
/// itself.
fn image_len(geo: &super::Conv2dGeometry, idx: &DirectIndex) -> usize {
    if idx.is_input(geo) {
        geo.in_channels * geo.in_h * geo.in_w
    } else {
        geo.in_channels * idx.rows * idx.cols
    }
}

/// Images side by side in one kernel call (their positions one after the other, so
/// register tiles run across image boundaries): as many of `b` as fit
/// [`CALL_BYTES`], at least one.
fn images_per_call(image_len: usize, b: usize) -> usize {
    (CALL_BYTES / (image_len * size_of::<f32>()).max(1)).clamp(1, b.max(1))
}

/// `bases` of one image repeated for `images` images `image_len` apart.
fn multi_bases(bases: &[usize], image_len: usize, images: usize) -> Vec<usize> {
    (0..images)
        .flat_map(|i| bases.iter().map(move |&b| i * image_len + b))
        .collect()
}

/// `y[j * ldy + i] = t[i * ldt + j] (+ add[j])` for `i < n`, `j < m`: a transpose
/// between the kernel's position-major tiles and channel-major tensors. Sixteen `i` at
/// a time, so each `y` row gets whole 64-byte stores (a scalar strided loop took 40% of
/// the direct forward of seed_l2).
fn transpose_add(
    t: &[f32],
    ldt: usize,
    (n, m): (usize, usize),
    add: Option<&[f32]>,
    y: &mut [f32],
    ldy: usize,
) {
    const B: usize = 16;
    let bias = |j: usize| add.map_or(0.0, |a| a[j]);
    let full = n / B * B;
    for i0 in (0..full).step_by(B) {
        let rows: [&[f32]; B] = std::array::from_fn(|r| &t[(i0 + r) * ldt..][..m]);
        for j in 0..m {
            let b = bias(j);
            let v: [f32; B] = std::array::from_fn(|r| rows[r][j] + b);
            y[j * ldy + i0..][..B].copy_from_slice(&v);
        }
    }
    for i in full..n {
        for (j, &v) in t[i * ldt..][..m].iter().enumerate() {
            y[j * ldy + i] = v + bias(j);
        }
    }
}

/// `y[c * ldy + pixels[p]] = t[p * ldt + c]` for `c < channels`: a pixel class's
/// position-major tile into the channel-major input gradient. Eight pixels at a time,
/// channel by channel, so the eight stores of a channel land in one stretch of its
/// plane (a pixel-by-pixel loop jumping between planes took 18% of seed_l2's
/// backward).
fn scatter_pixels(
    t: &[f32],
    ldt: usize,
    pixels: &[usize],
    channels: usize,
    y: &mut [f32],
    ldy: usize,
) {
    let full = pixels.len() / 8 * 8;
    for (p0, pix) in pixels[..full].chunks_exact(8).enumerate() {
        let rows: [&[f32]; 8] = std::array::from_fn(|r| &t[(p0 * 8 + r) * ldt..][..channels]);
        for (c, yc) in y.chunks_exact_mut(ldy).take(channels).enumerate() {
            for (r, &px) in pix.iter().enumerate() {
                yc[px] = rows[r][c];
            }
        }
    }
    for (p, &px) in pixels.iter().enumerate().skip(full) {
        for (c, &v) in t[p * ldt..][..channels].iter().enumerate() {
            y[c * ldy + px] = v;
        }
    }
}

/// Copies `src` (`channels` planes of `h x w`) into the inside of a padded region
/// (`channels` planes of `rows x cols`) at `(top, left)`, clipped to the region; the
/// border is left as it is (zeroed once per tile by the callers).
fn pad_into(
    src: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (top, left): (usize, usize),
    (rows, cols): (usize, usize),
    dst: &mut [f32],
) {
    let hh = h.min(rows.saturating_sub(top));
    let ww = w.min(cols.saturating_sub(left));
    if hh == 0 || ww == 0 {
        return;
    }
    for (sc, dc) in src
        .chunks_exact(h * w)
        .zip(dst.chunks_exact_mut(rows * cols))
        .take(channels)
    {
        for (s, d) in sc
            .chunks_exact(w)
            .zip(dc[top * cols..].chunks_exact_mut(cols))
            .take(hh)
        {
            copy_short(&mut d[left..left + ww], &s[..ww]);
        }
    }
}

/// `dst.copy_from_slice(src)` for short rows, inline: a library `memcpy` call per row of
/// a few floats cost more than the copy (a third of the direct forward of seed_l3).
#[inline]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    if n < 8 {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s;
        }
        return;
    }
    // Whole 8-float moves; the last one overlaps the one before when n % 8 != 0.
    let mut i = 0;
    loop {
        let i0 = i.min(n - 8);
        let v: [f32; 8] = src[i0..i0 + 8].try_into().expect("8 floats");
        dst[i0..i0 + 8].copy_from_slice(&v);
        if i0 + 8 == n {
            break;
        }
        i += 8;
    }
}

/// The per-conv part of the direct backward, shared by every reduction chunk.
pub(super) struct Backward {
    kernel: Kernel,
    idx: DirectIndex,
    /// Output channels padded to whole vectors (`dW`'s tile width).
    ldo: usize,
    /// For the input gradient, when wanted.
    dx: Option<InputGrad>,
}

/// The input gradient's part of [`Backward`].
struct InputGrad {
    /// The pixel classes.
    index: TransposeIndex,
    /// Input channels padded to whole vectors (the tile width).
    ldc: usize,
    /// Per class, the weights packed `(O * taps) x ldc` and each row's offset.
    classes: Vec<(Vec<f32>, Vec<usize>)>,
}

impl Backward {
    /// Indexing and packed weights of `ops`' conv; the input gradient's only when
    /// `want_dx`.
    pub(super) fn new(ops: &Operands<'_>, want_dx: bool) -> Result<Self> {
        let geo = ops.geo;
        let kernel = Kernel::selected();
        let lanes = kernel.lanes();
        let (o, c) = (geo.out_channels, geo.in_channels);
        let (kh, kw) = geo.kernel;
        let dx = if want_dx {
            let t = geo.transpose_index(OP)?;
            let ldc = c.next_multiple_of(lanes).max(lanes);
            let plane = t.rows * t.cols;
            let classes = t
                .classes
                .iter()
                .map(|cl| {
                    let nt = cl.taps.len();
                    let mut w = try_zeroed_vec(OP, o * nt * ldc, || {
                        format!(
                            "the packed weights of the input gradient, {}",
                            geo.describe()
                        )
                    })?;
                    let mut offs = Vec::with_capacity(o * nt);
                    for oi in 0..o {
                        for (ti, (&(i, j), &off)) in cl.taps.iter().zip(&cl.tap_offs).enumerate() {
                            offs.push(oi * plane + off);
                            let row = &mut w[(oi * nt + ti) * ldc..][..c];
                            for (ci, d) in row.iter_mut().enumerate() {
                                *d = ops.w[[oi, (ci * kh + i) * kw + j]];
                            }
                        }
                    }
                    Ok((w, offs))
                })
                .collect::<Result<_>>()?;
            Some(InputGrad {
                index: t,
                ldc,
                classes,
            })
        } else {
            None
        };
        Ok(Backward {
            kernel,
            idx: geo.direct_index(OP)?,
            ldo: o.next_multiple_of(lanes).max(lanes),
            dx,
        })
    }

    /// One reduction chunk: images `n0..n0 + nb` in order; fills their rows of `dxc`
    /// (zeroed) when the input gradient is wanted; returns the chunk's `(dW, db)`.
    pub(super) fn chunk(
        &self,
        ops: &Operands<'_>,
        dy: ArrayView3<'_, f32>,
        with_bias: bool,
        n0: usize,
        nb: usize,
        dxc: Option<ArrayViewMut2<'_, f32>>,
    ) -> Result<(Array2<f32>, Array1<f64>)> {
        let geo = ops.geo;
        // An empty image (every tap reads padding) or no output channels: dW is zero or
        // empty, and so is dx.
        let dw = if ops.x.ncols() == 0 || geo.out_channels == 0 {
            Array2::zeros((geo.out_channels, geo.col_rows()))
        } else {
            with_scratch(&BACKWARD, |bufs| self.chunk_in(ops, dy, n0, nb, dxc, bufs))?
        };
        let db = if with_bias {
            bias_partial(dy, n0, nb)
        } else {
            Array1::zeros(dy.len_of(Axis(1)))
        };
        Ok((dw, db))
    }

    fn chunk_in(
        &self,
        ops: &Operands<'_>,
        dy: ArrayView3<'_, f32>,
        n0: usize,
        nb: usize,
        mut dxc: Option<ArrayViewMut2<'_, f32>>,
        [xpad, dyt, tmp, acc, dypad, tile]: &mut [Vec<f32>; 6],
    ) -> Result<Array2<f32>> {
        let geo = ops.geo;
        let (o, l, k) = (geo.out_channels, geo.col_cols(), geo.col_rows());
        let (ldo, idx) = (self.ldo, &self.idx);
        let copy = !idx.is_input(geo);
        let img = image_len(geo, idx);
        let per_call = images_per_call(img, nb);
        let x_bases = multi_bases(&idx.bases, img, per_call);
        // Borders (and padding lanes) are zero for the whole chunk; insides are rewritten
        // per call.
        if copy {
            xpad.clear();
            resize(xpad, &[per_call, img], "the padded images", geo)?;
        }
        dyt.clear();
        resize(dyt, &[per_call, l, ldo], "the transposed grad_out", geo)?;
        resize(tmp, &[k, ldo], "the weight gradient tile", geo)?;
        acc.clear();
        resize(acc, &[k, ldo], "the weight gradient tile", geo)?;
        let dy_img = self
            .dx
            .as_ref()
            .map_or(0, |g| o * g.index.rows * g.index.cols);
        if self.dx.is_some() {
            dypad.clear();
            resize(dypad, &[per_call, dy_img], "the padded grad_out", geo)?;
        }
        // Each class's window corners for `per_call` images side by side.
        let class_bases: Vec<Vec<usize>> = self.dx.as_ref().map_or_else(Vec::new, |g| {
            let classes = &g.index.classes;
            classes
                .iter()
                .map(|cl| multi_bases(&cl.bases, dy_img, per_call))
                .collect()
        });
        for c0 in (0..nb).step_by(per_call) {
            let nc = per_call.min(nb - c0);
            let xs = ops.x.slice(s![n0 + c0..n0 + c0 + nc, ..]);
            let xs = xs.to_slice().expect("input rows are contiguous");
            let src = if copy {
                for (x, dst) in xs
                    .chunks_exact(ops.x.ncols())
                    .zip(xpad.chunks_exact_mut(img))
                {
                    let pad = geo.options.padding;
                    let (hw, region) = ((geo.in_h, geo.in_w), (idx.rows, idx.cols));
                    pad_into(x, geo.in_channels, hw, pad, region, dst);
                }
                &xpad[..]
            } else {
                xs
            };
            let dys = dy.slice(s![n0 + c0..n0 + c0 + nc, .., ..]);
            let dys = dys.to_slice().expect("standard layout dy");
            // dW^T (K x O) += sum_p xpad[offs[k] + bases[p]] * dy^T[p, o], over the
            // positions of all `nc` images.
            for (dyn_, dst) in dys.chunks_exact(o * l).zip(dyt.chunks_exact_mut(l * ldo)) {
                transpose_add(dyn_, l, (o, l), None, dst, ldo);
            }
            let (bases, dyt) = (&x_bases[..nc * l], &dyt[..nc * l * ldo]);
            indirect_gemm(self.kernel, src, &idx.offs, bases, dyt, ldo, tmp);
            for (a, &t) in acc.iter_mut().zip(tmp.iter()) {
                *a += t;
            }
            // dx, one pixel class at a time, for all `nc` images in each call.
            let (Some(g), Some(dxc)) = (&self.dx, dxc.as_mut()) else {
                continue;
            };
            let (t, ldc) = (&g.index, g.ldc);
            for (dyn_, dst) in dys.chunks_exact(o * l).zip(dypad.chunks_exact_mut(dy_img)) {
                let hw = (geo.out_h, geo.out_w);
                pad_into(dyn_, o, hw, t.origin, (t.rows, t.cols), dst);
            }
            let hw = geo.in_h * geo.in_w;
            for (ci, (cl, (w, offs))) in t.classes.iter().zip(&g.classes).enumerate() {
                let np = cl.pixels.len();
                if cl.taps.is_empty() || np == 0 {
                    continue;
                }
                let bases = &class_bases[ci][..nc * np];
                resize(tile, &[nc, np, ldc], "the input gradient tile", geo)?;
                indirect_gemm(self.kernel, dypad, bases, offs, w, ldc, tile);
                for (bi, tile) in tile.chunks_exact(np * ldc).take(nc).enumerate() {
                    let mut dxn = dxc.row_mut(c0 + bi);
                    let dxn = dxn.as_slice_mut().expect("dx rows are contiguous");
                    if np == hw {
                        // One class (stride 1): its pixels are all of them, in order.
                        transpose_add(tile, ldc, (hw, geo.in_channels), None, dxn, hw);
                    } else {
                        scatter_pixels(tile, ldc, &cl.pixels, geo.in_channels, dxn, hw);
                    }
                }
            }
        }
        let mut dw = Array2::<f32>::zeros((o, k));
        let out = dw.as_slice_mut().expect("a new array is contiguous");
        transpose_add(acc, ldo, (k, o), None, out, k);
        Ok(dw)
    }
}
