//! Data under `../shared/data` (the full MNIST files), which a fresh clone does not have.
//!
//! A test that needs it calls [`shared_data`]: when the file is there it gets its path;
//! when it is missing the test fails under `CI=true` (CI always has `../shared`, so a
//! missing file there is a broken setup, not a reason to pass), and elsewhere it prints
//! a `SKIPPED` line straight to the process's stderr (not through `eprintln!`, which the
//! test harness captures, so `cargo test` shows it) and returns `None`, so a plain `cargo test` on a fresh clone still passes.
//!
//! Usable alone, without the rest of `tests/common`:
//! `#[path = "common/shared.rs"] mod shared;`
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Whether this run is CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `../shared/data/<rel>` (next to the crate's directory) when it exists; see the module
/// docs for what happens when it does not.
///
/// # Panics
/// When the file is missing and [`in_ci`].
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    if path.exists() {
        return Some(path);
    }
    assert!(
        !in_ci(),
        "{} is missing, but CI=true: CI must have ../shared",
        path.display()
    );
    let line = format!(
        "SKIPPED: {} not found (set up ../shared to run this test)\n",
        path.display()
    );
    // Written to the file descriptor, past the harness's capture of `eprintln!`.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    None
}
