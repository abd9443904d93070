//! The numpy pickle reader against numpy 2's fixtures (protocols 2 to 5, gzipped or
//! not), hand-built pickles for every class of bad input, and a fuzz-style sweep of
//! truncations and byte flips.

use std::io::Write;

use convinit::Error;
use convinit::data::pickle::{self, DType, NdArray, Value};
use convinit::limits::Limits;

#[path = "common/largest_alloc.rs"]
mod largest_alloc;
use largest_alloc::largest_allocation_during;

// --- Fixtures

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pickle");

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture present")
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a NdArray {
    v.get(key)
        .unwrap_or_else(|| panic!("key {key}"))
        .as_array()
        .unwrap_or_else(|| panic!("{key} is an array"))
}

/// The known contents of `arrays_protocol*.pkl`.
fn check_fixture(v: &Value) {
    assert_eq!(v.as_dict().expect("a dict").len(), 6);

    let f4 = arr(v, "f4");
    assert_eq!(f4.dtype(), DType::F32);
    assert_eq!(f4.shape(), &[3, 4]);
    assert!(f4.is_c_order());
    let want: Vec<f32> = (0..12).map(|i| i as f32 / 4.0).collect();
    assert_eq!(
        f4.as_f32().unwrap().iter().copied().collect::<Vec<_>>(),
        want
    );

    let i8 = arr(v, "i8");
    assert_eq!(i8.dtype(), DType::I64);
    assert_eq!(i8.shape(), &[6]);
    assert_eq!(
        i8.as_i64().unwrap().as_slice().unwrap(),
        &[-3, -2, -1, 0, 1, 2]
    );

    let u1 = arr(v, "u1");
    assert_eq!(u1.dtype(), DType::U8);
    assert_eq!(
        u1.as_u8().unwrap().as_slice().unwrap(),
        &[0, 50, 100, 150, 200]
    );

    let f8 = arr(v, "f8");
    assert_eq!(f8.dtype(), DType::F64);
    assert_eq!(f8.shape(), &[2, 2]);
    assert_eq!(
        f8.as_f64().unwrap().as_slice().unwrap(),
        &[0.0, 0.5, 1.0, 1.5]
    );

    let ff = arr(v, "f4_fortran");
    assert_eq!(ff.dtype(), DType::F32);
    assert_eq!(ff.shape(), &[2, 3]);
    assert!(!ff.is_c_order(), "Fortran order must be kept");
    let a = ff.as_f32().unwrap();
    // Logical values are arange(6).reshape(2, 3) ...
    assert_eq!(a[[0, 2]], 2.0);
    assert_eq!(a[[1, 0]], 3.0);
    assert_eq!(
        a.iter().copied().collect::<Vec<_>>(),
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    );
    // ... stored column by column.
    assert_eq!(
        a.as_slice_memory_order().unwrap(),
        &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    );
    assert_eq!(a.strides(), &[1, 2]);

    let t = v.get("tuple").unwrap().as_tuple().expect("a tuple");
    assert_eq!(t.len(), 2);
    let t0 = t[0].as_array().unwrap();
    let t1 = t[1].as_array().unwrap();
    assert_eq!(t0.as_f32().unwrap().as_slice().unwrap(), &[0.0, 1.0, 2.0]);
    assert_eq!(t1.as_i64().unwrap().as_slice().unwrap(), &[0, 1, 2]);
}

#[test]
fn fixture_protocol2() {
    check_fixture(&pickle::load(fixture("arrays_protocol2.pkl")).unwrap());
}

#[test]
fn fixture_protocol3() {
    check_fixture(&pickle::load(fixture("arrays_protocol3.pkl")).unwrap());
}

#[test]
fn fixture_protocol4() {
    check_fixture(&pickle::load(fixture("arrays_protocol4.pkl")).unwrap());
}

#[test]
fn fixture_protocol4_gzipped() {
    check_fixture(&pickle::load(fixture("arrays_protocol4.pkl.gz")).unwrap());
    // From a reader too, without the path.
    let bytes = fixture_bytes("arrays_protocol4.pkl.gz");
    check_fixture(&pickle::from_reader(&bytes[..]).unwrap());
}

#[test]
fn fixture_protocol5() {
    check_fixture(&pickle::load(fixture("arrays_protocol5.pkl")).unwrap());
}

#[test]
fn all_protocols_give_the_same_value() {
    let p2 = pickle::load(fixture("arrays_protocol2.pkl")).unwrap();
    for p in ["3", "4", "5"] {
        let v = pickle::load(fixture(&format!("arrays_protocol{p}.pkl"))).unwrap();
        assert_eq!(v, p2, "protocol {p}");
    }
}

// --- The three bad fixtures

#[test]
fn bad_truncated_is_truncated() {
    match pickle::load(fixture("bad_truncated.pkl")) {
        Err(Error::Truncated { format, offset, .. }) => {
            assert_eq!(format, "pickle");
            assert_eq!(offset, 470, "offset is the end of the input");
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn bad_not_pickle_is_invalid() {
    match pickle::load(fixture("bad_not_pickle.pkl")) {
        Err(Error::InvalidData {
            format,
            offset,
            message,
        }) => {
            assert_eq!((format, offset), ("pickle", 0));
            assert!(message.contains("not start like a pickle"), "{message}");
        }
        other => panic!("expected InvalidData, got {other:?}"),
    }
}

#[test]
fn bad_garbage_gz_is_invalid() {
    match pickle::load(fixture("bad_garbage.pkl.gz")) {
        Err(Error::InvalidData { format, offset, .. }) => {
            assert_eq!(format, "pickle");
            assert_eq!(offset, 3, "the GET whose argument is garbage");
        }
        other => panic!("expected InvalidData, got {other:?}"),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn truncated_gzip_is_truncated() {
    let gz = fixture_bytes("arrays_protocol4.pkl.gz");
    let cut = &gz[..gz.len() / 2];
    match pickle::from_reader(cut) {
        Err(Error::Truncated { .. }) => {}
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn corrupt_gzip_is_invalid_gzip() {
    let mut gz = gzip(&fixture_bytes("arrays_protocol2.pkl"));
    for b in &mut gz[12..40] {
        *b ^= 0x5a;
    }
    match pickle::from_reader(&gz[..]) {
        Err(Error::InvalidData { format: "gzip", .. }) => {}
        other => panic!("expected gzip InvalidData, got {other:?}"),
    }
}

#[test]
fn empty_input_is_invalid() {
    assert!(matches!(
        pickle::from_reader(&b""[..]),
        Err(Error::InvalidData { offset: 0, .. })
    ));
}

#[test]
fn missing_file_is_io_error_naming_the_path() {
    match pickle::load("/no/such/file.pkl") {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("/no/such/file.pkl")),
        other => panic!("expected Io, got {other:?}"),
    }
}

// --- Hand-built pickles

/// Protocol 2, written the way Python 2's cPickle wrote numpy arrays.
fn classic(descr: &str, order: &str, shape: &[u32], fortran: bool, data: &[u8]) -> Vec<u8> {
    classic_claiming(descr, order, shape, fortran, data, data.len() as u32)
}

fn classic_claiming(
    descr: &str,
    order: &str,
    shape: &[u32],
    fortran: bool,
    data: &[u8],
    claimed: u32,
) -> Vec<u8> {
    let mut p = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03(K\x01(".to_vec();
    for d in shape {
        p.push(b'J');
        p.extend_from_slice(&d.to_le_bytes());
    }
    p.extend_from_slice(b"tcnumpy\ndtype\nU");
    p.push(descr.len() as u8);
    p.extend_from_slice(descr.as_bytes());
    p.extend_from_slice(b"K\x00K\x01\x87R(K\x03U\x01");
    p.extend_from_slice(order.as_bytes());
    p.extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
    p.push(if fortran { 0x88 } else { 0x89 });
    p.push(b'T');
    p.extend_from_slice(&claimed.to_le_bytes());
    p.extend_from_slice(data);
    p.extend_from_slice(b"tb.");
    p
}

fn load(bytes: &[u8]) -> convinit::Result<Value> {
    pickle::from_reader(bytes)
}

#[test]
fn classic_f4_array() {
    let data: Vec<u8> = [1.5f32, -2.0, 3.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let a = load(&classic("f4", "<", &[3], false, &data))
        .unwrap()
        .into_array()
        .unwrap();
    assert_eq!(a.as_f32().unwrap().as_slice().unwrap(), &[1.5, -2.0, 3.25]);
}

#[test]
fn big_endian_dtypes_are_swapped() {
    let data: Vec<u8> = [1.5f64, -2.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let a = load(&classic("f8", ">", &[2], false, &data)).unwrap();
    assert_eq!(
        a.as_array().unwrap().as_f64().unwrap().as_slice().unwrap(),
        &[1.5, -2.0]
    );
    // numpy 2, protocol 2: np.arange(3, dtype='>i4').
    let p = b"\x80\x02cnumpy._core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85q\x02c_codecs\nencode\nq\x03X\x01\x00\x00\x00bq\x04X\x06\x00\x00\x00latin1q\x05\x86q\x06Rq\x07\x87q\x08Rq\t(K\x01K\x03\x85q\ncnumpy\ndtype\nq\x0bX\x02\x00\x00\x00i4q\x0c\x89\x88\x87q\rRq\x0e(K\x03X\x01\x00\x00\x00>q\x0fNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x10b\x89h\x03X\x0c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02q\x11h\x05\x86q\x12Rq\x13tq\x14b.";
    let a = load(p).unwrap().into_array().unwrap();
    assert_eq!(a.as_i32().unwrap().as_slice().unwrap(), &[0, 1, 2]);
}

#[test]
fn every_integer_dtype_and_bool() {
    let le = |vals: &[i64], size: usize| -> Vec<u8> {
        vals.iter()
            .flat_map(|v| v.to_le_bytes()[..size].to_vec())
            .collect()
    };
    let v = [1i64, -1, 7];
    let a = load(&classic("i1", "|", &[3], false, &le(&v, 1))).unwrap();
    assert_eq!(
        a.as_array().unwrap().as_i8().unwrap().as_slice().unwrap(),
        &[1, -1, 7]
    );
    let a = load(&classic("i2", "<", &[3], false, &le(&v, 2))).unwrap();
    assert_eq!(
        a.as_array().unwrap().as_i16().unwrap().as_slice().unwrap(),
        &[1, -1, 7]
    );
    let a = load(&classic("i4", "<", &[3], false, &le(&v, 4))).unwrap();
    assert_eq!(
        a.as_array().unwrap().as_i32().unwrap().as_slice().unwrap(),
        &[1, -1, 7]
    );
    let a = load(&classic("u2", "<", &[3], false, &le(&v, 2))).unwrap();
    assert_eq!(
        a.as_array().unwrap().as_u16().unwrap().as_slice().unwrap(),
        &[1, u16::MAX, 7]
    );
    let a = load(&classic("u4", "<", &[3], false, &le(&v, 4))).unwrap();
    assert_eq!(
        a.as_array().unwrap().as_u32().unwrap().as_slice().unwrap(),
        &[1, u32::MAX, 7]
    );
    let a = load(&classic("u8", "<", &[3], false, &le(&v, 8))).unwrap();
    let a = a.into_array().unwrap();
    assert_eq!(a.as_u64().unwrap().as_slice().unwrap(), &[1, u64::MAX, 7]);
    assert!(a.to_i64().is_none(), "u64::MAX does not fit in i64");
    // numpy 2, protocol 3: np.array([True, False]).
    let p = b"\x80\x03cnumpy._core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85q\x02C\x01bq\x03\x87q\x04Rq\x05(K\x01K\x02\x85q\x06cnumpy\ndtype\nq\x07X\x02\x00\x00\x00b1q\x08\x89\x88\x87q\tRq\n(K\x03X\x01\x00\x00\x00|q\x0bNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0cb\x89C\x02\x01\x00q\rtq\x0eb.";
    let a = load(p).unwrap().into_array().unwrap();
    assert_eq!(a.as_bool().unwrap().as_slice().unwrap(), &[true, false]);
}

#[test]
fn fortran_order_hand_built() {
    // Memory order (column by column) of [[0, 1, 2], [3, 4, 5]].
    let data: Vec<u8> = [0i16, 3, 1, 4, 2, 5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let a = load(&classic("i2", "<", &[2, 3], true, &data))
        .unwrap()
        .into_array()
        .unwrap();
    assert!(!a.is_c_order());
    let a = a.into_i16().unwrap();
    assert_eq!(
        a.iter().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
}

#[test]
fn large_payloads_take_the_typed_path_and_match() {
    // Large enough (> 64 KiB) to be converted while read, across several chunks,
    // in both byte orders and in Fortran order.
    let n: u32 = 300_000;
    let vals: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
    let le: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let be: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
    for (data, order) in [(&le, "<"), (&be, ">")] {
        let a = load(&classic("f4", order, &[n], false, data)).unwrap();
        let a = a.as_array().unwrap().as_f32().unwrap();
        assert_eq!(a.as_slice().unwrap(), &vals[..], "order {order}");
    }
    let a = load(&classic("f4", "<", &[1000, 300], true, &le))
        .unwrap()
        .into_array()
        .unwrap()
        .into_f32()
        .unwrap();
    assert_eq!(a.as_slice_memory_order().unwrap(), &vals[..]);
    assert_eq!(a[[1, 0]], vals[1]);
    assert_eq!(a[[0, 1]], vals[1000]);
    // Gzipped too.
    let a = load(&gzip(&classic("f4", "<", &[n], false, &le))).unwrap();
    assert_eq!(
        a.as_array().unwrap().as_f32().unwrap().as_slice().unwrap(),
        &vals[..]
    );
}

#[test]
fn large_payload_whose_shape_disagrees_is_rejected() {
    // The stack predicts 200 000 f4 (800 000 bytes) but the payload is 4 bytes longer.
    let data = vec![0u8; 800_004];
    let bytes = classic("f4", "<", &[200_000], false, &data);
    assert!(matches!(load(&bytes), Err(Error::InvalidData { .. })));
}

#[test]
fn python_scalars_and_containers() {
    // pickle.dumps({'a': [1, -2, 3.5, None, True, False], 'b': (b'xy', 'héllo'),
    //   'c': 2**40, 'd': -2**63, 'e': {}, 'f': bytearray(b'z')}, protocol=p)
    let p2: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88\x89eX\x01\x00\x00\x00bq\x03c_codecs\nencode\nq\x04X\x02\x00\x00\x00xyq\x05X\x06\x00\x00\x00latin1q\x06\x86q\x07Rq\x08X\x06\x00\x00\x00h\xc3\xa9lloq\t\x86q\nX\x01\x00\x00\x00cq\x0b\x8a\x06\x00\x00\x00\x00\x00\x01X\x01\x00\x00\x00dq\x0c\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80X\x01\x00\x00\x00eq\r}q\x0eX\x01\x00\x00\x00fq\x0fc__builtin__\nbytearray\nq\x10h\x04X\x01\x00\x00\x00zq\x11h\x06\x86q\x12Rq\x13\x85q\x14Rq\x15u.";
    let p4: &[u8] = b"\x80\x04\x95y\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88\x89e\x8c\x01b\x94C\x02xy\x94\x8c\x06h\xc3\xa9llo\x94\x86\x94\x8c\x01c\x94\x8a\x06\x00\x00\x00\x00\x00\x01\x8c\x01d\x94\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80\x8c\x01e\x94}\x94\x8c\x01f\x94\x8c\x08builtins\x94\x8c\tbytearray\x94\x93\x94C\x01z\x94\x85\x94R\x94u.";
    for bytes in [p2, p4] {
        let v = load(bytes).unwrap();
        let want = Value::Dict(vec![
            (
                Value::Str("a".into()),
                Value::List(vec![
                    Value::Int(1),
                    Value::Int(-2),
                    Value::Float(3.5),
                    Value::None,
                    Value::Bool(true),
                    Value::Bool(false),
                ]),
            ),
            (
                Value::Str("b".into()),
                Value::Tuple(vec![
                    Value::Bytes(b"xy".to_vec()),
                    Value::Str("héllo".into()),
                ]),
            ),
            (Value::Str("c".into()), Value::Int(1 << 40)),
            (Value::Str("d".into()), Value::Int(i64::MIN)),
            (Value::Str("e".into()), Value::Dict(vec![])),
            (Value::Str("f".into()), Value::Bytes(b"z".to_vec())),
        ]);
        assert_eq!(v, want);
    }
}

#[test]
fn numpy_scalar_is_a_zero_dim_array() {
    // pickle.dumps(np.float32(1.5), protocol=2) from numpy 2.
    let p = b"\x80\x02cnumpy._core.multiarray\nscalar\nq\x00cnumpy\ndtype\nq\x01X\x02\x00\x00\x00f4q\x02\x89\x88\x87q\x03Rq\x04(K\x03X\x01\x00\x00\x00<q\x05NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x06bc_codecs\nencode\nq\x07X\x05\x00\x00\x00\x00\x00\xc3\x80?q\x08X\x06\x00\x00\x00latin1q\t\x86q\nRq\x0b\x86q\x0cRq\r.";
    let a = load(p).unwrap().into_array().unwrap();
    assert_eq!(a.shape(), &[] as &[usize]);
    assert_eq!(a.as_f32().unwrap().first(), Some(&1.5));
}

#[test]
fn protocol0_text_opcodes() {
    // (1, 2.5, True, [7]) in protocol 0, with PUT/GET.
    let v = load(b"(I1\nF2.5\nI01\n(lp0\nI7\natp1\n.").unwrap();
    assert_eq!(
        v,
        Value::Tuple(vec![
            Value::Int(1),
            Value::Float(2.5),
            Value::Bool(true),
            Value::List(vec![Value::Int(7)]),
        ])
    );
}

#[test]
fn shared_objects_are_shared() {
    // A list referenced twice through the memo: ([1], [1]).
    let v = load(b"\x80\x02]q\x00K\x01ah\x00\x86.").unwrap();
    let l = Value::List(vec![Value::Int(1)]);
    assert_eq!(v, Value::Tuple(vec![l.clone(), l]));
}

fn expect_unsupported(bytes: &[u8], needle: &str) {
    match load(bytes) {
        Err(Error::Unsupported { message, .. }) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}")
        }
        other => panic!("expected Unsupported ({needle}), got {other:?}"),
    }
}

fn expect_invalid(bytes: &[u8], needle: &str) -> u64 {
    match load(bytes) {
        Err(Error::InvalidData {
            message, offset, ..
        }) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            offset
        }
        other => panic!("expected InvalidData ({needle}), got {other:?}"),
    }
}

#[test]
fn unsupported_globals_are_rejected() {
    expect_unsupported(
        b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.",
        "os.system",
    );
    expect_unsupported(
        b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.",
        "builtins.eval",
    );
    expect_unsupported(b"\x80\x02ccopyreg\n_reconstructor\n.", "copyreg");
    match load(b"\x80\x02cos\nsystem\n.") {
        Err(Error::Unsupported { offset, .. }) => assert_eq!(offset, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn object_and_string_dtypes_are_unsupported() {
    expect_unsupported(&classic("O8", "|", &[1], false, &[0; 8]), "object");
    expect_unsupported(&classic("U3", "<", &[1], false, &[0; 12]), "string");
    expect_unsupported(&classic("S3", "|", &[1], false, &[0; 3]), "string");
    expect_unsupported(&classic("c8", "<", &[1], false, &[0; 8]), "complex");
    expect_unsupported(&classic("f2", "<", &[1], false, &[0; 2]), "dtype");
}

#[test]
fn data_length_must_match_shape_times_itemsize() {
    let off = expect_invalid(&classic("f4", "<", &[3], false, &[0; 8]), "needs 12");
    assert!(off > 100, "offset {off} points at the BUILD");
    expect_invalid(&classic("f8", "<", &[2, 2], false, &[0; 33]), "needs 32");
}

#[test]
fn shape_product_overflow_is_invalid() {
    let big = i32::MAX as u32;
    let bytes = classic("f8", "<", &[big, big, big], false, &[0; 8]);
    expect_invalid(&bytes, "too large");
}

#[test]
fn huge_claimed_lengths_fail_fast_without_huge_allocations() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "BINBYTES8",
            b"\x80\x04\x8e\x00\x00\x00\x00\x00\x00\x00\x40abc".to_vec(),
        ),
        (
            "BYTEARRAY8",
            b"\x80\x05\x96\xff\xff\xff\xff\xff\xff\xff\xffabc".to_vec(),
        ),
        (
            "BINUNICODE8",
            b"\x80\x04\x8d\x00\x00\x00\x00\x01\x00\x00\x00abc".to_vec(),
        ),
        ("BINSTRING", b"\x80\x02T\xff\xff\xff\x7fabc".to_vec()),
        ("BINBYTES", b"\x80\x03B\xff\xff\xff\xffabc".to_vec()),
        // The typed path: shape (536870911,) f4 predicts exactly the claimed length.
        (
            "typed BINSTRING",
            classic_claiming("f4", "<", &[536_870_911], false, &[0; 100], 0x7fff_fffc),
        ),
    ];
    for (name, bytes) in cases {
        // Unlimited: the claims themselves must not be allocated (the typed claim of
        // 2 GiB is over the default result limit, which refuses it before reading).
        let (r, largest) =
            largest_allocation_during(|| pickle::from_reader_with(&bytes[..], Limits::unlimited()));
        assert!(
            matches!(r, Err(Error::Truncated { .. })),
            "{name}: expected Truncated, got {r:?}"
        );
        assert!(
            largest <= 4 << 20,
            "{name}: allocated {largest} bytes at once"
        );
    }
    let typed = classic_claiming("f4", "<", &[536_870_911], false, &[0; 100], 0x7fff_fffc);
    let (r, largest) = largest_allocation_during(|| load(&typed));
    assert!(
        matches!(r, Err(Error::LimitExceeded { what: "result", .. })),
        "{r:?}"
    );
    assert!(largest <= 1 << 20, "allocated {largest} bytes at once");
}

#[test]
fn huge_integers_are_unsupported() {
    expect_unsupported(b"\x80\x02\x8b\x00\x00\x00\x40.", "integer");
    // 9 bytes that are not just sign extension.
    expect_unsupported(
        b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
        "64 bits",
    );
    // 9 bytes that are: -1.
    assert_eq!(
        load(b"\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff.").unwrap(),
        Value::Int(-1)
    );
}

#[test]
fn memo_errors() {
    expect_invalid(b"\x80\x02h\x05.", "memo has no entry 5");
    expect_invalid(b"\x80\x02j\x00\x00\x01\x00.", "memo has no entry 65536");
    expect_invalid(b"\x80\x02g12\n.", "memo has no entry 12");
    expect_invalid(b"\x80\x02q\x00.", "stack underflow");
    expect_invalid(b"\x80\x02gxyz\n.", "unexpected byte");
}

#[test]
fn stack_errors() {
    expect_invalid(b"\x80\x02\x86.", "stack underflow");
    expect_invalid(b"\x80\x02.", "stack underflow");
    expect_invalid(b"\x80\x02K\x01t.", "no MARK");
    expect_invalid(b"\x80\x02(K\x01\x86.", "stack underflow");
    expect_invalid(b"\x80\x02]a.", "stack underflow");
    expect_invalid(b"\x80\x02(K\x01d.", "odd number");
    expect_unsupported(b"\x80\x02K\x01K\x02a.", "append to a int");
    expect_invalid(b"\x80\x02\xff.", "unknown opcode 0xff");
}

#[test]
fn nesting_depth_is_bounded() {
    let mut ok = b"\x80\x02)".to_vec();
    ok.extend(std::iter::repeat_n(0x85u8, 150));
    ok.push(b'.');
    assert!(load(&ok).is_ok());
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 100_000));
    deep.push(b'.');
    expect_invalid(&deep, "nested deeper");
    // Through list appends as well.
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.extend(std::iter::repeat_n(b'a', 99_999));
    deep.push(b'.');
    expect_invalid(&deep, "nested deeper");
}

#[test]
fn recursive_structures_are_unsupported() {
    // l = []; l.append(l)
    expect_unsupported(b"\x80\x02]q\x00h\x00a.", "recursive");
    // d = {}; d['x'] = [d]
    expect_unsupported(b"\x80\x02}q\x00X\x01\x00\x00\x00x]h\x00as.", "recursive");
}

#[test]
fn unknown_protocol_and_unsupported_opcodes() {
    expect_unsupported(b"\x80\x06N.", "protocol 6");
    expect_unsupported(b"\x80\x05\x97.", "out-of-band");
    expect_unsupported(b"\x80\x02(\x8f.", "sets");
    expect_unsupported(b"\x80\x02Q.", "persistent");
    expect_unsupported(b"S'abc'\np0\n.", "quoted strings");
}

#[test]
fn array_without_build_is_invalid() {
    let p = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R.";
    match load(p) {
        Err(Error::InvalidData { message, .. }) => assert!(message.contains("BUILD")),
        other => panic!("{other:?}"),
    }
}

// --- Fuzz-style robustness: never a panic, and truncations are always errors.

fn small_pickles() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for p in ["2", "5"] {
        let b = fixture_bytes(&format!("arrays_protocol{p}.pkl"));
        v.push((format!("protocol {p}"), b.clone()));
        v.push((format!("protocol {p} gz"), gzip(&b)));
    }
    v.push((
        "protocol 4 gz".into(),
        fixture_bytes("arrays_protocol4.pkl.gz"),
    ));
    v
}

#[test]
fn every_truncation_is_an_error() {
    for (name, bytes) in small_pickles() {
        assert!(load(&bytes).is_ok(), "{name} loads whole");
        for cut in 0..bytes.len() {
            let r = load(&bytes[..cut]);
            assert!(r.is_err(), "{name} cut at {cut} loaded");
        }
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn seeded_byte_flips_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut errors = 0;
    let mut runs = 0;
    for (_, bytes) in small_pickles() {
        for _ in 0..600 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(b.len());
                b[i] = match rng.below(3) {
                    0 => b[i] ^ (1 << rng.below(8)),
                    1 => rng.next() as u8,
                    _ => [0x00, 0xff, 0x7f, 0x80][rng.below(4)],
                };
            }
            runs += 1;
            if load(&b).is_err() {
                errors += 1;
            }
        }
    }
    // Most flips break something; a few land in array data and still load.
    assert!(errors > runs / 4, "{errors} errors in {runs} runs");
}

// --- Limits (issue 11)

fn limit_error(r: convinit::Result<Value>) -> &'static str {
    match r {
        Err(Error::LimitExceeded { setting, .. }) => setting,
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn input_limit_is_the_decompressed_size_exactly() {
    let data: Vec<u8> = (0..100u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
    let p = classic("f4", "<", &[100], false, &data);
    let gz = gzip(&p);
    assert!(gz.len() < p.len());
    let n = p.len() as u64;
    for input in [&p[..], &gz[..]] {
        let at = Limits::default().with_max_input_bytes(n);
        assert!(pickle::from_reader_with(input, at).is_ok());
        let below = Limits::default().with_max_input_bytes(n - 1);
        assert_eq!(
            limit_error(pickle::from_reader_with(input, below)),
            "Limits::with_max_input_bytes"
        );
    }
    // The same through a path.
    let path = std::env::temp_dir().join(format!("convinit-limit-{}.pkl.gz", std::process::id()));
    std::fs::write(&path, &gz).unwrap();
    let below = Limits::default().with_max_input_bytes(n - 1);
    let r = pickle::load_with(&path, below);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(limit_error(r), "Limits::with_max_input_bytes");
}

/// Checks that `p` loads with a result limit of exactly `need` bytes and not `need - 1`.
fn result_needs(p: &[u8], need: u64) {
    let at = Limits::default().with_max_result_bytes(need);
    if let Err(e) = pickle::from_reader_with(p, at) {
        panic!("at {need}: {e}");
    }
    let below = Limits::default().with_max_result_bytes(need - 1);
    assert_eq!(
        limit_error(pickle::from_reader_with(p, below)),
        "Limits::with_max_result_bytes"
    );
}

const VALUE: u64 = std::mem::size_of::<Value>() as u64;

#[test]
fn result_limit_counts_data_shapes_strings_and_values() {
    // An f4 array (2, 3): 24 bytes of data, 16 per dimension, one value.
    result_needs(
        &classic("f4", "<", &[2, 3], false, &[0; 24]),
        24 + 32 + VALUE,
    );
    // The typed path (a payload of 64 KiB or more): the same accounting.
    result_needs(
        &classic("i8", "<", &[8192, 2], false, &[0; 1 << 17]),
        (1 << 17) + 32 + VALUE,
    );
    // ('abc', b'xy', 'é' as a Python 2 latin-1 str): the tuple and its three values,
    // 3 + 2 + 2 bytes of text and bytes (U+00E9 is two bytes of UTF-8).
    result_needs(
        b"\x80\x03X\x03\x00\x00\x00abcC\x02xyU\x01\xe9\x87.",
        4 * VALUE + 7,
    );
    // A shared str is charged once per copy: (s, s, s) with s of 100 bytes.
    let mut p = b"\x80\x02X\x64\x00\x00\x00".to_vec();
    p.extend(std::iter::repeat_n(b'z', 100));
    p.extend_from_slice(b"q\x00h\x00h\x00\x87.");
    result_needs(&p, 4 * VALUE + 300);
    // A shared array too, data and shape: (a, a) with a of shape (1, 1, 1, 1, 1) f4.
    let mut p = classic("f4", "<", &[1; 5], false, &[0; 4]);
    p.pop();
    p.extend_from_slice(b"2\x86.");
    result_needs(&p, 3 * VALUE + 2 * (4 + 5 * 16));
}

#[test]
fn arrays_have_at_most_64_dimensions() {
    let v = load(&classic("u1", "|", &[1; 64], false, &[7])).unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.shape().len(), pickle::MAX_NDIM);
    assert_eq!(a.as_u8().unwrap().iter().copied().collect::<Vec<_>>(), [7]);
    let at = expect_invalid(&classic("u1", "|", &[1; 65], false, &[7]), "65 dimensions");
    assert!(at > 0);
    // The same through _frombuffer (numpy 2's protocol 5 path).
    let mut p = b"\x80\x05\x8c\x13numpy._core.numeric\x8c\x0b_frombuffer\x93(C\x01\x07\x8c\x05numpy\x8c\x05dtype\x93\x8c\x02u1\x89\x88\x87R(K\x03\x8c\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb(".to_vec();
    p.extend(std::iter::repeat_n(b"K\x01", 65).flatten());
    p.extend_from_slice(b"t\x8c\x01CtR.");
    let m = load(&p).unwrap_err().to_string();
    assert!(m.contains("numpy allows at most 64"), "{m}");
}
