//! `convinit::data::npy::from_reader` on raw bytes: never panics, never allocates more
//! than the limits of `alloc_guard` for the input's length, and an array it accepts is
//! backed by data that was really in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

fuzz_target!(|data: &[u8]| {
    let (r, report) = alloc_guard::measure(data.len(), || {
        convinit::data::npy::from_reader(data)
    });
    report.assert_within();
    match r {
        Ok(a) => assert!(
            a.len() * a.dtype().itemsize() <= data.len(),
            "{} elements of {} from {} bytes",
            a.len(),
            a.dtype(),
            data.len()
        ),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
