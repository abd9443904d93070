//! `convinit::data::pickle::from_reader` on raw bytes: never panics, never allocates
//! more than the limits of `alloc_guard` for the input's length.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

fuzz_target!(|data: &[u8]| {
    // Raw bytes that start with the gzip magic go down the gzip path: the limit is
    // then on the decompressed size, which the `pickle_gz` target handles.
    if data.starts_with(&[0x1f, 0x8b]) {
        return;
    }
    let (r, report) = alloc_guard::measure(data.len(), || {
        convinit::data::pickle::from_reader(data).map(drop)
    });
    report.assert_within();
    if let Err(e) = r {
        // Every error renders (Display walks the variant's fields).
        assert!(!e.to_string().is_empty());
    }
});
