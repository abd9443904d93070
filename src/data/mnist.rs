//! MNIST: from the classic `mnist.pkl.gz`, a directory of IDX files, or the embedded
//! sample.
//!
//! The pickle (deeplearning.net / fast.ai) holds
//! `((x_train, y_train), (x_valid, y_valid), (x_test, y_test))` with `x` float32
//! `(n, 784)` equal to `pixel / 256` (so the maximum is `0.99609375`, not 1) and `y`
//! int64. The original IDX files have no validation split, so [`Mnist::from_idx_dir`]
//! maps them exactly as the pickle was made: **train = the first 50 000 training
//! images, valid = the last 10 000 training images, test = the 10 000 `t10k` images**,
//! pixels as `f32` `pixel / 256`, labels as `i64`. Loaded either way, the arrays are
//! equal.
//!
//! # Examples
//! ```
//! # #[cfg(feature = "embedded-sample")]
//! # fn main() -> convinit::Result<()> {
//! use convinit::data::Mnist;
//! let m = Mnist::embedded()?; // 2 000 images per split, shipped in the crate
//! assert_eq!(m.train.0.dim(), (2000, 784));
//! assert_eq!(m.train.1[0], 5);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "embedded-sample"))]
//! # fn main() {}
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayView2, Ix1, Ix2, s};

use super::idx;
use super::pickle::{self, NdArray, Value};
use crate::error::{Error, Result};

/// Number of training images the IDX mapping puts in the validation split.
pub const VALID_SIZE: usize = 10_000;

/// The gzipped sample pickle embedded in the crate: the first 2 000 images of each
/// split of `mnist.pkl.gz`, in the same format (1.4 MB).
#[cfg(feature = "embedded-sample")]
pub const EMBEDDED_SAMPLE: &[u8] = include_bytes!("../../data/mnist_sample.pkl.gz");

/// The three MNIST splits, each as `(images, labels)`: images `(n, 784)` `f32` in
/// `[0, 1)` (`pixel / 256`), labels `(n,)` `i64` in `0..=9`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mnist {
    /// Training split (50 000 images in the full data).
    pub train: (Array2<f32>, Array1<i64>),
    /// Validation split (10 000).
    pub valid: (Array2<f32>, Array1<i64>),
    /// Test split (10 000).
    pub test: (Array2<f32>, Array1<i64>),
}

fn structure(message: impl Into<String>) -> Error {
    Error::InvalidData {
        format: "mnist",
        offset: 0,
        message: message.into(),
    }
}

impl Mnist {
    /// Loads MNIST from a `.pkl` / `.pkl.gz` file or from a directory of IDX files
    /// (see [`Mnist::from_idx_dir`]).
    ///
    /// # Examples
    /// ```no_run
    /// let m = convinit::data::Mnist::load("../shared/data/mnist.pkl.gz")?;
    /// assert_eq!(m.valid.0.nrows(), 10_000);
    /// # Ok::<(), convinit::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Mnist> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_idx_dir(path)
        } else {
            Self::from_value(pickle::load(path)?)
        }
    }

    /// Reads the MNIST pickle (plain or gzipped) from a reader.
    pub fn from_pickle_reader<R: Read>(reader: R) -> Result<Mnist> {
        Self::from_value(pickle::from_reader(reader)?)
    }

    /// The sample embedded in the crate ([`EMBEDDED_SAMPLE`]): the first 2 000 images
    /// of each split.
    ///
    /// # Examples
    /// ```
    /// let m = convinit::data::Mnist::embedded()?;
    /// assert_eq!(m.test.1.len(), 2000);
    /// # Ok::<(), convinit::Error>(())
    /// ```
    #[cfg(feature = "embedded-sample")]
    pub fn embedded() -> Result<Mnist> {
        Self::from_pickle_reader(EMBEDDED_SAMPLE)
    }

    /// Builds the splits from the unpickled value
    /// `((x_train, y_train), (x_valid, y_valid), (x_test, y_test))`.
    ///
    /// Images must be 2-D `float32`; labels 1-D of any integer dtype (converted to
    /// `i64`), as many as images. Anything else is [`Error::InvalidData`] with format
    /// `"mnist"` (offset 0) naming the offending item.
    pub fn from_value(v: Value) -> Result<Mnist> {
        let kind = v.type_name();
        let splits = v
            .into_seq()
            .map_err(|_| structure(format!("expected a tuple of 3 splits, got a {kind}")))?;
        let n = splits.len();
        let [train, valid, test] = <[Value; 3]>::try_from(splits)
            .map_err(|_| structure(format!("expected 3 splits, got {n}")))?;
        Ok(Mnist {
            train: split(train, "train")?,
            valid: split(valid, "valid")?,
            test: split(test, "test")?,
        })
    }

    /// Loads the four IDX files from a directory: `train-images-idx3-ubyte`,
    /// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
    /// each plain or with a `.gz` suffix.
    ///
    /// Train is the first `n - 10 000` training images (50 000), valid the last
    /// [`VALID_SIZE`], test the `t10k` images; pixels become `pixel as f32 / 256`.
    pub fn from_idx_dir(dir: impl AsRef<Path>) -> Result<Mnist> {
        let dir = dir.as_ref();
        let (x, y) = idx_pair(dir, "train")?;
        let n = x.nrows();
        if n <= VALID_SIZE {
            return Err(structure(format!(
                "{}: {n} training images, need more than {VALID_SIZE} to split off valid",
                dir.display()
            )));
        }
        let cut = n - VALID_SIZE;
        // Scale each split straight from the u8 pixels: no full-size f32 copy.
        let train = (scale(x.slice(s![..cut, ..])), y.slice(s![..cut]).to_owned());
        let valid = (scale(x.slice(s![cut.., ..])), y.slice(s![cut..]).to_owned());
        drop((x, y));
        let (x, y) = idx_pair(dir, "t10k")?;
        Ok(Mnist {
            train,
            valid,
            test: (scale(x.view()), y),
        })
    }
}

/// `pixel / 256` as `f32`, the pickle's convention.
fn scale(x: ArrayView2<'_, u8>) -> Array2<f32> {
    x.mapv(|p| f32::from(p) / 256.0)
}

fn split(v: Value, name: &str) -> Result<(Array2<f32>, Array1<i64>)> {
    let kind = v.type_name();
    let items = v
        .into_seq()
        .map_err(|_| structure(format!("{name}: expected an (x, y) tuple, got a {kind}")))?;
    let n = items.len();
    let [x, y] = <[Value; 2]>::try_from(items)
        .map_err(|_| structure(format!("{name}: expected (x, y), got {n} items")))?;
    let x = match x.into_array() {
        Ok(NdArray::F32(a)) => a
            .into_dimensionality::<Ix2>()
            .map_err(|e| structure(format!("{name}: x must be 2-D: {e}")))?,
        Ok(other) => {
            return Err(structure(format!(
                "{name}: x must be float32, got {} {:?}",
                other.dtype(),
                other.shape()
            )));
        }
        Err(v) => {
            return Err(structure(format!(
                "{name}: x must be an array, got {}",
                v.type_name()
            )));
        }
    };
    let y = match y.into_array() {
        Ok(a) => a
            .to_i64()
            .ok_or_else(|| structure(format!("{name}: y must hold integers, got {}", a.dtype())))?
            .into_dimensionality::<Ix1>()
            .map_err(|e| structure(format!("{name}: y must be 1-D: {e}")))?,
        Err(v) => {
            return Err(structure(format!(
                "{name}: y must be an array, got {}",
                v.type_name()
            )));
        }
    };
    if x.nrows() != y.len() {
        return Err(structure(format!(
            "{name}: {} images but {} labels",
            x.nrows(),
            y.len()
        )));
    }
    // Already C order for every pickle numpy writes of a 2-D array; copy only if not.
    let x = if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    };
    Ok((x, y))
}

fn find(dir: &Path, base: &str) -> Result<PathBuf> {
    let plain = dir.join(base);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{base}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(Error::io(
        format!("looking for {} or {}", plain.display(), gz.display()),
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such IDX file"),
    ))
}

/// The images of one IDX pair flattened to `(n, rows * cols)` `u8`, and the labels.
fn idx_pair(dir: &Path, prefix: &str) -> Result<(Array2<u8>, Array1<i64>)> {
    let ipath = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lpath = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = idx::load(&ipath)?;
    let labels = idx::load(&lpath)?;
    let bad = |p: &Path, m: String| structure(format!("{}: {m}", p.display()));
    let images = images.into_u8().map_err(|a| {
        bad(
            &ipath,
            format!("images must be u8, got {} {:?}", a.dtype(), a.shape()),
        )
    })?;
    let [n, rows, cols] = <[usize; 3]>::try_from(images.shape()).map_err(|_| {
        bad(
            &ipath,
            format!("images must be 3-D, got {:?}", images.shape()),
        )
    })?;
    let labels = labels
        .into_u8()
        .map_err(|a| bad(&lpath, format!("labels must be u8, got {}", a.dtype())))?;
    if labels.ndim() != 1 || labels.len() != n {
        return Err(bad(
            &lpath,
            format!("{:?} labels for {n} images", labels.shape()),
        ));
    }
    let pixels = rows
        .checked_mul(cols)
        .ok_or_else(|| bad(&ipath, "image size overflows".into()))?;
    let flat = images
        .into_shape_with_order((n, pixels))
        .map_err(|e| bad(&ipath, format!("cannot flatten: {e}")))?;
    let y: Array1<i64> = labels.iter().map(|&v| i64::from(v)).collect();
    Ok((flat, y))
}
