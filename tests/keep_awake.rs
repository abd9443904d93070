//! `threads::KeepAwake`: the same bits with the pool's workers polling as with them
//! sleeping, and no hang wherever the guard is taken (outside the pool, inside a rayon
//! job with nested parallel work, leaked, on a one-thread pool).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::ops::op_cases;
use convinit::threads::KeepAwake;
use rayon::prelude::*;

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Runs `f` on its own thread and fails the test if it has not returned within a minute
/// (a hang would otherwise stall the whole test run).
fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("did not finish within a minute: a hang")
}

fn outputs() -> Vec<(String, Vec<Vec<u32>>)> {
    op_cases()
        .iter()
        .map(|case| (format!("{case:?}"), case.outputs(0)))
        .collect()
}

#[test]
fn every_op_gives_the_same_bits_with_the_pool_kept_awake() {
    for threads in [1, 2, 3] {
        let (asleep, awake) = in_pool(threads, || {
            let asleep = outputs();
            let awake = {
                let _awake = KeepAwake::new();
                outputs()
            };
            (asleep, awake)
        });
        assert_eq!(asleep.len(), awake.len());
        for ((name, a), (_, b)) in asleep.iter().zip(&awake) {
            assert_eq!(a, b, "{name}, {threads} threads");
        }
    }
}

#[test]
fn guards_taken_inside_rayon_jobs_with_nested_parallel_work_finish() {
    let sums = within_a_minute(|| {
        in_pool(3, || {
            (0..12usize)
                .into_par_iter()
                .map(|i| {
                    let _awake = KeepAwake::new();
                    (0..4usize)
                        .into_par_iter()
                        .map(|j| (0..2000usize).into_par_iter().map(|k| k * i + j).sum())
                        .collect::<Vec<usize>>()
                })
                .collect::<Vec<_>>()
        })
    });
    for (i, s) in sums.iter().enumerate() {
        for (j, &v) in s.iter().enumerate() {
            assert_eq!(v, i * 1999 * 2000 / 2 + j * 2000);
        }
    }
}

#[test]
fn guards_outside_the_pool_leaked_or_on_one_thread_leave_it_working() {
    let total = within_a_minute(|| {
        // From a thread outside any pool: the global pool's workers poll.
        let awake = KeepAwake::new();
        let a: u64 = (0..100_000u64).into_par_iter().sum();
        drop(awake);
        // Leaked: the workers stop polling after `IDLE_LIMIT` without work.
        std::mem::forget(KeepAwake::new());
        std::thread::sleep(convinit::threads::IDLE_LIMIT * 3);
        let b: u64 = (0..100_000u64).into_par_iter().sum();
        // One thread: nothing to keep awake.
        let c: u64 = in_pool(1, || {
            let _awake = KeepAwake::new();
            (0..100_000u64).into_par_iter().sum()
        });
        a + b + c
    });
    assert_eq!(total, 3 * (100_000 * 99_999 / 2));
}
