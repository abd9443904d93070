//! `convinit::data::Mnist::from_pickle_reader` on raw bytes: structure checks after a
//! successful unpickle never panic, and the allocation limits of `alloc_guard` hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(&[0x1f, 0x8b]) {
        return;
    }
    let (r, report) = alloc_guard::measure(data.len(), || {
        convinit::data::Mnist::from_pickle_reader(data)
    });
    report.assert_within();
    if let Ok(m) = r {
        for (x, y) in [&m.train, &m.valid, &m.test] {
            assert_eq!(x.nrows(), y.len());
            assert!(x.is_standard_layout());
        }
    }
});
