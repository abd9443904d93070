//! Inputs that once crashed, hung or over-allocated a loader (found by the fuzz targets
//! in `fuzz/` or crafted while auditing them), kept as regression tests, plus the memory
//! contract of the loaders checked on crafted inputs in a normal `cargo test`.
//!
//! The files live beside this one, one folder per fuzz target: `pickle/` (raw bytes for
//! `pickle::from_reader`), `pickle_gz/` (the *decompressed* content, loaded both plain
//! and gzip-compressed), `idx/` (`idx::from_reader`), `mnist/`
//! (`Mnist::from_pickle_reader`), `npy/` (`npy::from_reader`) and `npz/`
//! (`npz::from_reader_with`, its decompressed input capped as in the fuzz target).
//! [`KEPT`] says what each must give; a file that is not
//! listed there fails [`every_kept_file_is_listed`], so none is silently skipped.
//!
//! Memory: this binary installs the fuzz targets' counting allocator
//! (`fuzz/fuzz_targets/alloc_guard.rs`), so every load here is also held to the same
//! limits as under the fuzzer: no single allocation above 128 x the (decompressed)
//! input + 4 MiB, no more than 512 x + 16 MiB live at once. An allocation over those
//! limits is recorded and admitted (up to the guard's hard cap), and `guarded` then fails that
//! test with the figures: one bad input is one failed test, not an abort of the binary.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use convinit::Error;
use convinit::data::{Mnist, idx, npy, npz, pickle};
use convinit::limits::Limits;

#[path = "../../fuzz/fuzz_targets/alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

/// (folder/file, what loading it must give: `"ok"` or a substring of the error message)
const KEPT: &[(&str, &str)] = &[
    // 123 bytes: None, then 60 x (DUP, TUPLE2). Each reference to a shared object became
    // a copy in the result tree, so this expanded to 2^60 nodes (unbounded allocation).
    ("pickle/dag_bomb.pkl", "pickle bomb"),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Runs `load` on `input` under the allocation limits for `len` decompressed bytes;
/// fails (this test only, with the figures) if it panics or breaks a limit, and gives
/// the result as `Ok(())` or the message.
fn guarded(what: &str, len: usize, load: impl FnOnce() -> Result<(), Error>) -> Result<(), String> {
    let (r, report) = alloc_guard::measure(len, || catch_unwind(AssertUnwindSafe(load)));
    let r = r.unwrap_or_else(|_| panic!("{what}: the loader panicked ({report:?})"));
    if let Err(p) = catch_unwind(|| report.assert_within()) {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "the allocation limits were broken".into());
        panic!("{what}: {msg}");
    }
    r.map_err(|e| e.to_string())
}

/// The decompressed input an `.npz` of `len` bytes may have here and in the fuzz target
/// (a deflated member can legitimately inflate a thousandfold).
fn npz_cap(len: usize) -> usize {
    len.saturating_mul(64).saturating_add(64 << 10)
}

/// The folders of kept inputs (and of fuzz seeds), one per fuzz target.
const FOLDERS: [&str; 6] = ["pickle", "pickle_gz", "idx", "mnist", "npy", "npz"];

/// Loads a kept file the way its fuzz target does; the outcome of every path taken.
fn load_kept(rel: &str, data: &[u8]) -> Vec<Result<(), String>> {
    let folder = rel.split('/').next().unwrap_or_default();
    let n = data.len();
    match folder {
        "pickle" => vec![guarded(rel, n, || pickle::from_reader(data).map(drop))],
        "pickle_gz" => {
            let gz = gzip(data);
            vec![
                guarded(rel, n, || pickle::from_reader(data).map(drop)),
                guarded(rel, n, || pickle::from_reader(&gz[..]).map(drop)),
            ]
        }
        "idx" => {
            let gz = gzip(data);
            vec![
                guarded(rel, n, || idx::from_reader(data).map(drop)),
                guarded(rel, n, || idx::from_reader(&gz[..]).map(drop)),
            ]
        }
        "mnist" => vec![guarded(rel, n, || {
            Mnist::from_pickle_reader(data).map(drop)
        })],
        "npy" => vec![guarded(rel, n, || npy::from_reader(data).map(drop))],
        "npz" => {
            let cap = npz_cap(n);
            let limits = Limits::default().with_max_input_bytes(cap as u64);
            vec![guarded(rel, cap, || {
                npz::from_reader_with(std::io::Cursor::new(data), limits).map(drop)
            })]
        }
        other => panic!("{rel}: unknown folder {other:?}"),
    }
}

#[test]
fn kept_inputs_give_their_expected_result_without_panic() {
    for &(rel, want) in KEPT {
        let data = std::fs::read(dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        for got in load_kept(rel, &data) {
            match (&got, want) {
                (Ok(()), "ok") => {}
                (Err(m), w) if w != "ok" && m.contains(w) => {}
                _ => panic!("{rel}: expected {want:?}, got {got:?}"),
            }
        }
    }
}

#[test]
fn every_kept_file_is_listed() {
    let mut found = Vec::new();
    for folder in FOLDERS {
        let Ok(entries) = std::fs::read_dir(dir().join(folder)) else {
            continue;
        };
        for e in entries {
            let name = e.unwrap().file_name().into_string().unwrap();
            found.push(format!("{folder}/{name}"));
        }
    }
    for f in &found {
        assert!(
            KEPT.iter().any(|&(k, _)| k == f),
            "{f} is not listed in KEPT"
        );
    }
    assert_eq!(found.len(), KEPT.len(), "a listed file is missing");
}

/// The fuzz seeds (`fuzz/seeds/`) load within the limits too, and the good ones load.
#[test]
fn fuzz_seeds_load_within_limits() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut count = 0;
    for folder in FOLDERS {
        for e in std::fs::read_dir(seeds.join(folder)).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&path).unwrap();
            let rel = format!("{folder}/{name}");
            for got in load_kept(&rel, &data) {
                assert_eq!(got.is_ok(), !name.starts_with("bad_"), "{rel}: {got:?}");
            }
            count += 1;
        }
    }
    assert!(count >= 90, "only {count} seeds");
    // The MNIST-structured seed is a real, if tiny, MNIST pickle.
    let m =
        Mnist::from_pickle_reader(&std::fs::read(seeds.join("mnist/mnist_small.pkl")).unwrap()[..])
            .unwrap();
    assert_eq!(m.train.0.dim(), (3, 4));
    assert_eq!(m.test.1.to_vec(), [6, 7, 8]);
}

/// The guard does catch: without this, the tests above could not fail.
#[test]
fn the_guard_records_an_oversized_allocation() {
    let (r, report) = alloc_guard::measure(1000, || {
        let mut v = Vec::<u8>::new();
        v.try_reserve_exact(alloc_guard::single_limit(1000) + 1)
    });
    assert!(r.is_ok(), "admitted below the hard cap");
    assert_eq!(report.refused, alloc_guard::single_limit(1000) + 1);
    assert_eq!(report.denied, 0);
    let (r, report) = alloc_guard::measure(1000, || {
        let mut v = Vec::<u8>::new();
        v.try_reserve_exact(1 << 20).map(|()| v)
    });
    assert!(r.is_ok());
    assert_eq!(report.refused, 0);
    assert!(report.largest >= 1 << 20 && report.peak >= 1 << 20);
    // Past the hard cap a (fallible) allocation is refused outright.
    let (r, report) = alloc_guard::measure(1000, || {
        Vec::<u8>::new().try_reserve_exact(alloc_guard::HARD_CAP + 1)
    });
    assert!(r.is_err());
    assert_eq!(report.denied, alloc_guard::HARD_CAP + 1);
}

/// An input that breaks the limits through an *infallible* allocation fails its own
/// test with the figures; it used to abort the whole binary (null from the allocator).
#[test]
fn a_limit_breach_fails_only_its_own_test_with_a_message() {
    let big = alloc_guard::single_limit(100) + 1;
    let caught = catch_unwind(|| {
        guarded("crafted", 100, || {
            let v = vec![1u8; big];
            assert_eq!(v.len(), big);
            Ok(())
        })
    });
    let msg = caught.expect_err("the breach must fail the test");
    let msg = msg.downcast_ref::<String>().expect("a formatted message");
    assert!(
        msg.starts_with("crafted: an allocation of") && msg.contains(&big.to_string()),
        "{msg}"
    );
}

/// A panic turns the guard off before its message and backtrace are printed.
#[test]
fn the_guard_is_off_while_a_panic_is_reported() {
    let (armed_after, _) = alloc_guard::measure(10, || {
        assert!(alloc_guard::armed());
        let _ = catch_unwind(|| panic!("expected by the test: the guard turns off"));
        alloc_guard::armed()
    });
    assert!(!armed_after);
    assert!(!alloc_guard::armed());
}

// ---------------------------------------------------------------------------------------
// Crafted inputs: each must fail (or load) with bounded memory.

fn pickle_err(what: &str, data: &[u8], needle: &str) {
    let got = guarded(what, data.len(), || pickle::from_reader(data).map(drop));
    match got {
        Err(m) if m.contains(needle) => {}
        other => panic!("{what}: expected an error with {needle:?}, got {other:?}"),
    }
}

#[test]
fn lying_lengths_fail_at_end_of_input_without_allocating_the_claim() {
    // BINSTRING claiming 2 GiB - 1, BINBYTES claiming 4 GiB - 1, BINBYTES8 and
    // BYTEARRAY8 claiming 2^63, BINUNICODE8 claiming 2^64 - 1: ten bytes of payload each.
    let cases: [(&str, Vec<u8>); 5] = [
        (
            "BINSTRING",
            [&b"\x80\x02T\xff\xff\xff\x7f"[..], &[7; 10]].concat(),
        ),
        (
            "BINBYTES",
            [&b"\x80\x03B\xff\xff\xff\xff"[..], &[7; 10]].concat(),
        ),
        (
            "BINBYTES8",
            [&b"\x80\x04\x8e"[..], &(1u64 << 63).to_le_bytes(), &[7; 10]].concat(),
        ),
        (
            "BYTEARRAY8",
            [&b"\x80\x05\x96"[..], &(1u64 << 63).to_le_bytes(), &[7; 10]].concat(),
        ),
        (
            "BINUNICODE8",
            [&b"\x80\x04\x8d"[..], &u64::MAX.to_le_bytes(), &[b'a'; 10]].concat(),
        ),
    ];
    for (op, data) in cases {
        pickle_err(op, &data, "truncated");
    }
}

#[test]
fn lying_array_payload_is_not_preallocated() {
    // The embedded sample's array header with shape (60000, 784) f4, whose BINSTRING
    // claims the matching 188 160 000 bytes (so the typed fast path is taken) but
    // holds 100.
    let mut p = Vec::new();
    p.extend_from_slice(
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01",
    );
    p.extend_from_slice(b"K\x00\x85U\x01b\x87Rq\x02(K\x01J\x60\xea\x00\x00M\x10\x03\x86");
    p.extend_from_slice(b"cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
    p.extend_from_slice(b"K\x00T");
    p.extend_from_slice(&(60000u32 * 784 * 4).to_le_bytes());
    p.extend_from_slice(&[0u8; 100]);
    pickle_err("lying array payload", &p, "truncated");
    // The same, gzipped: the limit is on the decompressed length.
    let gz = gzip(&p);
    let got = guarded("lying gz payload", p.len(), || {
        pickle::from_reader(&gz[..]).map(drop)
    });
    assert!(got.is_err_and(|m| m.contains("truncated")));
}

#[test]
fn shared_references_cannot_expand_without_bound() {
    // Exponential: None, then k times (DUP, TUPLE2): 2^k leaves from 2k + 4 bytes.
    for k in [30, 60] {
        let mut p = b"\x80\x02N".to_vec();
        for _ in 0..k {
            p.extend_from_slice(b"2\x86");
        }
        p.push(b'.');
        pickle_err(&format!("dag depth {k}"), &p, "pickle bomb");
    }
    // Linear: one 1 MiB bytes object referenced 4000 times (4 GiB of copies).
    let mut p = b"\x80\x03B".to_vec();
    p.extend_from_slice(&(1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(1u8, 1 << 20));
    p.extend_from_slice(b"q\x00(");
    for _ in 0..4000 {
        p.extend_from_slice(b"h\x00");
    }
    p.extend_from_slice(b"t.");
    pickle_err("1 MiB bytes x 4000", &p, "pickle bomb");
    // A modest sharing stays allowed: the same 1 MiB referenced 3 times.
    let mut p = b"\x80\x03B".to_vec();
    p.extend_from_slice(&(1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(1u8, 1 << 20));
    p.extend_from_slice(b"q\x00h\x00h\x00\x87.");
    let v = guarded("3 references", p.len(), || {
        pickle::from_reader(&p[..]).map(drop)
    });
    assert_eq!(v, Ok(()));
}

#[test]
fn many_small_items_stay_within_the_limits() {
    // 300 000 one-byte items in one tuple, list and dict; 300 000 memo entries.
    let n = 300_000;
    let mut t = b"\x80\x02(".to_vec();
    t.extend(std::iter::repeat_n(b'N', n));
    t.extend_from_slice(b"t.");
    let mut l = b"\x80\x02(".to_vec();
    l.extend(std::iter::repeat_n(b')', n));
    l.extend_from_slice(b"l.");
    let mut m = b"\x80\x04N".to_vec();
    m.extend(std::iter::repeat_n(0x94u8, n));
    m.push(b'.');
    for (what, p) in [("tuple", t), ("list of tuples", l), ("memo", m)] {
        let got = guarded(what, p.len(), || pickle::from_reader(&p[..]).map(drop));
        assert_eq!(got, Ok(()), "{what}");
    }
}

#[test]
fn idx_lying_dimensions_fail_without_allocating_them() {
    // 60000 x 28 x 28 u8 images (47 MB claimed), 100 bytes given; and f64 dims whose
    // byte count overflows.
    let mut a = vec![0, 0, 0x08, 3];
    for d in [60000u32, 28, 28] {
        a.extend_from_slice(&d.to_be_bytes());
    }
    a.extend_from_slice(&[0; 100]);
    let mut b = vec![0, 0, 0x0E, 4];
    for _ in 0..4 {
        b.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    for (what, data, needle) in [
        ("idx truncated", a, "truncated"),
        ("idx too large", b, "too large"),
    ] {
        for input in [data.clone(), gzip(&data)] {
            let got = guarded(what, data.len(), || idx::from_reader(&input[..]).map(drop));
            assert!(
                got.as_ref().is_err_and(|m| m.contains(needle)),
                "{what}: {got:?}"
            );
        }
    }
}

#[test]
fn large_dicts_build_in_linear_time() {
    // 200 000 distinct int keys, plus str keys repeated: a linear search per item made
    // a 600 kB, 100 000-item dict take minutes; Python takes milliseconds.
    let n: i32 = 200_000;
    let mut p = b"\x80\x02}(".to_vec();
    for i in 0..n {
        p.push(b'J');
        p.extend_from_slice(&i.to_le_bytes());
        p.push(b'N');
    }
    for i in 0..1000i32 {
        // Keys 'a', 'b' (str) and 'a' (Python 2 str) again: merged, last value wins.
        p.extend_from_slice(b"X\x01\x00\x00\x00a");
        p.push(b'J');
        p.extend_from_slice(&i.to_le_bytes());
        p.extend_from_slice(b"U\x01bN");
        p.extend_from_slice(b"U\x01aJ");
        p.extend_from_slice(&(i + 1).to_le_bytes());
    }
    p.extend_from_slice(b"u.");
    let start = std::time::Instant::now();
    let v = guarded("200k dict", p.len(), || {
        let v = pickle::from_reader(&p[..])?;
        let d = v.as_dict().expect("a dict");
        assert_eq!(d.len(), n as usize + 2);
        assert_eq!(v.get("a").and_then(|v| v.as_int()), Some(1000));
        assert!(v.get("b").is_some_and(|v| v.is_none()));
        Ok(())
    });
    let took = start.elapsed();
    assert_eq!(v, Ok(()));
    // Quadratic was minutes; linear is well under a second even unoptimised.
    assert!(took.as_secs() < 20, "took {took:?}");
}

#[test]
fn long_argument_tuples_are_not_copied_per_call() {
    // (numpy.ndarray, None x 100 000) memoised, then 100 000 x (REDUCE of _reconstruct
    // on it, POP): each REDUCE copied the whole tuple (160 GB of copying from 700 kB).
    let mut p = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x01(cnumpy\nndarray\n".to_vec();
    p.extend(std::iter::repeat_n(b'N', 100_000));
    p.extend_from_slice(b"tq\x00");
    for _ in 0..100_000 {
        p.extend_from_slice(b"h\x01h\x00R0");
    }
    p.push(b'.');
    let start = std::time::Instant::now();
    pickle_err("long REDUCE arguments", &p, "at most 5");
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
}

/// Real data sits far inside the limits: the embedded MNIST sample (18.9 MB of pickle
/// gzipped to 1.4 MB) peaks below twice the size of its arrays. (Counted here: about
/// 1.5x, because a typed payload's vector grows by doubling before `shrink_to_fit`; the
/// untouched capacity is never resident, so the peak RSS is about 1.02x.)
#[test]
#[cfg(feature = "embedded-sample")]
fn embedded_sample_peak_memory_is_about_its_arrays() {
    use std::io::Read;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(convinit::data::mnist::EMBEDDED_SAMPLE)
        .read_to_end(&mut raw)
        .unwrap();
    let (m, report) = alloc_guard::measure(raw.len(), Mnist::embedded);
    report.assert_within();
    let m = m.unwrap();
    let arrays: usize = [&m.train, &m.valid, &m.test]
        .iter()
        .map(|(x, y)| x.len() * 4 + y.len() * 8)
        .sum();
    println!("embedded sample: {report:?}, arrays {arrays} bytes");
    assert!(
        report.peak < 2 * arrays + (4 << 20),
        "peak {} for {arrays} bytes of arrays",
        report.peak
    );
}

#[test]
fn a_long_dict_key_repeated_through_the_memo_is_bounded() {
    // A 1 MiB str key memoised, then inserted 100 000 times: each insert copied and
    // hashed the whole key (100 GiB of work from 1.3 MB of pickle).
    let mut p = b"\x80\x03X".to_vec();
    p.extend_from_slice(&(1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(b'k', 1 << 20));
    p.extend_from_slice(b"q\x00}(");
    for _ in 0..100_000 {
        p.extend_from_slice(b"h\x00N");
    }
    p.extend_from_slice(b"u.");
    let start = std::time::Instant::now();
    pickle_err(
        "long key x 100 000",
        &p,
        "dict key text: copies of shared data",
    );
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    // A few repeats of the same long key are fine (the last value wins).
    let mut p = b"\x80\x03X".to_vec();
    p.extend_from_slice(&(1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(b'k', 1 << 20));
    p.extend_from_slice(b"q\x00}(h\x00Nh\x00K\x07u.");
    let got = guarded("long key x 2", p.len(), || {
        let v = pickle::from_reader(&p[..])?;
        assert_eq!(v.as_dict().map(<[_]>::len), Some(1));
        assert_eq!(v.as_dict().unwrap()[0].1.as_int(), Some(7));
        Ok(())
    });
    assert_eq!(got, Ok(()));
}

#[test]
fn encoding_a_shared_string_again_and_again_is_bounded() {
    // A 1 MiB str memoised, then 1000 x `_codecs.encode(s, 'latin1')` kept on the stack:
    // each call made a fresh 1 MiB bytes object (1 GiB from 1 MB of pickle).
    let mut p = b"\x80\x03X".to_vec();
    p.extend_from_slice(&(1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(b's', 1 << 20));
    p.extend_from_slice(b"q\x00c_codecs\nencode\nq\x01(");
    for _ in 0..1000 {
        p.extend_from_slice(b"h\x01h\x00U\x06latin1\x86R");
    }
    p.extend_from_slice(b"t.");
    pickle_err("encode x 1000", &p, "encoded string: copies of shared data");
}

// ---------------------------------------------------------------------------------------
// Hardening, round two (issue 11): shared references charged at their real size, the
// loaders' Limits, and the MNIST checks.

/// A classic (protocol 2, cPickle-style) `<f4` array of `shape`, left on the stack
/// without the final STOP so that callers can add opcodes.
fn classic_f4_open(shape: &[u32], data: &[u8]) -> Vec<u8> {
    let mut p = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03(K\x01(".to_vec();
    for d in shape {
        p.push(b'J');
        p.extend_from_slice(&d.to_le_bytes());
    }
    p.extend_from_slice(b"tcnumpy\ndtype\nU\x02f4K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T");
    p.extend_from_slice(&(data.len() as u32).to_le_bytes());
    p.extend_from_slice(data);
    p.extend_from_slice(b"tb");
    p
}

/// `k` times (DUP, TUPLE2) on the top of the stack, then STOP: 2^k references to it.
fn doubled(mut p: Vec<u8>, k: usize) -> Vec<u8> {
    for _ in 0..k {
        p.extend_from_slice(b"2\x86");
    }
    p.push(b'.');
    p
}

fn expect_limit(got: Result<(), String>, setter: &str, what: &str) {
    match got {
        Err(m) if m.contains("exceeds the limit") && m.contains(setter) => {}
        other => panic!("{what}: expected a limit error naming {setter}, got {other:?}"),
    }
}

#[test]
fn a_shared_string_is_charged_at_its_length() {
    // A 64 KiB str (and a 64 KiB Python 2 str of latin-1 bytes above 0x7f, two UTF-8
    // bytes each) referenced 2^40 times: charged 120 bytes a node, the copies of the
    // text reached gigabytes (6 GB from a 1 KB .pkl.gz through Mnist::load).
    let n = 64 << 10;
    let mut s = b"\x80\x02X".to_vec();
    s.extend_from_slice(&(n as u32).to_le_bytes());
    s.extend(std::iter::repeat_n(b's', n));
    let mut s2 = b"\x80\x02T".to_vec();
    s2.extend_from_slice(&(n as u32).to_le_bytes());
    s2.extend(std::iter::repeat_n(0xe9u8, n));
    for (what, p) in [("str", doubled(s, 40)), ("latin-1 str", doubled(s2, 40))] {
        pickle_err(what, &p, "pickle bomb");
        let gz = gzip(&p);
        assert!(gz.len() < 2000, "{what}: {} bytes gzipped", gz.len());
        let got = guarded(what, p.len(), || {
            Mnist::from_pickle_reader(&gz[..]).map(drop)
        });
        assert!(
            got.as_ref().is_err_and(|m| m.contains("pickle bomb")),
            "{what}: {got:?}"
        );
    }
}

#[test]
fn a_shared_array_is_charged_for_its_shape_and_strides() {
    // A one-element array of 64 dimensions (numpy's maximum) referenced 2^40 times:
    // each copy also copies 2 x 64 usizes of shape and strides, which were not charged.
    let p = doubled(classic_f4_open(&[1; 64], &[0; 4]), 40);
    pickle_err("64-dim array x 2^40", &p, "pickle bomb");
    // More dimensions than numpy allows are refused outright.
    let mut p = classic_f4_open(&[1; 10_000], &[0; 4]);
    p.push(b'.');
    pickle_err("10 000 dims", &p, "numpy allows at most 64");
}

#[test]
fn a_gzip_bomb_stops_at_the_input_limit() {
    // 16 MiB of zero bytes in a BINBYTES8, gzipped to a few KB: with a 1 MiB input
    // limit, reading stops there (memory bounded by the compressed size, not the claim).
    let n = 16usize << 20;
    let mut p = b"\x80\x04\x8e".to_vec();
    p.extend_from_slice(&(n as u64).to_le_bytes());
    p.resize(p.len() + n, 0);
    p.push(b'.');
    let gz = gzip(&p);
    let small = convinit::limits::Limits::default().with_max_input_bytes(1 << 20);
    let got = guarded("pickle gz bomb", gz.len(), || {
        pickle::from_reader_with(&gz[..], small).map(drop)
    });
    expect_limit(got, "with_max_input_bytes", "pickle gz bomb");
    let got = guarded("mnist gz bomb", gz.len(), || {
        Mnist::from_pickle_reader_with(&gz[..], small).map(drop)
    });
    expect_limit(got, "with_max_input_bytes", "mnist gz bomb");
}

#[test]
fn an_array_over_the_result_limit_is_refused_before_its_data_is_read() {
    // A 16 MiB f4 array (zeros, gzipped to a few KB) with a 1 MiB result limit: refused
    // from the stack's shape before the data is read, whatever the input limit.
    let mut p = classic_f4_open(&[4 << 20], &vec![0; 16 << 20]);
    p.push(b'.');
    let gz = gzip(&p);
    let small = convinit::limits::Limits::unlimited().with_max_result_bytes(1 << 20);
    let got = guarded("f4 array gz", gz.len(), || {
        pickle::from_reader_with(&gz[..], small).map(drop)
    });
    expect_limit(got, "with_max_result_bytes", "f4 array gz");
}

#[test]
fn an_idx_gzip_bomb_stops_at_the_limits() {
    // 16 M u8 elements of zeros, gzipped to a few KB (the 1.5 MB .gz giving 1.57 GB).
    let mut data = vec![0, 0, 0x08, 1];
    data.extend_from_slice(&(16u32 << 20).to_be_bytes());
    data.resize(data.len() + (16 << 20), 0);
    let gz = gzip(&data);
    let l = convinit::limits::Limits::unlimited();
    for (limits, setter) in [
        (l.with_max_result_bytes(1 << 20), "with_max_result_bytes"),
        (l.with_max_input_bytes(1 << 20), "with_max_input_bytes"),
    ] {
        let got = guarded("idx gz bomb", gz.len(), || {
            idx::from_reader_with(&gz[..], limits).map(drop)
        });
        expect_limit(got, setter, "idx gz bomb");
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("convinit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn idx_header(code: u8, dims: &[u32]) -> Vec<u8> {
    let mut b = vec![0, 0, code, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b
}

#[test]
fn an_idx_directory_is_checked_from_its_headers() {
    // Train images claiming 400 000 x 28 x 28 u8 (313 MB, under the default limit as
    // u8) would become 1.25 GB of f32: refused with the defaults from the header alone,
    // before a pixel is read (the files hold no data, so reading would say Truncated).
    let dir = TempDir::new("idx-headers");
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.0.join(name), gzip(bytes)).unwrap();
    write(
        "train-images-idx3-ubyte.gz",
        &idx_header(0x08, &[400_000, 28, 28]),
    );
    write("train-labels-idx1-ubyte.gz", &idx_header(0x08, &[400_000]));
    write(
        "t10k-images-idx3-ubyte.gz",
        &idx_header(0x08, &[10, 28, 28]),
    );
    write("t10k-labels-idx1-ubyte.gz", &idx_header(0x08, &[10]));
    let got = guarded("idx dir headers", 100, || Mnist::load(&dir.0).map(drop));
    expect_limit(got, "with_max_result_bytes", "idx dir headers");
}

#[test]
fn mnist_labels_and_image_sizes_are_checked() {
    use convinit::data::{NdArray, Value};
    let x = |n: usize, p: usize| Value::Array(NdArray::F32(ndarray::ArrayD::zeros(vec![n, p])));
    let y = |v: Vec<i64>| {
        Value::Array(NdArray::I64(
            ndarray::ArrayD::from_shape_vec(vec![v.len()], v).unwrap(),
        ))
    };
    let split = |a, b| Value::Tuple(vec![a, b]);
    let label = Value::Tuple(vec![
        split(x(2, 4), y(vec![1, 2])),
        split(x(2, 4), y(vec![3, 255])),
        split(x(1, 4), y(vec![0])),
    ]);
    let got = guarded("label 255", 1000, || Mnist::from_value(label).map(drop));
    assert!(
        got.as_ref()
            .is_err_and(|m| m.contains("valid: label 255 at index 1")),
        "{got:?}"
    );
    let size = Value::Tuple(vec![
        split(x(2, 4), y(vec![1, 2])),
        split(x(2, 4), y(vec![3, 4])),
        split(x(1, 5), y(vec![0])),
    ]);
    let got = guarded("sizes", 1000, || Mnist::from_value(size).map(drop));
    assert!(
        got.as_ref()
            .is_err_and(|m| m.contains("test: images have 5 pixels") && m.contains("have 4")),
        "{got:?}"
    );
}
