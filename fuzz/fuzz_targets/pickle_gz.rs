//! The gzip + pickle path of `convinit::data::pickle::from_reader`:
//! 1. the input is the *decompressed* pickle: gzip-compress it on the fly, and check the
//!    result is exactly what the plain bytes give (same value, or both errors);
//! 2. the input after the gzip magic `1f 8b` is fed raw, so corrupt headers, bad CRCs,
//!    truncated and concatenated members are all explored.
//!
//! Both under the allocation limits of `alloc_guard` for the *decompressed* length.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use convinit::data::pickle::from_reader;

/// Stop decompressing for the limit past this (a gzip bomb is bounded by `-max_len`).
const MAX_DECOMPRESSED: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    // 1. Compressed on the fly.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    let gz = enc.finish().unwrap();
    let (wrapped, report) = alloc_guard::measure(data.len(), || from_reader(&gz[..]));
    report.assert_within();
    if !data.starts_with(&[0x1f, 0x8b]) {
        let plain = from_reader(data);
        match (&plain, &wrapped) {
            // Debug, not ==, so that NaN payloads compare equal to themselves.
            (Ok(a), Ok(b)) => {
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "gzip changed the value")
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!("plain and gzipped disagree: {a:?} vs {b:?}"),
        }
    }
    drop(wrapped);

    // 2. Raw bytes after the gzip magic.
    let mut raw = Vec::with_capacity(data.len() + 2);
    raw.extend_from_slice(&[0x1f, 0x8b]);
    raw.extend_from_slice(data);
    // The decompressed length, as far as it can be decoded, sets the limit.
    let mut sink = Vec::new();
    let _ = flate2::read::MultiGzDecoder::new(&raw[..])
        .take(MAX_DECOMPRESSED)
        .read_to_end(&mut sink);
    let len = sink.len().max(raw.len());
    if sink.len() as u64 >= MAX_DECOMPRESSED {
        return;
    }
    drop(sink);
    let (r, report) = alloc_guard::measure(len, || from_reader(&raw[..]).map(drop));
    report.assert_within();
    if let Err(e) = r {
        assert!(!e.to_string().is_empty());
    }
});
