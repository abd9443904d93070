//! MNIST loading (embedded sample, the full pickle and the IDX files when
//! `../shared/data` is there), the IDX reader's validation, the statistics helpers,
//! and the `load_mnist` example's output.

use std::io::Write;
use std::path::PathBuf;

use convinit::Error;
use convinit::data::{Mnist, NdArray, idx};
use convinit::limits::Limits;
use convinit::stats::{normalize, stats, to_images};
use ndarray::{Array2, arr1, arr2};

#[allow(dead_code)]
#[path = "../examples/load_mnist.rs"]
mod example;

#[path = "common/shared.rs"]
mod shared;

const HEAD: [i64; 10] = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4];

/// `../shared/data/<rel>`, or a visible skip (a failure under `CI=true`).
fn shared(rel: &str) -> Option<PathBuf> {
    shared::shared_data(rel)
}

fn check_range(x: &Array2<f32>) {
    let max = x.iter().copied().fold(f32::MIN, f32::max);
    let min = x.iter().copied().fold(f32::MAX, f32::min);
    assert_eq!(min, 0.0);
    assert_eq!(max, 0.99609375, "pixel / 256 of 255");
    // Every value is a multiple of 1/256.
    assert!(x.iter().all(|&v| (v * 256.0).fract() == 0.0));
}

/// Without the feature the function still exists (code falling back to it compiles),
/// and says what is missing.
#[cfg(not(feature = "embedded-sample"))]
#[test]
fn embedded_without_the_feature_names_it() {
    let e = Mnist::embedded().unwrap_err();
    assert!(matches!(e, convinit::Error::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("embedded-sample"), "{e}");
}

#[cfg(feature = "embedded-sample")]
#[test]
fn embedded_sample() {
    let m = Mnist::embedded().unwrap();
    for (x, y) in [&m.train, &m.valid, &m.test] {
        assert_eq!(x.dim(), (2000, 784));
        assert_eq!(y.len(), 2000);
        assert!(x.is_standard_layout());
        assert!(y.iter().all(|&l| (0..10).contains(&l)));
        check_range(x);
    }
    assert_eq!(m.train.1.slice(ndarray::s![..10]).to_vec(), HEAD);
    let (mean, std) = stats(&m.train.0);
    assert!((mean - 0.1297).abs() < 1e-3, "{mean}");
    assert!((std - 0.3065).abs() < 1e-3, "{std}");
}

#[cfg(feature = "embedded-sample")]
#[test]
fn example_summary_on_embedded_sample() {
    let m = example::load(None).unwrap();
    let line = example::summary(&m);
    let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
    assert_eq!(v["train"], serde_json::json!([2000, 784]));
    assert_eq!(v["valid"], serde_json::json!([2000, 784]));
    assert_eq!(v["test"], serde_json::json!([2000, 784]));
    assert_eq!(v["y_train_head"], serde_json::json!(HEAD));
    let mean = v["train_mean"].as_f64().unwrap();
    assert_eq!(mean, stats(&m.train.0).0);
    assert!(example::load(Some("/no/such/mnist.pkl.gz")).is_err());
}

#[test]
fn full_pickle_figures() {
    let Some(path) = shared("mnist.pkl.gz") else {
        return;
    };
    let m = Mnist::load(&path).unwrap();
    assert_eq!(m.train.0.dim(), (50_000, 784));
    assert_eq!(m.valid.0.dim(), (10_000, 784));
    assert_eq!(m.test.0.dim(), (10_000, 784));
    assert_eq!(
        (m.train.1.len(), m.valid.1.len(), m.test.1.len()),
        (50_000, 10_000, 10_000)
    );
    assert_eq!(m.train.1.slice(ndarray::s![..10]).to_vec(), HEAD);
    check_range(&m.train.0);

    let (mean, std) = stats(&m.train.0);
    assert!((mean - 0.130449722).abs() < 5e-10, "{mean}");
    assert!((std - 0.307289837).abs() < 5e-10, "{std}");
    assert_eq!(format!("{:.7}", mean as f32), "0.1304497");
    assert_eq!(format!("{:.7}", std as f32), "0.3072898");

    let valid = normalize(&m.valid.0, mean, std);
    let (vm, vs) = stats(&valid);
    assert_eq!(format!("{vm:.5}"), "-0.00585");
    assert_eq!(format!("{vs:.5}"), "0.99243");

    let imgs = to_images(&m.train.0).unwrap();
    assert_eq!(imgs.shape(), &[50_000, 1, 28, 28]);
    assert_eq!(imgs[[7, 0, 14, 9]], m.train.0[[7, 14 * 28 + 9]]);
}

#[test]
fn idx_directory_equals_the_pickle() {
    let (Some(pkl), Some(dir)) = (shared("mnist.pkl.gz"), shared("mnist-idx")) else {
        return;
    };
    let a = Mnist::load(&dir).unwrap();
    let b = Mnist::load(&pkl).unwrap();
    assert_eq!(a.train.0.dim(), (50_000, 784));
    assert!(a == b, "IDX and pickle differ");
}

#[cfg(feature = "embedded-sample")]
#[test]
fn idx_files_match_the_embedded_sample() {
    // Cheaper than the full comparison: the first 2 000 images of each IDX split.
    let Some(dir) = shared("mnist-idx") else {
        return;
    };
    let m = Mnist::embedded().unwrap();
    let test = idx::load(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    assert_eq!(test.shape(), &[10_000, 28, 28]);
    let test = test.into_u8().unwrap();
    for i in [0, 1, 1999] {
        for p in [0, 300, 783] {
            let px = test[[i, p / 28, p % 28]];
            assert_eq!(m.test.0[[i, p]], f32::from(px) / 256.0);
        }
    }
    let labels = idx::load(dir.join("train-labels-idx1-ubyte.gz")).unwrap();
    let labels = labels.to_i64().unwrap();
    assert_eq!(labels.len(), 60_000);
    assert_eq!(
        labels.as_slice().unwrap()[..2000],
        m.train.1.as_slice().unwrap()[..]
    );
}

// --- IDX reader

fn idx_bytes(code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, code, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_types_and_big_endian() {
    let a = idx::from_reader(&idx_bytes(0x08, &[2, 2], &[1, 2, 3, 255])[..]).unwrap();
    assert_eq!(a.as_u8().unwrap().as_slice().unwrap(), &[1, 2, 3, 255]);
    let a = idx::from_reader(&idx_bytes(0x09, &[2], &[1, 255])[..]).unwrap();
    assert_eq!(a.as_i8().unwrap().as_slice().unwrap(), &[1, -1]);
    let a = idx::from_reader(&idx_bytes(0x0B, &[2], &[0, 1, 0xff, 0xfe])[..]).unwrap();
    assert_eq!(a.as_i16().unwrap().as_slice().unwrap(), &[1, -2]);
    let a = idx::from_reader(&idx_bytes(0x0C, &[1], &[0, 1, 0, 0])[..]).unwrap();
    assert_eq!(a.as_i32().unwrap().as_slice().unwrap(), &[65536]);
    let a = idx::from_reader(&idx_bytes(0x0D, &[1], &1.5f32.to_be_bytes())[..]).unwrap();
    assert_eq!(a.as_f32().unwrap().as_slice().unwrap(), &[1.5]);
    let bytes = idx_bytes(0x0E, &[1, 1], &(-2.25f64).to_be_bytes());
    let a = idx::from_reader(&gzip(&bytes)[..]).unwrap();
    assert_eq!(a.shape(), &[1, 1]);
    assert_eq!(a.as_f64().unwrap()[[0, 0]], -2.25);
}

fn expect_idx_invalid(bytes: &[u8], offset: u64, needle: &str) {
    match idx::from_reader(bytes) {
        Err(Error::InvalidData {
            format: "idx",
            offset: o,
            message,
        }) => {
            assert_eq!(o, offset, "{message}");
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        other => panic!("expected idx InvalidData ({needle}), got {other:?}"),
    }
}

#[test]
fn idx_validation() {
    expect_idx_invalid(&[1, 0, 8, 1, 0, 0, 0, 0], 0, "not an IDX file");
    expect_idx_invalid(&idx_bytes(0x07, &[1], &[0]), 2, "type code 0x07");
    expect_idx_invalid(&idx_bytes(0x08, &[], &[]), 3, "zero dimensions");
    expect_idx_invalid(&idx_bytes(0x08, &[2], &[1, 2, 3]), 10, "trailing bytes");
    expect_idx_invalid(
        &idx_bytes(0x0E, &[u32::MAX, u32::MAX, u32::MAX], &[]),
        4,
        "too large",
    );
    // Lying dimensions: 4 G elements claimed, 3 bytes present. Without limits it fails
    // fast at the end of input; with the defaults the claim is refused from the header.
    let lying = idx_bytes(0x08, &[65536, 65535], &[1, 2, 3]);
    for bytes in [
        idx_bytes(0x08, &[3], &[1, 2]),
        lying.clone(),
        vec![0, 0, 8],
        idx_bytes(0x08, &[2, 2], &[])[..9].to_vec(),
    ] {
        match idx::from_reader_with(&bytes[..], Limits::unlimited()) {
            Err(Error::Truncated { format: "idx", .. }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
    }
    match idx::from_reader(&lying[..]) {
        Err(Error::LimitExceeded {
            format: "idx",
            what: "result",
            ..
        }) => {}
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn idx_dir_errors() {
    let dir = std::env::temp_dir().join(format!("convinit-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Missing files: an Io error naming what was looked for.
    match Mnist::load(&dir) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("train-images-idx3-ubyte")),
        other => panic!("{other:?}"),
    }
    // Too few training images to split off 10 000 for valid.
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        idx_bytes(0x08, &[2, 2, 2], &[0; 8]),
    )
    .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte.gz"),
        gzip(&idx_bytes(0x08, &[2], &[3, 4])),
    )
    .unwrap();
    match Mnist::load(&dir) {
        Err(Error::InvalidData { message, .. }) => assert!(message.contains("10000")),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mnist_structure_errors() {
    use convinit::data::Value;
    let x = |n: usize| Value::Array(NdArray::F32(ndarray::ArrayD::zeros(vec![n, 4])));
    let y = |n: usize| Value::Array(NdArray::U8(ndarray::ArrayD::zeros(vec![n])));
    let split = |a, b| Value::Tuple(vec![a, b]);
    let good = Value::Tuple(vec![
        split(x(2), y(2)),
        split(x(1), y(1)),
        split(x(3), y(3)),
    ]);
    let m = Mnist::from_value(good).unwrap();
    assert_eq!(m.test.1.len(), 3);
    for bad in [
        Value::Tuple(vec![split(x(2), y(2)), split(x(1), y(1))]),
        Value::Tuple(vec![
            split(x(2), y(3)),
            split(x(1), y(1)),
            split(x(3), y(3)),
        ]),
        Value::Tuple(vec![
            split(y(2), y(2)),
            split(x(1), y(1)),
            split(x(3), y(3)),
        ]),
        Value::Tuple(vec![
            split(x(2), x(2)),
            split(x(1), y(1)),
            split(x(3), y(3)),
        ]),
        Value::Int(3),
    ] {
        assert!(matches!(
            Mnist::from_value(bad),
            Err(Error::InvalidData {
                format: "mnist",
                ..
            })
        ));
    }
}

// --- Statistics helpers

#[test]
fn stats_follow_torch_conventions() {
    let (m, s) = stats(&arr1(&[1.0f32, 2.0, 3.0, 4.0]));
    assert_eq!(m, 2.5);
    assert!(
        (s - (5.0f64 / 3.0).sqrt()).abs() < 1e-15,
        "sample std, N - 1"
    );
    let (m, s) = stats(&arr1(&[3.0f32]));
    assert_eq!(m, 3.0);
    assert!(s.is_nan());
    let (m, s) = stats(&ndarray::Array1::<f32>::zeros(0));
    assert!(m.is_nan() && s.is_nan());
    // Any dimension, any layout.
    let x = arr2(&[[1.0f32, 2.0], [3.0, 4.0]]);
    assert_eq!(stats(&x.t()), stats(&arr1(&[1.0f32, 2.0, 3.0, 4.0])));
    // f64 accumulation: a sum f32 would get wrong.
    let big = ndarray::Array1::from_elem(20_000_000, 0.1f32);
    let (m, s) = stats(&big);
    assert!((m - f64::from(0.1f32)).abs() < 1e-12, "{m}");
    assert!(s < 1e-9);
}

#[test]
fn normalize_and_to_images() {
    let x = arr2(&[[0.0f32, 2.0, 4.0, 6.0]]);
    let (m, s) = stats(&x);
    let z = normalize(&x, m, s);
    let (zm, zs) = stats(&z);
    assert!(zm.abs() < 1e-7 && (zs - 1.0).abs() < 1e-6);
    let imgs = to_images(&x).unwrap();
    assert_eq!(imgs.shape(), &[1, 1, 2, 2]);
    assert_eq!(imgs[[0, 0, 1, 0]], 4.0);
    // From a non-contiguous view too.
    let wide = Array2::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f32);
    let imgs = to_images(&wide.t()).unwrap();
    assert_eq!(imgs[[1, 0, 0, 1]], 4.0);
    for w in [0, 3, 783, 785] {
        assert!(matches!(
            to_images(&Array2::<f32>::zeros((2, w))),
            Err(Error::Shape {
                op: "to_images",
                ..
            })
        ));
    }
}

// --- Checks and limits (issue 11)

fn mnist_message(r: convinit::Result<Mnist>) -> String {
    match r {
        Err(Error::InvalidData {
            format: "mnist",
            message,
            ..
        }) => message,
        other => panic!("expected an mnist InvalidData, got {other:?}"),
    }
}

#[test]
fn mnist_labels_must_be_digits() {
    use convinit::data::Value;
    let x = |n: usize| Value::Array(NdArray::F32(ndarray::ArrayD::zeros(vec![n, 4])));
    let y = |a: NdArray| Value::Array(a);
    let split = |a, b| Value::Tuple(vec![a, b]);
    let i64s =
        |v: Vec<i64>| NdArray::I64(ndarray::ArrayD::from_shape_vec(vec![v.len()], v).unwrap());
    let good = || split(x(2), y(i64s(vec![0, 9])));
    let cases = [
        (
            Value::Tuple(vec![good(), split(x(2), y(i64s(vec![3, 10]))), good()]),
            "valid: label 10 at index 1",
        ),
        (
            Value::Tuple(vec![
                split(
                    x(1),
                    y(NdArray::I8(ndarray::ArrayD::from_elem(vec![1], -1))),
                ),
                good(),
                good(),
            ]),
            "train: label -1 at index 0",
        ),
        (
            Value::Tuple(vec![
                good(),
                good(),
                split(
                    x(3),
                    y(NdArray::U64(
                        ndarray::ArrayD::from_shape_vec(vec![3], vec![1, 2, u64::MAX]).unwrap(),
                    )),
                ),
            ]),
            "test: label 18446744073709551615 at index 2",
        ),
    ];
    for (v, needle) in cases {
        let m = mnist_message(Mnist::from_value(v));
        assert!(m.contains(needle), "{m:?} lacks {needle:?}");
    }
    // Digits of every integer type load, as i64.
    let m = Mnist::from_value(Value::Tuple(vec![
        good(),
        split(x(2), y(NdArray::U8(ndarray::ArrayD::from_elem(vec![2], 9)))),
        good(),
    ]))
    .unwrap();
    assert_eq!(m.valid.1.to_vec(), [9, 9]);
}

#[test]
fn mnist_image_sizes_must_agree_across_splits() {
    use convinit::data::Value;
    let s = |n: usize, p: usize| {
        Value::Tuple(vec![
            Value::Array(NdArray::F32(ndarray::ArrayD::zeros(vec![n, p]))),
            Value::Array(NdArray::U8(ndarray::ArrayD::zeros(vec![n]))),
        ])
    };
    let m = mnist_message(Mnist::from_value(Value::Tuple(vec![
        s(2, 4),
        s(1, 5),
        s(1, 4),
    ])));
    assert!(
        m.contains("valid: images have 5 pixels (columns) but train's have 4"),
        "{m}"
    );
    let m = mnist_message(Mnist::from_value(Value::Tuple(vec![
        s(2, 4),
        s(1, 4),
        s(1, 3),
    ])));
    assert!(m.contains("test: images have 3 pixels"), "{m}");
    assert!(Mnist::from_value(Value::Tuple(vec![s(2, 4), s(1, 4), s(1, 4)])).is_ok());
}

/// A small IDX directory: `n` training and `m` test images of `side` x `side` pixels,
/// labels `i % 10`; removed on drop.
struct IdxDir(PathBuf);

impl IdxDir {
    fn new(tag: &str, n: u32, m: u32, side: u32) -> IdxDir {
        let dir = std::env::temp_dir().join(format!("convinit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = IdxDir(dir);
        d.write("train", n, side, 0);
        d.write("t10k", m, side, 0);
        d
    }

    fn write(&self, prefix: &str, n: u32, side: u32, bad_label_at: u32) {
        let px = (n * side * side) as usize;
        let pixels: Vec<u8> = (0..px).map(|i| (i % 251) as u8).collect();
        let labels: Vec<u8> = (0..n)
            .map(|i| {
                if bad_label_at > 0 && i == bad_label_at {
                    12
                } else {
                    (i % 10) as u8
                }
            })
            .collect();
        std::fs::write(
            self.0.join(format!("{prefix}-images-idx3-ubyte.gz")),
            gzip(&idx_bytes(0x08, &[n, side, side], &pixels)),
        )
        .unwrap();
        std::fs::write(
            self.0.join(format!("{prefix}-labels-idx1-ubyte")),
            idx_bytes(0x08, &[n], &labels),
        )
        .unwrap();
    }
}

impl Drop for IdxDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn idx_dir_limits_are_exact() {
    let (n, m) = (10_002u64, 3u64);
    let d = IdxDir::new("idx-limits", n as u32, m as u32, 2);
    let loaded = Mnist::load(&d.0).unwrap();
    assert_eq!(loaded.train.0.dim(), (2, 4));
    assert_eq!(loaded.valid.1.len(), 10_000);
    assert_eq!(loaded.test.1.to_vec(), [0, 1, 2]);
    // The result: 4 bytes per pixel and 8 per label, every split.
    let result = (n + m) * (4 * 4 + 8);
    let ok = Limits::default().with_max_result_bytes(result);
    assert_eq!(Mnist::from_idx_dir_with(&d.0, ok).unwrap(), loaded);
    let below = Limits::default().with_max_result_bytes(result - 1);
    match Mnist::load_with(&d.0, below) {
        Err(Error::LimitExceeded {
            format: "mnist",
            setting: "Limits::with_max_result_bytes",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The input: each file's decompressed size; the largest is the training images.
    let largest = 16 + n * 4;
    assert!(Mnist::load_with(&d.0, Limits::default().with_max_input_bytes(largest)).is_ok());
    match Mnist::load_with(&d.0, Limits::default().with_max_input_bytes(largest - 1)) {
        Err(Error::LimitExceeded {
            format: "idx",
            setting: "Limits::with_max_input_bytes",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn idx_dir_labels_and_sizes_are_checked() {
    let d = IdxDir::new("idx-checks", 10_002, 3, 2);
    // Train is the first 2 images, valid the last 10 000: label 12 at training index 3
    // is the second image of valid.
    d.write("train", 10_002, 2, 3);
    let m = mnist_message(Mnist::load(&d.0));
    assert!(m.contains("valid: label 12 at index 1"), "{m}");
    assert!(m.contains("train-labels-idx1-ubyte"), "{m}");
    d.write("train", 10_002, 2, 1);
    let m = mnist_message(Mnist::load(&d.0));
    assert!(m.contains("train: label 12 at index 1"), "{m}");
    d.write("train", 10_002, 2, 0);
    d.write("t10k", 3, 2, 2);
    let m = mnist_message(Mnist::load(&d.0));
    assert!(m.contains("test: label 12 at index 2"), "{m}");
    // Test images of 3 x 3 against train's 2 x 2, refused from the header.
    d.write("t10k", 3, 3, 0);
    let m = mnist_message(Mnist::load(&d.0));
    assert!(
        m.contains("test: images are 3 x 3 = 9 pixels, but train's have 4"),
        "{m}"
    );
    // Labels' count against the images', from the labels' header.
    d.write("t10k", 3, 2, 0);
    std::fs::write(
        d.0.join("t10k-labels-idx1-ubyte"),
        idx_bytes(0x08, &[4], &[1, 2, 3, 4]),
    )
    .unwrap();
    let m = mnist_message(Mnist::load(&d.0));
    assert!(m.contains("[4] labels for 3 images"), "{m}");
}

/// The pickle's result accounting on real data: the embedded sample needs exactly its
/// arrays' data, 16 bytes per dimension, and one `Value` per node (the outer tuple, the
/// three split tuples, the six arrays, and the root).
#[cfg(feature = "embedded-sample")]
#[test]
fn embedded_sample_result_limit_is_exact() {
    use convinit::data::mnist::EMBEDDED_SAMPLE;
    let m = Mnist::embedded().unwrap();
    let value = std::mem::size_of::<convinit::data::Value>() as u64;
    let arrays: u64 = [&m.train, &m.valid, &m.test]
        .iter()
        .map(|(x, y)| (x.len() * 4 + 2 * 16 + y.len() * 8 + 16) as u64)
        .sum();
    let need = arrays + 10 * value;
    let at = Limits::default().with_max_result_bytes(need);
    assert_eq!(
        Mnist::from_pickle_reader_with(EMBEDDED_SAMPLE, at).unwrap(),
        m
    );
    let below = Limits::default().with_max_result_bytes(need - 1);
    match Mnist::from_pickle_reader_with(EMBEDDED_SAMPLE, below) {
        Err(Error::LimitExceeded {
            setting: "Limits::with_max_result_bytes",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}
