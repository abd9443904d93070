//! Keeping the rayon pool awake through a run of small parallel ops.
//!
//! A training step of a small net is a few dozen parallel ops of 20 to 500 us each,
//! with short serial stretches between them (the batch gather, the loss, the optimiser,
//! each op's own setup). An idle rayon worker spins for a few tens of microseconds, then
//! sleeps on a futex; waking it costs the next op tens of microseconds more (measured
//! with `perf sched` on `train_mnist`, 2 threads, Intel Xeon 6/207: the worker was
//! asleep during 19% of the main thread's training time, and took a median 34 us to
//! run once woken), so the first part of most ops ran on one thread. OpenMP runtimes
//! avoid this by spinning for a while before sleeping (`KMP_BLOCKTIME`, 200 ms by
//! default in the runtime PyTorch ships); [`KeepAwake`] does the same for rayon, for as
//! long as it lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a polling worker goes without finding work before it stops polling and
/// sleeps as rayon's workers do. Far above the serial stretches of a training step (the
/// longest, the batch gather, about 60 us in `train_mnist`), and a bound on how long a
/// worker polls for a guard that is leaked or whose owner waits on work the poller sits
/// above on its stack (a guard taken inside a rayon job).
pub const IDLE_LIMIT: Duration = Duration::from_millis(1);

/// While alive, every other worker of the current rayon pool polls the pool for work
/// instead of sleeping, so parallel ops start on all threads at once; a worker that
/// finds no work for [`IDLE_LIMIT`] stops polling.
///
/// The workers keep their cores busy while the guard lives, even with no work: take one
/// around each step of a loop of small ops (each training step of
/// [`crate::train::fit`] does), on a pool with no more threads than free cores, and drop
/// it after. It is best taken outside rayon jobs (on the thread driving the loop); taken
/// inside one, a poller that lands above the owner's work on its stack holds it up to
/// [`IDLE_LIMIT`]. Results do not change: which thread runs a task never changes the
/// bits (see the crate's determinism notes).
///
/// # Examples
/// ```
/// use convinit::threads::KeepAwake;
/// let awake = KeepAwake::new();
/// // ... many small parallel ops ...
/// drop(awake);
/// ```
#[derive(Debug)]
#[must_use = "the workers stop polling when the guard is dropped"]
pub struct KeepAwake {
    stop: Arc<AtomicBool>,
}

impl KeepAwake {
    /// Starts the other workers of the current pool (the global pool outside any pool)
    /// polling for work. With one thread it does nothing.
    pub fn new() -> KeepAwake {
        let stop = Arc::new(AtomicBool::new(false));
        if rayon::current_num_threads() > 1 {
            let me = rayon::current_thread_index();
            let flag = Arc::clone(&stop);
            rayon::spawn_broadcast(move |ctx| {
                // Not on the caller's own thread: it would poll until the caller, which
                // is waiting under it, drops the guard.
                if Some(ctx.index()) == me {
                    return;
                }
                let mut last_work = Instant::now();
                let mut idle = 0u32;
                while !flag.load(Ordering::Relaxed) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        last_work = Instant::now();
                        idle = 0;
                    } else if last_work.elapsed() > IDLE_LIMIT {
                        break;
                    } else {
                        // Mostly `pause`s, which leave a sibling hardware thread its share
                        // of the core; now and then the OS's turn.
                        idle = idle.wrapping_add(1);
                        if idle.is_multiple_of(64) {
                            std::thread::yield_now();
                        } else {
                            for _ in 0..8 {
                                std::hint::spin_loop();
                            }
                        }
                    }
                }
            });
        }
        KeepAwake { stop }
    }
}

impl Default for KeepAwake {
    fn default() -> Self {
        KeepAwake::new()
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
