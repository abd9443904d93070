//! A small process-wide cache of large `f32` buffers, so a training loop runs at the same
//! speed in a long-running process as alone.
//!
//! Every op allocates its outputs fresh, and a network step frees as many large buffers
//! as it allocates (activations, gradients). Given back to the system allocator, their
//! memory is at the allocator's mercy: glibc serves blocks above its mmap threshold
//! (up to 32 MiB) straight from the kernel and trims the top of its heap, so the next
//! step faults every page in again (measured on a batch-norm layer alone: 3 ms a call in
//! a loop on its own, 10 ms inside the bench process, 620 000 page faults in one
//! `bench --only layers` run).
//!
//! Instead, the layers hand the large buffers they are done with (a consumed output
//! gradient, the activations a new forward pass releases) to this cache, and the ops
//! take their outputs from it when one of about the right size is there. Nothing else
//! changes: an output taken from the cache is written in full or zeroed first, so
//! results are bit for bit the same with or without it. A buffer keeps its length (the
//! values its last user left, all initialised) while cached, so an output its op writes
//! in full is taken as it is (`take_written`), without a pass of zeros first.
//!
//! The cache keeps at most [`cache_limit`] bytes (default 256 MiB; buffers below 256 KiB,
//! which the allocator serves well, are never kept). [`set_cache_limit`] changes it
//! (0 turns the cache off) and [`clear_cache`] frees what it holds, e.g. after training.

use std::any::Any;
use std::sync::Mutex;

/// Buffers below this many bytes are left to the allocator.
const MIN_BYTES: usize = 256 << 10;

/// The default of [`cache_limit`]: 256 MiB.
pub const DEFAULT_CACHE_LIMIT: usize = 256 << 20;

struct Cache {
    /// Free buffers, oldest first, each holding the values its last user left.
    free: Vec<Vec<f32>>,
    /// Sum of the capacities in `free`, in bytes.
    bytes: usize,
    limit: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    free: Vec::new(),
    bytes: 0,
    limit: DEFAULT_CACHE_LIMIT,
});

fn with_cache<T>(f: impl FnOnce(&mut Cache) -> T) -> T {
    // A panic while holding the lock leaves the cache consistent (every step below
    // keeps `bytes` in line with `free`), so a poisoned lock is still usable.
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

fn bytes_of(capacity: usize) -> usize {
    capacity.saturating_mul(size_of::<f32>())
}

/// Sets the most bytes the cache keeps (0: keep nothing, and free what it holds now);
/// returns the previous limit.
pub fn set_cache_limit(bytes: usize) -> usize {
    let old = with_cache(|c| {
        let old = std::mem::replace(&mut c.limit, bytes);
        c.shrink();
        old
    });
    if bytes == 0 {
        drop(with_small(|s| s.clear()));
    }
    old
}

/// The most bytes the cache keeps ([`DEFAULT_CACHE_LIMIT`] unless
/// [`set_cache_limit`] changed it).
pub fn cache_limit() -> usize {
    with_cache(|c| c.limit)
}

/// The bytes the cache holds now.
pub fn cached_bytes() -> usize {
    with_cache(|c| c.bytes)
}

/// Frees every buffer the cache holds (the limit stays).
pub fn clear_cache() {
    let free = with_cache(|c| {
        c.bytes = 0;
        std::mem::take(&mut c.free)
    });
    drop(free);
    drop(with_small(|s| s.clear()));
}

impl Cache {
    /// Drops the oldest buffers until the total is within the limit.
    fn shrink(&mut self) {
        let mut drop_n = 0;
        while self.bytes > self.limit && drop_n < self.free.len() {
            self.bytes -= bytes_of(self.free[drop_n].capacity());
            drop_n += 1;
        }
        self.free.drain(..drop_n);
    }
}

/// A buffer with room for at least `len` `f32`s (and at most a quarter more), when the
/// cache holds one; the smallest that fits. Its length and values are its last user's.
fn take_f32(len: usize) -> Option<Vec<f32>> {
    if bytes_of(len) < MIN_BYTES {
        return None;
    }
    take_at(|free| {
        free.iter()
            .enumerate()
            .filter(|(_, b)| fits(b, len))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)
    })
}

/// Removes from the cache the buffer `pick` points at among the free ones, if any.
fn take_at(pick: impl FnOnce(&[Vec<f32>]) -> Option<usize>) -> Option<Vec<f32>> {
    with_cache(|c| {
        let b = c.free.remove(pick(&c.free)?);
        c.bytes -= bytes_of(b.capacity());
        Some(b)
    })
}

/// An empty `Vec<T>` with room for at least `len` elements from the cache, when `T` is
/// `f32` and the cache holds a buffer that fits.
pub(crate) fn take<T: 'static>(len: usize) -> Option<Vec<T>> {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() {
        return None;
    }
    let mut slot = take_f32(len).map(|mut v| {
        v.clear();
        v
    });
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<Vec<T>>>()
        .and_then(Option::take)
}

/// Whether the cache holds a buffer that [`take_written`] would return for `len`.
pub(crate) fn holds(len: usize) -> bool {
    bytes_of(len) >= MIN_BYTES && with_cache(|c| c.free.iter().any(|b| fits(b, len)))
}

/// Whether `b` can serve `len` floats: room for them, and at most a quarter more.
fn fits(b: &Vec<f32>, len: usize) -> bool {
    (len..=len.saturating_add(len / 4)).contains(&b.capacity())
}

/// `len` `f32`s from the cache, when it holds a buffer that fits, with whatever values
/// its last user left in them (zeros past what it used): for an output its op
/// overwrites in full, which then costs one pass over its memory instead of two.
pub(crate) fn take_written(len: usize) -> Option<Vec<f32>> {
    let mut v = take_f32(len)?;
    if v.len() >= len {
        v.truncate(len);
    } else {
        v.resize(len, 0.0);
    }
    Some(v)
}

/// Keeps `v`'s memory for a later [`take`], when it is large enough and the limit
/// allows (the oldest buffers go first); else frees it.
pub(crate) fn give(v: Vec<f32>) {
    let bytes = bytes_of(v.capacity());
    if bytes < MIN_BYTES {
        return;
    }
    let dropped = with_cache(|c| {
        if bytes > c.limit {
            return Some(v);
        }
        c.bytes += bytes;
        c.free.push(v);
        c.shrink();
        None
    });
    drop(dropped);
}

/// Small buffers, kept by exact length for [`take_small_zeroed`]: the per-chunk partial
/// sums of a conv's weight gradient, a hundred or more of a few KiB each per call,
/// alive together until they are summed in chunk order. From the allocator, freed
/// together at the top of its heap, they went back to the system after every call and
/// were faulted in afresh on the next: the notebook net's training step at N = 1000
/// took about 690 page faults a step, 80% of them in these partials (`perf record -e
/// page-faults`).
#[derive(Default)]
struct Small {
    /// Free buffers by length.
    free: Vec<(usize, Vec<Vec<f32>>)>,
    /// Sum of their capacities, in bytes.
    bytes: usize,
}

impl Small {
    /// Empties the pool, returning what it held.
    fn clear(&mut self) -> Vec<(usize, Vec<Vec<f32>>)> {
        self.bytes = 0;
        std::mem::take(&mut self.free)
    }
}

/// Most bytes of small buffers kept (and never more than [`cache_limit`]): the notebook
/// net at N = 10000 has 1 250 reduction chunks a conv, its partials about 30 MB a step;
/// with 16 MiB kept it still faulted 3 700 pages a step (Zen 4, 1 thread: 195-198 ms
/// a step, 186-188 with 64 MiB and none).
const SMALL_LIMIT: usize = 64 << 20;

static SMALL: Mutex<Small> = Mutex::new(Small {
    free: Vec::new(),
    bytes: 0,
});

fn with_small<T>(f: impl FnOnce(&mut Small) -> T) -> T {
    // As `with_cache`: every step keeps `bytes` in line with `free`.
    let mut guard = SMALL.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

/// `len` zeros, in a buffer [`give_small`] kept when there is one of that length: from
/// the small buffers, or for 256 KiB and more from the large buffers' cache (one of
/// exactly that capacity), where [`give_small`] sends those. (Taking only from the
/// small buffers, a weight-gradient partial of 256 KiB or more was faulted in afresh on
/// every call: 64 x 64 x 4x4 -> 128 channels, 3x3, took 2.2 ms for its backward against
/// 1.3 ms at 112 channels, Zen 4.)
pub(crate) fn take_small_zeroed(len: usize) -> Vec<f32> {
    if bytes_of(len) >= MIN_BYTES {
        // Only a buffer of this very capacity (a partial given back): taking any that
        // fitted could take the one a later op's output wanted.
        let kept = take_at(|free| free.iter().rposition(|b| b.capacity() == len));
        return match kept {
            Some(mut v) => {
                v.clear();
                v.resize(len, 0.0);
                v
            }
            None => vec![0.0; len],
        };
    }
    let kept = with_small(|s| {
        let (_, bucket) = s.free.iter_mut().find(|(l, _)| *l == len)?;
        let v = bucket.pop()?;
        s.bytes -= bytes_of(v.capacity());
        Some(v)
    });
    match kept {
        Some(mut v) => {
            v.fill(0.0);
            v
        }
        None => vec![0.0; len],
    }
}

/// Keeps a buffer below the large buffers' 256 KiB (larger ones go to [`give`]) for
/// [`take_small_zeroed`] of its length. The small buffers kept stay within 64 MiB and
/// the [`cache_limit`]: past it, the other lengths given back longest ago are freed
/// first, so a later network's sizes replace an earlier one's; a buffer larger than the
/// limit alone is freed.
pub(crate) fn give_small(v: Vec<f32>) {
    let bytes = bytes_of(v.capacity());
    if bytes >= MIN_BYTES || v.is_empty() {
        return give(v);
    }
    let limit = cache_limit().min(SMALL_LIMIT);
    let len = v.len();
    let dropped = with_small(|s| {
        // Past the limit, the lengths given back longest ago go first (a later
        // network's sizes replace an earlier one's), never this length's own.
        let mut evicted = Vec::new();
        if bytes > limit {
            return (Some(v), evicted);
        }
        while s.bytes + bytes > limit {
            let Some(at) = s.free.iter().position(|(l, _)| *l != len) else {
                break;
            };
            let (_, bucket) = s.free.remove(at);
            s.bytes -= bucket.iter().map(|b| bytes_of(b.capacity())).sum::<usize>();
            evicted.push(bucket);
        }
        if s.bytes + bytes > limit {
            return (Some(v), evicted);
        }
        s.bytes += bytes;
        match s.free.iter().position(|(l, _)| *l == len) {
            // Moved to the back: the most recently given length.
            Some(at) => {
                let mut entry = s.free.remove(at);
                entry.1.push(v);
                s.free.push(entry);
            }
            None => s.free.push((len, vec![v])),
        }
        (None, evicted)
    });
    drop(dropped);
}

/// Hands an array you are done with to the cache, so that a later op's output of about
/// its size reuses its memory rather than a fresh allocation: the layers do this with
/// every large buffer they release, and a loop that calls the ops itself and drops
/// their outputs can do the same (`buffers::recycle(y)` instead of dropping `y`).
/// Blocks of more than 32 MiB come fresh from the system on every allocation and are
/// faulted in page by page, at a speed that depends on what ran before (pw_64x128's
/// forward, a 51 MB output: 11 ms alone, 26 ms after the other benchmark shapes; 2
/// threads, Intel Xeon); recycled, they are not. Arrays below 256 KiB, or over the
/// [`cache_limit`], are freed as `drop` would free them. The values are not read: a
/// later op overwrites or zeroes what it takes.
///
/// ```
/// use convinit::buffers;
/// use convinit::ops::{conv2d, Conv2dOptions};
/// use ndarray::Array4;
///
/// let x = Array4::<f32>::ones((8, 16, 32, 32));
/// let w = Array4::<f32>::ones((16, 16, 3, 3));
/// let opts = Conv2dOptions::new().with_padding((1, 1));
/// for _ in 0..3 {
///     let y = conv2d(x.view(), w.view(), None, &opts)?;
///     assert_eq!(y[[0, 0, 1, 1]], 144.0);
///     buffers::recycle(y); // the next call's output reuses this memory
/// }
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn recycle<D: ndarray::Dimension>(a: ndarray::Array<f32, D>) {
    give_array(a);
}

/// [`give`] for an array: its buffer when nothing else holds it.
pub(crate) fn give_array<D: ndarray::Dimension>(a: ndarray::Array<f32, D>) {
    give(a.into_raw_vec_and_offset().0);
}

/// [`give`] for a shared array: its buffer when this was the last reference to it.
pub(crate) fn give_shared<D: ndarray::Dimension>(a: ndarray::ArcArray<f32, D>) {
    if a.is_unique() {
        give_array(a.into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, as the cache is process-wide: it takes what fits, within a quarter,
    /// never a smaller or a far larger buffer, and keeps to its limit.
    #[test]
    fn takes_what_fits_and_keeps_to_its_limit() {
        let old = set_cache_limit(8 << 20);
        clear_cache();
        let n = 1 << 18; // 1 MiB of f32
        give(Vec::with_capacity(n));
        give(Vec::with_capacity(2 * n));
        assert_eq!(cached_bytes(), 3 << 20);
        assert!(
            take::<f32>(n + 1).is_none(),
            "2 MiB is too large for 1 MiB + 4 bytes"
        );
        assert!(take::<i64>(n).is_none());
        let b = take::<f32>(2 * n - 10).expect("the 2 MiB buffer fits");
        assert_eq!(b.capacity(), 2 * n);
        assert!(
            take::<f32>(n / 2).is_none(),
            "1 MiB is too large for 0.5 MiB"
        );
        // Over the limit: the oldest go.
        for _ in 0..10 {
            give(Vec::with_capacity(n));
        }
        assert!(cached_bytes() <= 8 << 20);
        // A written output takes a buffer with its last user's values (zeros past
        // them), without clearing it.
        clear_cache();
        give(vec![7.0; n]);
        let w = take_written(n - 3).expect("the 1 MiB buffer fits");
        assert_eq!((w.len(), w[0], w[n - 4]), (n - 3, 7.0, 7.0));
        give(w);
        let w = take_written(n).expect("it fits again");
        assert_eq!((w[n - 4], w[n - 3], w[n - 1]), (7.0, 0.0, 0.0));
        give(w);
        assert_eq!(take::<f32>(n).map(|v| v.len()), Some(0), "take clears");
        // Small buffers are never kept.
        let before = cached_bytes();
        give(Vec::with_capacity(100));
        assert_eq!(cached_bytes(), before);
        // One of 256 KiB or more goes to the large buffers and is taken back from them,
        // zeroed.
        clear_cache();
        let v = vec![3.0f32; n];
        let at = v.as_ptr();
        give_small(v);
        assert_eq!((cached_bytes(), with_small(|s| s.bytes)), (4 * n, 0));
        let z = take_small_zeroed(n);
        assert_eq!((z.as_ptr(), z.len(), cached_bytes()), (at, n, 0));
        assert!(z.iter().all(|&x| x == 0.0));
        // ... of that very capacity only: one that would fit an output stays.
        give(vec![3.0f32; n + 8]);
        let fresh = take_small_zeroed(n);
        assert_eq!((fresh.len(), cached_bytes()), (n, 4 * (n + 8)));
        assert!(fresh.iter().all(|&x| x == 0.0));
        clear_cache();
        // ... but in their own pool, by exact length, taken back zeroed.
        let small = || with_small(|s| s.bytes);
        let v = vec![3.0f32; 100];
        let at = v.as_ptr();
        give_small(v);
        assert_eq!(small(), 400);
        let other = take_small_zeroed(99);
        assert_eq!((other.len(), small()), (99, 400), "another length");
        let z = take_small_zeroed(100);
        assert_eq!((z.as_ptr(), z.len(), small()), (at, 100, 0));
        assert!(z.iter().all(|&x| x == 0.0));
        give_small(z);
        // Past the limit, the other lengths given back longest ago go first.
        set_cache_limit(1000);
        give_small(vec![1.0; 10]);
        give_small(vec![1.0; 140]);
        assert_eq!(small(), 1000);
        give_small(vec![1.0; 20]);
        assert_eq!(small(), 40 + 560 + 80, "the 100 went");
        give_small(vec![1.0; 10]);
        give_small(vec![1.0; 100]);
        assert_eq!(small(), 40 + 40 + 80 + 400, "then the 140");
        give_small(vec![1.0; 300]);
        assert_eq!(
            small(),
            560,
            "one past the limit alone is dropped, nothing else"
        );
        set_cache_limit(0);
        assert_eq!((cached_bytes(), small()), (0, 0));
        give_small(vec![1.0; 10]);
        assert_eq!(small(), 0, "a zero limit keeps none");
        set_cache_limit(old);
    }
}
