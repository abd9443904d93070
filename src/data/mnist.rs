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
//! ## Checks
//! Every loader checks what it returns: images 2-D `float32` (IDX: 3-D `u8`), the same
//! number of pixels per image in every split, as many labels as images, and every
//! label in `0..=9`. A failure is [`Error::InvalidData`] with format `"mnist"` naming the
//! split (`train`, `valid`, `test`), the offending value and its index (and for IDX
//! files the path).
//!
//! ## Limits
//! [`Mnist::load`], [`Mnist::from_pickle_reader`] and [`Mnist::from_idx_dir`] use
//! [`Limits::default`]: at most 1 GiB of decompressed input (per file) and 1 GiB of
//! result, about five times the full MNIST. For a pickle, the pickle reader's limits
//! apply (see [`pickle`](super::pickle#limits)); then, as for an IDX directory, the
//! final arrays (`4` bytes per pixel, `8` per label, all splits) are checked against the
//! result limit before they are built: for IDX files, from the headers, before any
//! pixel is read. Going over is [`Error::LimitExceeded`] naming the setter; the `_with`
//! variants take other [`Limits`]:
//!
//! ```no_run
//! use convinit::{data::Mnist, limits::Limits};
//! let big = Limits::default().with_max_input_bytes(4 << 30).with_max_result_bytes(4 << 30);
//! let m = Mnist::load_with("emnist-as-mnist.pkl.gz", big)?;
//! # Ok::<(), convinit::Error>(())
//! ```
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

use ndarray::{Array1, Array2, ArrayD, ArrayView1, ArrayView2, Ix1, Ix2, s};

use super::idx;
use super::pickle::{self, NdArray, Value};
use crate::error::{Error, Result};
use crate::limits::Limits;

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

const FORMAT: &str = "mnist";

fn structure(message: impl Into<String>) -> Error {
    Error::InvalidData {
        format: FORMAT,
        offset: 0,
        message: message.into(),
    }
}

/// Bytes of the final arrays of `n` images of `pixels` each: `f32` pixels, `i64` labels.
fn final_bytes(n: usize, pixels: usize) -> u64 {
    (n as u64)
        .saturating_mul(pixels as u64)
        .saturating_mul(4)
        .saturating_add((n as u64).saturating_mul(8))
}

impl Mnist {
    /// Loads MNIST from a `.pkl` / `.pkl.gz` file or from a directory of IDX files
    /// (see [`Mnist::from_idx_dir`]), with the default [`Limits`].
    ///
    /// # Examples
    /// ```no_run
    /// let m = convinit::data::Mnist::load("../shared/data/mnist.pkl.gz")?;
    /// assert_eq!(m.valid.0.nrows(), 10_000);
    /// # Ok::<(), convinit::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Mnist> {
        Self::load_with(path, Limits::default())
    }

    /// [`Mnist::load`] with the given [`Limits`].
    pub fn load_with(path: impl AsRef<Path>, limits: Limits) -> Result<Mnist> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_idx_dir_with(path, limits)
        } else {
            Self::from_value_with(pickle::load_with(path, limits)?, limits)
        }
    }

    /// Reads the MNIST pickle (plain or gzipped) from a reader, with the default
    /// [`Limits`].
    pub fn from_pickle_reader<R: Read>(reader: R) -> Result<Mnist> {
        Self::from_pickle_reader_with(reader, Limits::default())
    }

    /// [`Mnist::from_pickle_reader`] with the given [`Limits`].
    pub fn from_pickle_reader_with<R: Read>(reader: R, limits: Limits) -> Result<Mnist> {
        Self::from_value_with(pickle::from_reader_with(reader, limits)?, limits)
    }

    /// The sample embedded in the crate (`EMBEDDED_SAMPLE`): the first 2 000 images
    /// of each split.
    ///
    /// It exists in every build, so code that falls back to it compiles with any
    /// features; the data is there only with the `embedded-sample` feature (on by
    /// default).
    ///
    /// # Errors
    /// [`Error::Config`] when the crate was built without `embedded-sample`: load a file
    /// with [`Mnist::load`] instead.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "embedded-sample")] {
    /// let m = convinit::data::Mnist::embedded()?;
    /// assert_eq!(m.test.1.len(), 2000);
    /// # }
    /// # Ok::<(), convinit::Error>(())
    /// ```
    pub fn embedded() -> Result<Mnist> {
        #[cfg(feature = "embedded-sample")]
        return Self::from_pickle_reader(EMBEDDED_SAMPLE);
        #[cfg(not(feature = "embedded-sample"))]
        return Err(Error::config(
            "Mnist::embedded",
            "this build of convinit has no embedded sample (the `embedded-sample` feature \
             is off): load a file with Mnist::load, e.g. mnist.pkl.gz",
        ));
    }

    /// Builds the splits from the unpickled value
    /// `((x_train, y_train), (x_valid, y_valid), (x_test, y_test))`, with the default
    /// [`Limits`].
    ///
    /// Images must be 2-D `float32` with the same number of columns in every split;
    /// labels 1-D of any integer dtype (converted to `i64`), as many as images, each in
    /// `0..=9`. Anything else is [`Error::InvalidData`] with format `"mnist"` (offset 0)
    /// naming the split and the offending item.
    pub fn from_value(v: Value) -> Result<Mnist> {
        Self::from_value_with(v, Limits::default())
    }

    /// [`Mnist::from_value`] with the given [`Limits`]: the final arrays (4 bytes per
    /// pixel, 8 per label, all splits) must fit in [`Limits::max_result_bytes`], checked
    /// before any label is converted.
    pub fn from_value_with(v: Value, limits: Limits) -> Result<Mnist> {
        let kind = v.type_name();
        let splits = v
            .into_seq()
            .map_err(|_| structure(format!("expected a tuple of 3 splits, got a {kind}")))?;
        let n = splits.len();
        let [train, valid, test] = <[Value; 3]>::try_from(splits)
            .map_err(|_| structure(format!("expected 3 splits, got {n}")))?;
        let train = split(train, "train")?;
        let valid = split(valid, "valid")?;
        let test = split(test, "test")?;
        let pixels = train.0.ncols();
        for (x, name) in [(&valid.0, "valid"), (&test.0, "test")] {
            if x.ncols() != pixels {
                return Err(structure(format!(
                    "{name}: images have {} pixels (columns) but train's have {pixels}",
                    x.ncols()
                )));
            }
        }
        let total = [&train, &valid, &test].iter().fold(0u64, |t, (x, _, _)| {
            t.saturating_add(final_bytes(x.nrows(), pixels))
        });
        limits.check_result(FORMAT, total)?;
        Ok(Mnist {
            train: finish(train)?,
            valid: finish(valid)?,
            test: finish(test)?,
        })
    }

    /// Loads the four IDX files from a directory, with the default [`Limits`]:
    /// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
    /// `t10k-labels-idx1-ubyte`, each plain or with a `.gz` suffix.
    ///
    /// Train is the first `n - 10 000` training images (50 000), valid the last
    /// [`VALID_SIZE`], test the `t10k` images; pixels become `pixel as f32 / 256`.
    pub fn from_idx_dir(dir: impl AsRef<Path>) -> Result<Mnist> {
        Self::from_idx_dir_with(dir, Limits::default())
    }

    /// [`Mnist::from_idx_dir`] with the given [`Limits`]: each file's decompressed size
    /// is held to [`Limits::max_input_bytes`], and the final `f32` images and `i64`
    /// labels of all splits to [`Limits::max_result_bytes`], checked from each images
    /// file's header before its pixels are read.
    pub fn from_idx_dir_with(dir: impl AsRef<Path>, limits: Limits) -> Result<Mnist> {
        let dir = dir.as_ref();
        let mut charged = 0u64;
        let (x, y, lpath) = idx_pair(dir, "train", limits, None, &mut charged)?;
        let n = x.nrows();
        let cut = n - VALID_SIZE;
        let (ytrain, yvalid) = (y.slice(s![..cut]), y.slice(s![cut..]));
        check_digits(ytrain, "train", &lpath)?;
        check_digits(yvalid, "valid", &lpath)?;
        // Scale each split straight from the u8 pixels: no full-size f32 copy.
        let train = (scale(x.slice(s![..cut, ..])), widen(ytrain));
        let valid = (scale(x.slice(s![cut.., ..])), widen(yvalid));
        let pixels = x.ncols();
        drop((x, y));
        let (x, y, lpath) = idx_pair(dir, "t10k", limits, Some(pixels), &mut charged)?;
        check_digits(y.view(), "test", &lpath)?;
        Ok(Mnist {
            train,
            valid,
            test: (scale(x.view()), widen(y.view())),
        })
    }
}

/// `pixel / 256` as `f32`, the pickle's convention.
fn scale(x: ArrayView2<'_, u8>) -> Array2<f32> {
    x.mapv(|p| f32::from(p) / 256.0)
}

fn widen(y: ArrayView1<'_, u8>) -> Array1<i64> {
    y.mapv(i64::from)
}

/// `Err` naming the split, the index and the value of the first label not in 0..=9.
fn check_digits(y: ArrayView1<'_, u8>, name: &str, path: &Path) -> Result<()> {
    match y.iter().position(|&v| v > 9) {
        Some(i) => Err(structure(format!(
            "{name}: label {} at index {i} is not a digit (0..=9) ({})",
            y[i],
            path.display()
        ))),
        None => Ok(()),
    }
}

/// One split of the pickle, checked but not yet converted: images, labels, name.
type Split = (Array2<f32>, NdArray, &'static str);

fn split(v: Value, name: &'static str) -> Result<Split> {
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
    let y = y
        .into_array()
        .map_err(|v| structure(format!("{name}: y must be an array, got {}", v.type_name())))?;
    if y.shape().len() != 1 {
        return Err(structure(format!(
            "{name}: y must be 1-D, got shape {:?}",
            y.shape()
        )));
    }
    if x.nrows() != y.len() {
        return Err(structure(format!(
            "{name}: {} images but {} labels",
            x.nrows(),
            y.len()
        )));
    }
    Ok((x, y, name))
}

/// The first label not in 0..=9, as (index, value).
fn first_non_digit(it: impl Iterator<Item = i128>) -> Option<(usize, i128)> {
    it.enumerate().find(|(_, v)| !(0..=9).contains(v))
}

/// Checks the labels and converts the split to its final form.
fn finish((x, y, name): Split) -> Result<(Array2<f32>, Array1<i64>)> {
    fn wide<T: Copy + Into<i128>>(a: &ArrayD<T>) -> Option<(usize, i128)> {
        first_non_digit(a.iter().map(|&v| v.into()))
    }
    let bad = match &y {
        NdArray::I64(a) => wide(a),
        NdArray::I32(a) => wide(a),
        NdArray::I16(a) => wide(a),
        NdArray::I8(a) => wide(a),
        NdArray::U8(a) => wide(a),
        NdArray::U16(a) => wide(a),
        NdArray::U32(a) => wide(a),
        NdArray::U64(a) => wide(a),
        other => {
            return Err(structure(format!(
                "{name}: y must hold integers, got {}",
                other.dtype()
            )));
        }
    };
    if let Some((i, v)) = bad {
        return Err(structure(format!(
            "{name}: label {v} at index {i} is not a digit (0..=9)"
        )));
    }
    let y = match y.into_i64() {
        Ok(a) => a,
        // Every label is in 0..=9, so any integer type converts.
        Err(other) => other
            .to_i64()
            .ok_or_else(|| structure(format!("{name}: y must hold integers")))?,
    };
    let y = y
        .into_dimensionality::<Ix1>()
        .map_err(|e| structure(format!("{name}: y must be 1-D: {e}")))?;
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

/// The images of one IDX pair flattened to `(n, rows * cols)` `u8`, the labels, and
/// the labels' path.
///
/// Checked from the images' header, before any pixel is read: 3-D, `pixels` per image
/// if given (test against train), more than [`VALID_SIZE`] images for `train`, and the
/// final arrays plus `charged` (the bytes of the splits already built) within the
/// result limit; `charged` is then increased by them. The labels' header must give as
/// many labels as images.
fn idx_pair(
    dir: &Path,
    prefix: &str,
    limits: Limits,
    pixels: Option<usize>,
    charged: &mut u64,
) -> Result<(Array2<u8>, Array1<u8>, PathBuf)> {
    let ipath = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lpath = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let bad = |p: &Path, m: String| structure(format!("{}: {m}", p.display()));
    let split = if prefix == "train" { "train" } else { "test" };
    let mut dims = (0usize, 0usize);
    let images = idx::load_checked(&ipath, limits, &mut |shape| {
        let &[n, rows, cols] = shape else {
            return Err(bad(&ipath, format!("images must be 3-D, got {shape:?}")));
        };
        let p = rows
            .checked_mul(cols)
            .ok_or_else(|| bad(&ipath, "image size overflows".into()))?;
        if let Some(want) = pixels
            && p != want
        {
            return Err(bad(
                &ipath,
                format!(
                    "{split}: images are {rows} x {cols} = {p} pixels, \
                     but train's have {want}"
                ),
            ));
        }
        if split == "train" && n <= VALID_SIZE {
            return Err(structure(format!(
                "{}: {n} training images, need more than {VALID_SIZE} to split off valid",
                dir.display()
            )));
        }
        let total = charged.saturating_add(final_bytes(n, p));
        limits.check_result(FORMAT, total)?;
        *charged = total;
        dims = (n, p);
        Ok(())
    })?;
    let (n, p) = dims;
    let images = images.into_u8().map_err(|a| {
        bad(
            &ipath,
            format!("images must be u8, got {} {:?}", a.dtype(), a.shape()),
        )
    })?;
    let labels = idx::load_checked(&lpath, limits, &mut |shape| {
        if shape != [n] {
            return Err(bad(&lpath, format!("{shape:?} labels for {n} images")));
        }
        Ok(())
    })?;
    let labels = labels
        .into_u8()
        .map_err(|a| bad(&lpath, format!("labels must be u8, got {}", a.dtype())))?
        .into_dimensionality::<Ix1>()
        .map_err(|e| bad(&lpath, format!("labels must be 1-D: {e}")))?;
    let flat = images
        .into_shape_with_order((n, p))
        .map_err(|e| bad(&ipath, format!("cannot flatten: {e}")))?;
    Ok((flat, labels, lpath))
}
