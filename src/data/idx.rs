//! The IDX format of the original MNIST files (`train-images-idx3-ubyte` and friends),
//! plain or gzipped (detected by the magic bytes).
//!
//! An IDX file is two zero bytes, a type code (`0x08` u8, `0x09` i8, `0x0B` i16,
//! `0x0C` i32, `0x0D` f32, `0x0E` f64), the number of dimensions, each dimension as a
//! big-endian `u32`, then the data in C order, big-endian. The reader checks all of
//! it: magic, type code, dimensions (their product must not overflow), that the data
//! is exactly as long as the dimensions say (no more, no less), and reports problems
//! with the byte offset in the (decompressed) stream. Data is read in bounded chunks,
//! so lying dimensions fail at end of input rather than allocating the claimed size.
//!
//! ## Limits
//! [`load`] and [`from_reader`] use [`Limits::default`]: at most 1 GiB of decompressed
//! input (for a plain file, its size) and 1 GiB of result (the array's data, the
//! product of the dimensions times the item size, checked from the header before any of
//! the data is read). Going over either is [`Error::LimitExceeded`], which names the
//! setter that raises it; [`load_with`] and [`from_reader_with`] take other limits:
//!
//! ```
//! use convinit::{Error, data::idx, limits::Limits};
//! // The header claims 1000 x 1000 u8 (1 MB): over a 64 KiB result limit, refused
//! // before any data is read.
//! let bytes = [0, 0, 0x08, 2, 0, 0, 0x03, 0xe8, 0, 0, 0x03, 0xe8];
//! let small = Limits::default().with_max_result_bytes(64 << 10);
//! let e = idx::from_reader_with(&bytes[..], small).unwrap_err();
//! assert!(matches!(e, Error::LimitExceeded { setting: "Limits::with_max_result_bytes", .. }));
//! ```
//!
//! # Examples
//! ```
//! use convinit::data::idx;
//! # fn main() -> convinit::Result<()> {
//! // A 2 x 3 u8 array.
//! let bytes = [0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6];
//! let a = idx::from_reader(&bytes[..])?;
//! assert_eq!(a.shape(), &[2, 3]);
//! assert_eq!(a.as_u8().unwrap()[[1, 2]], 6);
//! # Ok(())
//! # }
//! ```

use std::io::Read;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use super::pickle::{Input, NdArray, convert, sniff_gzip};
use crate::error::{Error, Result};
use crate::limits::Limits;

const FORMAT: &str = "idx";

/// Reads an IDX file (plain or gzipped).
///
/// # Examples
/// ```no_run
/// let labels = convinit::data::idx::load("mnist/train-labels-idx1-ubyte.gz")?;
/// assert_eq!(labels.shape(), &[60_000]);
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn load(path: impl AsRef<Path>) -> Result<NdArray> {
    load_with(path, Limits::default())
}

/// [`load`] with the given [`Limits`] instead of the defaults.
///
/// # Examples
/// ```no_run
/// use convinit::{data::idx, limits::Limits};
/// let big = Limits::default().with_max_input_bytes(4 << 30).with_max_result_bytes(4 << 30);
/// let images = idx::load_with("huge-images-idx3-ubyte.gz", big)?;
/// # Ok::<(), convinit::Error>(())
/// ```
pub fn load_with(path: impl AsRef<Path>, limits: Limits) -> Result<NdArray> {
    load_checked(path.as_ref(), limits, &mut |_| Ok(()))
}

/// [`load_with`], calling `check` with the dimensions once the header is read and
/// before any data is: an error from it is returned as is.
pub(crate) fn load_checked(
    path: &Path,
    limits: Limits,
    check: &mut dyn FnMut(&[usize]) -> Result<()>,
) -> Result<NdArray> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    from_reader_checked(file, limits, check).map_err(|e| match e {
        Error::Io { context, source } => Error::Io {
            context: format!("{context} ({})", path.display()),
            source,
        },
        other => other,
    })
}

/// Reads IDX data (plain or gzipped) from any reader.
pub fn from_reader<R: Read>(reader: R) -> Result<NdArray> {
    from_reader_with(reader, Limits::default())
}

/// [`from_reader`] with the given [`Limits`] instead of the defaults.
pub fn from_reader_with<R: Read>(reader: R, limits: Limits) -> Result<NdArray> {
    from_reader_checked(reader, limits, &mut |_| Ok(()))
}

fn from_reader_checked<R: Read>(
    reader: R,
    limits: Limits,
    check: &mut dyn FnMut(&[usize]) -> Result<()>,
) -> Result<NdArray> {
    let (gz, chained) = sniff_gzip(reader, FORMAT)?;
    if gz {
        let dec =
            flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 16, chained));
        read(Input::new(dec, true, FORMAT, limits), check)
    } else {
        read(Input::new(chained, false, FORMAT, limits), check)
    }
}

fn invalid(offset: u64, message: String) -> Error {
    Error::InvalidData {
        format: FORMAT,
        offset,
        message,
    }
}

fn read<R: Read>(
    mut input: Input<R>,
    check: &mut dyn FnMut(&[usize]) -> Result<()>,
) -> Result<NdArray> {
    let magic: [u8; 4] = input.array("the 4-byte magic number")?;
    let [z0, z1, code, ndim] = magic;
    if z0 != 0 || z1 != 0 {
        return Err(invalid(
            0,
            format!("not an IDX file: magic starts {z0:#04x} {z1:#04x}, expected 0x00 0x00"),
        ));
    }
    let (itemsize, name) = match code {
        0x08 => (1, "u8"),
        0x09 => (1, "i8"),
        0x0B => (2, "i16"),
        0x0C => (4, "i32"),
        0x0D => (4, "f32"),
        0x0E => (8, "f64"),
        other => {
            return Err(invalid(2, format!("unknown IDX type code {other:#04x}")));
        }
    };
    if ndim == 0 {
        return Err(invalid(3, "zero dimensions".into()));
    }
    let mut shape = Vec::with_capacity(ndim.into());
    for i in 0..ndim {
        let d = u32::from_be_bytes(input.array(&format!("dimension {i} of {ndim}"))?);
        shape.push(usize::try_from(d).map_err(|_| invalid(4, "dimension too large".into()))?);
    }
    let header = input.offset();
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| isize::try_from(n).is_ok());
    let nbytes = count.and_then(|c| c.checked_mul(itemsize));
    let (Some(count), Some(nbytes)) = (count, nbytes) else {
        return Err(invalid(4, format!("dimensions {shape:?} are too large")));
    };
    // Before any data is read: the raw chunks and the array are both at most this.
    input.limits().check_result(FORMAT, nbytes as u64)?;
    check(&shape)?;
    let raw = input.raw(
        nbytes as u64,
        &format!("{name} data of shape {shape:?} ({nbytes} bytes from byte {header})"),
    )?;
    let end = input.offset();
    if input.next_byte()?.is_some() {
        return Err(invalid(
            end,
            format!("trailing bytes after the {nbytes} bytes of data of shape {shape:?}"),
        ));
    }
    let dim = IxDyn(&shape);
    let shaped = |r: std::result::Result<NdArray, ndarray::ShapeError>| {
        r.map_err(|e| invalid(header, format!("cannot shape data as {shape:?}: {e}")))
    };
    shaped(match code {
        0x08 => {
            ArrayD::from_shape_vec(dim, convert(raw, count, u8::from_be_bytes)).map(NdArray::U8)
        }
        0x09 => {
            ArrayD::from_shape_vec(dim, convert(raw, count, i8::from_be_bytes)).map(NdArray::I8)
        }
        0x0B => {
            ArrayD::from_shape_vec(dim, convert(raw, count, i16::from_be_bytes)).map(NdArray::I16)
        }
        0x0C => {
            ArrayD::from_shape_vec(dim, convert(raw, count, i32::from_be_bytes)).map(NdArray::I32)
        }
        0x0D => {
            ArrayD::from_shape_vec(dim, convert(raw, count, f32::from_be_bytes)).map(NdArray::F32)
        }
        _ => ArrayD::from_shape_vec(dim, convert(raw, count, f64::from_be_bytes)).map(NdArray::F64),
    })
}
