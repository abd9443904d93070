//! [`ConvAlgorithm::Autotune`]: the first call for a geometry, a thread count and a pass
//! times every algorithm that can run the geometry and caches the fastest plan (auto's
//! unless beaten by more than [`MARGIN`]); later calls run it. The process-wide cache is a `Mutex<HashMap>`, never held while a conv
//! runs (a conv may run on rayon workers that tune other convs).
//!
//! [`ConvAlgorithm::Autotune`]: super::ConvAlgorithm::Autotune

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::plan::{ConvPlan, ForwardAlgo, InputGradAlgo, WeightGradAlgo};
use crate::error::{Error, Result};
use crate::ops::geometry::Conv2dGeometry;

/// The passes a conv call runs, each tuned on its own: the autotuning cache's third key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConvPass {
    /// [`conv2d`](crate::ops::conv2d): the forward algorithm is tuned.
    Forward,
    /// [`conv2d_backward`](crate::ops::conv2d_backward): the input-gradient and
    /// weight-gradient algorithms are tuned together (the same lowering runs both fused).
    Backward,
    /// [`conv2d_backward_params`](crate::ops::conv2d_backward_params), the weight and
    /// bias gradients only: the weight-gradient algorithm is tuned.
    BackwardParams,
}

/// Timed runs per candidate after the first, when the time budget allows.
const EXTRA_ROUNDS: usize = 3;

/// Tuning starts no round of timed runs that it expects to end past this (the first
/// round, one run of each candidate, always runs).
const BUDGET: Duration = Duration::from_secs(1);

/// Another candidate replaces auto's plan only when its fastest run beats auto's by more
/// than this fraction: tuning runs are few and noisy, and close candidates swapped
/// places from run to run. resnet_64's backward tuned to a direct weight gradient
/// that ran 1.05-1.13x slower than auto's Winograd one in steady state (2 threads,
/// Intel Xeon).
const MARGIN: f64 = 0.03;

/// The cache key: the geometry (its algorithm setting aside), threads, pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    x: [usize; 4],
    w: [usize; 4],
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
    threads: usize,
    pass: ConvPass,
}

impl Key {
    fn new(geo: &Conv2dGeometry, threads: usize, pass: ConvPass) -> Key {
        let o = &geo.options;
        Key {
            x: geo.x_shape().into(),
            w: geo.w_shape().into(),
            stride: o.stride,
            padding: o.padding,
            dilation: o.dilation,
            groups: o.groups,
            threads,
            pass,
        }
    }
}

/// The process-wide cache of tuned plans.
fn cache() -> MutexGuard<'static, HashMap<Key, ConvPlan>> {
    static CACHE: LazyLock<Mutex<HashMap<Key, ConvPlan>>> = LazyLock::new(Default::default);
    // The map is only read, cleared and inserted into whole, so a panic elsewhere cannot
    // leave it half-updated: a poisoned lock is still good.
    CACHE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The plan [`ConvAlgorithm::Autotune`](super::ConvAlgorithm::Autotune) picked for `geo`
/// (its algorithm setting aside) on `threads` threads for `pass`, or `None` when no such
/// call has run yet in this process (or since [`clear_autotune_cache`]). Run it with
/// [`conv2d_with_plan`](crate::ops::conv2d_with_plan) /
/// [`conv2d_backward_with_plan`](crate::ops::conv2d_backward_with_plan) for the same
/// bits as the autotuned call. `threads` is the size of the pool the call ran on
/// (`rayon::current_num_threads()` there).
///
/// ```
/// use convinit::ops::{autotuned_plan, conv2d, conv2d_with_plan, Conv2dGeometry,
///                     Conv2dOptions, ConvAlgorithm, ConvPass};
/// use ndarray::Array4;
///
/// let x = Array4::<f32>::from_shape_fn((2, 3, 9, 9), |(n, c, h, w)| (n + c + h * w) as f32);
/// let w = Array4::<f32>::ones((4, 3, 3, 3));
/// let opts = Conv2dOptions::new().with_algorithm(ConvAlgorithm::Autotune);
/// let y = conv2d(x.view(), w.view(), None, &opts)?;
/// let geo = Conv2dGeometry::new("example", [2, 3, 9, 9], [4, 3, 3, 3], &opts)?;
/// let threads = rayon::current_num_threads();
/// let plan = autotuned_plan(&geo, threads, ConvPass::Forward).expect("tuned by the call");
/// assert_eq!(y, conv2d_with_plan(x.view(), w.view(), None, &opts, plan)?);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn autotuned_plan(geo: &Conv2dGeometry, threads: usize, pass: ConvPass) -> Option<ConvPlan> {
    cache().get(&Key::new(geo, threads, pass)).copied()
}

/// Forgets every autotuned plan, so the next autotuned call of each geometry times the
/// candidates again (after the machine's load changed, or to measure the tuning itself).
pub fn clear_autotune_cache() {
    cache().clear();
}

/// The plans the tuner times for `pass`: auto's plan first (ties go to it), then auto's
/// with each other algorithm (pair of algorithms, for [`ConvPass::Backward`]) that can
/// run `geo`. Tile sizes and the other knobs stay auto's.
fn candidates(geo: &Conv2dGeometry, threads: usize, pass: ConvPass) -> Vec<ConvPlan> {
    let auto = ConvPlan::choose(geo, threads);
    let mut out = vec![auto];
    let mut push = |plan: ConvPlan| {
        if !out.contains(&plan) {
            out.push(plan);
        }
    };
    match pass {
        ConvPass::Forward => {
            for &forward in ForwardAlgo::ALL.iter().filter(|a| a.supports(geo)) {
                push(ConvPlan { forward, ..auto });
            }
        }
        ConvPass::Backward => {
            for &input_grad in InputGradAlgo::ALL.iter().filter(|a| a.supports(geo)) {
                for &weight_grad in WeightGradAlgo::ALL.iter().filter(|a| a.supports(geo)) {
                    push(ConvPlan {
                        input_grad,
                        weight_grad,
                        ..auto
                    });
                }
            }
        }
        ConvPass::BackwardParams => {
            for &weight_grad in WeightGradAlgo::ALL.iter().filter(|a| a.supports(geo)) {
                push(ConvPlan {
                    weight_grad,
                    ..auto
                });
            }
        }
    }
    out
}

/// A result of a conv pass whose buffers can go back to the buffer cache.
pub(super) trait Spent {
    /// Hands the large buffers to [`crate::buffers`].
    fn recycle(self);
}

impl Spent for () {
    fn recycle(self) {}
}

impl<D: ndarray::Dimension> Spent for ndarray::Array<f32, D> {
    fn recycle(self) {
        crate::buffers::give_array(self);
    }
}

impl<T: Spent> Spent for Option<T> {
    fn recycle(self) {
        if let Some(t) = self {
            t.recycle();
        }
    }
}

impl<A: Spent, B: Spent, C: Spent> Spent for (A, B, C) {
    fn recycle(self) {
        self.0.recycle();
        self.1.recycle();
        self.2.recycle();
    }
}

/// Runs `call` on the autotuned plan of (`geo`, this pool's size, `pass`), tuning it
/// first when the cache has none.
///
/// Tuning runs every candidate once, then further rounds of one run each (at most
/// [`EXTRA_ROUNDS`]) while the next round is expected to end within [`BUDGET`]; each
/// candidate scores its fastest run, and the fastest candidate wins, unless auto's
/// plan (the first candidate) is within [`MARGIN`] of it. The result of the winner's
/// fastest run is returned (auto's plan, kept so, runs once more for it); every result
/// not returned goes back to the buffer cache. A candidate that runs out of memory
/// ([`Error::Alloc`]) is left out; any other error is the call's (every candidate would
/// fail alike).
pub(super) fn run<T: Spent>(
    geo: &Conv2dGeometry,
    pass: ConvPass,
    mut call: impl FnMut(ConvPlan) -> Result<T>,
) -> Result<T> {
    let threads = rayon::current_num_threads();
    let key = Key::new(geo, threads, pass);
    if let Some(plan) = cache().get(&key).copied() {
        return call(plan);
    }
    let plans = candidates(geo, threads, pass);
    let start = Instant::now();
    // Per candidate: its fastest run so far (None: left out).
    let mut best_time: Vec<Option<Duration>> = vec![None; plans.len()];
    let mut last_time = vec![Duration::ZERO; plans.len()];
    // The fastest run overall: (candidate, time, result).
    let mut winner: Option<(usize, Duration, T)> = None;
    let mut alloc_err = None;
    for round in 0..=EXTRA_ROUNDS {
        if round > 0 {
            let next: Duration = (0..plans.len())
                .filter(|&i| best_time[i].is_some())
                .map(|i| last_time[i])
                .sum();
            if start.elapsed() + next > BUDGET {
                break;
            }
        }
        for (i, &plan) in plans.iter().enumerate() {
            if round > 0 && best_time[i].is_none() {
                continue;
            }
            let t0 = Instant::now();
            let result = match call(plan) {
                Ok(r) => r,
                Err(e @ Error::Alloc { .. }) => {
                    alloc_err = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let t = t0.elapsed();
            last_time[i] = t;
            best_time[i] = Some(best_time[i].map_or(t, |b| b.min(t)));
            // The result not kept goes back to the buffer cache, where the next
            // candidate's output comes from: fresh memory would time its page faults
            // (pw_64x128's 51 MB forward output: the pointwise forward timed slower than
            // the column one, which runs 1.2x slower once the output is reused).
            if winner.as_ref().is_none_or(|w| t < w.1) {
                if let Some((_, _, old)) = winner.replace((i, t, result)) {
                    old.recycle();
                }
            } else {
                result.recycle();
            }
        }
    }
    let Some((mut i, t, mut result)) = winner else {
        return Err(alloc_err.unwrap_or_else(|| {
            Error::config("conv2d", "autotuning found no algorithm for this geometry")
        }));
    };
    // Auto's plan (the first candidate) stays unless beaten by more than the margin.
    let near_auto = |a: Duration| t.as_secs_f64() > a.as_secs_f64() * (1.0 - MARGIN);
    if i != 0 && best_time[0].is_some_and(near_auto) {
        result.recycle();
        i = 0;
        result = call(plans[0])?;
    }
    let chosen = *cache().entry(key).or_insert(plans[i]);
    if chosen != plans[i] {
        // Another thread tuned the same key meanwhile and its plan is the cached one:
        // run that, so every result of this key comes from the plan the cache reports.
        return call(chosen);
    }
    Ok(result)
}
