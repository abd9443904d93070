//! Compares GEMM blockings (and kernels) side by side on square products, for tuning the
//! block sizes of `convinit::gemm` on a new CPU.
//!
//! ```sh
//! cargo run --release --example gemm_tune -- [--threads T] [--sizes 1024,2048] \
//!     [--rounds R] [--kernel avx512|avx2|fallback] [SPEC ...]
//! ```
//!
//! Each `SPEC` is a `CONVINIT_GEMM_BLOCKS` string (`kc=256,l2=524288`) applied to the
//! sizes detected for this CPU; `detected` (always run first) is those sizes unchanged.
//! The blockings run in turn, round after round, so a busy machine slows them alike;
//! each line gives the best and the median GFLOP/s over the rounds. On a shared machine
//! the best is the steadier figure: other work can only slow a run down.

use std::time::Instant;

use convinit::cpu::CpuInfo;
use convinit::gemm::{GemmBlocks, Kernel, sgemm_with_blocks};
use ndarray::Array2;

fn main() {
    if let Err(e) = run() {
        eprintln!("gemm_tune: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut threads = 1;
    let mut sizes = vec![1024usize, 2048];
    let mut rounds = 7;
    let mut kernel = Kernel::selected();
    let mut specs = vec!["detected".to_string()];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--threads" => threads = val()?.parse()?,
            "--rounds" => rounds = val()?.parse()?,
            "--sizes" => {
                sizes = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--kernel" => {
                let v = val()?;
                kernel = Kernel::from_name(&v).ok_or(format!("unknown kernel {v:?}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: gemm_tune [--threads T] [--sizes N,..] [--rounds R] [--kernel K] [SPEC ..]"
                );
                return Ok(());
            }
            spec => specs.push(spec.to_string()),
        }
    }
    let cpu = CpuInfo::get();
    println!(
        "{} ({}), L1d {} KiB, L2 {} KiB, L3 {} KiB; kernel {}, {threads} thread(s), best/median of {rounds}",
        cpu.brand,
        cpu.microarch.name(),
        cpu.l1d_bytes / 1024,
        cpu.l2_bytes / 1024,
        cpu.l3_bytes / 1024,
        kernel.name()
    );
    let detected = kernel.detected_blocks();
    let blockings: Vec<(String, GemmBlocks)> = specs
        .iter()
        .map(|s| {
            let b = if s == "detected" {
                Ok(detected)
            } else {
                detected.with_spec(s)
            };
            b.map(|b| (s.clone(), b))
        })
        .collect::<Result<_, _>>()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    for &n in &sizes {
        let a = Array2::from_shape_fn((n, n), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((n, n), |(i, j)| ((i * 5 + j) % 13) as f32 - 6.0);
        let mut c = Array2::<f32>::zeros((n, n));
        let flops = 2.0 * (n as f64).powi(3);
        let mut times = vec![Vec::new(); blockings.len()];
        for round in 0..=rounds {
            for (i, (_, bl)) in blockings.iter().enumerate() {
                let t = Instant::now();
                pool.install(|| {
                    sgemm_with_blocks(kernel, *bl, 1.0, a.view(), b.view(), 0.0, c.view_mut())
                })?;
                // Round 0 warms up (page faults, packing buffers).
                if round > 0 {
                    times[i].push(t.elapsed().as_secs_f64());
                }
            }
        }
        for ((name, bl), ts) in blockings.iter().zip(&mut times) {
            ts.sort_by(f64::total_cmp);
            println!(
                "n={n:5} {name:32} best {:7.1} median {:7.1} GFLOP/s  (kc {} mc {} l2 {} nc {})",
                flops / ts[0] / 1e9,
                flops / ts[ts.len() / 2] / 1e9,
                bl.kc,
                bl.mc,
                bl.l2_budget,
                bl.nc
            );
        }
    }
    Ok(())
}
