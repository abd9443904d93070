//! `.npy` and `.npz` readers against files written by numpy (`tests/fixtures/npy/`,
//! made by `make_fixtures.py` there) and against crafted bad inputs.

use std::io::{Cursor, Write};
use std::path::PathBuf;

use convinit::Error;
use convinit::data::{DType, NdArray, npy, npz};
use convinit::limits::Limits;
use ndarray::{ArrayD, IxDyn};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/npy")
        .join(name)
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The 2 x 3 table `make_fixtures.py` writes for each dtype, flattened.
fn table(code: &str) -> NdArray {
    fn t<T: Clone>(v: [T; 6]) -> ArrayD<T> {
        ArrayD::from_shape_vec(IxDyn(&[2, 3]), v.to_vec()).unwrap()
    }
    match code {
        "f4" => t([0.0, 1.5, -2.25, f32::MAX, -0.0, f32::INFINITY]).into(),
        "f8" => t([0.0, 1.5, -2.25, f64::MAX, -0.0, f64::INFINITY]).into(),
        "i1" => t([0, 1, i8::MIN, 3, 100, i8::MAX]).into(),
        "i2" => t([0, 1, i16::MIN, 3, 100, i16::MAX]).into(),
        "i4" => t([0, 1, i32::MIN, 3, 100, i32::MAX]).into(),
        "i8" => t([0, 1, i64::MIN, 3, 100, i64::MAX]).into(),
        "u1" => t([0, 1, 0, 3, 100, u8::MAX]).into(),
        "u2" => t([0, 1, 0, 3, 100, u16::MAX]).into(),
        "u4" => t([0, 1, 0, 3, 100, u32::MAX]).into(),
        "u8" => t([0, 1, 0, 3, 100, u64::MAX]).into(),
        "b1" => t([true, false, true, false, false, true]).into(),
        _ => unreachable!("{code}"),
    }
}

/// `-0.0 == 0.0` for `PartialEq`: compare the float bits too.
fn same(a: &NdArray, b: &NdArray) -> bool {
    let bits32 = |x: &ArrayD<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let bits64 = |x: &ArrayD<f64>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    a == b
        && match (a, b) {
            (NdArray::F32(x), NdArray::F32(y)) => bits32(x) == bits32(y),
            (NdArray::F64(x), NdArray::F64(y)) => bits64(x) == bits64(y),
            _ => true,
        }
}

const CODES: [&str; 11] = [
    "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1",
];

#[test]
fn every_dtype_in_both_byte_orders_reads_as_numpy_wrote_it() {
    let mut files = 0;
    for code in CODES {
        let want = table(code);
        let tags: &[&str] = if want.dtype().itemsize() > 1 {
            &["le", "be"]
        } else {
            &["na"]
        };
        for tag in tags {
            let name = format!("{code}_{tag}.npy");
            let a = npy::load(fixture(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(same(&a, &want), "{name}: {a:?}");
            assert!(a.is_c_order(), "{name}");
            let b = npy::from_reader(&bytes(&name)[..]).unwrap();
            assert!(same(&b, &want), "{name} from a reader");
            files += 1;
        }
    }
    assert_eq!(files, 19);
}

#[test]
fn fortran_order_keeps_numpy_indices_and_strides() {
    for name in ["fortran_i4_le.npy", "fortran_f8_be.npy"] {
        let a = npy::load(fixture(name)).unwrap();
        assert_eq!(a.shape(), &[2, 3, 4], "{name}");
        assert!(!a.is_c_order(), "{name}");
        let a = match a {
            NdArray::I32(x) => x.mapv(f64::from),
            NdArray::F64(x) => x,
            other => panic!("{name}: {:?}", other.dtype()),
        };
        assert_eq!(a.strides(), &[1, 2, 6], "{name}: column-major");
        for ((i, j, k), v) in a.indexed_iter().map(|(ix, v)| ((ix[0], ix[1], ix[2]), *v)) {
            assert_eq!(v, (i * 12 + j * 4 + k) as f64, "{name} [{i},{j},{k}]");
        }
    }
}

#[test]
fn format_versions_2_and_3_read() {
    for (name, version, code) in [("v2_u2_be.npy", 2, "u2"), ("v3_f4_le.npy", 3, "f4")] {
        let data = bytes(name);
        assert_eq!(data[6], version, "{name} is not version {version}");
        let a = npy::load(fixture(name)).unwrap();
        assert!(same(&a, &table(code)), "{name}");
    }
}

#[test]
fn zero_dimensional_and_empty_arrays() {
    let a = npy::load(fixture("scalar_f8.npy")).unwrap();
    assert_eq!(a.shape(), &[] as &[usize]);
    assert_eq!(
        a.as_f64().unwrap().iter().copied().collect::<Vec<_>>(),
        [-7.5]
    );
    let e = npy::load(fixture("empty_i2.npy")).unwrap();
    assert_eq!((e.dtype(), e.shape()), (DType::I16, &[0usize, 3][..]));
}

#[test]
fn unsupported_dtypes_are_unsupported_errors() {
    for (name, why) in [
        ("unsupported_c8.npy", "complex"),
        ("unsupported_U3.npy", "string"),
        ("unsupported_O.npy", "object"),
        ("unsupported_structured.npy", "structured"),
    ] {
        match npy::load(fixture(name)) {
            Err(Error::Unsupported { message, .. }) if message.contains(why) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn arrays_saved_one_after_another_read_in_turn() {
    let mut data = bytes("i2_le.npy");
    data.extend(bytes("f8_be.npy"));
    let mut r = &data[..];
    assert!(same(&npy::from_reader(&mut r).unwrap(), &table("i2")));
    assert!(same(&npy::from_reader(&mut r).unwrap(), &table("f8")));
    assert!(r.is_empty());
    // From a path the file must end with the array.
    let dir = tempdir();
    let path = dir.join("two.npy");
    std::fs::write(&path, &data).unwrap();
    match npy::load(&path) {
        Err(Error::InvalidData {
            offset, message, ..
        }) => {
            assert_eq!(offset, bytes("i2_le.npy").len() as u64);
            assert!(message.contains("after"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// A scratch directory, removed with its files when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "convinit-npy-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

// ---------------------------------------------------------------------------------
// Crafted .npy inputs

/// A .npy of `version` with `header` (padded as numpy pads it) followed by `data`.
fn npy_bytes(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let len_field = if version == 1 { 2 } else { 4 };
    let mut h = header.as_bytes().to_vec();
    while !(8 + len_field + h.len() + 1).is_multiple_of(64) {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend((h.len() as u16).to_le_bytes());
    } else {
        out.extend((h.len() as u32).to_le_bytes());
    }
    out.extend(h);
    out.extend(data);
    out
}

fn header(descr: &str, fortran: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
}

#[test]
fn the_crafted_writer_matches_numpy() {
    // So that the crafted cases below differ from numpy's files only where they mean to.
    let mut data = Vec::new();
    for v in [0.0f64, 1.5, -2.25, f64::MAX, -0.0, f64::INFINITY] {
        data.extend(v.to_le_bytes());
    }
    assert_eq!(
        npy_bytes(1, &header("<f8", "False", "(2, 3)"), &data),
        bytes("f8_le.npy")
    );
}

fn invalid_at(r: convinit::Result<NdArray>, offset: u64, needle: &str) {
    match r {
        Err(Error::InvalidData {
            offset: o, message, ..
        }) if o == offset && message.contains(needle) => {}
        other => panic!("expected InvalidData at {offset} with {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_magic_and_unknown_versions() {
    let good = bytes("u1_na.npy");
    let mut bad = good.clone();
    bad[1] = b'n';
    invalid_at(npy::from_reader(&bad[..]), 0, "magic");
    invalid_at(npy::from_reader(&b"PK\x03\x04 not npy"[..]), 0, "magic");
    for (major, minor) in [(0, 0), (4, 0), (1, 1)] {
        let mut v = good.clone();
        v[6] = major;
        v[7] = minor;
        match npy::from_reader(&v[..]) {
            Err(Error::Unsupported {
                offset: 6, message, ..
            }) if message.contains(&format!("{major}.{minor}")) => {}
            other => panic!("{major}.{minor}: {other:?}"),
        }
    }
}

#[test]
fn every_truncation_is_a_truncated_error() {
    let good = bytes("i4_be.npy");
    let data_at = good.len() - 24;
    for cut in 0..good.len() {
        match npy::from_reader(&good[..cut]) {
            Err(Error::Truncated {
                format: "npy",
                offset,
                ..
            }) => {
                assert_eq!(offset, cut as u64, "cut at {cut}")
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // From a file, whose length is known, a cut in the data is found before reading it.
    let dir = tempdir();
    let path = dir.join("cut.npy");
    std::fs::write(&path, &good[..data_at + 5]).unwrap();
    match npy::load(&path) {
        Err(Error::InvalidData { message, .. }) => {
            assert!(
                message.contains("needs 24 bytes of data but only 5 remain"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_lying_shape_fails_at_the_end_of_input() {
    // Claims 1000 float64 (8000 bytes), holds 16.
    let data = npy_bytes(1, &header("<f8", "False", "(1000,)"), &[0; 16]);
    match npy::from_reader(&data[..]) {
        Err(Error::Truncated {
            offset, context, ..
        }) => {
            assert_eq!(offset, data.len() as u64);
            assert!(context.contains("array data"), "{context}");
        }
        other => panic!("{other:?}"),
    }
    // Claiming more than a limit is refused before reading any data: the input (header
    // plus data) is checked first, then the result.
    let data = npy_bytes(1, &header("<f8", "False", "(1073741824, 16)"), &[0; 16]);
    match npy::from_reader(&data[..]) {
        Err(Error::LimitExceeded {
            what: "decompressed input",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let no_input_limit = Limits::default().with_max_input_bytes(u64::MAX);
    match npy::from_reader_with(&data[..], no_input_limit) {
        Err(Error::LimitExceeded { what: "result", .. }) => {}
        other => panic!("{other:?}"),
    }
    // ...and, with no limits, still fails at the end of the 16 bytes.
    match npy::from_reader_with(&data[..], Limits::unlimited()) {
        Err(Error::Truncated { offset, .. }) => assert_eq!(offset, data.len() as u64),
        other => panic!("{other:?}"),
    }
    // A shape whose size overflows.
    let huge = npy_bytes(1, &header("<f8", "False", "(4294967296, 4294967296)"), &[]);
    invalid_at(npy::from_reader(&huge[..]), 10, "too large");
    // Zero-length arrays may have any other length, as long as it fits.
    let zero = npy_bytes(1, &header("<f8", "False", "(0, 4611686018427387904)"), &[]);
    invalid_at(npy::from_reader(&zero[..]), 10, "too large");
    let zero = npy_bytes(1, &header("<f8", "False", "(0, 1099511627776)"), &[]);
    assert_eq!(npy::from_reader(&zero[..]).unwrap().shape(), &[0, 1 << 40]);
}

#[test]
fn a_header_longer_than_numpy_accepts_is_invalid() {
    let long = format!("{}{}", header("<u1", "False", "(1,)"), " ".repeat(10_000));
    let data = npy_bytes(2, &long, &[7]);
    invalid_at(npy::from_reader(&data[..]), 8, "10000");
    // Just under numpy's limit is fine.
    let ok = format!("{}{}", header("<u1", "False", "(1,)"), " ".repeat(9_900));
    let a = npy::from_reader(&npy_bytes(2, &ok, &[7])[..]).unwrap();
    assert_eq!(a.as_u8().unwrap().iter().copied().collect::<Vec<_>>(), [7]);
    // A v1 header length that runs past the end of the file.
    let dir = tempdir();
    let path = dir.join("short.npy");
    std::fs::write(&path, b"\x93NUMPY\x01\x00\xff\x00{'descr'").unwrap();
    match npy::load(&path) {
        Err(Error::InvalidData {
            offset: 8, message, ..
        }) => {
            assert!(message.contains("255"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_headers_name_the_offending_byte() {
    let at = |h: &str, needle: &str| h.find(needle).unwrap() as u64 + 10;
    let cases: Vec<(String, u64, &str)> = {
        let mut v = Vec::new();
        let h = "{'descr': '<f4', 'fortran_order': False}".to_string();
        v.push((h, 10, "\"shape\" is missing"));
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}".to_string();
        let o = at(&h, "'x'");
        v.push((h, o, "unexpected key"));
        let h = "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': ()}".to_string();
        let o = at(&h, "'descr': '<f4', 'f");
        v.push((h, o, "twice"));
        let h = header("<f4", "False", "[1, 2]");
        let o = at(&h, "[1");
        v.push((h, o, "not a tuple"));
        let h = header("<f4", "False", "(3)");
        let o = at(&h, "(3)");
        v.push((h, o, "not a tuple"));
        let h = header("<f4", "False", "(2, -3)");
        let o = at(&h, "-3");
        v.push((h, o, "negative"));
        let h = header("<f4", "False", "(2, 99999999999999999999999)");
        let o = at(&h, "999");
        v.push((h, o, "too large"));
        let h = header("<f4", "0", "(2,)");
        let o = at(&h, "0,");
        v.push((h, o, "not True or False"));
        let h = "{'descr': 4, 'fortran_order': False, 'shape': (2,)}".to_string();
        let o = at(&h, "4");
        v.push((h, o, "not a string"));
        let h = format!("{} x", header("<f4", "False", "(2,)"));
        let o = at(&h, "x");
        v.push((h, o, "after the header"));
        let h = "['descr']".to_string();
        v.push((h, 10, "expected a dict"));
        let h = "{'descr': '<f4".to_string();
        let o = at(&h, "'<f4");
        v.push((h, o, "unterminated"));
        let h = format!("{{'descr': {}'<f4'{}}}", "(".repeat(40), ")".repeat(40));
        let o = at(&h, "(((((((((((((((((");
        v.push((h, o + 15, "nested"));
        let h = "{'descr': '<f4', 'fortran_order': Flase, 'shape': (2,)}".to_string();
        let o = at(&h, "Flase");
        v.push((h, o, "expected a Python literal"));
        let h = "{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}".to_string();
        let o = at(&h, "'fortran");
        v.push((h, o, "expected ',' or '}'"));
        let dims = vec!["1"; 65].join(", ");
        let h = header("<f4", "False", &format!("({dims})"));
        let o = at(&h, "(1, 1");
        v.push((h, o, "at most 64"));
        v
    };
    for (h, offset, needle) in cases {
        let data = npy_bytes(1, &h, &[0; 64]);
        invalid_at(npy::from_reader(&data[..]), offset, needle);
    }
    // 64 dimensions are fine; Python 2's long suffix and no trailing comma too.
    let dims = vec!["1"; 64].join(", ");
    let h = header("<f4", "False", &format!("({dims})"));
    assert_eq!(
        npy::from_reader(&npy_bytes(1, &h, &[0; 4])[..])
            .unwrap()
            .shape()
            .len(),
        64
    );
    let h = "{\"shape\": (2L, 1L), \"descr\": \"<i1\", \"fortran_order\": True}";
    let a = npy::from_reader(&npy_bytes(1, h, &[1, 2])[..]).unwrap();
    assert_eq!(a.shape(), &[2, 1]);
    // A version 3 header must be UTF-8; versions 1 and 2 are latin-1.
    let h = header("<f4\u{e9}", "False", "(1,)");
    let mut latin1: Vec<u8> = npy_bytes(3, &h, &[0; 4]);
    let bad = latin1
        .windows(2)
        .position(|w| w == "\u{e9}".as_bytes())
        .unwrap();
    latin1.splice(bad..bad + 2, [0xe9, b' ']);
    invalid_at(npy::from_reader(&latin1[..]), bad as u64, "UTF-8");
    match npy::from_reader(&npy_bytes(3, &h, &[0; 4])[..]) {
        Err(Error::Unsupported { message, .. }) => {
            assert!(message.contains("<f4\u{e9}"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn npy_limits_name_their_setter() {
    let good = bytes("f8_le.npy");
    let n = good.len() as u64;
    let small_input = Limits::default().with_max_input_bytes(n - 1);
    for r in [
        npy::from_reader_with(&good[..], small_input),
        npy::load_with(fixture("f8_le.npy"), small_input),
    ] {
        match r {
            Err(
                e @ Error::LimitExceeded {
                    what: "decompressed input",
                    ..
                },
            ) => {
                assert!(e.to_string().contains("with_max_input_bytes"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(npy::from_reader_with(&good[..], Limits::default().with_max_input_bytes(n)).is_ok());
    // 48 bytes of data and 2 x 16 for the shape.
    let r = npy::from_reader_with(&good[..], Limits::default().with_max_result_bytes(79));
    assert!(
        matches!(
            r,
            Err(Error::LimitExceeded {
                what: "result",
                limit: 79,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(npy::from_reader_with(&good[..], Limits::default().with_max_result_bytes(80)).is_ok());
}

// ---------------------------------------------------------------------------------
// .npz

fn expect_named(got: &[(String, NdArray)]) {
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["first", "labels", "mask", "fortran", "arr_0"]);
    let first = got[0].1.as_f32().unwrap();
    assert_eq!(first.shape(), &[2, 3]);
    assert_eq!(
        first.iter().copied().collect::<Vec<_>>(),
        [0., 1., 2., 3., 4., 5.]
    );
    assert_eq!(got[1].1.as_i64().unwrap().as_slice().unwrap(), &[5, 0, 4]);
    assert_eq!(
        got[2].1.as_bool().unwrap().as_slice().unwrap(),
        &[true, false]
    );
    let f = got[3].1.as_i16().unwrap();
    assert!(!got[3].1.is_c_order());
    assert_eq!(f[[1, 2]], 5);
    assert_eq!(f[[0, 1]], 1);
    assert_eq!(got[4].1.as_u8().unwrap().as_slice().unwrap(), &[9, 8]);
}

#[test]
fn npz_plain_and_compressed_read_in_archive_order() {
    for name in ["plain.npz", "compressed.npz"] {
        expect_named(&npz::load(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}")));
        expect_named(&npz::from_reader(Cursor::new(bytes(name))).unwrap());
    }
    // Written to an unseekable stream: sizes in data descriptors after each member.
    let s = npz::load(fixture("streamed.npz")).unwrap();
    assert_eq!(s[0].0, "labels");
    assert_eq!(s[1].1.as_f32().unwrap().iter().copied().sum::<f32>(), 15.0);
}

#[test]
fn npz_every_truncation_is_an_error() {
    for name in ["plain.npz", "compressed.npz"] {
        let good = bytes(name);
        for cut in 0..good.len() {
            assert!(
                npz::from_reader(Cursor::new(&good[..cut])).is_err(),
                "{name} cut at {cut}"
            );
        }
    }
    match npz::from_reader(Cursor::new(b"not a zip at all, just text".to_vec())) {
        Err(Error::InvalidData {
            offset: 0, message, ..
        }) => {
            assert!(message.contains("not an .npz"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// Finds `needle` in `hay` (panics when absent).
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn npz_corruption_is_found() {
    // A flipped data byte in a stored member: the CRC.
    let mut plain = bytes("plain.npz");
    let at = find(&plain, b"labels.npy") + 10 + 20 + 135; // in the data
    plain[at] ^= 0x40;
    match npz::from_reader(Cursor::new(plain)) {
        Err(Error::InvalidData { message, .. }) => {
            assert!(
                message.contains("CRC") && message.contains("labels.npy"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A broken deflate stream.
    let mut comp = bytes("compressed.npz");
    let at = find(&comp, b"first.npy") + 9 + 20;
    for b in &mut comp[at..at + 8] {
        *b = 0xff;
    }
    let e = npz::from_reader(Cursor::new(comp)).unwrap_err().to_string();
    assert!(e.contains("first.npy"), "{e}");
    // An unknown compression method and an encrypted member, in the directory.
    for (field, value, needle) in [(10, 12u16, "method 12"), (8, 1, "encrypted")] {
        let mut z = bytes("plain.npz");
        let cd = find(&z, b"PK\x01\x02");
        z[cd + field..cd + field + 2].copy_from_slice(&value.to_le_bytes());
        match npz::from_reader(Cursor::new(z)) {
            Err(Error::Unsupported { message, .. }) => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("{needle}: {other:?}"),
        }
    }
}

/// A zip of `(name, data)` members, stored or deflated, with an optional zip64 end
/// record; numpy-style enough for the cases below.
fn zip(members: &[(&str, &[u8])], deflate: bool, zip64_end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cd = Vec::new();
    for (name, data) in members {
        let crc = {
            let mut c = flate2::Crc::new();
            c.update(data);
            c.sum()
        };
        let body = if deflate {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        } else {
            data.to_vec()
        };
        let method: u16 = if deflate { 8 } else { 0 };
        let offset = out.len() as u32;
        let fixed = |sig: u32| {
            let mut h = sig.to_le_bytes().to_vec();
            h.extend([20, 0, 0, 0]);
            h.extend(method.to_le_bytes());
            h.extend([0; 4]);
            h.extend(crc.to_le_bytes());
            h.extend((body.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend([0, 0]);
            h
        };
        out.extend(fixed(0x0403_4b50));
        out.extend(name.as_bytes());
        out.extend(&body);
        let mut c = 0x0201_4b50u32.to_le_bytes().to_vec();
        c.extend([20, 0]);
        c.extend(&fixed(0)[4..]);
        c.extend([0; 10]);
        c.extend(offset.to_le_bytes());
        c.extend(name.as_bytes());
        cd.extend(c);
    }
    let cd_at = out.len() as u64;
    out.extend(&cd);
    let n = members.len() as u64;
    if zip64_end {
        let rec_at = out.len() as u64;
        out.extend(0x0606_4b50u32.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(n.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend((cd.len() as u64).to_le_bytes());
        out.extend(cd_at.to_le_bytes());
        out.extend(0x0706_4b50u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(rec_at.to_le_bytes());
        out.extend(1u32.to_le_bytes());
    }
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0; 4]);
    if zip64_end {
        out.extend([0xff; 12]);
    } else {
        out.extend((n as u16).to_le_bytes());
        out.extend((n as u16).to_le_bytes());
        out.extend((cd.len() as u32).to_le_bytes());
        out.extend((cd_at as u32).to_le_bytes());
    }
    out.extend([0, 0]);
    out
}

#[test]
fn npz_crafted_archives() {
    let a = bytes("u2_be.npy");
    let b = bytes("b1_na.npy");
    for deflate in [false, true] {
        for zip64 in [false, true] {
            let z = zip(&[("a.npy", &a), ("b.npy", &b)], deflate, zip64);
            let got = npz::from_reader(Cursor::new(z)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.len(), 2);
            assert!(same(&got[0].1, &table("u2")) && same(&got[1].1, &table("b1")));
        }
    }
    // Members that are not .npy files.
    let z = zip(&[("a.npy", &a), ("notes.txt", b"hi")], false, false);
    match npz::from_reader(Cursor::new(z)) {
        Err(Error::Unsupported { message, .. }) => {
            assert!(message.contains("notes.txt"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A member with bytes after its array, and a bad .npy inside a member.
    let mut long = a.clone();
    long.push(0);
    let e = npz::from_reader(Cursor::new(zip(&[("a.npy", &long)], true, false))).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidData { message, .. } if message.contains("after")),
        "{e}"
    );
    let mut bad = a.clone();
    bad[0] = b'X';
    let e = npz::from_reader(Cursor::new(zip(&[("x.npy", &bad)], false, false))).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidData { format: "npy", offset: 0, message } if message.contains("\"x.npy\"")),
        "{e}"
    );
    // A lying shape inside a compressed member is found against the member's size.
    let lie = npy_bytes(1, &header(">u2", "False", "(1000000,)"), &[0; 12]);
    let e = npz::from_reader(Cursor::new(zip(&[("l.npy", &lie)], true, false))).unwrap_err();
    assert!(e.to_string().contains("only 12 remain"), "{e}");
}

#[test]
fn npz_limits_cover_all_members() {
    let a = bytes("u2_be.npy"); // 140 bytes, 12 of data
    let z = zip(&[("a.npy", &a), ("b.npy", &a)], true, false);
    let run = |l: Limits| npz::from_reader_with(Cursor::new(z.clone()), l);
    // Decompressed input: 280 bytes across both members.
    assert!(run(Limits::default().with_max_input_bytes(280)).is_ok());
    match run(Limits::default().with_max_input_bytes(279)) {
        Err(Error::LimitExceeded {
            what: "decompressed input",
            format: "npz",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Result: 2 x (12 data + 32 shape + 1 name) = 90 bytes.
    assert!(run(Limits::default().with_max_result_bytes(90)).is_ok());
    match run(Limits::default().with_max_result_bytes(89)) {
        Err(Error::LimitExceeded { what: "result", .. }) => {}
        other => panic!("{other:?}"),
    }
    // A deflate bomb: 4 MB of zeros in a few KB, declared honestly, over a 1 MB limit;
    // and one that declares 1000 bytes but inflates to 4 MB stops at its declared size.
    let zeros = vec![0u8; 4 << 20];
    let bomb = npy_bytes(1, &header("|u1", "False", "(4194304,)"), &zeros);
    let z = zip(&[("z.npy", &bomb)], true, false);
    assert!(z.len() < 10_000);
    let limits = Limits::default().with_max_input_bytes(1 << 20);
    match npz::from_reader_with(Cursor::new(z.clone()), limits) {
        Err(Error::LimitExceeded { .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut lying = z;
    let cd = find(&lying, b"PK\x01\x02");
    lying[cd + 24..cd + 28].copy_from_slice(&1000u32.to_le_bytes());
    match npz::from_reader_with(Cursor::new(lying), limits) {
        Err(Error::InvalidData { message, .. }) => {
            assert!(message.contains("only 872 remain"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
