//! The GEMM against its naive f64 reference, for every micro-kernel this CPU supports:
//! edge shapes around each kernel's MR/NR/KC/MC/NC, every operand layout (transposed,
//! stepped, negative strides), alpha and beta values, beta = 0 over a NaN-filled C, no
//! writes outside C, infinities and denormals, determinism across thread counts, and
//! concurrent calls.

use convinit::error::Error;
use convinit::gemm::{Kernel, sgemm, sgemm_naive, sgemm_with_kernel};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};

/// The kernels this CPU can run (always includes the portable one).
fn kernels() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|k| k.is_supported())
        .collect()
}

/// A deterministic pseudo-random matrix with entries in [-1, 1).
fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Array2::from_shape_fn((rows, cols), |_| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

/// A NaN with a payload no arithmetic produces: marks memory that must stay untouched.
const SENTINEL: u32 = 0x7fc0_1234;

/// How an operand is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Standard C order.
    RowMajor,
    /// Fortran order: `x.t()` of a row-major array.
    Transposed,
    /// Every other row of a twice-taller array: `s![..;2, ..]`.
    StepRows,
    /// Rows reversed: `s![..;-1, ..]`.
    NegRows,
    /// Columns reversed with step 3: `s![.., ..;-3]`.
    NegStepCols,
    /// Transposed and then reversed along the rows of the storage.
    TransposedNeg,
}

const LAYOUTS: [Layout; 6] = [
    Layout::RowMajor,
    Layout::Transposed,
    Layout::StepRows,
    Layout::NegRows,
    Layout::NegStepCols,
    Layout::TransposedNeg,
];

/// Storage for a `rows x cols` operand in `layout`, everything outside the view
/// `SENTINEL`.
fn storage(layout: Layout, rows: usize, cols: usize) -> Array2<f32> {
    let fill = f32::from_bits(SENTINEL);
    match layout {
        Layout::RowMajor | Layout::NegRows => Array2::from_elem((rows, cols), fill),
        Layout::Transposed | Layout::TransposedNeg => Array2::from_elem((cols, rows), fill),
        Layout::StepRows => Array2::from_elem((2 * rows, cols), fill),
        Layout::NegStepCols => Array2::from_elem((rows, 3 * cols), fill),
    }
}

/// The `rows x cols` view of `owner` for `layout`.
fn view(layout: Layout, owner: &Array2<f32>) -> ArrayView2<'_, f32> {
    match layout {
        Layout::RowMajor => owner.view(),
        Layout::Transposed => owner.t(),
        Layout::StepRows => owner.slice(s![..;2, ..]),
        Layout::NegRows => owner.slice(s![..;-1, ..]),
        Layout::NegStepCols => owner.slice(s![.., ..;-3]),
        Layout::TransposedNeg => owner.slice(s![..;-1, ..]).reversed_axes(),
    }
}

/// The mutable `rows x cols` view of `owner` for `layout`.
fn view_mut(layout: Layout, owner: &mut Array2<f32>) -> ArrayViewMut2<'_, f32> {
    match layout {
        Layout::RowMajor => owner.view_mut(),
        Layout::Transposed => owner.view_mut().reversed_axes(),
        Layout::StepRows => owner.slice_mut(s![..;2, ..]),
        Layout::NegRows => owner.slice_mut(s![..;-1, ..]),
        Layout::NegStepCols => owner.slice_mut(s![.., ..;-3]),
        Layout::TransposedNeg => owner.slice_mut(s![..;-1, ..]).reversed_axes(),
    }
}

/// `data` stored in `layout`.
fn laid_out(layout: Layout, data: &Array2<f32>) -> Array2<f32> {
    let (r, c) = data.dim();
    let mut owner = storage(layout, r, c);
    view_mut(layout, &mut owner).assign(data);
    owner
}

/// Asserts `got` equals the f64 reference `want` up to f32 accumulation error:
/// NaN where it is NaN, the same infinity where it is infinite, else within
/// `(k + 2) eps (|alpha| sum |a||b| + |beta c|)` plus a few denormal ulps.
#[allow(clippy::too_many_arguments)]
#[track_caller]
fn assert_close(
    got: ArrayView2<'_, f32>,
    want: ArrayView2<'_, f32>,
    alpha: f32,
    a: &Array2<f32>,
    b: &Array2<f32>,
    beta: f32,
    c0: &Array2<f32>,
    what: &str,
) {
    let k = a.ncols();
    for ((i, j), &w) in want.indexed_iter() {
        let g = got[[i, j]];
        if w.is_nan() || w.is_infinite() {
            assert!(
                g.to_bits() == w.to_bits() || (w.is_nan() && g.is_nan()),
                "{what}: C[{i},{j}] = {g}, want {w}"
            );
            continue;
        }
        let mag: f64 = a
            .row(i)
            .iter()
            .zip(b.column(j))
            .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
            .sum::<f64>()
            * f64::from(alpha).abs()
            + if beta == 0.0 {
                0.0
            } else {
                (f64::from(beta) * f64::from(c0[[i, j]])).abs()
            };
        let tol =
            (k as f64 + 2.0) * f64::from(f32::EPSILON) * mag + 8.0 * 1.5e-45 * (k as f64 + 1.0);
        assert!(
            (f64::from(g) - f64::from(w)).abs() <= tol,
            "{what}: C[{i},{j}] = {g}, want {w} (tol {tol:e})"
        );
    }
}

/// Runs `kernel` on `a`, `b`, `c0` in the given layouts and checks against the naive
/// reference, including that nothing outside C's view was written.
#[allow(clippy::too_many_arguments)]
#[track_caller]
fn check(
    kernel: Kernel,
    alpha: f32,
    a: &Array2<f32>,
    b: &Array2<f32>,
    beta: f32,
    c0: &Array2<f32>,
    layouts: [Layout; 3],
) {
    let (m, n) = c0.dim();
    let what = format!(
        "{} m={m} k={} n={n} alpha={alpha} beta={beta} layouts={layouts:?}",
        kernel.name(),
        a.ncols()
    );
    let mut want = c0.clone();
    sgemm_naive(alpha, a.view(), b.view(), beta, want.view_mut()).unwrap();

    let a_own = laid_out(layouts[0], a);
    let b_own = laid_out(layouts[1], b);
    let mut c_own = laid_out(layouts[2], c0);
    sgemm_with_kernel(
        kernel,
        alpha,
        view(layouts[0], &a_own),
        view(layouts[1], &b_own),
        beta,
        view_mut(layouts[2], &mut c_own),
    )
    .unwrap();
    let got = view(layouts[2], &c_own).to_owned();
    assert_close(got.view(), want.view(), alpha, a, b, beta, c0, &what);
    // Nothing outside the view changed: clear the view, the rest must be the sentinel.
    view_mut(layouts[2], &mut c_own).fill(0.0);
    let untouched = c_own.iter().filter(|x| x.to_bits() == SENTINEL).count();
    assert_eq!(untouched, c_own.len() - m * n, "{what}: wrote outside C");
}

/// Sizes around a kernel's tile: 1, 2, tile - 1, tile, tile + 1, 2 tile + 3.
fn edge_sizes(tile: usize) -> Vec<usize> {
    let mut v = vec![1, 2, tile - 1, tile, tile + 1, 2 * tile + 3];
    v.retain(|&x| x > 0);
    v.sort_unstable();
    v.dedup();
    v
}

/// Column counts: around NR, and around the vector width inside it (the last panel of a
/// row runs with only the vectors it needs: widths 1..=16, 17..=32, 33..=48 on AVX-512).
fn edge_cols(nr: usize) -> Vec<usize> {
    let mut v = edge_sizes(nr);
    v.extend([7, 8, 9, 15, 16, 17, 20, 31, 32, 33, nr + 17]);
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn edge_shapes_match_naive_for_every_kernel() {
    // MR/NR: 8x48 (avx512), 6x16 (avx2), 4x8 (fallback); C is row-major, so rows of C
    // meet MR and columns NR.
    for kernel in kernels() {
        let (mr, nr) = match kernel {
            Kernel::Avx512 => (8, 48),
            Kernel::Avx2 => (6, 16),
            Kernel::Fallback => (4, 8),
        };
        for &m in &edge_sizes(mr) {
            for &n in &edge_cols(nr) {
                for k in [1, 2, 7, 16, 33] {
                    let a = matrix(m, k, 1);
                    let b = matrix(k, n, 2);
                    let c0 = matrix(m, n, 3);
                    check(kernel, 1.0, &a, &b, 0.0, &c0, [Layout::RowMajor; 3]);
                    check(kernel, 0.5, &a, &b, 1.0, &c0, [Layout::RowMajor; 3]);
                }
            }
        }
    }
}

#[test]
fn empty_dimensions() {
    for kernel in kernels() {
        for (m, k, n) in [(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0), (5, 0, 50)] {
            let a = matrix(m, k, 4);
            let b = matrix(k, n, 5);
            let c0 = matrix(m, n, 6);
            for beta in [0.0, 1.0, -2.0] {
                check(kernel, 1.5, &a, &b, beta, &c0, [Layout::RowMajor; 3]);
            }
            // k = 0 with beta = 0 must give zeros, even over NaN.
            let mut c = Array2::from_elem((m, n), f32::NAN);
            sgemm_with_kernel(kernel, 1.0, a.view(), b.view(), 0.0, c.view_mut()).unwrap();
            if k == 0 {
                assert!(c.iter().all(|&x| x == 0.0), "{kernel:?} {m}x{k}x{n}");
            }
        }
    }
}

#[test]
fn large_k_and_sizes_beyond_the_blocks() {
    // k beyond KC (256), m beyond MC (<= 128 rows), n beyond NB (480) and NC (5760).
    for kernel in kernels() {
        for (m, k, n, alpha, beta) in [
            (9, 600, 50, 1.0, 0.0),
            (300, 300, 530, -0.75, 0.5),
            (5, 257, 5800, 1.0, 1.0),
            (130, 513, 17, 2.0, 0.0),
        ] {
            let a = matrix(m, k, 7);
            let b = matrix(k, n, 8);
            let c0 = matrix(m, n, 9);
            check(kernel, alpha, &a, &b, beta, &c0, [Layout::RowMajor; 3]);
        }
    }
}

#[test]
fn every_layout_combination() {
    // Small (serial) and large enough to run on the rayon pool (m n k >= 1.5 M); few rows
    // (B read in place rather than packed).
    for kernel in kernels() {
        for (m, k, n) in [(19, 37, 53), (70, 300, 101), (5, 37, 100), (8, 300, 700)] {
            let a = matrix(m, k, 10);
            let b = matrix(k, n, 11);
            let c0 = matrix(m, n, 12);
            for la in LAYOUTS {
                for lb in LAYOUTS {
                    for lc in LAYOUTS {
                        check(kernel, 1.25, &a, &b, 0.0, &c0, [la, lb, lc]);
                    }
                }
            }
            for lc in LAYOUTS {
                check(
                    kernel,
                    -1.0,
                    &a,
                    &b,
                    0.75,
                    &c0,
                    [Layout::Transposed, Layout::RowMajor, lc],
                );
            }
        }
    }
}

#[test]
fn alpha_and_beta_values() {
    for kernel in kernels() {
        let (m, k, n) = (23, 45, 67);
        let a = matrix(m, k, 13);
        let b = matrix(k, n, 14);
        let c0 = matrix(m, n, 15);
        for alpha in [1.0, -0.5, 0.0, 2.5] {
            for beta in [0.0, 1.0, -1.5, 0.25] {
                check(kernel, alpha, &a, &b, beta, &c0, [Layout::RowMajor; 3]);
                check(
                    kernel,
                    alpha,
                    &a,
                    &b,
                    beta,
                    &c0,
                    [Layout::NegRows, Layout::Transposed, Layout::StepRows],
                );
            }
        }
    }
}

#[test]
fn beta_zero_never_reads_c() {
    for kernel in kernels() {
        for (m, k, n) in [(1, 1, 1), (7, 5, 9), (33, 300, 97), (100, 40, 500)] {
            let a = matrix(m, k, 16);
            let b = matrix(k, n, 17);
            let c0 = Array2::from_elem((m, n), f32::NAN);
            for lc in LAYOUTS {
                check(
                    kernel,
                    1.0,
                    &a,
                    &b,
                    0.0,
                    &c0,
                    [Layout::RowMajor, Layout::RowMajor, lc],
                );
            }
            let mut c = Array2::from_elem((m, n), f32::INFINITY);
            sgemm_with_kernel(kernel, 1.0, a.view(), b.view(), 0.0, c.view_mut()).unwrap();
            assert!(c.iter().all(|x| x.is_finite()), "{kernel:?}");
        }
    }
}

#[test]
fn no_writes_outside_a_view_into_a_larger_array() {
    for kernel in kernels() {
        let (m, k, n) = (21, 30, 61);
        let a = matrix(m, k, 18);
        let b = matrix(k, n, 19);
        let fill = f32::from_bits(SENTINEL);
        for beta in [0.0, 1.0] {
            let mut big = Array2::from_elem((m + 10, 2 * n + 7), fill);
            big.slice_mut(s![4..4 + m, 3..3 + 2 * n;2]).fill(0.5);
            sgemm_with_kernel(
                kernel,
                1.0,
                a.view(),
                b.view(),
                beta,
                big.slice_mut(s![4..4 + m, 3..3 + 2 * n;2]),
            )
            .unwrap();
            let mut want = Array2::from_elem((m, n), 0.5);
            sgemm_naive(1.0, a.view(), b.view(), beta, want.view_mut()).unwrap();
            let c0 = Array2::from_elem((m, n), 0.5);
            assert_close(
                big.slice(s![4..4 + m, 3..3 + 2 * n;2]),
                want.view(),
                1.0,
                &a,
                &b,
                beta,
                &c0,
                "view",
            );
            big.slice_mut(s![4..4 + m, 3..3 + 2 * n;2]).fill(0.0);
            assert_eq!(
                big.iter().filter(|x| x.to_bits() == SENTINEL).count(),
                big.len() - m * n,
                "{kernel:?}: wrote outside the view"
            );
        }
    }
}

#[test]
fn infinities_nans_and_denormals_match_the_reference() {
    for kernel in kernels() {
        let (m, k, n) = (17, 40, 50);
        let mut a = matrix(m, k, 20);
        let mut b = matrix(k, n, 21).mapv(f32::abs);
        // Row 2 of A holds +inf at k = 3; B's row 3 is positive: C row 2 is +inf, except
        // where column 7 of B also meets a -inf (NaN there).
        a[[2, 3]] = f32::INFINITY;
        a[[5, 9]] = f32::NEG_INFINITY;
        b[[9, 7]] = f32::INFINITY; // row 5 column 7: -inf * inf = -inf
        b[[3, 11]] = 0.0; // row 2 column 11: inf * 0 = NaN
        a[[8, 0]] = f32::NAN;
        // Denormals: a whole row of A and column of B, and a product of tiny values.
        for p in 0..k {
            a[[10, p]] = 1e-40 * (p as f32 + 1.0);
            b[[p, 20]] = 3e-39;
        }
        a[[11, 1]] = f32::MIN_POSITIVE / 4.0;
        let mut c0 = matrix(m, n, 22);
        c0[[0, 0]] = f32::INFINITY;
        c0[[1, 1]] = f32::NAN;
        for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (-2.0, 0.5), (0.0, 1.0)] {
            for layouts in [
                [Layout::RowMajor; 3],
                [Layout::Transposed, Layout::NegStepCols, Layout::Transposed],
                [Layout::StepRows, Layout::TransposedNeg, Layout::NegRows],
            ] {
                check(kernel, alpha, &a, &b, beta, &c0, layouts);
            }
        }
    }
}

#[test]
fn bit_identical_for_1_2_and_7_threads() {
    for kernel in kernels() {
        for (m, k, n) in [(200, 700, 300), (8, 25, 20000), (129, 128, 97)] {
            let a = matrix(m, k, 23);
            let b = matrix(k, n, 24);
            let c0 = matrix(m, n, 25);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut c = c0.clone();
                pool.install(|| {
                    sgemm_with_kernel(kernel, 0.5, a.view(), b.t().t(), 0.25, c.view_mut())
                        .unwrap();
                });
                c.mapv(f32::to_bits)
            };
            let one = run(1);
            assert_eq!(one, run(2), "{kernel:?} {m}x{k}x{n}: 1 vs 2 threads");
            assert_eq!(one, run(7), "{kernel:?} {m}x{k}x{n}: 1 vs 7 threads");
        }
    }
}

#[test]
fn concurrent_calls_from_several_threads() {
    let (m, k, n) = (90, 300, 110);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                for rep in 0..3 {
                    let a = matrix(m, k, 100 + t * 10 + rep);
                    let b = matrix(k, n, 200 + t * 10 + rep);
                    let c0 = matrix(m, n, 300 + t);
                    let mut want = c0.clone();
                    sgemm_naive(1.0, a.view(), b.view(), 0.5, want.view_mut()).unwrap();
                    let mut got = c0.clone();
                    sgemm(1.0, a.view(), b.view(), 0.5, got.view_mut()).unwrap();
                    assert_close(got.view(), want.view(), 1.0, &a, &b, 0.5, &c0, "concurrent");
                }
            });
        }
    });
}

#[test]
fn public_sgemm_matches_naive_with_transposed_views() {
    let (m, k, n) = (40, 75, 130);
    let at = matrix(k, m, 26);
    let bt = matrix(n, k, 27);
    let c0 = matrix(m, n, 28);
    let mut want = c0.clone();
    sgemm_naive(1.0, at.t(), bt.t(), -1.0, want.view_mut()).unwrap();
    let mut got = c0.clone();
    sgemm(1.0, at.t(), bt.t(), -1.0, got.view_mut()).unwrap();
    assert_close(
        got.view(),
        want.view(),
        1.0,
        &at.t().to_owned(),
        &bt.t().to_owned(),
        -1.0,
        &c0,
        "public",
    );
}

#[test]
fn shape_mismatch_is_an_error() {
    let a = Array2::<f32>::zeros((3, 4));
    let b = Array2::<f32>::zeros((5, 6));
    let mut c = Array2::<f32>::zeros((3, 6));
    let err = sgemm(1.0, a.view(), b.view(), 0.0, c.view_mut()).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "sgemm", .. }), "{err}");
    let b = Array2::<f32>::zeros((4, 6));
    let mut c = Array2::<f32>::zeros((6, 3));
    assert!(sgemm(1.0, a.view(), b.view(), 0.0, c.view_mut()).is_err());
    assert!(
        sgemm_with_kernel(Kernel::Fallback, 1.0, a.view(), b.view(), 0.0, c.view_mut()).is_err()
    );
}

#[test]
fn kernel_names_and_selection() {
    for k in Kernel::ALL {
        assert_eq!(Kernel::from_name(k.name()), Some(k));
    }
    assert_eq!(Kernel::from_name(" AVX2 "), Some(Kernel::Avx2));
    assert_eq!(Kernel::from_name("sse"), None);
    assert!(Kernel::Fallback.is_supported());
    let selected = Kernel::selected();
    assert!(selected.is_supported());
    if let Some(wanted) = std::env::var("CONVINIT_GEMM_KERNEL")
        .ok()
        .and_then(|v| Kernel::from_name(&v))
        .filter(|k| k.is_supported())
    {
        assert_eq!(selected, wanted);
    }
}

#[test]
fn env_var_forces_the_kernel() {
    // Re-run `kernel_names_and_selection` in a child process with the variable set: the
    // child asserts that `Kernel::selected()` is the forced kernel.
    if std::env::var_os("CONVINIT_GEMM_KERNEL").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for kernel in kernels() {
        let out = std::process::Command::new(&exe)
            .args(["kernel_names_and_selection", "--exact", "--test-threads=1"])
            .env("CONVINIT_GEMM_KERNEL", kernel.name())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{kernel:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
