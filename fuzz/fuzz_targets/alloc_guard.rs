//! A counting global allocator that enforces the loaders' memory contract: no input may
//! make a loader allocate more than a small multiple of the input's (decompressed) size.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and the normal test
//! `tests/regressions/main.rs` (included there with `#[path]`), so both check the same
//! limits. Counting is per thread (the loaders are single-threaded), so tests running in
//! parallel threads of one test binary do not disturb each other.
//!
//! An allocation that breaks a limit is *recorded and admitted*, and
//! [`Report::assert_within`] turns the record into a panic with the figures after the
//! call: a test fails on its own, with a message, instead of the whole binary aborting
//! (returning null for an infallible allocation aborts the process, which hides every
//! other test of a test binary). Admitting is bounded by a hard cap, [`HARD_CAP`] of
//! live bytes in the measured scope (and any single allocation larger than it): past
//! it the allocation is refused with null, so a loader that would really take the
//! machine's memory still stops (an infallible allocation then aborts, a fallible one
//! gets its error); [`Report::denied`] records that too.
//!
//! The guard is turned off on a thread as soon as a panic starts there (a panic hook
//! installed by [`measure`]), so the panic message and backtrace can allocate freely.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Largest single allocation allowed for an input of `len` (decompressed) bytes.
///
/// 128 x, not 64 x: a one-byte opcode (`N`, `)`, `]`) becomes one `pickle::Value` of
/// 120 bytes, so a tuple of n one-byte items is legitimately a vector of 120 n bytes.
pub fn single_limit(len: usize) -> usize {
    len.saturating_mul(128).saturating_add(4 << 20)
}

/// Largest number of bytes allowed to be live at once (above what was live before the
/// call) for an input of `len` (decompressed) bytes: the machine's stack entries and
/// containers, the memo, and the result's `Value` nodes can all be alive together.
pub fn peak_limit(len: usize) -> usize {
    len.saturating_mul(512).saturating_add(16 << 20)
}

/// Live bytes a measured scope may reach, over the limits, before allocations are
/// refused with null: 1 GiB, the loaders' default [`convinit::limits::Limits`].
pub const HARD_CAP: usize = 1 << 30;

/// The allocator to install with `#[global_allocator]`.
pub struct Guard;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static SINGLE: Cell<usize> = const { Cell::new(usize::MAX) };
    static PEAK_LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static REFUSED: Cell<usize> = const { Cell::new(0) };
    static DENIED: Cell<usize> = const { Cell::new(0) };
}

/// Whether this thread may allocate `size` more bytes; counts it if so.
fn admit(size: usize) -> bool {
    // `try_with`: during thread teardown the locals may be gone; then do not count.
    if !ARMED.try_with(Cell::get).unwrap_or(false) {
        return true;
    }
    let live = LIVE.with(Cell::get).saturating_add(size as isize);
    let over_single = size > SINGLE.with(Cell::get);
    let over_peak = live > 0 && live as usize > PEAK_LIMIT.with(Cell::get);
    if over_single || over_peak {
        REFUSED.with(|r| r.set(r.get().max(size)));
        if size > HARD_CAP || (live > 0 && live as usize > HARD_CAP) {
            DENIED.with(|r| r.set(r.get().max(size)));
            return false;
        }
    }
    LIVE.with(|l| l.set(live));
    PEAK.with(|p| p.set(p.get().max(live)));
    LARGEST.with(|l| l.set(l.get().max(size)));
    true
}

fn release(size: usize) {
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        LIVE.with(|l| l.set(l.get() - size as isize));
    }
}

// SAFETY: every method forwards to `System` with the caller's layout; the bookkeeping
// only touches const-initialised thread locals (no allocation, no destructors).
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's (non-zero-sized) layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        release(layout.size());
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the new block coming to life before the old one is freed, which is
        // what a moving realloc costs at its peak.
        if !admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller guarantees
        // `new_size` is valid for `layout.align()`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            release(new_size);
        } else {
            release(layout.size());
        }
        p
    }
}

/// What [`measure`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// The (decompressed) input length the limits were computed from.
    pub input_len: usize,
    /// The largest single allocation made.
    pub largest: usize,
    /// The most bytes live at once, above what was live when the call started.
    pub peak: usize,
    /// The largest allocation that broke a limit (0 if none did); admitted unless it
    /// also broke [`HARD_CAP`].
    pub refused: usize,
    /// The largest allocation refused with null for breaking [`HARD_CAP`] (0 if none
    /// was).
    pub denied: usize,
}

impl Report {
    /// Panics, naming the figures, if any allocation broke a limit.
    #[track_caller]
    pub fn assert_within(&self) {
        assert!(
            self.refused == 0,
            "an allocation of {} bytes broke the limits for a {}-byte input \
             (single allocation <= {}, live bytes <= {}); largest admitted {}, peak {}{}",
            self.refused,
            self.input_len,
            single_limit(self.input_len),
            peak_limit(self.input_len),
            self.largest,
            self.peak,
            if self.denied > 0 {
                format!("; {} bytes refused past the hard cap", self.denied)
            } else {
                String::new()
            }
        );
    }
}

/// Runs `f` with this thread's allocations limited for an input of `input_len`
/// (decompressed) bytes, and reports what it allocated. Only meaningful when [`Guard`] is
/// the global allocator.
pub fn measure<T>(input_len: usize, f: impl FnOnce() -> T) -> (T, Report) {
    install_panic_hook();
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    LARGEST.with(|l| l.set(0));
    REFUSED.with(|r| r.set(0));
    DENIED.with(|r| r.set(0));
    SINGLE.with(|s| s.set(single_limit(input_len)));
    PEAK_LIMIT.with(|s| s.set(peak_limit(input_len)));
    /// Disarms on the way out, even when `f` panics.
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            ARMED.with(|a| a.set(false));
        }
    }
    ARMED.with(|a| a.set(true));
    let disarm = Disarm;
    let out = f();
    drop(disarm);
    let report = Report {
        input_len,
        largest: LARGEST.with(Cell::get),
        peak: PEAK.with(Cell::get).max(0) as usize,
        refused: REFUSED.with(Cell::get),
        denied: DENIED.with(Cell::get),
    };
    (out, report)
}

/// Whether this thread's allocations are being counted (inside [`measure`], and no
/// panic since it started). Used by the regressions test, not by the fuzz targets.
#[allow(dead_code)]
pub fn armed() -> bool {
    ARMED.try_with(Cell::get).unwrap_or(false)
}

/// Once per process: a panic hook that turns the guard off on the panicking thread
/// before the previous hook (the default one, or libFuzzer's) prints the message and
/// backtrace.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = ARMED.try_with(|a| a.set(false));
            previous(info);
        }));
    });
}
