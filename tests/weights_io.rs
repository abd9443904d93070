//! Weights I/O against files PyTorch wrote (tools/weights_io_torch.py) and the format's
//! spec.

use std::collections::HashMap;
use std::path::PathBuf;

use convinit::Error;
use convinit::io::{
    LoadOptions, load_safetensors, load_safetensors_bytes, save_safetensors, to_safetensors_bytes,
};
use convinit::nn::{AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Relu, Sequential};
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use rand::rngs::StdRng;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

const SEED_NET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/seed_net_8.safetensors"
);
const STATE_DICT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/weights_io/seed_net_8_state_dict.safetensors"
);

/// The notebook's conv net (the architecture of the seed_net fixtures), randomly
/// initialised from `seed`; `last_out` output channels in the last conv.
fn seed_net(seed: u64, last_out: usize) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conv = |c, o, k, p| {
        let cfg = Conv2dConfig::new(c, o, (k, k))
            .with_stride((2, 2))
            .with_padding((p, p));
        Conv2d::new(cfg, &mut rng).unwrap()
    };
    Sequential::new()
        .with(conv(1, 8, 5, 2))
        .with(Relu::new())
        .with(conv(8, 16, 3, 1))
        .with(Relu::new())
        .with(conv(16, 32, 3, 1))
        .with(Relu::new())
        .with(conv(32, last_out, 3, 1))
        .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
        .with(Flatten::new(0, -1))
}

fn tensors(bytes: &[u8]) -> HashMap<String, ArrayD<f32>> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, ArrayD::from_shape_vec(IxDyn(t.shape()), v).unwrap())
        })
        .collect()
}

fn params(net: &Sequential) -> Vec<(String, ArrayD<f32>)> {
    net.named_parameters()
        .into_iter()
        .map(|p| (p.name, p.value.to_owned()))
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("convinit-weights-io-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn loads_the_seed_net_pytorch_wrote_and_reproduces_its_output() {
    let bytes = std::fs::read(SEED_NET).unwrap();
    let file = tensors(&bytes);
    let mut net = seed_net(0, 1);
    let report = load_safetensors(&mut net, SEED_NET, LoadOptions::lenient()).unwrap();
    assert_eq!(
        report.loaded,
        [
            "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias", "6.weight", "6.bias"
        ]
    );
    assert!(report.ignored.contains(&"grad.0.weight".to_string()));
    assert!(report.ignored.contains(&"x".to_string()));
    assert_eq!(report.ignored.len(), 8 + 4, "{:?}", report.ignored);
    for (name, value) in params(&net) {
        assert_eq!(value, file[&name], "{name}");
    }
    let out = net.forward(file["x"].view()).unwrap();
    let worst = (&out - &file["out"])
        .iter()
        .fold(0.0f32, |m, d| m.max(d.abs()));
    assert!(worst < 1e-5, "max |out - PyTorch out| = {worst}");
}

#[test]
fn strict_load_names_unexpected_keys_and_changes_nothing() {
    let mut net = seed_net(0, 1);
    let before = params(&net);
    let e = load_safetensors(&mut net, SEED_NET, LoadOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::InvalidData { .. }), "{msg}");
    for key in [
        "\"grad.6.bias\"",
        "\"loss\"",
        "\"out\"",
        "\"target\"",
        "\"x\"",
    ] {
        assert!(msg.contains(key), "{key} not named in: {msg}");
    }
    assert_eq!(params(&net), before);
}

#[test]
fn missing_keys_and_shape_mismatches_name_the_key() {
    // The file has 4 conv layers; a model with a fifth misses its parameters.
    let bytes = std::fs::read(STATE_DICT).unwrap();
    let mut bigger = seed_net(0, 1).with(
        Conv2d::new(
            Conv2dConfig::new(1, 1, (1, 1)),
            &mut StdRng::seed_from_u64(0),
        )
        .unwrap(),
    );
    let before = params(&bigger);
    let e = load_safetensors_bytes(&mut bigger, &bytes, LoadOptions::lenient()).unwrap_err();
    assert!(
        e.to_string()
            .contains("missing key(s) [\"9.weight\", \"9.bias\"]"),
        "{e}"
    );
    assert_eq!(params(&bigger), before);

    let mut wider = seed_net(0, 10);
    let before = params(&wider);
    let e = load_safetensors_bytes(&mut wider, &bytes, LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("key 6.weight: the file has shape [1, 32, 3, 3], the model's parameter is [10, 32, 3, 3]"),
        "{msg}"
    );
    // Nothing was written, not even the layers before the mismatch.
    assert_eq!(params(&wider), before);
}

#[test]
fn writes_the_bytes_pytorch_writes() {
    // tests/fixtures/weights_io/seed_net_8_state_dict.safetensors is safetensors.torch.save_file of a
    // torch.nn.Sequential's state_dict (tools/weights_io_torch.py make). Writing the same
    // weights must give the same bytes, so PyTorch reads ours as it reads its own.
    let reference = std::fs::read(STATE_DICT).unwrap();
    let mut net = seed_net(3, 1);
    load_safetensors_bytes(&mut net, &reference, LoadOptions::default()).unwrap();
    let ours = to_safetensors_bytes(&net).unwrap();
    assert_eq!(ours.len(), reference.len());
    assert!(ours == reference, "bytes differ from PyTorch's save_file");
}

#[test]
fn written_file_follows_the_spec() {
    let net = seed_net(5, 1);
    let bytes = to_safetensors_bytes(&net).unwrap();
    // 8-byte little-endian header length, then that much JSON, then the data.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let obj = header.as_object().unwrap();
    assert_eq!(obj["__metadata__"], serde_json::json!({"format": "pt"}));
    let mut ends = Vec::new();
    for (name, value) in params(&net) {
        let entry = &obj[&name];
        assert_eq!(entry["dtype"], "F32", "{name}");
        let shape: Vec<usize> = serde_json::from_value(entry["shape"].clone()).unwrap();
        assert_eq!(shape, value.shape(), "{name}");
        let [start, end]: [usize; 2] =
            serde_json::from_value(entry["data_offsets"].clone()).unwrap();
        assert_eq!(end - start, 4 * value.len(), "{name}");
        let stored: Vec<f32> = data[start..end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(stored, value.iter().copied().collect::<Vec<_>>(), "{name}");
        ends.push((start, end));
    }
    assert_eq!(obj.len(), 1 + ends.len());
    // The tensors tile the data section exactly.
    ends.sort();
    assert_eq!(ends[0].0, 0);
    assert!(ends.windows(2).all(|w| w[0].1 == w[1].0));
    assert_eq!(ends.last().unwrap().1, data.len());
}

#[test]
fn round_trip_through_a_file_leaves_no_temporary() {
    let dir = scratch("roundtrip");
    let path = dir.join("model.safetensors");
    let a = seed_net(1, 1);
    save_safetensors(&a, &path).unwrap();
    // Overwriting an existing file works too.
    save_safetensors(&a, &path).unwrap();
    let mut b = seed_net(2, 1);
    assert_ne!(params(&a), params(&b));
    load_safetensors(&mut b, &path, LoadOptions::default()).unwrap();
    assert_eq!(params(&a), params(&b));
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["model.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn io_errors_name_the_path_and_leave_nothing_behind() {
    let dir = scratch("missing");
    let path = dir.join("no-such-dir").join("model.safetensors");
    let e = save_safetensors(&seed_net(0, 1), &path).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("no-such-dir"), "{e}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let e = load_safetensors(&mut seed_net(0, 1), &path, LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_files_and_other_dtypes_are_errors() {
    let mut net = seed_net(0, 1);
    for bad in [
        &b""[..],
        b"\x10\0\0\0\0\0\0\0{not json",
        b"\xff\xff\xff\xff\xff\xff\xff\x7f",
    ] {
        let e = load_safetensors_bytes(&mut net, bad, LoadOptions::default()).unwrap_err();
        assert!(matches!(e, Error::InvalidData { .. }), "{e}");
    }
    // A file whose 0.bias is float64.
    let mut bytes = std::fs::read(STATE_DICT).unwrap();
    let st = tensors(&bytes);
    let f64s: Vec<u8> = st["0.bias"]
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    let owned: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = st
        .iter()
        .map(|(k, v)| {
            if k == "0.bias" {
                (k.clone(), v.shape().to_vec(), f64s.clone(), Dtype::F64)
            } else {
                let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (k.clone(), v.shape().to_vec(), b, Dtype::F32)
            }
        })
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = owned
        .iter()
        .map(|(k, s, b, d)| (k.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    bytes = safetensors::tensor::serialize(views, None).unwrap();
    let e = load_safetensors_bytes(&mut net, &bytes, LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(
        e.to_string().contains("0.bias") && e.to_string().contains("F64"),
        "{e}"
    );
}

/// `CONVINIT_WRITE_SEED_NET=/tmp/ours.safetensors cargo test --test weights_io` writes
/// the seed net with the fixture's weights through `save_safetensors`, for
/// `python tools/weights_io_torch.py check /tmp/ours.safetensors` (PyTorch's strict
/// `load_state_dict` and a forward pass against the fixture's output). Without the
/// variable this test only checks the save succeeds in a scratch directory.
#[test]
fn write_seed_net_for_pytorch() {
    let mut net = seed_net(0, 1);
    load_safetensors(&mut net, SEED_NET, LoadOptions::lenient()).unwrap();
    let keep = std::env::var_os("CONVINIT_WRITE_SEED_NET").map(PathBuf::from);
    let path = keep
        .clone()
        .unwrap_or_else(|| scratch("for-pytorch").join("ours.safetensors"));
    save_safetensors(&net, &path).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(STATE_DICT).unwrap()
    );
    if keep.is_none() {
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
