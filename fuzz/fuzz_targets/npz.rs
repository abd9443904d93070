//! `convinit::data::npz::from_reader` on raw bytes (a zip of `.npy` members, stored or
//! deflated): never panics, and never allocates more than the limits of `alloc_guard`.
//!
//! A deflated member can legitimately inflate a thousandfold, so the decompressed input
//! is capped with `Limits` at 64 x the input + 64 KiB, and the allocation limits are
//! those for that many decompressed bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use convinit::limits::Limits;

fuzz_target!(|data: &[u8]| {
    let cap = data.len().saturating_mul(64).saturating_add(64 << 10);
    let limits = Limits::default().with_max_input_bytes(cap as u64);
    let (r, report) = alloc_guard::measure(cap, || {
        convinit::data::npz::from_reader_with(std::io::Cursor::new(data), limits)
    });
    report.assert_within();
    match r {
        Ok(arrays) => {
            let bytes: usize = arrays
                .iter()
                .map(|(_, a)| a.len() * a.dtype().itemsize())
                .sum();
            assert!(bytes <= cap, "{bytes} bytes of arrays from a {cap}-byte cap");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
