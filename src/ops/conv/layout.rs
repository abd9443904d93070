//! Data movement between the layouts of the conv paths: the padded copy of an image
//! ([`pad_into`]), the transpose between position-major kernel tiles and channel-major
//! tensors ([`transpose_add`]), the scatter of a pixel class's tile into the input
//! gradient ([`scatter_pixels`]) and the phase planes ([`phase_planes`]).
//!
//! Each function takes the plan's GEMM kernel and runs the AVX-512 version
//! (`layout/avx512.rs`: masked row copies, 16 x 16 in-register transposes) when that is
//! the kernel (and the CPU has it), else the portable loops here, which are also the reference of the tests.
//! The two give the same bits: they move the same floats and add the same bias.
//!
//! Measured on the notebook net's training step (N = 1000, 2 threads, Intel Xeon
//! 6/207): the portable transpose and copy took 10.6% and 8.6% + 4.9% (a `memcpy` call
//! per row of a few floats) of the time.

use crate::gemm::Kernel;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// `y[j * ldy + i] = t[i * ldt + j] (+ add[j])` for `i < n`, `j < m`: a transpose
/// between the kernel's position-major tiles and channel-major tensors.
///
/// # Panics
/// If `t` or `y` is too short for the shape, or `add` shorter than `m`.
pub(super) fn transpose_add(
    kernel: Kernel,
    t: &[f32],
    ldt: usize,
    (n, m): (usize, usize),
    add: Option<&[f32]>,
    y: &mut [f32],
    ldy: usize,
) {
    if n == 0 || m == 0 {
        return;
    }
    assert!(
        ldt >= m && ldy >= n,
        "transpose_add: strides shorter than rows"
    );
    assert!(t.len() >= (n - 1) * ldt + m, "transpose_add: t too short");
    assert!(y.len() >= (m - 1) * ldy + n, "transpose_add: y too short");
    if let Some(a) = add {
        assert!(a.len() >= m, "transpose_add: add too short");
    }
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && kernel.is_supported() {
        // SAFETY: the CPU has AVX-512 (checked), and the lengths were checked above.
        return unsafe { avx512::transpose_add(t, ldt, (n, m), add, y, ldy) };
    }
    let _ = kernel;
    transpose_add_portable(t, ldt, (n, m), add, y, ldy)
}

/// Whether [`transpose_add`] walks blocks of 16 rows of `t` in its outer loop (all of
/// their columns inside), rather than blocks of 16 rows of `y`: the side whose rows are
/// further apart keeps its 16 rows through the inner loop, the other streams. Each
/// row of a large tensor is on its own page, and a block order that touches every row
/// per step misses the TLB: resnet_128s2's forward (its 784 x 128 tile into 128 rows
/// of 784), 1 thread, Intel Xeon 6/207, 33.6-37.2 -> 29.5-30.8 ms with `y`'s rows kept.
fn rows_outer(ldt: usize, ldy: usize) -> bool {
    ldt >= ldy
}

/// [`transpose_add`] in portable loops, sixteen `i` at a time, so each `y` row gets whole
/// 64-byte stores (a scalar strided loop took 40% of the direct forward of seed_l2),
/// in the order [`rows_outer`] gives.
fn transpose_add_portable(
    t: &[f32],
    ldt: usize,
    (n, m): (usize, usize),
    add: Option<&[f32]>,
    y: &mut [f32],
    ldy: usize,
) {
    const B: usize = 16;
    // Without `add` the floats are moved as they are (`-0.0 + 0.0` would be `+0.0`).
    let plus = |v: f32, j: usize| add.map_or(v, |a| v + a[j]);
    let full = n / B * B;
    let mut block = |i0: usize, js: std::ops::Range<usize>| {
        let rows: [&[f32]; B] = std::array::from_fn(|r| &t[(i0 + r) * ldt..][..m]);
        for j in js {
            let v: [f32; B] = std::array::from_fn(|r| plus(rows[r][j], j));
            y[j * ldy + i0..][..B].copy_from_slice(&v);
        }
    };
    if rows_outer(ldt, ldy) {
        for i0 in (0..full).step_by(B) {
            block(i0, 0..m);
        }
    } else {
        for j0 in (0..m).step_by(B) {
            for i0 in (0..full).step_by(B) {
                block(i0, j0..m.min(j0 + B));
            }
        }
    }
    for i in full..n {
        for (j, &v) in t[i * ldt..][..m].iter().enumerate() {
            y[j * ldy + i] = plus(v, j);
        }
    }
}

/// `y[i * ldy + j] = t[i * ldt + j] (+ add[j])` for `i < n`, `j < m`: rows between a
/// kernel's position-major tile (`ldt` floats a row, vector-padded) and a channels-last
/// tensor, or back.
///
/// # Panics
/// If `t` or `y` is too short for the shape, or `add` shorter than `m`.
pub(super) fn copy_rows_add(
    kernel: Kernel,
    t: &[f32],
    ldt: usize,
    (n, m): (usize, usize),
    add: Option<&[f32]>,
    y: &mut [f32],
    ldy: usize,
) {
    if n == 0 || m == 0 {
        return;
    }
    assert!(
        ldt >= m && ldy >= m,
        "copy_rows_add: strides shorter than rows"
    );
    assert!(t.len() >= (n - 1) * ldt + m, "copy_rows_add: t too short");
    assert!(y.len() >= (n - 1) * ldy + m, "copy_rows_add: y too short");
    if let Some(a) = add {
        assert!(a.len() >= m, "copy_rows_add: add too short");
    }
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && kernel.is_supported() {
        // SAFETY: the CPU has AVX-512 (checked), and the lengths were checked above:
        // row `i` of `y` starts at `i * ldy`, `(n - 1) * ldy + m` floats in all.
        return unsafe { avx512::copy_rows(t, ldt, (n, m), add, y, |i| i * ldy) };
    }
    let _ = kernel;
    match add {
        Some(a) => {
            let a = &a[..m];
            for (tr, yr) in t.chunks(ldt).zip(y.chunks_mut(ldy)).take(n) {
                for ((d, &v), &b) in yr[..m].iter_mut().zip(&tr[..m]).zip(a) {
                    *d = v + b;
                }
            }
        }
        None => {
            for (tr, yr) in t.chunks(ldt).zip(y.chunks_mut(ldy)).take(n) {
                copy_short(&mut yr[..m], &tr[..m]);
            }
        }
    }
}

/// `y[c * ldy + pixels[p]] = t[p * ldt + c]` for `c < channels`: a pixel class's
/// position-major tile into the channel-major input gradient. Eight pixels at a time,
/// channel by channel, so the eight stores of a channel land in one stretch of its
/// plane (a pixel-by-pixel loop jumping between planes took 18% of seed_l2's
/// backward). Tried: moving each class's rows to a position-major tile in pixel order
/// and transposing that once with [`transpose_add`]: no faster (the notebook net at
/// N = 1000, 2 threads: 14.8 / 14.4 / 14.9 ms against 14.5 / 14.5 / 14.1), the writes
/// to `dx` costing the same either way. Tried too: on AVX-512, 16 x 16 blocks
/// transposed in registers and each channel stored with one masked `vscatterdps`: 10%
/// slower (seed_l2's direct backward, 1 thread, Intel Xeon 6/207: 0.61 against 0.55 ms).
/// Tried too: each class's tile transposed channel-major, then each grid row stored in
/// masked stores (stride 2: 8 floats spread by one `vexpandps`): no faster at 16 and 32
/// channels, slower at 64 (train_mnist's layers at N = 128, 2 threads, Intel Xeon
/// 6/207, direct backward: 0.85-1.08 / 0.85-0.86 / 0.37 ms against these scalar stores'
/// 0.88-0.93 / 0.82-0.85 / 0.30-0.32 ms).
///
/// Never inlined: inlined into the direct backward's chunk loop it compiled to a loop
/// twice as slow (seed_l4's backward, 1 thread, Intel Xeon 6/207: 0.121 -> 0.139 ms).
#[inline(never)]
pub(super) fn scatter_pixels(
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

/// One phase plane, as [`phase_planes`] fills it: `rows` rows of `cols` floats from
/// `start`, then `slack` floats, all zero but the real pixels: the columns `qlo..qhi`
/// (`cols_real`) of the rows `r0..r1` (`rows_real`), row `r0 + i` holding `x[xoff + i *
/// xstep + (q - qlo) * sw]` at column `q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PhasePlane {
    /// Offset of the plane's first float in the planes.
    pub start: usize,
    /// Rows of the plane.
    pub rows: usize,
    /// Floats per row.
    pub cols: usize,
    /// Floats after the last row (zeroed).
    pub slack: usize,
    /// The rows `r0..r1` that hold image pixels.
    pub rows_real: (usize, usize),
    /// The columns `qlo..qhi` of those rows that hold image pixels.
    pub cols_real: (usize, usize),
    /// Offset in `x` of the pixel at row `r0`, column `qlo`.
    pub xoff: usize,
    /// Floats in `x` from one real row's pixels to the next's.
    pub xstep: usize,
}

impl PhasePlane {
    /// Floats of the plane, slack included.
    fn len(&self) -> usize {
        self.rows * self.cols + self.slack
    }

    /// Whether the plane holds image pixels at all.
    fn has_pixels(&self) -> bool {
        let ((r0, r1), (qlo, qhi)) = (self.rows_real, self.cols_real);
        r1 > r0 && qhi > qlo
    }

    /// Panics unless the plane lies inside `np` floats of planes and its pixels inside
    /// `nx` of image, `sw` apart along a row.
    fn check(&self, np: usize, nx: usize, sw: usize) {
        let ((r0, r1), (qlo, qhi)) = (self.rows_real, self.cols_real);
        assert!(
            self.start <= np && self.len() <= np - self.start,
            "phase_planes: plane outside the planes"
        );
        assert!(
            r0 <= r1 && r1 <= self.rows && qlo <= qhi && qhi <= self.cols,
            "phase_planes: real pixels outside the plane"
        );
        if self.has_pixels() {
            let last = (r1 - r0 - 1) * self.xstep + (qhi - qlo - 1) * sw;
            assert!(
                last < nx.saturating_sub(self.xoff),
                "phase_planes: reads past the image"
            );
        }
    }
}

/// Fills each of `planes_of` in `planes` from the image `x` (pixels `sw` apart along a
/// row), as [`PhasePlane`] says: the polyphase planes of an image.
///
/// Whole planes, not rows, per step: filled row by row with each row's bounds worked
/// out again, the notebook's first layer (rows of 16 floats) spent about 2 500 cycles an
/// image here, a third of its forward on a Zen 4; the AVX-512 version works out the
/// masks of a column block once per plane.
///
/// # Panics
/// If a plane is not inside `planes`, its real pixels not inside it, or it reads past
/// `x`.
pub(super) fn phase_planes(
    kernel: Kernel,
    planes: &mut [f32],
    x: &[f32],
    sw: usize,
    planes_of: impl Iterator<Item = PhasePlane>,
) {
    let (np, nx) = (planes.len(), x.len());
    let checked = planes_of.inspect(move |p| p.check(np, nx, sw));
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && kernel.is_supported() && (sw == 1 || sw == 2) {
        // SAFETY: as in `transpose_add`; every plane is checked before it is filled.
        return unsafe { avx512::phase_planes(planes, x, sw, checked) };
    }
    let _ = kernel;
    for p in checked {
        let plane = &mut planes[p.start..p.start + p.len()];
        plane.fill(0.0);
        if !p.has_pixels() {
            continue;
        }
        let (r0, r1) = p.rows_real;
        for (i, row) in plane[r0 * p.cols..r1 * p.cols]
            .chunks_exact_mut(p.cols)
            .enumerate()
        {
            phase_row_portable(row, x, p.xoff + i * p.xstep, p.cols_real, sw);
        }
    }
}

/// The real pixels of one row of a [`PhasePlane`] in portable loops (the rest of the
/// row is left as it is: [`phase_planes`] zeroes each plane first).
fn phase_row_portable(
    row: &mut [f32],
    x: &[f32],
    xoff: usize,
    (qlo, qhi): (usize, usize),
    sw: usize,
) {
    let mid = &mut row[qlo..qhi];
    if sw == 1 {
        mid.copy_from_slice(&x[xoff..xoff + mid.len()]);
    } else {
        for (d, &v) in mid.iter_mut().zip(x[xoff..].iter().step_by(sw)) {
            *d = v;
        }
    }
}

/// Copies `src` (`channels` planes of `h x w`) into the inside of a padded region
/// (`channels` planes of `rows x cols`) at `(top, left)`, clipped to the region; the
/// border is left as it is (zeroed once per tile by the callers).
///
/// # Panics
/// If `src` or `dst` holds fewer than `channels` planes.
pub(super) fn pad_into(
    kernel: Kernel,
    src: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (top, left): (usize, usize),
    (rows, cols): (usize, usize),
    dst: &mut [f32],
) {
    let hh = h.min(rows.saturating_sub(top));
    let ww = w.min(cols.saturating_sub(left));
    if hh == 0 || ww == 0 || channels == 0 {
        return;
    }
    assert!(
        src.len() >= channels * h * w && dst.len() >= channels * rows * cols,
        "pad_into: fewer than {channels} planes"
    );
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && kernel.is_supported() {
        // SAFETY: as in `transpose_add`; every row copied is inside its plane (`hh`,
        // `ww` clipped above) and the planes inside the slices (checked above).
        return unsafe {
            avx512::pad_into(
                src,
                channels,
                (h, w),
                (top, left),
                (rows, cols),
                (hh, ww),
                dst,
            )
        };
    }
    let _ = kernel;
    pad_into_portable(
        src,
        channels,
        (h, w),
        (top, left),
        (rows, cols),
        (hh, ww),
        dst,
    )
}

/// [`pad_into`] in portable loops, `hh x ww` of each plane (clipped by the caller).
fn pad_into_portable(
    src: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (top, left): (usize, usize),
    (rows, cols): (usize, usize),
    (hh, ww): (usize, usize),
    dst: &mut [f32],
) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct floats, with signed zeros among them (which the moves must keep).
    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(
                |i| match (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 7 {
                    0 => -0.0,
                    k => (i as f32 + 0.25) * if k % 2 == 0 { 1.0 } else { -1.0 },
                },
            )
            .collect()
    }

    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Fallback];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            k.push(Kernel::Avx512);
        }
        k
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn transpose_add_matches_the_definition_for_every_kernel() {
        for &(n, m, pad_t, pad_y) in &[
            (1, 1, 0, 0),
            (4, 10, 6, 3),
            (16, 16, 0, 0),
            (17, 33, 15, 1),
            (49, 8, 8, 0),
            (100, 64, 0, 5),
            (5, 3, 13, 11),
            // Both block orders with partial blocks on both sides (`rows_outer`).
            (37, 20, 0, 50),
            (20, 37, 30, 0),
        ] {
            let (ldt, ldy) = (m + pad_t, n + pad_y);
            let t = data((n - 1) * ldt + m, 1);
            let bias = data(m, 2);
            for add in [None, Some(&bias[..])] {
                // The definition, written out; untouched floats keep the marker 7.5.
                let mut want = vec![7.5f32; (m - 1) * ldy + n];
                for i in 0..n {
                    for j in 0..m {
                        let v = t[i * ldt + j];
                        want[j * ldy + i] = add.map_or(v, |a| v + a[j]);
                    }
                }
                for kernel in kernels() {
                    let mut y = vec![7.5f32; want.len()];
                    transpose_add(kernel, &t, ldt, (n, m), add, &mut y, ldy);
                    assert!(
                        same_bits(&y, &want),
                        "{kernel:?} n {n} m {m} add {}",
                        add.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn row_copies_match_the_definition_for_every_kernel() {
        // (rows, floats a row, t padding, y padding): rows shorter than, equal to and
        // longer than a vector, padded strides.
        for &(n, m, pt, py) in &[(1, 1, 0, 0), (5, 16, 0, 0), (7, 10, 6, 3), (3, 33, 15, 1)] {
            let (ldt, ldy) = (m + pt, m + py);
            let t = data((n - 1) * ldt + m, 4);
            let bias = data(m, 6);
            for add in [None, Some(&bias[..])] {
                let mut want = vec![7.5f32; (n - 1) * ldy + m];
                for i in 0..n {
                    for j in 0..m {
                        let v = t[i * ldt + j];
                        want[i * ldy + j] = add.map_or(v, |a| v + a[j]);
                    }
                }
                for kernel in kernels() {
                    let mut y = vec![7.5f32; want.len()];
                    copy_rows_add(kernel, &t, ldt, (n, m), add, &mut y, ldy);
                    assert!(same_bits(&y, &want), "{kernel:?} {n} x {m}");
                }
            }
        }
    }

    #[test]
    fn phase_planes_match_the_definition_for_every_kernel() {
        // (cols, qlo, qhi, rows, r0, r1, slack, xoff, stride): rows shorter and longer
        // than a vector, padding on every side, strides with and without a vector
        // version, planes with no pixels.
        let cases: [[usize; 9]; 9] = [
            [1, 0, 1, 1, 0, 1, 0, 0, 1],
            [16, 1, 15, 16, 1, 15, 2, 0, 2],
            [16, 2, 16, 3, 0, 3, 0, 5, 1],
            [29, 1, 29, 4, 2, 4, 1, 3, 1],
            [40, 3, 37, 5, 0, 4, 3, 1, 2],
            [17, 0, 0, 2, 0, 2, 0, 0, 2],
            [35, 2, 33, 3, 1, 2, 0, 4, 3],
            [64, 0, 64, 2, 0, 2, 5, 0, 2],
            [20, 1, 19, 3, 2, 2, 1, 0, 2],
        ];
        for [cols, qlo, qhi, rows, r0, r1, slack, xoff, sw] in cases {
            let xstep = (qhi - qlo) * sw + 3;
            let x = data(xoff + r1.saturating_sub(r0) * xstep + 1, 5);
            let one = PhasePlane {
                start: 2,
                rows,
                cols,
                slack,
                rows_real: (r0, r1),
                cols_real: (qlo, qhi),
                xoff,
                xstep,
            };
            let mut want = vec![0.0f32; one.len()];
            for r in r0..r1 {
                for q in qlo..qhi {
                    want[r * cols + q] = x[xoff + (r - r0) * xstep + (q - qlo) * sw];
                }
            }
            for kernel in kernels() {
                // The plane between other floats, then again after an empty plane.
                let mut planes = vec![7.5f32; 2 + 2 * one.len() + 3];
                let second = PhasePlane {
                    start: 2 + one.len(),
                    ..one
                };
                let empty = PhasePlane {
                    rows_real: (0, 0),
                    ..one
                };
                phase_planes(kernel, &mut planes, &x, sw, [one, second].into_iter());
                let what = format!("{kernel:?} {cols} cols {qlo}..{qhi} rows {r0}..{r1} sw {sw}");
                assert!(same_bits(&planes[2..2 + one.len()], &want), "{what}");
                assert!(
                    same_bits(&planes[2 + one.len()..2 + 2 * one.len()], &want),
                    "{what}"
                );
                assert!(
                    planes[..2]
                        .iter()
                        .chain(&planes[2 + 2 * one.len()..])
                        .all(|&v| v == 7.5)
                );
                phase_planes(kernel, &mut planes, &x, sw, [empty].into_iter());
                assert!(
                    planes[2..2 + one.len()].iter().all(|&v| v == 0.0),
                    "{what} empty"
                );
            }
        }
    }

    #[test]
    fn pad_into_matches_the_definition_for_every_kernel() {
        // (channels, h, w, top, left, rows, cols), including regions that clip the
        // image and rows longer than a vector.
        for &(c, h, w, top, left, rows, cols) in &[
            (1, 1, 1, 0, 0, 1, 1),
            (3, 4, 4, 1, 1, 5, 5),
            (2, 14, 14, 1, 1, 15, 15),
            (2, 28, 28, 2, 2, 31, 31),
            (1, 7, 40, 3, 0, 12, 37),
            (2, 5, 17, 0, 2, 9, 19),
            (1, 3, 3, 4, 4, 5, 5),
        ] {
            let src = data(c * h * w, 3);
            let mut want = vec![7.5f32; c * rows * cols];
            for ci in 0..c {
                for r in 0..h {
                    for q in 0..w {
                        if top + r < rows && left + q < cols {
                            want[(ci * rows + top + r) * cols + left + q] =
                                src[(ci * h + r) * w + q];
                        }
                    }
                }
            }
            for kernel in kernels() {
                let mut dst = vec![7.5f32; want.len()];
                pad_into(kernel, &src, c, (h, w), (top, left), (rows, cols), &mut dst);
                assert!(
                    same_bits(&dst, &want),
                    "{kernel:?} {c}x{h}x{w} into {rows}x{cols}"
                );
            }
        }
    }
}
