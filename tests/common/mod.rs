//! Reading the PyTorch reference cases (`*.safetensors`), shared by the tests.
#![allow(dead_code)] // each test binary uses a different part

pub mod naive;
pub mod ops;
pub mod shared;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use safetensors::{Dtype, SafeTensors};

/// One reference case: its file name, metadata and float32 tensors.
pub struct Case {
    pub name: String,
    pub meta: HashMap<String, String>,
    pub tensors: HashMap<String, ArrayD<f32>>,
    /// The int64 tensors (class targets, pooling indices, `num_batches_tracked`).
    pub tensors_i64: HashMap<String, ArrayD<i64>>,
}

impl Case {
    pub fn op(&self) -> Result<&str, String> {
        self.meta_str("op")
    }

    pub fn meta_str(&self, key: &str) -> Result<&str, String> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("metadata {key:?} missing"))
    }

    /// Parses `"a,b,..."` metadata as a list of numbers.
    pub fn meta_list<T: std::str::FromStr>(&self, key: &str) -> Result<Vec<T>, String> {
        self.meta_str(key)?
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| format!("metadata {key:?}: cannot parse {s:?}"))
            })
            .collect()
    }

    /// Parses `"h,w"` metadata.
    pub fn meta_pair(&self, key: &str) -> Result<(usize, usize), String> {
        match self.meta_list::<usize>(key)?.as_slice() {
            [h, w] => Ok((*h, *w)),
            other => Err(format!("metadata {key:?}: expected \"h,w\", got {other:?}")),
        }
    }

    pub fn meta_num<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        let s = self.meta_str(key)?;
        s.trim()
            .parse()
            .map_err(|_| format!("metadata {key:?}: cannot parse {s:?}"))
    }

    /// An int64 tensor of the case.
    pub fn tensor_i64(&self, key: &str) -> Result<&ArrayD<i64>, String> {
        self.tensors_i64
            .get(key)
            .ok_or_else(|| format!("int64 tensor {key:?} missing"))
    }

    pub fn tensor(&self, key: &str) -> Result<&ArrayD<f32>, String> {
        self.tensors
            .get(key)
            .ok_or_else(|| format!("tensor {key:?} missing"))
    }
}

/// The directory of reference cases: `$CONVINIT_REFERENCE_DIR`, or the crate's
/// `tests/fixtures`.
pub fn reference_dir() -> PathBuf {
    match std::env::var_os("CONVINIT_REFERENCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

/// The crate's own reference cases, whatever `CONVINIT_REFERENCE_DIR` says: for tests
/// that need one particular case.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every `*.safetensors` file directly in `dir` and in its `layers/` subfolder (the
/// layout of `../shared/fixtures`: the notebook's cases, then the layer cases), sorted
/// by path. Other subfolders hold other kinds of files (`weights_io/`, `npy/`).
pub fn case_paths(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for d in [dir.to_path_buf(), dir.join("layers")] {
        if d != dir && !d.is_dir() {
            continue;
        }
        let entries =
            std::fs::read_dir(&d).map_err(|e| format!("cannot list {}: {e}", d.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot list {}: {e}", d.display()))?
                .path();
            if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    Ok(paths)
}

/// Reads one case; any problem (I/O, format, a tensor neither f32 nor i64) is an error.
pub fn load_case(path: &Path) -> Result<Case, String> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let (_, metadata) =
        SafeTensors::read_metadata(&bytes).map_err(|e| format!("bad safetensors header: {e}"))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("bad safetensors: {e}"))?;
    let mut tensors = HashMap::new();
    let mut tensors_i64 = HashMap::new();
    for (key, view) in st.tensors() {
        let shape = IxDyn(view.shape());
        match view.dtype() {
            Dtype::F32 => {
                let data: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let array = ArrayD::from_shape_vec(shape, data)
                    .map_err(|e| format!("tensor {key:?}: {e}"))?;
                tensors.insert(key, array);
            }
            Dtype::I64 => {
                let data: Vec<i64> = view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect();
                let array = ArrayD::from_shape_vec(shape, data)
                    .map_err(|e| format!("tensor {key:?}: {e}"))?;
                tensors_i64.insert(key, array);
            }
            other => return Err(format!("tensor {key:?} is {other:?}, expected F32 or I64")),
        }
    }
    Ok(Case {
        name,
        meta,
        tensors,
        tensors_i64,
    })
}

/// How close a result came: the largest absolute error, the largest error relative to
/// its tensor's scale (max |reference|), and the largest fraction of the tolerance used,
/// over the tensors compared so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    pub abs: f64,
    pub rel: f64,
    pub of_tol: f64,
}

impl Score {
    /// The worse of two scores, component by component.
    pub fn max(self, other: Score) -> Score {
        Score {
            abs: self.abs.max(other.abs),
            rel: self.rel.max(other.rel),
            of_tol: self.of_tol.max(other.of_tol),
        }
    }
}

/// Safety factor of [`tolerance`] over the rounding error expected of both sides.
pub const TOL_FACTOR: f32 = 8.0;

/// The tolerance for a tensor each of whose elements is a sum of `terms` f32 values (a
/// dot product's length; 1 for an element-wise op), at scale `scale` = max |reference|:
/// `TOL_FACTOR * eps * sqrt(terms) * scale`, eps = `f32::EPSILON`.
///
/// Why: both sides (ours and PyTorch) compute in f32, each addition rounds within
/// eps / 2 of its running sum, and the errors of `terms` additions in different orders
/// behave as a random walk, ~ eps * sqrt(terms) * scale (the worst case, eps * terms,
/// needs every rounding to go the same way). Measured on the crate's fixtures the
/// largest error is 9.3 eps * scale (a conv bias gradient over 1728 terms), against
/// 8 * sqrt(1728) = 333 eps * scale allowed. For pooling and MSE gradients (1 to 4 terms)
/// this allows 8 to 16 eps = 1e-6 to 2e-6 relative: a 1e-4 relative error fails. An
/// all-zero reference must be matched within eps * sqrt(terms) * `f32::MIN_POSITIVE`,
/// i.e. exactly.
pub fn tolerance(terms: usize, scale: f32) -> f32 {
    TOL_FACTOR * f32::EPSILON * (terms.max(1) as f32).sqrt() * scale.max(f32::MIN_POSITIVE)
}

/// max |ours - reference| after checking shapes, and whether it is within
/// [`tolerance`]`(terms, max |reference|)`. NaN anywhere fails.
pub fn compare(
    what: &str,
    ours: ArrayViewD<'_, f32>,
    reference: ArrayViewD<'_, f32>,
    terms: usize,
) -> Result<Score, String> {
    let scale = reference.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    compare_at_scale(what, ours, reference, terms, scale)
}

/// [`compare`] with the scale given: for a tensor that is zero in exact arithmetic
/// (its reference is rounding noise), the scale of the terms that cancel in it.
pub fn compare_at_scale(
    what: &str,
    ours: ArrayViewD<'_, f32>,
    reference: ArrayViewD<'_, f32>,
    terms: usize,
    scale: f32,
) -> Result<Score, String> {
    if ours.shape() != reference.shape() {
        return Err(format!(
            "{what}: shape {:?}, reference {:?}",
            ours.shape(),
            reference.shape()
        ));
    }
    let tol = tolerance(terms, scale);
    let mut err = 0.0f32;
    for (&a, &b) in ours.iter().zip(reference.iter()) {
        let d = (a - b).abs();
        if d.is_nan() || !b.is_finite() {
            return Err(format!(
                "{what}: non-finite value (ours {a}, reference {b})"
            ));
        }
        err = err.max(d);
    }
    if err > tol {
        return Err(format!(
            "{what}: max error {err:e} > tolerance {tol:e} ({terms} terms, scale {scale:e})"
        ));
    }
    Ok(Score {
        abs: f64::from(err),
        rel: f64::from(err / scale.max(f32::MIN_POSITIVE)),
        of_tol: f64::from(err / tol),
    })
}
