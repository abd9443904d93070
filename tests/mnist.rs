//! MNIST loading (embedded sample, the full pickle and the IDX files when
//! `../shared/data` is there), the IDX reader's validation, the statistics helpers,
//! and the `load_mnist` example's output.

use std::io::Write;
use std::path::{Path, PathBuf};

use convinit::Error;
use convinit::data::{Mnist, NdArray, idx};
use convinit::limits::Limits;
use convinit::stats::{normalize, stats, to_images};
use ndarray::{Array2, arr1, arr2};

#[allow(dead_code)]
#[path = "../examples/load_mnist.rs"]
mod example;

const HEAD: [i64; 10] = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4];

fn shared(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        println!("skipping: {} not found", p.display());
        None
    }
}

fn check_range(x: &Array2<f32>) {
    let max = x.iter().copied().fold(f32::MIN, f32::max);
    let min = x.iter().copied().fold(f32::MAX, f32::min);
    assert_eq!(min, 0.0);
    assert_eq!(max, 0.99609375, "pixel / 256 of 255");
    // Every value is a multiple of 1/256.
    assert!(x.iter().all(|&v| (v * 256.0).fract() == 0.0));
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
