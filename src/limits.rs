//! Size limits for everything the crate reads, and fallible allocation for what it computes.
//!
//! A small file can ask for a great deal of memory: a gzip stream that inflates
//! a thousandfold, an IDX header that claims billions of images, a pickle whose shared
//! references expand on copy. Every loader ([`crate::data::pickle`], [`crate::data::idx`],
//! [`crate::data::Mnist`], [`crate::io::load_safetensors`]) therefore takes a [`Limits`]:
//! the largest decompressed input it will read and the largest result it will build,
//! 1 GiB each by default ([`Limits::DEFAULT_BYTES`]). Going over is
//! [`Error::LimitExceeded`], which names the limit and the setter that raises it:
//!
//! ```
//! use convinit::limits::Limits;
//! // The full MNIST pickle needs about 220 MB: the defaults are plenty.
//! let generous = Limits::default().with_max_input_bytes(4 << 30).with_max_result_bytes(4 << 30);
//! assert_eq!(generous.max_input_bytes(), 4 << 30);
//! assert_eq!(Limits::unlimited().max_result_bytes(), u64::MAX);
//! ```
//!
//! The ops and layers allocate what their shapes ask for (that is the caller's choice,
//! not a file's), but they reserve it fallibly: a shape whose buffers cannot be
//! allocated is [`Error::Alloc`] naming the op, the size and the shapes, never an
//! abort of the process.

use ndarray::Dimension;

use crate::error::{Error, Result};

/// The largest decompressed input a loader reads and the largest result it builds.
///
/// Both are in bytes; [`Default`] is [`Limits::DEFAULT_BYTES`] for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    max_input_bytes: u64,
    max_result_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: Self::DEFAULT_BYTES,
            max_result_bytes: Self::DEFAULT_BYTES,
        }
    }
}

impl Limits {
    /// The default of each limit: 1 GiB, about five times the full MNIST.
    pub const DEFAULT_BYTES: u64 = 1 << 30;

    /// No limit on either size (for inputs you trust and machines that can hold them).
    pub fn unlimited() -> Self {
        Limits {
            max_input_bytes: u64::MAX,
            max_result_bytes: u64::MAX,
        }
    }

    /// The largest decompressed input to read, in bytes (for an uncompressed file, its
    /// size).
    pub fn with_max_input_bytes(mut self, bytes: u64) -> Self {
        self.max_input_bytes = bytes;
        self
    }

    /// The largest result to build, in bytes: the arrays' data plus what the loader
    /// charges for strings, shapes and containers.
    pub fn with_max_result_bytes(mut self, bytes: u64) -> Self {
        self.max_result_bytes = bytes;
        self
    }

    /// The largest decompressed input read, in bytes.
    pub fn max_input_bytes(&self) -> u64 {
        self.max_input_bytes
    }

    /// The largest result built, in bytes.
    pub fn max_result_bytes(&self) -> u64 {
        self.max_result_bytes
    }

    /// `Err(LimitExceeded)` when `bytes` of decompressed input is more than allowed.
    pub(crate) fn check_input(&self, format: &'static str, bytes: u64) -> Result<()> {
        if bytes > self.max_input_bytes {
            return Err(Error::LimitExceeded {
                format,
                what: "decompressed input",
                limit: self.max_input_bytes,
                setting: "Limits::with_max_input_bytes",
            });
        }
        Ok(())
    }

    /// `Err(LimitExceeded)` when a result of `bytes` is more than allowed.
    pub(crate) fn check_result(&self, format: &'static str, bytes: u64) -> Result<()> {
        if bytes > self.max_result_bytes {
            return Err(Error::LimitExceeded {
                format,
                what: "result",
                limit: self.max_result_bytes,
                setting: "Limits::with_max_result_bytes",
            });
        }
        Ok(())
    }
}

/// Element types whose all-zero bit pattern is their zero value (`T::default()`).
///
/// # Safety
/// An implementor must be valid, and equal to `T::default()`, when every byte is zero.
pub(crate) unsafe trait ZeroBits: Copy + Default {}

macro_rules! zero_bits {
    ($($t:ty),*) => { $(
        // SAFETY: a primitive number whose zero bits are the value 0 (0.0 for floats).
        unsafe impl ZeroBits for $t {}
    )* };
}
zero_bits!(f32, f64, i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

/// A zero-filled `Vec` of `len` elements, reserved fallibly and written with zeros,
/// for buffers that are accumulated into (`+=`) or read before being written.
///
/// `describe` says what the buffer is for (`"output (64, 8, 14, 14)"`); it is only
/// called on failure.
pub(crate) fn try_zeroed_vec<T: Clone + Default + 'static>(
    op: &'static str,
    len: usize,
    describe: impl FnOnce() -> String,
) -> Result<Vec<T>> {
    let mut v = try_vec_with_capacity(op, len, describe)?;
    v.resize(len, T::default());
    Ok(v)
}

/// A zero-valued `Vec` of `len` elements, reserved fallibly, for a buffer the caller
/// will *write* before it reads any element of it (an output overwritten in full).
///
/// Asked of the allocator as zeroed memory (`calloc`): a fresh large block comes from
/// the system already zero and is not touched here, so its pages are first touched by
/// the caller's writes, once. [`try_zeroed_vec`] writes every page twice (its zeros,
/// then the caller's values). Do not accumulate into it: the first touch of an untouched
/// page by a *read* maps the shared zero page, and the write after it is then a
/// copy-on-write fault with a TLB shootdown of every other thread (measured: a max-pool
/// backward's `+=` scatter into such a buffer ran 2.4x slower at 2 threads than at 1).
pub(crate) fn try_output_vec<T: ZeroBits + 'static>(
    op: &'static str,
    len: usize,
    describe: impl FnOnce() -> String,
) -> Result<Vec<T>> {
    if let Some(mut v) = crate::buffers::take::<T>(len) {
        // Resident memory from the buffer cache: zeroing it costs no page faults.
        v.resize(len, T::default());
        return Ok(v);
    }
    if len == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(vec![T::default(); len]);
    }
    // `Layout::array` fails above `isize::MAX` bytes; the allocator returns null when
    // it has no room.
    let ptr = std::alloc::Layout::array::<T>(len)
        .ok()
        // SAFETY: the layout has a nonzero size (len > 0, T not zero-sized).
        .map(|layout| unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>())
        .filter(|p| !p.is_null());
    let Some(ptr) = ptr else {
        return Err(Error::Alloc {
            op,
            bytes: (len as u128).saturating_mul(std::mem::size_of::<T>() as u128),
            message: describe(),
        });
    };
    advise_huge_pages(ptr.cast(), len * size_of::<T>());
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[T; len]`,
    // which is the layout a `Vec<T>` of capacity `len` deallocates with, and all `len`
    // elements are initialised: zero bytes are a valid `T` (`ZeroBits`).
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// An empty `Vec` with room for `len` elements, reserved fallibly: from the buffer
/// cache ([`crate::buffers`]) when it holds one that fits.
pub(crate) fn try_vec_with_capacity<T: 'static>(
    op: &'static str,
    len: usize,
    describe: impl FnOnce() -> String,
) -> Result<Vec<T>> {
    if let Some(v) = crate::buffers::take::<T>(len) {
        return Ok(v);
    }
    let mut v: Vec<T> = Vec::new();
    match v.try_reserve_exact(len) {
        Ok(()) => {
            advise_huge_pages(v.as_ptr().cast(), len.saturating_mul(size_of::<T>()));
            Ok(v)
        }
        Err(_) => Err(Error::Alloc {
            op,
            bytes: (len as u128).saturating_mul(std::mem::size_of::<T>() as u128),
            message: describe(),
        }),
    }
}

/// A zero-filled array of `shape`, reserved fallibly (see [`try_zeroed_vec`]).
pub(crate) fn try_zeros<T: Clone + Default + 'static, Sh>(
    op: &'static str,
    shape: Sh,
    describe: impl FnOnce() -> String,
) -> Result<ndarray::Array<T, Sh::Dim>>
where
    Sh: ndarray::ShapeBuilder,
{
    array_of(op, shape, describe, try_zeroed_vec)
}

/// A zero-valued array of `shape` for an output the caller writes before reading it,
/// reserved fallibly (see [`try_output_vec`]).
pub(crate) fn try_output<T: ZeroBits + 'static, Sh>(
    op: &'static str,
    shape: Sh,
    describe: impl FnOnce() -> String,
) -> Result<ndarray::Array<T, Sh::Dim>>
where
    Sh: ndarray::ShapeBuilder,
{
    array_of(op, shape, describe, try_output_vec)
}

/// Most bytes of a new output that [`try_written_output`] zeroes over the rayon pool:
/// glibc's largest dynamic mmap threshold. Larger blocks are always fresh pages from
/// the kernel, which `calloc` does not clear; smaller ones are often a reused part of
/// the heap, which it clears with one serial `memset` (nb_32x1x5's 14.7 MB output in a
/// loop: 11% of its 2-thread forward).
const POOL_ZEROED_BYTES: usize = 32 << 20;

/// An `f32` array of `shape` for an output the caller overwrites in full before it
/// reads any of it (the conv forward, whose every algorithm writes each element):
/// a cached buffer as its last user left it ([`crate::buffers::take_written`]), else a
/// zero-valued one. Either way every element is initialised; only the values differ,
/// and the caller's writes replace them all. Skipping the zeros matters in a training
/// step: they were a serial `memset` of every conv output on the calling thread (1.5%
/// of `train_mnist`'s profile, with the pool's workers waiting).
///
/// With `parallel`, a new buffer of 128 KiB to [`POOL_ZEROED_BYTES`] is reserved
/// uninitialised and zeroed over the rayon pool rather than by `calloc` on the calling
/// thread (`calloc` clears a block the allocator reuses with one serial `memset`: 5%
/// of seed_l1's 2-thread forward, called in a loop); it also wakes the pool's workers
/// while the calling thread does its share.
pub(crate) fn try_written_output<Sh>(
    op: &'static str,
    shape: Sh,
    parallel: bool,
    describe: impl FnOnce() -> String,
) -> Result<ndarray::Array<f32, Sh::Dim>>
where
    Sh: ndarray::ShapeBuilder,
{
    array_of(op, shape, describe, |op, len, describe| {
        if let Some(v) = crate::buffers::take_written(len) {
            return Ok(v);
        }
        let bytes = len.saturating_mul(size_of::<f32>());
        if !parallel || bytes > POOL_ZEROED_BYTES || len < 2 * ZERO_CHUNK {
            return try_output_vec(op, len, describe);
        }
        let mut v = try_vec_with_capacity::<f32>(op, len, describe)?;
        use rayon::prelude::*;
        v.spare_capacity_mut()[..len]
            .par_chunks_mut(ZERO_CHUNK)
            .for_each(|c| c.fill(std::mem::MaybeUninit::new(0.0)));
        // SAFETY: the capacity is at least `len` (reserved above), and the fill just
        // initialised the first `len` elements.
        unsafe { v.set_len(len) };
        Ok(v)
    })
}

/// Floats per task when [`try_written_output`] zeroes over the pool (64 KiB).
const ZERO_CHUNK: usize = 1 << 14;

/// An output element a kernel writes exactly once: an initialised `T` (an output the
/// caller gave, the `_into` ops) or a `MaybeUninit<T>` (a new output, see
/// [`filled_output`]). Kernels generic over it serve both without an unsafe cast.
pub(crate) trait Slot<T>: Send {
    /// Writes `v` here.
    fn set(&mut self, v: T);
}

impl<T: Send> Slot<T> for T {
    #[inline(always)]
    fn set(&mut self, v: T) {
        *self = v;
    }
}

impl<T: Send> Slot<T> for std::mem::MaybeUninit<T> {
    #[inline(always)]
    fn set(&mut self, v: T) {
        self.write(v);
    }
}

/// An array of `shape` whose every element `fill` writes, in `v`'s memory: `v` is
/// empty, reserved beforehand for at least the shape's element count (with
/// [`try_vec_with_capacity`], so that a too large output fails before anything else
/// happens). Never zeroed: an output written in full costs one pass over its memory,
/// where a zeroed one costs two (`calloc` zeroes a block the allocator reuses).
///
/// # Safety
/// `fill` must initialise every element of the slice it is given (the array's elements
/// in standard order) before it returns.
///
/// # Panics
/// When `v` is not empty or its capacity is below the shape's element count.
pub(crate) unsafe fn filled_output<T, Sh>(
    mut v: Vec<T>,
    shape: Sh,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<T>]),
) -> ndarray::Array<T, Sh::Dim>
where
    Sh: ndarray::ShapeBuilder,
{
    let shape = shape.into_shape_with_order();
    let len = shape.raw_dim().size();
    assert!(
        v.is_empty() && v.capacity() >= len,
        "output buffer too small"
    );
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` initialised all `len` elements (the caller's promise), and the
    // capacity is at least `len`.
    unsafe { v.set_len(len) };
    ndarray::Array::from_shape_vec(shape, v).expect("length matches the shape")
}

/// An array of `shape` on the `Vec` that `make` reserves for its element count.
fn array_of<T, Sh, F>(
    op: &'static str,
    shape: Sh,
    describe: F,
    make: impl FnOnce(&'static str, usize, F) -> Result<Vec<T>>,
) -> Result<ndarray::Array<T, Sh::Dim>>
where
    Sh: ndarray::ShapeBuilder,
    F: FnOnce() -> String,
{
    let shape = shape.into_shape_with_order();
    let len = shape
        .raw_dim()
        .slice()
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(len) = len else {
        return Err(Error::Alloc {
            op,
            bytes: u128::MAX,
            message: describe(),
        });
    };
    let v = make(op, len, describe)?;
    Ok(ndarray::Array::from_shape_vec(shape, v).expect("length matches the shape"))
}

/// Resizes a reused buffer to `len` elements (new ones `value`), reserving fallibly:
/// the same growth as [`Vec::resize`], an [`Error::Alloc`] instead of an abort.
pub(crate) fn try_resize<T: Clone>(
    op: &'static str,
    v: &mut Vec<T>,
    len: usize,
    value: T,
    describe: impl FnOnce() -> String,
) -> Result<()> {
    if len > v.len() && v.try_reserve(len - v.len()).is_err() {
        return Err(Error::Alloc {
            op,
            bytes: (len as u128).saturating_mul(std::mem::size_of::<T>() as u128),
            message: describe(),
        });
    }
    v.resize(len, value);
    Ok(())
}

/// A standard-layout (row-major) copy of `x`, reserved fallibly: `x` may be a broadcast
/// or strided view whose logical size is far larger than the memory behind it.
pub(crate) fn try_to_owned<A: Clone + 'static, D: Dimension>(
    op: &'static str,
    x: ndarray::ArrayView<'_, A, D>,
    describe: impl FnOnce() -> String,
) -> Result<ndarray::Array<A, D>> {
    let mut v = try_vec_with_capacity(op, x.len(), describe)?;
    match x.as_slice() {
        Some(s) => v.extend_from_slice(s),
        None => v.extend(x.iter().cloned()),
    }
    Ok(ndarray::Array::from_shape_vec(x.raw_dim(), v).expect("length matches the shape"))
}

/// `x` itself when it is in standard layout, else [`try_to_owned`]: the fallible
/// `as_standard_layout`.
pub(crate) fn try_standard_layout<'a, A: Clone + 'static, D: Dimension>(
    op: &'static str,
    x: ndarray::ArrayView<'a, A, D>,
    describe: impl FnOnce() -> String,
) -> Result<ndarray::CowArray<'a, A, D>> {
    if x.is_standard_layout() {
        Ok(x.into())
    } else {
        Ok(try_to_owned(op, x, describe)?.into())
    }
}

/// The data of `x` as an owned array: moved out when nothing else holds it, else
/// copied (fallibly, [`try_to_owned`]).
pub(crate) fn try_into_owned<A: Clone + 'static, D: Dimension>(
    op: &'static str,
    x: ndarray::ArcArray<A, D>,
    describe: impl FnOnce() -> String,
) -> Result<ndarray::Array<A, D>> {
    if x.is_unique() {
        Ok(x.into_owned())
    } else {
        try_to_owned(op, x.view(), describe)
    }
}

/// `dims` multiplied, or [`Error::Alloc`] (size overflows) when the product overflows
/// `usize`: the length of a buffer about to be reserved.
pub(crate) fn checked_len(
    op: &'static str,
    dims: &[usize],
    describe: impl FnOnce() -> String,
) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Alloc {
            op,
            bytes: u128::MAX,
            message: describe(),
        })
}

/// Fresh blocks of at least this many bytes are offered transparent huge pages.
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// Asks Linux to back the 2 MiB-aligned part of a fresh block of `bytes` at `ptr` with
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`), where the system leaves that to
/// the program (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, the common
/// default). A large output is then faulted in 2 MiB at a time instead of 4 KiB:
/// glibc hands blocks this large straight back to the system when freed, so a conv
/// that returns a new 51 MB output (pw_64x128) took 12 500 page faults per call. Only a
/// hint: the kernel may ignore it, and nothing else changes; elsewhere it does nothing.
fn advise_huge_pages(ptr: *const u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        const MADV_HUGEPAGE: std::ffi::c_int = 14;
        unsafe extern "C" {
            fn madvise(
                addr: *mut std::ffi::c_void,
                len: usize,
                advice: std::ffi::c_int,
            ) -> std::ffi::c_int;
        }
        if bytes < HUGE_PAGE_MIN_BYTES {
            return;
        }
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: `[start, end)` lies inside the caller's live allocation and is
            // page-aligned; MADV_HUGEPAGE only changes how its pages are backed, never
            // their contents, and a failure (an old kernel) is ignored.
            unsafe {
                madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_hint_keeps_blocks_zero_and_writable() {
        // Sizes around the threshold and the 2 MiB boundaries, fresh from the system
        // (not the buffer cache, which holds nothing this large in a unit test).
        for len in [
            (4 << 20) / 4 - 1,
            (4 << 20) / 4,
            (6 << 20) / 4 + 3,
            (9 << 20) / 4,
        ] {
            let mut v: Vec<f32> = try_output_vec("t", len, String::new).unwrap();
            assert!(v.iter().all(|&x| x == 0.0));
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert_eq!(v[len - 1], (len - 1) as f32);
            let w: Vec<f32> = try_zeroed_vec("t", len, String::new).unwrap();
            assert!(w.iter().all(|&x| x == 0.0));
        }
        // Unaligned and tiny ranges are ignored.
        advise_huge_pages(std::ptr::dangling::<u8>(), 0);
        let small = [0u8; 64];
        advise_huge_pages(small.as_ptr(), small.len());
    }

    #[test]
    fn limits_name_the_setter() {
        let l = Limits::default().with_max_input_bytes(10);
        assert!(l.check_input("gzip", 10).is_ok());
        let e = l.check_input("gzip", 11).unwrap_err().to_string();
        assert!(
            e.contains("10 bytes") && e.contains("with_max_input_bytes"),
            "{e}"
        );
        let e = l.check_result("pickle", 2 << 30).unwrap_err().to_string();
        assert!(e.contains("with_max_result_bytes"), "{e}");
    }

    #[test]
    fn impossible_reservation_is_an_error() {
        let e = try_zeroed_vec::<f32>("conv2d", usize::MAX / 8, || "output".into()).unwrap_err();
        assert!(matches!(e, Error::Alloc { op: "conv2d", .. }), "{e}");
        assert!(e.to_string().contains("cannot allocate"), "{e}");
        let a = try_zeros::<f32, _>("t", (2, 3), String::new).unwrap();
        assert_eq!(a.shape(), &[2, 3]);
        let e = try_zeros::<f32, _>("t", (usize::MAX, 3), || "x".into()).unwrap_err();
        assert!(matches!(e, Error::Alloc { .. }));
    }

    #[test]
    fn fallible_copies_and_resizes() {
        use ndarray::ShapeBuilder;
        let a = ndarray::arr2(&[[1.0f32, 2.0], [3.0, 4.0]]);
        // A transposed view is copied into standard layout, element for element.
        let t = try_to_owned("t", a.t(), String::new).unwrap();
        assert!(t.is_standard_layout());
        assert_eq!(t, a.t());
        assert!(
            try_standard_layout("t", a.view(), String::new)
                .unwrap()
                .is_view()
        );
        assert!(
            try_standard_layout("t", a.t(), String::new)
                .unwrap()
                .is_owned()
        );
        let one = [1.0f32];
        let huge =
            ndarray::ArrayView2::from_shape((1 << 40, 1 << 4).strides((0, 0)), &one).unwrap();
        let e = try_standard_layout("t", huge, || "x".into()).unwrap_err();
        assert!(
            e.to_string().contains(&format!("{} bytes", 4u128 << 44)),
            "{e}"
        );
        let shared = a.clone().into_shared();
        let keep = shared.clone();
        assert_eq!(try_into_owned("t", shared, String::new).unwrap(), keep);
        let mut v = vec![1.0f32; 3];
        try_resize("t", &mut v, 5, 0.0, String::new).unwrap();
        assert_eq!(v, [1.0, 1.0, 1.0, 0.0, 0.0]);
        try_resize("t", &mut v, 2, 0.0, String::new).unwrap();
        assert_eq!(v, [1.0, 1.0]);
        let e = try_resize("t", &mut v, usize::MAX / 8, 0.0, || "s".into()).unwrap_err();
        assert!(matches!(e, Error::Alloc { op: "t", .. }), "{e}");
        assert_eq!(v, [1.0, 1.0]);
        assert_eq!(checked_len("t", &[2, 3, 4], String::new).unwrap(), 24);
        let e = checked_len("t", &[usize::MAX, 2], || "p".into()).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Alloc {
                    bytes: u128::MAX,
                    ..
                }
            ),
            "{e}"
        );
    }
}
