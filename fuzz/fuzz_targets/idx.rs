//! `convinit::data::idx::from_reader` on raw bytes, and on the input gzip-compressed on
//! the fly (which must give the same result), under the allocation limits of
//! `alloc_guard`.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use convinit::data::idx::from_reader;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(&[0x1f, 0x8b]) {
        return;
    }
    let (plain, report) = alloc_guard::measure(data.len(), || from_reader(data));
    report.assert_within();
    if let Ok(a) = &plain {
        // A successful read holds exactly the data the header promised.
        let header = 4 + 4 * a.shape().len();
        assert_eq!(header + a.len() * a.dtype().itemsize(), data.len());
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    let gz = enc.finish().unwrap();
    let (wrapped, report) = alloc_guard::measure(data.len(), || from_reader(&gz[..]));
    report.assert_within();
    match (&plain, &wrapped) {
        // Debug, not ==, so that NaN elements compare equal to themselves.
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "gzip changed the array"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("plain and gzipped disagree: {a:?} vs {b:?}"),
    }
});
