//! Saving and loading a [`Sequential`]'s parameters as
//! [safetensors](https://huggingface.co/docs/safetensors), with PyTorch's `state_dict`
//! key names (`"0.weight"`, `"0.bias"`, `"2.weight"`, ...), so a model moves between this
//! crate and PyTorch both ways:
//!
//! ```python
//! from safetensors.torch import load_file, save_file
//! model.load_state_dict(load_file("model.safetensors"))   # what save_safetensors wrote
//! save_file(model.state_dict(), "model.safetensors")      # what load_safetensors reads
//! ```
//!
//! The format: an 8-byte little-endian header length, a JSON header mapping each name to
//! its `dtype`, `shape` and `data_offsets` (plus an optional `__metadata__` map of
//! strings), then the raw little-endian tensor data. Parameters are stored as `F32`.
//!
//! # Examples
//! ```
//! use convinit::io::{LoadOptions, load_safetensors, save_safetensors};
//! use convinit::nn::{Conv2d, Conv2dConfig, Relu, Sequential};
//! use rand::SeedableRng;
//!
//! let build = |seed| -> convinit::Result<Sequential> {
//!     let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
//!     Ok(Sequential::new()
//!         .with(Conv2d::new(Conv2dConfig::new(1, 4, (3, 3)), &mut rng)?)
//!         .with(Relu::new()))
//! };
//! let path = std::env::temp_dir().join(format!("convinit-doc-{}.safetensors", std::process::id()));
//! let saved = build(1)?;
//! save_safetensors(&saved, &path)?;
//!
//! let mut loaded = build(2)?; // same architecture, other weights
//! let report = load_safetensors(&mut loaded, &path, LoadOptions::default())?;
//! assert_eq!(report.loaded, ["0.weight", "0.bias"]);
//! assert_eq!(loaded.named_parameters()[0].value, saved.named_parameters()[0].value);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), convinit::Error>(())
//! ```

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::nn::Sequential;

const FORMAT: &str = "safetensors";

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidData {
        format: FORMAT,
        offset: 0,
        message: message.into(),
    }
}

/// How strictly [`load_safetensors`] matches the file's tensors to the model's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// When true (the default, as PyTorch's `load_state_dict(strict=True)`), a tensor in
    /// the file that is not a parameter of the model is an error; when false it is
    /// ignored (and listed in [`LoadReport::ignored`]). A parameter missing from the file
    /// is an error either way, so a load never leaves a parameter uninitialised.
    pub strict: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { strict: true }
    }
}

impl LoadOptions {
    /// Ignore tensors in the file that are not parameters of the model.
    pub fn lenient() -> Self {
        LoadOptions { strict: false }
    }
}

/// What [`load_safetensors`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// The parameters set from the file, in the model's order.
    pub loaded: Vec<String>,
    /// The file's tensors that are not parameters of the model (non-strict loads only),
    /// sorted.
    pub ignored: Vec<String>,
}

/// The model's parameters in the safetensors format, with `__metadata__`
/// `{"format": "pt"}` (what `safetensors.torch.save_file` and the Hugging Face tools
/// expect).
///
/// # Errors
/// [`Error::InvalidData`] if the serializer rejects the tensors (two parameters with the
/// same name, a header too large).
pub fn to_safetensors_bytes(net: &Sequential) -> Result<Vec<u8>> {
    let params = net.named_parameters();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .iter()
        .map(|p| {
            let bytes = p.value.iter().flat_map(|v| v.to_le_bytes()).collect();
            (p.name.clone(), p.value.shape().to_vec(), bytes)
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| invalid(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| invalid(e.to_string()))
}

/// The temporary file a save writes before renaming it over `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    // Process id and a per-process counter: concurrent saves never share a temporary.
    static SAVES: AtomicUsize = AtomicUsize::new(0);
    let n = SAVES.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

/// Saves the model's parameters to `path` as safetensors (see [`to_safetensors_bytes`]).
///
/// The bytes go to a temporary file in the same directory, which is flushed to disk and
/// then renamed over `path`: an interrupted save leaves either the old file or the new
/// one, never half a model.
///
/// # Errors
/// [`Error::Io`] naming the path when the file cannot be written or renamed (the
/// temporary file is removed); as [`to_safetensors_bytes`].
pub fn save_safetensors(net: &Sequential, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_safetensors_bytes(net)?;
    let tmp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&tmp);
        Error::io(format!("saving model to {}", path.display()), e)
    })
}

/// Loads the model's parameters from a safetensors file (see [`load_safetensors_bytes`]).
///
/// # Errors
/// [`Error::Io`] naming the path when it cannot be read; as [`load_safetensors_bytes`].
pub fn load_safetensors(
    net: &mut Sequential,
    path: impl AsRef<Path>,
    options: LoadOptions,
) -> Result<LoadReport> {
    let path = path.as_ref();
    let bytes =
        fs::read(path).map_err(|e| Error::io(format!("reading model {}", path.display()), e))?;
    load_safetensors_bytes(net, &bytes, options)
}

/// Sets every parameter of `net` from the tensor of the same name in `bytes` (a
/// safetensors file), as PyTorch's `load_state_dict`.
///
/// Everything is checked before anything is written: on error the model is unchanged.
///
/// # Errors
/// - [`Error::InvalidData`] when the bytes are not a valid safetensors file, a parameter
///   is missing from the file (every missing key is named), or (when `options.strict`)
///   the file holds tensors that are not parameters (every unexpected key is named);
/// - [`Error::Unsupported`] when a needed tensor is not `F32` (its key and dtype named);
/// - [`Error::Shape`] when a tensor's shape differs from its parameter's (the key and
///   both shapes named).
pub fn load_safetensors_bytes(
    net: &mut Sequential,
    bytes: &[u8],
    options: LoadOptions,
) -> Result<LoadReport> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
    let mut names: Vec<&str> = file.names();
    names.sort_unstable();
    let mut params = net.named_parameters_mut();
    let wanted: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();

    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !names.contains(w))
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "missing key(s) {missing:?}: the model has them, the file does not"
        )));
    }
    let ignored: Vec<String> = names
        .iter()
        .filter(|n| !wanted.contains(n))
        .map(|n| n.to_string())
        .collect();
    if options.strict && !ignored.is_empty() {
        return Err(invalid(format!(
            "unexpected key(s) {ignored:?}: the file has them, the model does not (load with LoadOptions::lenient() to ignore them)"
        )));
    }
    let mut tensors = Vec::with_capacity(params.len());
    for p in &params {
        let t = file
            .tensor(&p.name)
            .map_err(|e| invalid(format!("key {}: {e}", p.name)))?;
        if t.dtype() != Dtype::F32 {
            return Err(Error::Unsupported {
                format: FORMAT,
                offset: 0,
                message: format!(
                    "key {} has dtype {:?}, only F32 is supported",
                    p.name,
                    t.dtype()
                ),
            });
        }
        if t.shape() != p.value.shape() {
            return Err(Error::shape(
                "load_safetensors",
                format!(
                    "key {}: the file has shape {:?}, the model's parameter is {:?}",
                    p.name,
                    t.shape(),
                    p.value.shape()
                ),
            ));
        }
        tensors.push(t);
    }
    for (p, t) in params.iter_mut().zip(&tensors) {
        let values = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        for (dst, v) in p.value.iter_mut().zip(values) {
            *dst = v;
        }
    }
    Ok(LoadReport {
        loaded: params.into_iter().map(|p| p.name).collect(),
        ignored,
    })
}
