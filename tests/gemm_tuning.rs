//! The per-CPU GEMM choices: [`CpuInfo`] detection, block sizes derived from it, forced
//! blockings (explicit [`GemmBlocks`] and `CONVINIT_GEMM_BLOCKS`) against the naive
//! reference on odd sizes and layouts, and bit-identical results at 1, 2 and 3 threads
//! for every blocking.

use convinit::cpu::{CpuInfo, Microarch};
use convinit::error::Error;
use convinit::gemm::{GemmBlocks, Kernel, sgemm_naive, sgemm_with_blocks};
use ndarray::{Array2, s};

/// The kernels this CPU can run (always includes the portable one).
fn kernels() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|k| k.is_supported())
        .collect()
}

/// A deterministic pseudo-random matrix with entries in [-1, 1).
fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

/// Blockings to force on `kernel`: tiny ones that make many edge blocks in every loop,
/// the detected default, and a large one (one block for the sizes tested here).
fn blockings(kernel: Kernel) -> Vec<(&'static str, GemmBlocks)> {
    let d = kernel.detected_blocks();
    let spec = |s: &str| d.with_spec(s).unwrap();
    vec![
        ("tiny", spec("kc=1,mc=1,l2=1,nc=1")),
        ("small", spec("kc=7,mc=1,l2=4096,nc=1")),
        ("odd", spec("kc=37,mc=25,l2=20000,nc=100")),
        ("detected", d),
        ("large", spec("kc=4096,mc=4096,l2=67108864,nc=65536")),
    ]
}

/// Asserts `got` is within f32 accumulation error of the f64-accumulated `want`.
#[track_caller]
fn assert_close(got: &Array2<f32>, want: &Array2<f32>, k: usize, what: &str) {
    for ((i, j), &w) in want.indexed_iter() {
        let g = got[[i, j]];
        // Entries are in [-1, 1): |sum| <= k, plus |beta c| <= 1.
        let tol = (k as f32 + 2.0) * f32::EPSILON * (k as f32 + 1.0);
        assert!((g - w).abs() <= tol, "{what}: C[{i},{j}] = {g}, want {w}");
    }
}

#[test]
fn forced_blockings_match_naive_on_odd_sizes_and_layouts() {
    for kernel in kernels() {
        for (name, blocks) in blockings(kernel) {
            assert!(blocks.validate(kernel).is_ok(), "{kernel:?} {name}");
            for (m, k, n) in [(1, 1, 1), (13, 29, 53), (67, 130, 101), (9, 300, 50)] {
                let what = format!("{} {name} m={m} k={k} n={n}", kernel.name());
                let a = matrix(m, k, 1);
                let b = matrix(k, n, 2);
                let c0 = matrix(m, n, 3);
                let mut want = c0.clone();
                sgemm_naive(0.75, a.view(), b.view(), -0.5, want.view_mut()).unwrap();
                // Plain row-major operands.
                let mut c = c0.clone();
                sgemm_with_blocks(kernel, blocks, 0.75, a.view(), b.view(), -0.5, c.view_mut())
                    .unwrap();
                assert_close(&c, &want, k, &what);
                // Transposed A and B (stored as their transposes), column-major C.
                let at = a.t().to_owned();
                let bt = b.t().to_owned();
                let mut ct = c0.t().to_owned();
                sgemm_with_blocks(
                    kernel,
                    blocks,
                    0.75,
                    at.t(),
                    bt.t(),
                    -0.5,
                    ct.view_mut().reversed_axes(),
                )
                .unwrap();
                assert_close(&ct.t().to_owned(), &want, k, &format!("{what} transposed"));
                // Strided: every other row of A, every third column of B, C inside a
                // larger array with negative row stride.
                let mut a2 = Array2::<f32>::zeros((2 * m, k));
                a2.slice_mut(s![..;2, ..]).assign(&a);
                let mut b3 = Array2::<f32>::zeros((k, 3 * n));
                b3.slice_mut(s![.., ..;3]).assign(&b);
                let mut c2 = Array2::<f32>::from_elem((m + 2, n + 3), 9.0);
                c2.slice_mut(s![1..m + 1;-1, 2..n + 2]).assign(&c0);
                sgemm_with_blocks(
                    kernel,
                    blocks,
                    0.75,
                    a2.slice(s![..;2, ..]),
                    b3.slice(s![.., ..;3]),
                    -0.5,
                    c2.slice_mut(s![1..m + 1;-1, 2..n + 2]),
                )
                .unwrap();
                let got = c2.slice(s![1..m + 1;-1, 2..n + 2]).to_owned();
                assert_close(&got, &want, k, &format!("{what} strided"));
                let untouched = c2.iter().filter(|&&x| x == 9.0).count();
                assert_eq!(untouched, c2.len() - m * n, "{what}: wrote outside C");
            }
        }
    }
}

#[test]
fn forced_blockings_are_bit_identical_at_1_2_and_3_threads() {
    let pools: Vec<_> = [1, 2, 3]
        .map(|t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        })
        .into();
    for kernel in kernels() {
        for (name, blocks) in blockings(kernel) {
            // Above the parallel threshold (1.5 M multiply-adds), with ragged edges.
            for (m, k, n) in [(150, 203, 170), (7, 900, 400)] {
                let a = matrix(m, k, 4);
                let b = matrix(k, n, 5);
                let c0 = matrix(m, n, 6);
                let run = |pool: &rayon::ThreadPool| {
                    let mut c = c0.clone();
                    pool.install(|| {
                        sgemm_with_blocks(
                            kernel,
                            blocks,
                            1.0,
                            a.view(),
                            b.view(),
                            0.5,
                            c.view_mut(),
                        )
                    })
                    .unwrap();
                    c.mapv(f32::to_bits)
                };
                let one = run(&pools[0]);
                for (pool, t) in pools[1..].iter().zip([2, 3]) {
                    assert_eq!(
                        one,
                        run(pool),
                        "{kernel:?} {name} {m}x{k}x{n}: 1 vs {t} threads"
                    );
                }
            }
        }
    }
}

#[test]
fn invalid_blockings_are_config_errors() {
    let a = Array2::<f32>::ones((5, 5));
    let run = |kernel: Kernel, blocks: GemmBlocks| {
        let mut c = Array2::<f32>::zeros((5, 5));
        sgemm_with_blocks(kernel, blocks, 1.0, a.view(), a.view(), 0.0, c.view_mut())
    };
    for kernel in kernels() {
        let d = kernel.blocks();
        assert!(run(kernel, d).is_ok());
        let mut bad = Vec::new();
        for f in [
            |b: &mut GemmBlocks| b.kc = 0,
            |b: &mut GemmBlocks| b.mc = 0,
            |b: &mut GemmBlocks| b.nc = 0,
            |b: &mut GemmBlocks| b.l2_budget = 0,
            |b: &mut GemmBlocks| b.mc = b.mr + 1,
            |b: &mut GemmBlocks| b.nc = b.nr + 1,
            |b: &mut GemmBlocks| b.mr += 1,
            |b: &mut GemmBlocks| b.nr *= 2,
        ] {
            let mut b = d;
            f(&mut b);
            bad.push(b);
        }
        for b in bad {
            let err = run(kernel, b).unwrap_err();
            assert!(
                matches!(err, Error::Config { .. }),
                "{kernel:?} {b:?}: {err}"
            );
            assert!(b.validate(kernel).is_err());
        }
        // Another kernel's sizes do not fit this kernel's tile.
        for other in Kernel::ALL.into_iter().filter(|&o| o != kernel) {
            assert!(
                run(kernel, other.blocks()).is_err(),
                "{kernel:?} with {other:?}"
            );
        }
    }
}

#[test]
fn spec_strings() {
    let d = Kernel::Avx2.detected_blocks();
    let b = d.with_spec("kc=256,mc=96,l2=1048576,nc=4096").unwrap();
    assert_eq!((b.kc, b.mc, b.l2_budget, b.nc), (256, 96, 1 << 20, 4096));
    assert_eq!((b.mr, b.nr), (d.mr, d.nr));
    // Any subset; whitespace, case, digit separators and a trailing comma are fine.
    let b = d.with_spec(" KC = 100 , l2=65_536,").unwrap();
    assert_eq!((b.kc, b.mc, b.l2_budget, b.nc), (100, d.mc, 65536, d.nc));
    assert_eq!(d.with_spec("").unwrap(), d);
    // mc and nc round up to the tile (6 x 16 for AVX2).
    let b = d.with_spec("mc=7,nc=17").unwrap();
    assert_eq!((b.mc, b.nc), (12, 32));
    for bad in [
        "kc",
        "kc=",
        "kc=0",
        "kc=-4",
        "kc=1.5",
        "mr=8",
        "nr=16",
        "foo=1",
        "kc=1,kc=2",
        "kc=1;mc=2",
    ] {
        let err = d.with_spec(bad).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
    }
}

#[test]
fn cpu_info_is_sane() {
    let cpu = CpuInfo::get();
    assert!(std::ptr::eq(cpu, CpuInfo::get()), "detected once");
    assert!(cpu.l1d_bytes >= 8 * 1024, "{cpu:?}");
    assert!(cpu.l2_bytes >= cpu.l1d_bytes, "{cpu:?}");
    assert!(cpu.l3_bytes > 0, "{cpu:?}");
    assert_eq!(cpu.avx512f, Kernel::Avx512.is_supported());
    assert_eq!(cpu.avx2_fma, Kernel::Avx2.is_supported());
    match cpu.microarch {
        Microarch::Zen4 | Microarch::Zen5 => {
            assert!(cpu.avx512f && cpu.vendor == "AuthenticAMD", "{cpu:?}");
            let family = if cpu.microarch == Microarch::Zen4 {
                0x19
            } else {
                0x1A
            };
            assert_eq!(cpu.family, family);
        }
        Microarch::IntelAvx512 => assert!(cpu.avx512f && cpu.vendor == "GenuineIntel"),
        Microarch::Avx2 => assert!(cpu.avx2_fma && !cpu.avx512f),
        _ => assert!(!cpu.avx2_fma),
    }
    if cfg!(target_arch = "x86_64") {
        assert!(cpu.family > 0 && !cpu.vendor.is_empty(), "{cpu:?}");
    }
    // The default kernel is the widest this CPU supports.
    if std::env::var_os("CONVINIT_GEMM_KERNEL").is_none() {
        let widest = kernels()[0];
        assert_eq!(Kernel::selected(), widest);
    }
}

#[test]
fn detected_blocks_fit_the_caches() {
    let cpu = CpuInfo::get();
    for kernel in Kernel::ALL {
        let b = kernel.detected_blocks();
        assert!(b.validate(kernel).is_ok(), "{kernel:?} {b:?}");
        // The A micro-panel takes at most half of L1d (Zen 4's 32 KiB, measured), the B
        // chunk half of L2.
        assert!(
            b.mr * b.kc * 4 <= cpu.l1d_bytes / 2 + 64,
            "{kernel:?} {b:?}"
        );
        assert!(
            b.l2_budget <= cpu.l2_bytes.max(128 * 1024) / 2 + 1,
            "{kernel:?} {b:?}"
        );
        if std::env::var_os("CONVINIT_GEMM_BLOCKS").is_none() {
            assert_eq!(kernel.blocks(), b);
        }
    }
}

/// Checked in a child process with `CONVINIT_GEMM_BLOCKS` set (see
/// `env_var_forces_the_blocks`); does nothing without it.
#[test]
fn blocks_follow_the_env_var() {
    let Ok(spec) = std::env::var("CONVINIT_GEMM_BLOCKS") else {
        return;
    };
    for kernel in Kernel::ALL {
        let want = kernel
            .detected_blocks()
            .with_spec(&spec)
            .unwrap_or(kernel.detected_blocks());
        assert_eq!(kernel.blocks(), want, "{kernel:?} {spec:?}");
    }
    // sgemm runs with them.
    let a = matrix(33, 70, 7);
    let b = matrix(70, 41, 8);
    let mut want = Array2::<f32>::zeros((33, 41));
    sgemm_naive(1.0, a.view(), b.view(), 0.0, want.view_mut()).unwrap();
    let mut got = Array2::<f32>::zeros((33, 41));
    convinit::gemm::sgemm(1.0, a.view(), b.view(), 0.0, got.view_mut()).unwrap();
    assert_close(&got, &want, 70, "env blocks");
    println!("env blocks ok: {:?}", Kernel::selected().blocks());
}

#[test]
fn env_var_forces_the_blocks() {
    if std::env::var_os("CONVINIT_GEMM_BLOCKS").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (spec, applied) in [
        ("kc=24,mc=5,nc=20,l2=8192", true),
        ("kc=7", true),
        ("kc=0", false),
        ("bogus", false),
    ] {
        let out = std::process::Command::new(&exe)
            .args([
                "blocks_follow_the_env_var",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CONVINIT_GEMM_BLOCKS", spec)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed") && stdout.contains("env blocks ok"),
            "{spec}: {stdout}{stderr}"
        );
        // An invalid value is ignored with one warning naming the variable.
        let warnings = stderr.matches("ignoring CONVINIT_GEMM_BLOCKS").count();
        assert_eq!(warnings, usize::from(!applied), "{spec}: {stderr}");
    }
}
