//! A global allocator that records, per thread, the largest single allocation, so a
//! test can check that an input which never ends, or lies about its size, costs bounded
//! memory; and, over all threads, how many allocations of at least [`COUNTED_FROM`]
//! bytes were made and the largest since the last look, so a test can check that a
//! warm training step allocates nothing large. Include it with
//! `#[path = "common/largest_alloc.rs"] mod largest_alloc;`: the module installs itself
//! as the binary's global allocator.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Allocations of at least this many bytes are counted across threads.
pub const COUNTED_FROM: usize = 64 << 10;
static COUNTED: AtomicUsize = AtomicUsize::new(0);
static LARGEST_ANY_THREAD: AtomicUsize = AtomicUsize::new(0);

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    if size >= COUNTED_FROM {
        COUNTED.fetch_add(1, Ordering::Relaxed);
        LARGEST_ANY_THREAD.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `f`'s result and the largest single allocation it made on this thread, in bytes.
pub fn largest_allocation_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(Cell::get))
}

/// How many allocations of at least [`COUNTED_FROM`] bytes all threads made so far.
pub fn counted_allocations() -> usize {
    COUNTED.load(Ordering::Relaxed)
}

/// The largest allocation any thread made since the last call, in bytes (at least
/// [`COUNTED_FROM`], or 0 when there was none that large).
pub fn take_largest_any_thread() -> usize {
    LARGEST_ANY_THREAD.swap(0, Ordering::Relaxed)
}
