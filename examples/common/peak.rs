//! The machine's yardstick, shared by `examples/bench` and `examples/convbench`.

/// Median of three short FMA-loop runs (about 0.1 s each) on `threads` threads, in
/// GFLOP/s ([`convinit::gemm::fma_peak_gflops`]).
pub fn fma_peak(threads: usize) -> f64 {
    let mut v: Vec<f64> = (0..3)
        .map(|_| convinit::gemm::fma_peak_gflops(threads, 50_000_000))
        .collect();
    v.sort_by(f64::total_cmp);
    v[1]
}
