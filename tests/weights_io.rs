//! Weights I/O against files PyTorch wrote (tools/weights_io_torch.py) and the format's
//! spec.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use convinit::Error;
use convinit::io::{
    LoadOptions, load_safetensors, load_safetensors_bytes, save_safetensors, to_safetensors_bytes,
};
use convinit::limits::Limits;
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

/// The f32 tensors of a safetensors file (others, such as int64 counters, left out).
fn tensors(bytes: &[u8]) -> HashMap<String, ArrayD<f32>> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, t)| t.dtype() == Dtype::F32)
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
    assert!(matches!(e, Error::InvalidContent { .. }), "{msg}");
    assert!(!msg.contains("byte"), "no byte offset to claim: {msg}");
    // The first eight, sorted, then how many more.
    assert!(
        msg.contains(
            "unexpected key(s) [\"grad.0.bias\", \"grad.0.weight\", \"grad.2.bias\", \
             \"grad.2.weight\", \"grad.4.bias\", \"grad.4.weight\", \"grad.6.bias\", \
             \"grad.6.weight\"] and 4 more"
        ),
        "{msg}"
    );
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
    for (bad, offset) in [
        (&b""[..], 0),
        (b"\x10\0\0", 3),
        // The header length says 16 bytes, 9 follow.
        (b"\x10\0\0\0\0\0\0\0{not json", 17),
    ] {
        let e = load_safetensors_bytes(&mut net, bad, LoadOptions::default()).unwrap_err();
        assert!(
            matches!(e, Error::Truncated { offset: o, .. } if o == offset),
            "{e}"
        );
    }
    let e = load_safetensors_bytes(
        &mut net,
        b"\xff\xff\xff\xff\xff\xff\xff\x7f",
        LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidData { offset: 0, .. }), "{e}");
    assert!(e.to_string().contains("header length"), "{e}");
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
    // The offset is where the tensor's data starts in the file.
    let (n, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let at = 8 + n as u64 + meta.info("0.bias").unwrap().data_offsets.0 as u64;
    assert!(
        matches!(e, Error::Unsupported { offset, .. } if offset == at),
        "{e}, expected at byte {at}"
    );
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

#[path = "common/largest_alloc.rs"]
mod largest_alloc;
use largest_alloc::largest_allocation_during;

/// A one-parameter-pair model: `0.weight` (1, 1, 1, 1) and `0.bias` (1).
fn tiny(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new().with(Conv2d::new(Conv2dConfig::new(1, 1, (1, 1)), &mut rng).unwrap())
}

/// A safetensors file from its JSON header and data, as the format lays it out.
fn craft(header: &str, data: &[u8]) -> Vec<u8> {
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(data);
    f
}

/// The tiny model's header, with its data at `data_offsets` 0..8.
const TINY: &str = r#"{"0.bias":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"0.weight":{"dtype":"F32","shape":[1,1,1,1],"data_offsets":[0,4]}}"#;

/// Loads `bytes` through both entry points (from memory, and from a file) and checks
/// they fail the same way; returns the error.
fn both_fail(bytes: &[u8], options: LoadOptions) -> Error {
    let mut net = tiny(0);
    let before = params(&net);
    let e = load_safetensors_bytes(&mut net, bytes, options).unwrap_err();
    let dir = scratch(&format!("both-{}", bytes.len()));
    let path = dir.join("crafted.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let from_file = load_safetensors(&mut net, &path, options).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(e.to_string(), from_file.to_string());
    assert_eq!(params(&net), before, "a failed load changed the model");
    e
}

#[test]
fn crafted_headers_are_errors_at_the_offending_byte() {
    let data = [0u8; 8];
    let good = craft(TINY, &data);
    let mut net = tiny(0);
    load_safetensors_bytes(&mut net, &good, LoadOptions::default()).unwrap();
    let n = TINY.len() as u64;

    // The header length is more than the format allows: its 8 bytes are at fault.
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&100_000_001u64.to_le_bytes());
    let e = both_fail(&huge, LoadOptions::default());
    assert!(matches!(e, Error::InvalidData { offset: 0, .. }), "{e}");
    assert!(e.to_string().contains("100000001"), "{e}");

    // The file ends inside the header, inside the data.
    for (cut, context) in [
        (5, "header length"),
        (8 + 10, "JSON header"),
        (good.len() - 3, "tensor data"),
    ] {
        let e = both_fail(&good[..cut], LoadOptions::default());
        assert!(
            matches!(e, Error::Truncated { offset, .. } if offset == cut as u64),
            "{e}"
        );
        assert!(e.to_string().contains(context), "{e}");
    }

    // Bytes after the data the header declares.
    let mut long = good.clone();
    long.extend_from_slice(b"abc");
    let e = both_fail(&long, LoadOptions::default());
    assert!(
        matches!(e, Error::InvalidData { offset, .. } if offset == 8 + n + 8),
        "{e}"
    );
    assert!(e.to_string().contains("3 bytes follow"), "{e}");

    // Not UTF-8: the offset of the first bad byte.
    let bad_utf8 = TINY
        .replacen("0.bias", "0.b\u{7f}as", 1)
        .replace('\u{7f}', "\u{ff}");
    let mut bytes = craft(&bad_utf8, &data);
    let at = bytes.iter().position(|&b| b == 0xc3).unwrap();
    bytes[at] = 0xff; // a lone 0xff is never UTF-8
    let e = both_fail(&bytes, LoadOptions::default());
    assert!(
        matches!(e, Error::InvalidData { offset, .. } if offset == at as u64),
        "{e}, expected at byte {at}"
    );

    // Not JSON: the offset of the character the parser stopped at.
    let header = TINY.replacen(",\"0.weight\"", ",X\"0.weight\"", 1);
    let at = 8 + header.find('X').unwrap() as u64;
    let e = both_fail(&craft(&header, &data), LoadOptions::default());
    assert!(
        matches!(e, Error::InvalidData { offset, .. } if offset == at),
        "{e}, expected at byte {at}"
    );
    assert!(e.to_string().contains("JSON header"), "{e}");

    // JSON of the wrong shape: an array, not an object, at its first byte.
    let e = both_fail(&craft("[1, 2]", &[]), LoadOptions::default());
    assert!(matches!(e, Error::InvalidData { offset: 8, .. }), "{e}");

    // An entry of the tensor table that is wrong (an unknown dtype): the JSON parser
    // reads the whole table before it checks an entry, so there is no offset to give,
    // but the message says what is wrong.
    let header = TINY.replacen("\"F32\"", "\"F99\"", 1);
    let e = both_fail(&craft(&header, &data), LoadOptions::default());
    assert!(matches!(e, Error::InvalidContent { .. }), "{e}");
    assert!(e.to_string().contains("unknown variant `F99`"), "{e}");

    // A tensor table whose offsets do not tile the data: no single byte to point at.
    let header = TINY.replacen("[4,8]", "[5,9]", 1);
    let e = both_fail(&craft(&header, &[0; 9]), LoadOptions::default());
    assert!(matches!(e, Error::InvalidContent { .. }), "{e}");
    assert!(e.to_string().contains("0.bias"), "{e}");

    // A missing parameter: named, with no byte offset.
    let header = r#"{"0.weight":{"dtype":"F32","shape":[1,1,1,1],"data_offsets":[0,4]}}"#;
    let e = both_fail(&craft(header, &[0; 4]), LoadOptions::default());
    assert!(matches!(e, Error::InvalidContent { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "safetensors: missing key(s) [\"0.bias\"]: the model has them, the file does not"
    );
}

#[test]
fn the_declared_size_is_checked_against_the_limits() {
    let good = craft(TINY, &[0; 8]);
    let exact = Limits::default().with_max_input_bytes(good.len() as u64);
    let mut net = tiny(0);
    load_safetensors_bytes(&mut net, &good, LoadOptions::default().with_limits(exact)).unwrap();
    // One byte less: the whole file (header and data) is over.
    let e = both_fail(
        &good,
        LoadOptions::default().with_limits(exact.with_max_input_bytes(good.len() as u64 - 1)),
    );
    assert!(
        matches!(e, Error::LimitExceeded { limit, .. } if limit == good.len() as u64 - 1),
        "{e}"
    );
    assert!(
        e.to_string().contains("Limits::with_max_input_bytes"),
        "{e}"
    );
    // The header alone is over: refused before the header is read.
    let e = both_fail(
        &good,
        LoadOptions::lenient().with_limits(exact.with_max_input_bytes(20)),
    );
    assert!(matches!(e, Error::LimitExceeded { limit: 20, .. }), "{e}");
    // The result limit does not apply to a load (it writes into existing parameters).
    let options = LoadOptions::default().with_limits(Limits::default().with_max_result_bytes(0));
    load_safetensors_bytes(&mut net, &good, options).unwrap();
}

#[cfg(unix)]
#[test]
fn dev_zero_fails_fast_with_bounded_memory() {
    let mut net = tiny(0);
    let before = params(&net);
    // Eight zero bytes: an empty header, which is not JSON, at byte 8.
    let (e, largest) = largest_allocation_during(|| {
        load_safetensors(&mut net, "/dev/zero", LoadOptions::default()).unwrap_err()
    });
    assert!(matches!(e, Error::InvalidData { offset: 8, .. }), "{e}");
    assert!(e.to_string().contains("JSON header"), "{e}");
    assert!(largest < 64 << 10, "largest allocation {largest} bytes");
    assert_eq!(params(&net), before);
}

#[cfg(unix)]
#[test]
fn dev_urandom_is_refused_within_the_limits() {
    let mut net = tiny(0);
    let limits = Limits::default().with_max_input_bytes(1 << 20);
    let (e, largest) = largest_allocation_during(|| {
        load_safetensors(
            &mut net,
            "/dev/urandom",
            LoadOptions::default().with_limits(limits),
        )
        .unwrap_err()
    });
    // A random header length is almost surely over the format's maximum; if not, over
    // the limit; if not, the random header is not JSON.
    assert!(
        matches!(e, Error::InvalidData { .. } | Error::LimitExceeded { .. }),
        "{e}"
    );
    assert!(largest <= 2 << 20, "largest allocation {largest} bytes");
}

/// A FIFO in a scratch directory, and a thread that writes `bytes` into it, then (when
/// `endless`) zeros until the reader closes it.
#[cfg(unix)]
fn fifo(name: &str, bytes: Vec<u8>, endless: bool) -> (PathBuf, std::thread::JoinHandle<()>) {
    let path = scratch(name).join("stream.safetensors");
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
    let writer_path = path.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .unwrap();
        if f.write_all(&bytes).is_err() {
            return;
        }
        let zeros = [0u8; 4096];
        // Until the reader closes its end (EPIPE; SIGPIPE is ignored in Rust programs).
        while endless && f.write_all(&zeros).is_ok() {}
    });
    (path, writer)
}

#[cfg(unix)]
#[test]
fn a_stream_is_read_as_far_as_the_header_says() {
    let saved = tiny(1);
    let bytes = to_safetensors_bytes(&saved).unwrap();

    // A FIFO holding exactly a file loads like the file.
    let (path, writer) = fifo("fifo-exact", bytes.clone(), false);
    let mut net = tiny(2);
    load_safetensors(&mut net, &path, LoadOptions::default()).unwrap();
    writer.join().unwrap();
    assert_eq!(params(&net), params(&saved));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();

    // One that goes on after the data: an error at the first extra byte, not a read to
    // the end that never comes.
    let (path, writer) = fifo("fifo-endless", bytes.clone(), true);
    let mut net = tiny(2);
    let (e, largest) = largest_allocation_during(|| {
        load_safetensors(&mut net, &path, LoadOptions::default()).unwrap_err()
    });
    writer.join().unwrap();
    assert!(
        matches!(e, Error::InvalidData { offset, .. } if offset == bytes.len() as u64),
        "{e}"
    );
    assert!(largest < 64 << 10, "largest allocation {largest} bytes");
    assert_eq!(params(&net), params(&tiny(2)));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();

    // One whose header declares 4 GiB of data: refused before any of it is read.
    let header =
        r#"{"0.weight":{"dtype":"F32","shape":[1073741824],"data_offsets":[0,4294967296]}}"#;
    let (path, writer) = fifo("fifo-huge", craft(header, &[]), true);
    let (e, largest) = largest_allocation_during(|| {
        load_safetensors(&mut tiny(0), &path, LoadOptions::default()).unwrap_err()
    });
    writer.join().unwrap();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                limit: Limits::DEFAULT_BYTES,
                ..
            }
        ),
        "{e}"
    );
    assert!(largest < 64 << 10, "largest allocation {largest} bytes");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

// --- Bounded messages

#[test]
fn many_unexpected_keys_give_a_short_message() {
    let extra = 100_000;
    let mut header = String::from("{");
    for i in 0..extra {
        header += &format!(r#""k{i:06}":{{"dtype":"F32","shape":[0],"data_offsets":[8,8]}},"#);
    }
    header += &TINY[1..];
    let bytes = craft(&header, &[0; 8]);
    assert!(bytes.len() > 5 << 20);
    let mut net = tiny(0);
    let e = load_safetensors_bytes(&mut net, &bytes, LoadOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
    assert!(
        msg.contains(r#"["k000000", "k000001", "k000002", "k000003", "k000004", "k000005", "k000006", "k000007"] and 99992 more"#),
        "{msg}"
    );
    // A lenient load still reports every one of them.
    let report = load_safetensors_bytes(&mut net, &bytes, LoadOptions::lenient()).unwrap();
    assert_eq!(report.ignored.len(), extra);

    // One very long key is cut too.
    let key = "k".repeat(1_000_000);
    let header = format!(
        r#"{{"{key}":{{"dtype":"F32","shape":[0],"data_offsets":[8,8]}},{}"#,
        &TINY[1..]
    );
    let e = load_safetensors_bytes(&mut net, &craft(&header, &[0; 8]), LoadOptions::default())
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
    assert!(msg.contains("(1000000 bytes)"), "{msg}");
    // And so is text the JSON parser quotes from the file (an unknown dtype).
    let header = TINY.replacen("\"F32\"", &format!("\"{key}\""), 1);
    let e = load_safetensors_bytes(&mut net, &craft(&header, &[0; 8]), LoadOptions::default())
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
    assert!(msg.contains("unknown variant `kkkk"), "{msg}");
}

#[test]
fn many_missing_keys_give_a_short_message() {
    let mut rng = StdRng::seed_from_u64(0);
    let mut net = Sequential::new();
    for _ in 0..12 {
        net = net.with(Conv2d::new(Conv2dConfig::new(1, 1, (1, 1)), &mut rng).unwrap());
    }
    let e =
        load_safetensors_bytes(&mut net, &craft("{}", &[]), LoadOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "safetensors: missing key(s) [\"0.weight\", \"0.bias\", \"1.weight\", \"1.bias\", \
         \"2.weight\", \"2.bias\", \"3.weight\", \"3.bias\"] and 16 more: the model has them, \
         the file does not"
    );
}

// --- Atomic saves: long names, symbolic links, permissions

/// The names in `dir`, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn saves_to_a_name_of_255_bytes() {
    // The longest name most file systems accept; the temporary file must fit too.
    let dir = scratch("long-name");
    let name = format!("{}.safetensors", "m".repeat(255 - ".safetensors".len()));
    assert_eq!(name.len(), 255);
    let path = dir.join(&name);
    let a = tiny(1);
    save_safetensors(&a, &path).unwrap();
    save_safetensors(&a, &path).unwrap(); // over the existing file
    let mut b = tiny(2);
    load_safetensors(&mut b, &path, LoadOptions::default()).unwrap();
    assert_eq!(params(&b), params(&a));
    assert_eq!(listing(&dir), [name]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_rename_leaves_no_temporary() {
    // The path is a directory: the temporary is written, the rename refuses.
    let dir = scratch("rename-fails");
    std::fs::create_dir(dir.join("model.safetensors")).unwrap();
    let e = save_safetensors(&tiny(0), dir.join("model.safetensors")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    assert_eq!(listing(&dir), ["model.safetensors"]);
    assert!(dir.join("model.safetensors").is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn saving_through_symlinks_replaces_their_target() {
    use std::os::unix::fs::symlink;
    let root = scratch("symlinks");
    let (real, links) = (root.join("real"), root.join("links"));
    std::fs::create_dir_all(&real).unwrap();
    std::fs::create_dir_all(&links).unwrap();
    let target = real.join("model.safetensors");
    save_safetensors(&tiny(1), &target).unwrap();
    // links/chain -> link (relative, same dir) -> ../real/model.safetensors (relative),
    // and links/abs -> the absolute path of links/chain.
    symlink("../real/model.safetensors", links.join("link")).unwrap();
    symlink("link", links.join("chain")).unwrap();
    symlink(links.join("chain"), links.join("abs")).unwrap();
    for (seed, via) in [(2, "link"), (3, "chain"), (4, "abs")] {
        let net = tiny(seed);
        save_safetensors(&net, links.join(via)).unwrap();
        assert_eq!(
            std::fs::read(&target).unwrap(),
            to_safetensors_bytes(&net).unwrap(),
            "saved via {via}"
        );
        for link in ["link", "chain", "abs"] {
            let meta = std::fs::symlink_metadata(links.join(link)).unwrap();
            assert!(
                meta.file_type().is_symlink(),
                "{link} replaced by a save via {via}"
            );
        }
        // The temporary was in the target's directory, and is gone.
        assert_eq!(listing(&real), ["model.safetensors"]);
        assert_eq!(listing(&links), ["abs", "chain", "link"]);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[cfg(unix)]
#[test]
fn saving_through_a_dangling_symlink_creates_its_target() {
    use std::os::unix::fs::symlink;
    let root = scratch("dangling");
    std::fs::create_dir_all(root.join("real")).unwrap();
    symlink("real/new.safetensors", root.join("latest")).unwrap();
    let net = tiny(5);
    save_safetensors(&net, root.join("latest")).unwrap();
    assert_eq!(
        std::fs::read(root.join("real/new.safetensors")).unwrap(),
        to_safetensors_bytes(&net).unwrap()
    );
    let meta = std::fs::symlink_metadata(root.join("latest")).unwrap();
    assert!(meta.file_type().is_symlink());
    assert_eq!(listing(&root.join("real")), ["new.safetensors"]);

    // A link into a directory that does not exist: an error naming both, nothing left.
    symlink("gone/new.safetensors", root.join("nowhere")).unwrap();
    let e = save_safetensors(&net, root.join("nowhere")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("gone/new.safetensors") && msg.contains("nowhere"),
        "{msg}"
    );
    assert_eq!(listing(&root), ["latest", "nowhere", "real"]);

    // A loop of links: an error, not a hang.
    symlink("b", root.join("a")).unwrap();
    symlink("a", root.join("b")).unwrap();
    let e = save_safetensors(&net, root.join("a")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("symbolic links"), "{e}");
    assert_eq!(listing(&root), ["a", "b", "latest", "nowhere", "real"]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[cfg(unix)]
#[test]
fn saving_over_a_file_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("permissions");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for kept in [0o600, 0o640, 0o444, 0o755] {
        let path = dir.join(format!("{kept:o}.safetensors"));
        save_safetensors(&tiny(1), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(kept)).unwrap();
        let net = tiny(2);
        save_safetensors(&net, &path).unwrap();
        assert_eq!(mode(&path), kept, "{kept:o}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            to_safetensors_bytes(&net).unwrap()
        );
    }
    // A new file gets what any new file gets here (0666 less the umask).
    let usual = dir.join("usual");
    std::fs::File::create(&usual).unwrap();
    let new = dir.join("new.safetensors");
    save_safetensors(&tiny(1), &new).unwrap();
    assert_eq!(mode(&new), mode(&usual));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------------ buffers (batch norm)

/// Conv, batch norm, ReLU, conv: the buffers of `state_dict` (`1.running_mean`,
/// `1.running_var`, `1.num_batches_tracked`).
fn bn_net(seed: u64) -> Sequential {
    use convinit::nn::{BatchNorm2d, BatchNorm2dConfig};
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new()
        .with(Conv2d::new(Conv2dConfig::new(1, 3, (3, 3)), &mut rng).unwrap())
        .with(BatchNorm2d::new(BatchNorm2dConfig::new(3)).unwrap())
        .with(Relu::new())
        .with(Conv2d::new(Conv2dConfig::new(3, 2, (3, 3)), &mut rng).unwrap())
}

/// Every parameter and buffer as bits (i64 buffers as their value's bits).
fn state_bits(net: &Sequential) -> Vec<(String, Vec<u64>)> {
    use convinit::nn::BufferView;
    let mut out: Vec<(String, Vec<u64>)> = net
        .named_parameters()
        .into_iter()
        .map(|p| {
            (
                p.name,
                p.value.iter().map(|v| u64::from(v.to_bits())).collect(),
            )
        })
        .collect();
    out.extend(net.named_buffers().into_iter().map(|b| {
        let v = match b.value {
            BufferView::F32(a) => a.iter().map(|v| u64::from(v.to_bits())).collect(),
            BufferView::I64(a) => a.iter().map(|&v| v as u64).collect(),
        };
        (b.name, v)
    }));
    out
}

/// Runs two training-mode batches so the running statistics are not their defaults.
fn trained_bn_net(seed: u64) -> Sequential {
    let mut net = bn_net(seed);
    let mut rng = StdRng::seed_from_u64(seed + 100);
    for _ in 0..2 {
        let x = ArrayD::from_shape_simple_fn(IxDyn(&[4, 1, 8, 8]), || {
            rand::Rng::random_range(&mut rng, -1.0f32..2.0)
        });
        net.forward(x.view()).unwrap();
    }
    net
}

/// A tensor of a file: name, dtype, shape, data.
type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// The file's tensors as [`Entry`]s, edited by `edit`, re-serialized.
fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut Vec<Entry>)) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut owned: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut owned);
    let views: Vec<(&str, TensorView<'_>)> = owned
        .iter()
        .map(|(k, d, s, b)| (k.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize(views, None).unwrap()
}

#[test]
fn buffers_round_trip_under_state_dict_names_and_dtypes() {
    let saved = trained_bn_net(1);
    let bytes = to_safetensors_bytes(&saved).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "0.bias",
            "0.weight",
            "1.bias",
            "1.num_batches_tracked",
            "1.running_mean",
            "1.running_var",
            "1.weight",
            "3.bias",
            "3.weight"
        ]
    );
    let t = st.tensor("1.num_batches_tracked").unwrap();
    assert_eq!((t.dtype(), t.shape()), (Dtype::I64, &[][..]));
    assert_eq!(t.data(), 2i64.to_le_bytes());
    for key in ["1.running_mean", "1.running_var"] {
        let t = st.tensor(key).unwrap();
        assert_eq!((t.dtype(), t.shape()), (Dtype::F32, &[3][..]), "{key}");
    }

    // A fresh net (other weights, default statistics) loads everything, strictly, through
    // a file, and computes the same in eval mode.
    let path = std::env::temp_dir().join(format!("convinit-bn-{}.safetensors", std::process::id()));
    save_safetensors(&saved, &path).unwrap();
    let mut loaded = bn_net(2);
    assert_ne!(state_bits(&loaded), state_bits(&saved));
    let report = load_safetensors(&mut loaded, &path, LoadOptions::default()).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(
        report.loaded,
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "3.weight",
            "3.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked"
        ]
    );
    assert!(report.ignored.is_empty());
    assert_eq!(state_bits(&loaded), state_bits(&saved));
    let (mut a, mut b) = (saved, loaded);
    a.eval();
    b.eval();
    let x = ArrayD::from_elem(IxDyn(&[2, 1, 8, 8]), 0.5f32);
    assert_eq!(a.infer(x.view()).unwrap(), b.infer(x.view()).unwrap());
}

#[test]
fn a_missing_or_unexpected_buffer_fails_strict_loading() {
    let bytes = to_safetensors_bytes(&trained_bn_net(3)).unwrap();
    // Missing: the model has 1.running_var, the file does not.
    let without = rewrite(&bytes, |t| t.retain(|(k, ..)| k != "1.running_var"));
    let mut net = bn_net(4);
    let before = state_bits(&net);
    let e = load_safetensors_bytes(&mut net, &without, LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::InvalidContent { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(r#"missing key(s) ["1.running_var"]"#),
        "{e}"
    );
    // Lenient loading does not forgive a missing key either (as PyTorch's strict=False
    // would): everything is checked first, the model unchanged.
    let e = load_safetensors_bytes(&mut net, &without, LoadOptions::lenient()).unwrap_err();
    assert!(e.to_string().contains("1.running_var"), "{e}");
    assert_eq!(state_bits(&net), before);

    // Unexpected: a net without batch norm's buffers reads a file that has them.
    let mut rng = StdRng::seed_from_u64(5);
    let plain = |rng: &mut StdRng| {
        Sequential::new()
            .with(Conv2d::new(Conv2dConfig::new(1, 3, (3, 3)), rng).unwrap())
            .with(Relu::new())
    };
    let small = rewrite(&bytes, |t| {
        t.retain(|(k, ..)| k.starts_with("0.") || k.starts_with("1.r") || k.starts_with("1.n"))
    });
    let mut p = plain(&mut rng);
    let e = load_safetensors_bytes(&mut p, &small, LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::InvalidContent { .. }), "{e}");
    assert!(
        e.to_string().contains(
            r#"unexpected key(s) ["1.num_batches_tracked", "1.running_mean", "1.running_var"]"#
        ),
        "{e}"
    );
    let report = load_safetensors_bytes(&mut p, &small, LoadOptions::lenient()).unwrap();
    assert_eq!(report.loaded, ["0.weight", "0.bias"]);
    assert_eq!(
        report.ignored,
        ["1.num_batches_tracked", "1.running_mean", "1.running_var"]
    );
}

#[test]
fn buffers_of_the_wrong_dtype_or_shape_are_errors() {
    let bytes = to_safetensors_bytes(&trained_bn_net(6)).unwrap();
    /// (key, dtype written, shape, data, the dtype the message must name)
    type Case = (&'static str, Dtype, Vec<usize>, Vec<u8>, &'static str);
    let cases: Vec<Case> = vec![
        // num_batches_tracked as F32 (what a careless converter writes).
        (
            "1.num_batches_tracked",
            Dtype::F32,
            vec![],
            2f32.to_le_bytes().to_vec(),
            "I64",
        ),
        // The running mean as I64.
        (
            "1.running_mean",
            Dtype::I64,
            vec![3],
            [0u8; 24].to_vec(),
            "F32",
        ),
    ];
    for (key, dtype, shape, data, want) in cases {
        let edited = rewrite(&bytes, |t| {
            for e in t.iter_mut().filter(|e| e.0 == key) {
                (e.1, e.2, e.3) = (dtype, shape.clone(), data.clone());
            }
        });
        let mut net = bn_net(7);
        let before = state_bits(&net);
        let e = load_safetensors_bytes(&mut net, &edited, LoadOptions::default()).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(key) && msg.contains("buffer") && msg.contains(want),
            "{msg}"
        );
        assert_eq!(state_bits(&net), before, "unchanged after a failed load");
    }
    // num_batches_tracked of shape [1] (not a scalar).
    let edited = rewrite(&bytes, |t| {
        for e in t.iter_mut().filter(|e| e.0 == "1.num_batches_tracked") {
            e.2 = vec![1];
        }
    });
    let e = load_safetensors_bytes(&mut bn_net(8), &edited, LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert!(
        e.to_string().contains("1.num_batches_tracked") && e.to_string().contains("[1]"),
        "{e}"
    );
}

/// The LeNet of `examples/lenet` (its builder; the rest of that example is unused here).
#[allow(dead_code)]
#[path = "../examples/lenet.rs"]
mod lenet_example;

const LENET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/layers/lenet_8.safetensors"
);
const LENET_STATE_DICT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/weights_io/lenet_8_state_dict.safetensors"
);

/// Both directions with PyTorch for the LeNet of `examples/lenet`, strictly: the
/// `state_dict` PyTorch saved (parameters, running statistics, `num_batches_tracked` as
/// int64) loads with no key missing or left over and reproduces PyTorch's training-mode
/// output; saving it back gives PyTorch's file byte for byte, so PyTorch's strict
/// `load_state_dict` takes it (live: `CONVINIT_WRITE_LENET=/tmp/l.safetensors cargo test
/// --test weights_io lenet` then `python tools/weights_io_torch.py check /tmp/l.safetensors
/// lenet`).
#[test]
fn lenet_round_trips_with_pytorch_strictly() {
    let mut net = lenet_example::lenet(&mut StdRng::seed_from_u64(1)).unwrap();
    let report = load_safetensors(&mut net, LENET_STATE_DICT, LoadOptions::default()).unwrap();
    assert_eq!(report.loaded.len(), 14 + 6, "{:?}", report.loaded);
    assert!(report.ignored.is_empty());
    let case = tensors(&std::fs::read(LENET).unwrap());
    for (name, value) in params(&net) {
        assert_eq!(value, case[&name], "{name}");
    }
    let out = net.forward(case["x"].view()).unwrap();
    let worst = (&out - &case["out"])
        .iter()
        .fold(0.0f32, |m, d| m.max(d.abs()));
    assert!(worst < 1e-4, "max |out - PyTorch out| = {worst}");

    // Back: the bytes PyTorch wrote, from the state before that training-mode forward.
    let mut fresh = lenet_example::lenet(&mut StdRng::seed_from_u64(2)).unwrap();
    load_safetensors(&mut fresh, LENET_STATE_DICT, LoadOptions::default()).unwrap();
    let keep = std::env::var_os("CONVINIT_WRITE_LENET").map(PathBuf::from);
    let path = keep
        .clone()
        .unwrap_or_else(|| scratch("lenet-for-pytorch").join("lenet.safetensors"));
    save_safetensors(&fresh, &path).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(LENET_STATE_DICT).unwrap()
    );
    if keep.is_none() {
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
