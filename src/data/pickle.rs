//! A small, strict pickle reader for numpy data: `convinit::data::pickle`.
//!
//! [`load`] (a path) and [`from_reader`] (any [`Read`]) run a pickle virtual machine
//! over the (optionally gzipped: detected by the magic bytes `1f 8b`) stream and return
//! the Python structure as a [`Value`]: tuples, lists, dicts, ints, floats, strings,
//! `None`, bools, bytes, and every numpy array rebuilt as a typed [`NdArray`] with its
//! shape, dtype, byte order and memory order (C or Fortran).
//!
//! ## What it reads
//! - The classic files written by Python 2's `cPickle` (protocol 2): arrays as
//!   `numpy.core.multiarray._reconstruct` + `BUILD` with the raw data as a `BINSTRING`,
//!   dtypes as `numpy.dtype(('f4', 0, 1))` + `BUILD` state `(3, '<', None, ...)`.
//!   This is the format of the deeplearning.net / fast.ai `mnist.pkl.gz`.
//! - What numpy 2 writes with protocols 2 to 5 (in-band): `_codecs.encode(str, 'latin1')`
//!   for bytes in protocol 2, `BINBYTES` in 3 and 4, `numpy._core.numeric._frombuffer`
//!   with `BYTEARRAY8` in 5, with `FRAME`, `MEMOIZE`, `STACK_GLOBAL` and friends.
//!
//! Python 2 `str` values (`BINSTRING`, `SHORT_BINSTRING`) are decoded as latin-1 text
//! when they end up in the result, like `pickle.load(f, encoding='latin-1')` does; when
//! they hold array data they are used as raw bytes.
//!
//! Only these globals are accepted: `numpy[._]core.multiarray._reconstruct`,
//! `numpy.ndarray`, `numpy.dtype`, `numpy[._]core.numeric._frombuffer`,
//! `numpy[._]core.multiarray.scalar`, `_codecs.encode`, and `bytes` / `bytearray` from
//! `builtins` (`__builtin__`). Anything else (arbitrary classes, `copyreg`,
//! `numpy.ma`, ...) is reported as [`Error::Unsupported`]: unpickling is never allowed
//! to run arbitrary code, and here there is no code to run anyway. Supported dtypes are
//! `f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1` in either byte order; object (`O`), string
//! (`S`, `U`), void, complex, float16 and datetime arrays are `Unsupported`.
//!
//! ## Why not `serde-pickle`
//! `serde-pickle` 1.2's `Value` drops the dtype descriptor when `BUILD` is applied to a
//! `numpy.dtype` (only the state tuple survives, not `'f4'`/`'i8'`), so `f4` and `i4`
//! look the same and the element type could only be guessed from sizes. It also
//! materialises the whole decompressed pickle in memory before the arrays are built.
//! This reader streams: long payloads are read in [`CHUNK`]-sized pieces and converted
//! chunk by chunk into the typed array, freeing each piece as it goes, so the peak
//! memory is the arrays plus a chunk, and a lying length field fails at end of input
//! without ever allocating the claimed size.
//!
//! When the machine's stack shows that a long payload is the data of the ndarray being
//! rebuilt (the `_reconstruct` state `(version, shape, dtype, is_fortran, data)` with
//! only `data` to come, and the length is exactly shape x itemsize), the payload is
//! converted to the element type *while it is read*, through one reused staging
//! buffer: then not even the raw chunks are held. Measured on the 16 MB
//! `mnist.pkl.gz` (2 shared cores): about 0.2 s and a peak RSS of 1.02x the returned
//! arrays, against 0.58 s and 2.1x for Python's
//! `pickle.load(gzip.open(path), encoding='latin-1')`. Decompressing on a second
//! thread was tried and did not measurably help, so reading is single-threaded.
//!
//! ## Limits
//! [`load`] and [`from_reader`] use [`Limits::default`]; [`load_with`] and
//! [`from_reader_with`] take any [`Limits`]. Two sizes are held to them, each 1 GiB by
//! default (about five times the full MNIST):
//! - the **decompressed input**: the bytes read from the (gunzipped) stream. Reading
//!   stops one byte past the limit, so a gzip bomb is never inflated further;
//! - the **result**: each array's data and 16 bytes per dimension (shape and strides),
//!   charged when the array is built (before its data is read, when the stream shows
//!   it is array data), then for the returned [`Value`] `size_of::<Value>()` bytes per
//!   value, the length of each `str` (as UTF-8) and `bytes`, and again the full size of
//!   every extra copy of a shared array. Arrays built while reading count even if they
//!   are dropped before the end.
//!
//! Going over either is [`Error::LimitExceeded`], which names the setter to call:
//! `Limits::default().with_max_input_bytes(..)` or `.with_max_result_bytes(..)`
//! (or [`Limits::unlimited`] for trusted input).
//!
//! Independently of the limits, the copies made for shared references (a [`Value`] is
//! a tree, so each reference to a shared object is a copy, charged at its real size)
//! may not add up to more than 256 bytes per input byte plus 4 MiB, and arrays may not
//! have more than [`MAX_NDIM`] (64) dimensions, as in numpy.
//!
//! ## Errors
//! Bad input never panics; every error names what is wrong and the byte offset in the
//! decompressed stream: [`Error::Truncated`] (input ended), [`Error::InvalidData`]
//! (not a pickle, stack underflow, missing MARK, memo miss, data length that does not
//! match shape x itemsize, more than [`MAX_NDIM`] dimensions, corrupt gzip, nesting
//! deeper than [`MAX_DEPTH`], ...), [`Error::Unsupported`] (unknown globals or opcodes,
//! unsupported dtypes, integers wider than 64 bits, recursive structures, out-of-band
//! buffers, and shared references that would expand the result beyond the bound
//! above: a pickle bomb) and [`Error::LimitExceeded`].
//!
//! # Examples
//! ```
//! use convinit::data::pickle;
//! # fn main() -> convinit::Result<()> {
//! // A protocol 2 pickle of the tuple (1, 'a', None) written by Python.
//! let bytes = b"\x80\x02K\x01X\x01\x00\x00\x00aN\x87q\x00.";
//! let v = pickle::from_reader(&bytes[..])?;
//! let items = v.as_tuple().expect("a tuple");
//! assert_eq!(items[0].as_int(), Some(1));
//! assert_eq!(items[1].as_str(), Some("a"));
//! assert!(items[2].is_none());
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::error::{Error, Result};
use crate::limits::Limits;

const FORMAT: &str = "pickle";

/// Size of the pieces long payloads are read in (1 MiB, a multiple of every itemsize).
pub const CHUNK: usize = 1 << 20;
/// Deepest nesting of containers accepted.
pub const MAX_DEPTH: u32 = 200;
/// Largest number of items the pickle machine's stack may hold.
pub const MAX_STACK: usize = 1 << 20;
/// Largest number of memo entries accepted.
pub const MAX_MEMO: usize = 1 << 22;
/// Most dimensions an array may have: numpy's own limit (`NPY_MAXDIMS`).
pub const MAX_NDIM: usize = 64;
/// Longest text line accepted by the protocol 0 opcodes (`GLOBAL`, `INT`, `GET`, ...).
const MAX_LINE: usize = 1024;

// ---------------------------------------------------------------------------------
// Public values

/// The element type of an [`NdArray`], named like numpy's `dtype.str` without the byte
/// order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// `float32` (`f4`).
    F32,
    /// `float64` (`f8`).
    F64,
    /// `int64` (`i8`).
    I64,
    /// `int32` (`i4`).
    I32,
    /// `int16` (`i2`).
    I16,
    /// `int8` (`i1`).
    I8,
    /// `uint8` (`u1`).
    U8,
    /// `uint16` (`u2`).
    U16,
    /// `uint32` (`u4`).
    U32,
    /// `uint64` (`u8`).
    U64,
    /// `bool` (`b1`).
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// numpy's name for the type (`"float32"`, `"int64"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
        }
    }

    /// Parses a numpy type descriptor such as `"f4"`, `"<i8"` or `"|u1"`, returning the
    /// type and whether the descriptor says big-endian (`>`). Descriptors of types this
    /// crate does not hold (objects, strings, complex, ...) give `Err` with the reason.
    pub fn parse_descr(descr: &str) -> std::result::Result<(DType, Option<bool>), String> {
        let (order, rest) = match descr.as_bytes().first() {
            Some(b'<') => (Some(false), &descr[1..]),
            Some(b'>') => (Some(true), &descr[1..]),
            Some(b'=') | Some(b'|') => (None, &descr[1..]),
            _ => (None, descr),
        };
        let t = match rest {
            "f4" => DType::F32,
            "f8" => DType::F64,
            "i8" => DType::I64,
            "i4" => DType::I32,
            "i2" => DType::I16,
            "i1" => DType::I8,
            "u1" => DType::U8,
            "u2" => DType::U16,
            "u4" => DType::U32,
            "u8" => DType::U64,
            "b1" => DType::Bool,
            _ => {
                let why = match rest.as_bytes().first() {
                    Some(b'O') => "object arrays are not supported",
                    Some(b'U' | b'S' | b'a') => "string arrays are not supported",
                    Some(b'V') => "void/structured arrays are not supported",
                    Some(b'c') => "complex arrays are not supported",
                    Some(b'M' | b'm') => "datetime arrays are not supported",
                    _ => "unknown or unsupported element type",
                };
                return Err(format!("dtype {descr:?}: {why}"));
            }
        };
        Ok((t, order))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A numpy array rebuilt with its element type.
///
/// The logical shape and element values are numpy's; an array pickled in Fortran
/// order is returned with Fortran (column-major) strides.
#[derive(Clone, Debug, PartialEq)]
pub enum NdArray {
    /// `float32`.
    F32(ArrayD<f32>),
    /// `float64`.
    F64(ArrayD<f64>),
    /// `int64`.
    I64(ArrayD<i64>),
    /// `int32`.
    I32(ArrayD<i32>),
    /// `int16`.
    I16(ArrayD<i16>),
    /// `int8`.
    I8(ArrayD<i8>),
    /// `uint8`.
    U8(ArrayD<u8>),
    /// `uint16`.
    U16(ArrayD<u16>),
    /// `uint32`.
    U32(ArrayD<u32>),
    /// `uint64`.
    U64(ArrayD<u64>),
    /// `bool`.
    Bool(ArrayD<bool>),
}

macro_rules! each_array {
    ($self:expr, $a:ident => $body:expr) => {
        match $self {
            NdArray::F32($a) => $body,
            NdArray::F64($a) => $body,
            NdArray::I64($a) => $body,
            NdArray::I32($a) => $body,
            NdArray::I16($a) => $body,
            NdArray::I8($a) => $body,
            NdArray::U8($a) => $body,
            NdArray::U16($a) => $body,
            NdArray::U32($a) => $body,
            NdArray::U64($a) => $body,
            NdArray::Bool($a) => $body,
        }
    };
}

macro_rules! accessors {
    ($($variant:ident, $t:ty, $as:ident, $into:ident);* $(;)?) => {
        impl NdArray {
            $(
                #[doc = concat!("The array if its dtype is `", stringify!($t), "`.")]
                pub fn $as(&self) -> Option<&ArrayD<$t>> {
                    match self {
                        NdArray::$variant(a) => Some(a),
                        _ => None,
                    }
                }

                #[doc = concat!("Takes the array if its dtype is `", stringify!($t),
                    "`, or gives `self` back.")]
                pub fn $into(self) -> std::result::Result<ArrayD<$t>, NdArray> {
                    match self {
                        NdArray::$variant(a) => Ok(a),
                        other => Err(other),
                    }
                }
            )*
        }
    };
}

accessors! {
    F32, f32, as_f32, into_f32;
    F64, f64, as_f64, into_f64;
    I64, i64, as_i64, into_i64;
    I32, i32, as_i32, into_i32;
    I16, i16, as_i16, into_i16;
    I8, i8, as_i8, into_i8;
    U8, u8, as_u8, into_u8;
    U16, u16, as_u16, into_u16;
    U32, u32, as_u32, into_u32;
    U64, u64, as_u64, into_u64;
    Bool, bool, as_bool, into_bool;
}

macro_rules! from_array {
    ($($variant:ident, $t:ty);* $(;)?) => {
        $(
            impl From<ArrayD<$t>> for NdArray {
                fn from(a: ArrayD<$t>) -> Self {
                    NdArray::$variant(a)
                }
            }
        )*
    };
}

from_array! {
    F32, f32; F64, f64; I64, i64; I32, i32; I16, i16; I8, i8;
    U8, u8; U16, u16; U32, u32; U64, u64; Bool, bool;
}

impl NdArray {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            NdArray::F32(_) => DType::F32,
            NdArray::F64(_) => DType::F64,
            NdArray::I64(_) => DType::I64,
            NdArray::I32(_) => DType::I32,
            NdArray::I16(_) => DType::I16,
            NdArray::I8(_) => DType::I8,
            NdArray::U8(_) => DType::U8,
            NdArray::U16(_) => DType::U16,
            NdArray::U32(_) => DType::U32,
            NdArray::U64(_) => DType::U64,
            NdArray::Bool(_) => DType::Bool,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        each_array!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_array!(self, a => a.len())
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the data is laid out in C (row-major) order. A Fortran-order array with
    /// more than one non-trivial axis gives `false`.
    pub fn is_c_order(&self) -> bool {
        each_array!(self, a => a.is_standard_layout())
    }

    /// Converts any integer array to `i64` (unsigned 64-bit values above `i64::MAX`
    /// give `None`, as do float and bool arrays).
    pub fn to_i64(&self) -> Option<ArrayD<i64>> {
        Some(match self {
            NdArray::I64(a) => a.clone(),
            NdArray::I32(a) => a.mapv(i64::from),
            NdArray::I16(a) => a.mapv(i64::from),
            NdArray::I8(a) => a.mapv(i64::from),
            NdArray::U8(a) => a.mapv(i64::from),
            NdArray::U16(a) => a.mapv(i64::from),
            NdArray::U32(a) => a.mapv(i64::from),
            NdArray::U64(a) => {
                if a.iter().any(|&v| i64::try_from(v).is_err()) {
                    return None;
                }
                a.mapv(|v| v as i64)
            }
            _ => return None,
        })
    }
}

/// A Python value read from a pickle.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int` that fits in 64 bits.
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str` (Python 2 `str` is decoded as latin-1).
    Str(String),
    /// `bytes` or `bytearray`.
    Bytes(Vec<u8>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `list`.
    List(Vec<Value>),
    /// A `dict`, as its items in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A numpy array (or numpy scalar, as a 0-dimensional array).
    Array(NdArray),
}

impl Value {
    /// Python's name for the value's type (`"tuple"`, `"numpy.ndarray"`, ...), for
    /// messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Array(_) => "numpy.ndarray",
        }
    }

    /// Whether the value is `None`.
    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// The integer, if the value is an `int`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The float, if the value is a `float`.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The boolean, if the value is a `bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The string, if the value is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if the value is `bytes` or `bytearray`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The items, if the value is a tuple.
    pub fn as_tuple(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(t) => Some(t),
            _ => None,
        }
    }

    /// The items, if the value is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The items, if the value is a tuple or a list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(t) | Value::List(t) => Some(t),
            _ => None,
        }
    }

    /// Takes the items, if the value is a tuple or a list; gives `self` back otherwise.
    pub fn into_seq(self) -> std::result::Result<Vec<Value>, Value> {
        match self {
            Value::Tuple(t) | Value::List(t) => Ok(t),
            other => Err(other),
        }
    }

    /// The items, if the value is a dict.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Looks up a string key in a dict (the last matching item, like Python).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The array, if the value is a numpy array.
    pub fn as_array(&self) -> Option<&NdArray> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Takes the array, if the value is a numpy array; gives `self` back otherwise.
    pub fn into_array(self) -> std::result::Result<NdArray, Value> {
        match self {
            Value::Array(a) => Ok(a),
            other => Err(other),
        }
    }
}

// ---------------------------------------------------------------------------------
// Entry points

/// Reads a pickle file (plain or gzipped) and returns its value.
///
/// # Examples
/// ```no_run
/// use convinit::data::pickle;
/// # fn main() -> convinit::Result<()> {
/// let v = pickle::load("mnist.pkl.gz")?;
/// let train = &v.as_seq().unwrap()[0];
/// let x = train.as_seq().unwrap()[0].as_array().unwrap();
/// assert_eq!(x.shape(), &[50_000, 784]);
/// # Ok(())
/// # }
/// ```
pub fn load(path: impl AsRef<Path>) -> Result<Value> {
    load_with(path, Limits::default())
}

/// [`load`] with the given [`Limits`] instead of the defaults (1 GiB of decompressed
/// input, 1 GiB of result).
///
/// # Examples
/// ```no_run
/// use convinit::{data::pickle, limits::Limits};
/// # fn main() -> convinit::Result<()> {
/// let v = pickle::load_with("big.pkl.gz", Limits::default().with_max_input_bytes(8 << 30)
///     .with_max_result_bytes(8 << 30))?;
/// # Ok(())
/// # }
/// ```
pub fn load_with(path: impl AsRef<Path>, limits: Limits) -> Result<Value> {
    let path = path.as_ref();
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    from_reader_with(file, limits)
}

/// Reads a pickle (plain or gzipped, detected by the magic bytes) from any reader.
///
/// The reader is consumed up to the pickle's `STOP` opcode (for gzip, decompression
/// may read further). Wrap files in nothing: reads are already buffered.
///
/// # Examples
/// ```
/// use convinit::data::pickle::{self, DType};
/// # fn main() -> convinit::Result<()> {
/// // numpy 2: pickle.dumps(np.arange(3, dtype=np.int16), protocol=5)
/// let bytes: &[u8] = b"\x80\x05\x95z\x00\x00\x00\x00\x00\x00\x00\
///     \x8c\x13numpy._core.numeric\x94\x8c\x0b_frombuffer\x94\x93\x94\
///     (\x96\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x02\x00\x94\
///     \x8c\x05numpy\x94\x8c\x05dtype\x94\x93\x94\x8c\x02i2\x94\x89\x88\x87\x94R\x94\
///     (K\x03\x8c\x01<\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94b\
///     K\x03\x85\x94\x8c\x01C\x94t\x94R\x94.";
/// let a = pickle::from_reader(bytes)?.into_array().unwrap();
/// assert_eq!(a.dtype(), DType::I16);
/// assert_eq!(a.as_i16().unwrap().as_slice().unwrap(), &[0, 1, 2]);
/// # Ok(())
/// # }
/// ```
pub fn from_reader<R: Read>(reader: R) -> Result<Value> {
    from_reader_with(reader, Limits::default())
}

/// [`from_reader`] with the given [`Limits`] instead of the defaults.
///
/// Going over either limit is [`Error::LimitExceeded`] naming the setter that raises it;
/// see the [module documentation](self#limits) for what is counted.
///
/// # Examples
/// ```
/// use convinit::{Error, data::pickle, limits::Limits};
/// let bytes = b"\x80\x02K\x01X\x01\x00\x00\x00aN\x87q\x00.";
/// let tight = Limits::default().with_max_input_bytes(10);
/// let e = pickle::from_reader_with(&bytes[..], tight).unwrap_err();
/// assert!(matches!(e, Error::LimitExceeded { setting: "Limits::with_max_input_bytes", .. }));
/// ```
pub fn from_reader_with<R: Read>(reader: R, limits: Limits) -> Result<Value> {
    let (gz, chained) = sniff_gzip(reader, FORMAT)?;
    if gz {
        let gz =
            flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 16, chained));
        Machine::new(Input::new(gz, true, FORMAT, limits)).run()
    } else {
        Machine::new(Input::new(chained, false, FORMAT, limits)).run()
    }
}

/// The chained reader [`sniff_gzip`] returns.
pub(crate) type Sniffed<R> = std::io::Chain<std::io::Take<std::io::Cursor<[u8; 2]>>, R>;

/// Reads the first two bytes to detect gzip, and gives back a reader of the whole input.
pub(crate) fn sniff_gzip<R: Read>(reader: R, format: &str) -> Result<(bool, Sniffed<R>)> {
    let mut reader = reader;
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < 2 {
        match reader.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("reading {format}"), e)),
        }
    }
    let head = std::io::Cursor::new(magic).take(n as u64);
    Ok((n == 2 && magic == [0x1f, 0x8b], head.chain(reader)))
}

// ---------------------------------------------------------------------------------
// Buffered input with offsets

pub(crate) struct Input<R> {
    format: &'static str,
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    gz: bool,
    /// The limits in force ([`Limits::max_input_bytes`] is enforced here).
    limits: Limits,
    /// Bytes read from `inner` so far (the decompressed stream when `gz`).
    read_total: u64,
}

impl<R: Read> Input<R> {
    pub(crate) fn new(inner: R, gz: bool, format: &'static str, limits: Limits) -> Self {
        Input {
            format,
            inner,
            buf: vec![0; 1 << 16],
            pos: 0,
            end: 0,
            base: 0,
            gz,
            limits,
            read_total: 0,
        }
    }

    /// The limits this input was opened with.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn read_error(&self, e: std::io::Error, offset: u64) -> Error {
        use std::io::ErrorKind;
        if self.gz {
            match e.kind() {
                ErrorKind::UnexpectedEof => Error::Truncated {
                    format: "gzip",
                    offset,
                    context: format!("the compressed stream ({e})"),
                },
                ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::Other => {
                    Error::InvalidData {
                        format: "gzip",
                        offset,
                        message: format!("corrupt compressed stream: {e}"),
                    }
                }
                _ => Error::io("reading gzip stream", e),
            }
        } else {
            Error::io(format!("reading {}", self.format), e)
        }
    }

    /// Reads into `dst`, never more than one byte past the input limit: a
    /// decompression bomb is stopped after `max_input_bytes + 1` bytes, not inflated.
    fn raw_read(&mut self, dst: &mut [u8], offset: u64) -> Result<usize> {
        let limit = self.limits.max_input_bytes();
        let room = limit.saturating_sub(self.read_total).saturating_add(1);
        let want = dst.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let dst = &mut dst[..want];
        loop {
            match self.inner.read(dst) {
                Ok(n) => {
                    self.read_total = self.read_total.saturating_add(n as u64);
                    self.limits.check_input(self.format, self.read_total)?;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e, offset)),
            }
        }
    }

    /// Refills the buffer; `false` at end of input.
    fn fill(&mut self) -> Result<bool> {
        self.base += self.end as u64;
        self.pos = 0;
        self.end = 0;
        let off = self.base;
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.raw_read(&mut buf, off);
        self.buf = buf;
        self.end = r?;
        Ok(self.end > 0)
    }

    pub(crate) fn truncated(&self, what: &str) -> Error {
        Error::Truncated {
            format: self.format,
            offset: self.offset(),
            context: what.to_string(),
        }
    }

    /// The next byte, or `None` at end of input.
    pub(crate) fn next_byte(&mut self) -> Result<Option<u8>> {
        if self.pos >= self.end && !self.fill()? {
            return Ok(None);
        }
        let b = self.buf.get(self.pos).copied();
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        self.next_byte()?.ok_or_else(|| self.truncated(what))
    }

    pub(crate) fn exact(&mut self, dst: &mut [u8], what: &str) -> Result<()> {
        let mut done = 0;
        while done < dst.len() {
            if self.pos < self.end {
                let avail = &self.buf[self.pos..self.end];
                let k = avail.len().min(dst.len() - done);
                dst[done..done + k].copy_from_slice(&avail[..k]);
                self.pos += k;
                done += k;
            } else if dst.len() - done >= self.buf.len() {
                // Large remainder: read straight into the destination.
                self.base += self.end as u64;
                self.pos = 0;
                self.end = 0;
                let off = self.base;
                let n = self.raw_read(&mut dst[done..], off)?;
                if n == 0 {
                    return Err(self.truncated(what));
                }
                self.base += n as u64;
                done += n;
            } else if !self.fill()? {
                return Err(self.truncated(what));
            }
        }
        Ok(())
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        self.exact(&mut a, what)?;
        Ok(a)
    }

    /// Reads `len` bytes in chunks of at most [`CHUNK`] bytes: a lying length fails at
    /// end of input having allocated no more than what was really there plus a chunk.
    pub(crate) fn raw(&mut self, len: u64, what: &str) -> Result<Raw> {
        let mut chunks = Vec::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let mut chunk = vec![0u8; n];
            self.exact(&mut chunk, what)?;
            chunks.push(chunk);
            left -= n as u64;
        }
        Ok(Raw { chunks, len })
    }

    /// Reads `count` elements of `N` bytes each, converting them with `f` through one
    /// reused staging buffer of at most [`CHUNK`] bytes. The result grows with the data
    /// actually read, so a lying count fails at end of input without a huge allocation.
    pub(crate) fn typed<T, const N: usize>(
        &mut self,
        count: usize,
        f: impl Fn([u8; N]) -> T,
        what: &str,
    ) -> Result<Vec<T>> {
        let total = count.checked_mul(N).ok_or_else(|| self.truncated(what))?;
        let mut out: Vec<T> = Vec::new();
        let mut stage = vec![0u8; total.min(CHUNK)];
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK);
            let Some(buf) = stage.get_mut(..n) else { break };
            self.exact(buf, what)?;
            out.reserve(n / N);
            out.extend(buf.chunks_exact(N).map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            }));
            left -= n;
        }
        out.shrink_to_fit();
        Ok(out)
    }

    /// A protocol 0 text line (without the newline), at most [`MAX_LINE`] bytes, every
    /// byte checked by `ok`.
    fn line(&mut self, what: &str, ok: fn(u8) -> bool) -> Result<String> {
        let mut s = Vec::new();
        loop {
            let at = self.offset();
            let b = self.u8(what)?;
            if b == b'\n' {
                break;
            }
            if !ok(b) || s.len() >= MAX_LINE {
                return Err(Error::InvalidData {
                    format: FORMAT,
                    offset: at,
                    message: if s.len() >= MAX_LINE {
                        format!("{what}: line longer than {MAX_LINE} bytes")
                    } else {
                        format!("{what}: unexpected byte 0x{b:02x} in text argument")
                    },
                });
            }
            s.push(b);
        }
        // Every byte passed `ok`, which only accepts ASCII.
        String::from_utf8(s).map_err(|_| Error::InvalidData {
            format: FORMAT,
            offset: self.offset(),
            message: format!("{what}: text argument is not ASCII"),
        })
    }
}

/// A long byte payload, held as chunks.
#[derive(Clone, Debug, Default)]
pub(crate) struct Raw {
    chunks: Vec<Vec<u8>>,
    len: u64,
}

impl Raw {
    fn from_vec(v: Vec<u8>) -> Raw {
        Raw {
            len: v.len() as u64,
            chunks: vec![v],
        }
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.chunks.iter().map(Vec::len).sum());
        for c in &self.chunks {
            v.extend_from_slice(c);
        }
        v
    }

    fn concat(self) -> Vec<u8> {
        if self.chunks.len() == 1 {
            return self.chunks.into_iter().next().unwrap_or_default();
        }
        let mut v = Vec::with_capacity(self.chunks.iter().map(Vec::len).sum());
        for c in self.chunks {
            v.extend_from_slice(&c);
        }
        v
    }

    fn latin1(&self) -> String {
        self.chunks
            .iter()
            .flat_map(|c| c.iter().map(|&b| char::from(b)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------
// Machine objects

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    Reconstruct,
    NdarrayType,
    Dtype,
    FromBuffer,
    Scalar,
    CodecsEncode,
    Bytes,
    ByteArray,
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Global> {
        let numpy_core = matches!(
            module,
            "numpy.core.multiarray" | "numpy._core.multiarray" | "numpy.core" | "numpy._core"
        );
        Some(match (module, name) {
            (_, "_reconstruct") if numpy_core => Global::Reconstruct,
            (_, "scalar") if numpy_core => Global::Scalar,
            ("numpy", "ndarray") => Global::NdarrayType,
            ("numpy", "dtype") => Global::Dtype,
            ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => Global::FromBuffer,
            ("_codecs", "encode") => Global::CodecsEncode,
            ("builtins" | "__builtin__", "bytes") => Global::Bytes,
            ("builtins" | "__builtin__", "bytearray") => Global::ByteArray,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Global::Reconstruct => "numpy.core.multiarray._reconstruct",
            Global::NdarrayType => "numpy.ndarray",
            Global::Dtype => "numpy.dtype",
            Global::FromBuffer => "numpy.core.numeric._frombuffer",
            Global::Scalar => "numpy.core.multiarray.scalar",
            Global::CodecsEncode => "_codecs.encode",
            Global::Bytes => "builtins.bytes",
            Global::ByteArray => "builtins.bytearray",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct DtypeObj {
    kind: DType,
    big_endian: bool,
}

#[derive(Debug)]
enum ArrayObj {
    /// `_reconstruct` made it; `BUILD` has not filled it yet.
    Pending,
    Built(NdArray),
}

/// A byte payload: raw chunks, or (when the stack showed that it is the data of the
/// ndarray being rebuilt) already converted to the element type while it was read.
#[derive(Clone, Debug)]
enum Payload {
    Raw(Raw),
    /// A 1-D array of the elements and whether the bytes were big-endian.
    Typed(NdArray, bool),
}

impl Payload {
    /// The length in bytes, as in the pickle.
    fn byte_len(&self) -> u64 {
        match self {
            Payload::Raw(r) => r.len,
            Payload::Typed(a, _) => (a.len() as u64).saturating_mul(a.dtype().itemsize() as u64),
        }
    }

    /// The bytes as they were in the pickle.
    fn into_raw(self) -> Raw {
        match self {
            Payload::Raw(r) => r,
            typed => Raw::from_vec(typed.to_bytes()),
        }
    }

    /// A copy of the bytes as they were in the pickle.
    fn to_bytes(&self) -> Vec<u8> {
        let (a, be) = match self {
            Payload::Raw(r) => return r.to_vec(),
            Payload::Typed(a, be) => (a, *be),
        };
        macro_rules! bytes {
            ($a:expr) => {
                if be {
                    $a.iter().flat_map(|v| v.to_be_bytes()).collect()
                } else {
                    $a.iter().flat_map(|v| v.to_le_bytes()).collect()
                }
            };
        }
        match a {
            NdArray::F32(x) => bytes!(x),
            NdArray::F64(x) => bytes!(x),
            NdArray::I64(x) => bytes!(x),
            NdArray::I32(x) => bytes!(x),
            NdArray::I16(x) => bytes!(x),
            NdArray::I8(x) => bytes!(x),
            NdArray::U8(x) => bytes!(x),
            NdArray::U16(x) => bytes!(x),
            NdArray::U32(x) => bytes!(x),
            NdArray::U64(x) => bytes!(x),
            NdArray::Bool(x) => x.iter().map(|&b| u8::from(b)).collect(),
        }
    }

    /// The bytes decoded as latin-1 text.
    fn latin1(&self) -> String {
        match self {
            Payload::Raw(r) => r.latin1(),
            typed => Raw::from_vec(typed.to_bytes()).latin1(),
        }
    }

    /// The size of [`Payload::latin1`]'s text: one UTF-8 byte per byte below 0x80, two
    /// per byte above (for a typed payload, that upper bound).
    fn latin1_len(&self) -> u64 {
        match self {
            Payload::Raw(r) => {
                let high = r.chunks.iter().flatten().filter(|&&b| b >= 0x80).count();
                r.len.saturating_add(high as u64)
            }
            typed => typed.byte_len().saturating_mul(2),
        }
    }
}

/// A byte payload shared between the stack and the memo; emptied when an array takes
/// its data.
type RawCell = RefCell<Option<Payload>>;

#[derive(Debug)]
struct Seq {
    items: RefCell<Vec<Obj>>,
    depth: Cell<u32>,
    /// Placed inside another container: from then on it must not change.
    embedded: Cell<bool>,
}

#[derive(Debug)]
struct Map {
    items: RefCell<Vec<(Obj, Obj)>>,
    /// Position in `items` of each key that can be equal to another ([`KeyId`]), so
    /// that building a dict of n items is O(n), not O(n^2) (a 600 kB pickle of a
    /// 100 000-item dict took minutes with a linear search per item).
    index: RefCell<HashMap<KeyId, usize>>,
    depth: Cell<u32>,
    embedded: Cell<bool>,
}

#[derive(Debug)]
struct Tup {
    items: Vec<Obj>,
    depth: u32,
}

#[derive(Clone, Debug)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// Python 3 `bytes` / `bytearray`.
    Bytes(Rc<RawCell>),
    /// Python 2 `str`: latin-1 text, or raw array data.
    Str2(Rc<RawCell>),
    Tuple(Rc<Tup>),
    List(Rc<Seq>),
    Dict(Rc<Map>),
    Global(Global),
    Dtype(Rc<Cell<DtypeObj>>),
    Array(Rc<RefCell<ArrayObj>>),
}

impl Obj {
    fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "bool",
            Obj::Int(_) => "int",
            Obj::Float(_) => "float",
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::Str2(_) => "str (Python 2)",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "global",
            Obj::Dtype(_) => "numpy.dtype",
            Obj::Array(_) => "numpy.ndarray",
        }
    }

    fn depth(&self) -> u32 {
        match self {
            Obj::Tuple(t) => t.depth,
            Obj::List(l) => l.depth.get(),
            Obj::Dict(d) => d.depth.get(),
            _ => 0,
        }
    }

    /// Marks a container as placed inside another one.
    fn embed(&self) {
        match self {
            Obj::List(l) => l.embedded.set(true),
            Obj::Dict(d) => d.embedded.set(true),
            _ => {}
        }
    }

    fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Obj::Str(s) => Some(Cow::Borrowed(s)),
            Obj::Str2(r) => r.borrow().as_ref().map(|p| Cow::Owned(p.latin1())),
            _ => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Obj::Int(i) => Some(*i),
            Obj::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------
// The machine

struct Machine<R> {
    input: Input<R>,
    stack: Vec<Obj>,
    marks: Vec<usize>,
    memo: HashMap<u64, Obj>,
    /// Offset of the opcode being executed.
    at: u64,
    op: &'static str,
    /// Bytes copied out of shared objects so far (dict key text hashed, strings
    /// encoded to bytes), bounded like the result's expansion: a long key or string
    /// used again and again through the memo would otherwise be copied in full each time
    /// (a 1 MB key x 100 000 dict inserts, or 1000 `_codecs.encode` calls on a 1 MB str).
    copied: Cell<u64>,
    /// Bytes of result charged while reading (array data and shapes), checked against
    /// [`Limits::max_result_bytes`] before each array is allocated.
    result: Cell<u64>,
}

fn opname(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

fn is_digit_line(b: u8) -> bool {
    b.is_ascii_digit() || b == b'-' || b == b'+' || b == b'L' || b == b' '
}

fn is_float_line(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.' | b' ')
}

fn is_name_line(b: u8) -> bool {
    b.is_ascii_graphic() || b == b' '
}

fn decimal_i64(s: &str) -> Option<i64> {
    s.trim().trim_end_matches('L').parse().ok()
}

/// Little-endian two's complement integer of at most 8 bytes.
fn le_signed(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 8 {
        // Accept wider encodings whose extra bytes are pure sign extension.
        let (low, high) = bytes.split_at(8);
        let v = le_signed(low)?;
        let fill = if v < 0 { 0xff } else { 0 };
        return high.iter().all(|&b| b == fill).then_some(v);
    }
    let mut a = [0u8; 8];
    a[..bytes.len()].copy_from_slice(bytes);
    let neg = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    if neg {
        for b in a.iter_mut().skip(bytes.len()) {
            *b = 0xff;
        }
    }
    Some(i64::from_le_bytes(a))
}

impl<R: Read> Machine<R> {
    fn new(input: Input<R>) -> Self {
        Machine {
            input,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            at: 0,
            op: "",
            copied: Cell::new(0),
            result: Cell::new(0),
        }
    }

    fn invalid(&self, message: impl fmt::Display) -> Error {
        Error::InvalidData {
            format: FORMAT,
            offset: self.at,
            message: format!("{}: {message}", self.op),
        }
    }

    fn unsupported(&self, message: impl fmt::Display) -> Error {
        Error::Unsupported {
            format: FORMAT,
            offset: self.at,
            message: format!("{}: {message}", self.op),
        }
    }

    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, o: Obj) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.invalid(format!("stack holds more than {MAX_STACK} items")));
        }
        self.stack.push(o);
        Ok(())
    }

    fn pop(&mut self) -> Result<Obj> {
        if self.stack.len() <= self.base() {
            return Err(self.invalid("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.invalid("stack underflow"))
    }

    fn top(&self) -> Result<&Obj> {
        if self.stack.len() <= self.base() {
            return Err(self.invalid("stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.invalid("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Obj>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.invalid("no MARK on the stack"))?;
        if m > self.stack.len() {
            return Err(self.invalid("MARK above the top of the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn tuple(&self, items: Vec<Obj>) -> Result<Obj> {
        let depth = 1 + items.iter().map(Obj::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(self.invalid(format!("containers nested deeper than {MAX_DEPTH}")));
        }
        for i in &items {
            i.embed();
        }
        Ok(Obj::Tuple(Rc::new(Tup { items, depth })))
    }

    fn list(&self, items: Vec<Obj>) -> Result<Obj> {
        let l = Rc::new(Seq {
            items: RefCell::new(Vec::new()),
            depth: Cell::new(1),
            embedded: Cell::new(false),
        });
        self.extend_list(&l, items)?;
        Ok(Obj::List(l))
    }

    fn extend_list(&self, l: &Seq, items: Vec<Obj>) -> Result<()> {
        for i in &items {
            i.embed();
        }
        if l.embedded.get() {
            return Err(self.unsupported(
                "list changed after being placed in another container \
                 (recursive structures are not supported)",
            ));
        }
        let depth = 1 + items.iter().map(Obj::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(self.invalid(format!("containers nested deeper than {MAX_DEPTH}")));
        }
        l.depth.set(l.depth.get().max(depth));
        l.items.borrow_mut().extend(items);
        Ok(())
    }

    fn dict(&self, items: Vec<Obj>) -> Result<Obj> {
        let d = Rc::new(Map {
            items: RefCell::new(Vec::new()),
            index: RefCell::new(HashMap::new()),
            depth: Cell::new(1),
            embedded: Cell::new(false),
        });
        self.extend_dict(&d, items)?;
        Ok(Obj::Dict(d))
    }

    fn extend_dict(&self, d: &Map, items: Vec<Obj>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.invalid("odd number of items for a dict"));
        }
        for i in &items {
            i.embed();
        }
        if d.embedded.get() {
            return Err(self.unsupported(
                "dict changed after being placed in another container \
                 (recursive structures are not supported)",
            ));
        }
        let depth = 1 + items.iter().map(Obj::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(self.invalid(format!("containers nested deeper than {MAX_DEPTH}")));
        }
        d.depth.set(d.depth.get().max(depth));
        let mut it = items.into_iter();
        let mut map = d.items.borrow_mut();
        let mut index = d.index.borrow_mut();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            self.charge_copy("dict key text", KeyId::text_len(&k))?;
            match KeyId::of(&k).map(|id| index.entry(id)) {
                Some(Entry::Occupied(e)) => {
                    if let Some(slot) = map.get_mut(*e.get()) {
                        slot.1 = v;
                    }
                }
                Some(Entry::Vacant(e)) => {
                    e.insert(map.len());
                    map.push((k, v));
                }
                None => map.push((k, v)),
            }
        }
        Ok(())
    }

    /// Charges `bytes` of result (array data about to be allocated) against
    /// [`Limits::max_result_bytes`].
    fn charge_result(&self, bytes: u64) -> Result<()> {
        let total = self.result.get().saturating_add(bytes);
        self.input.limits().check_result(FORMAT, total)?;
        self.result.set(total);
        Ok(())
    }

    /// Charges `len` bytes copied out of a shared object to the budget of `copied`.
    fn charge_copy(&self, what: &str, len: u64) -> Result<()> {
        let used = self.copied.get().saturating_add(len);
        let limit = self
            .input
            .offset()
            .saturating_mul(MAX_EXPANSION)
            .saturating_add(EXPANSION_SLACK);
        if used > limit {
            return Err(self.unsupported(format!(
                "{what}: copies of shared data add up to more than {limit} bytes \
                 ({MAX_EXPANSION} x the input + {EXPANSION_SLACK}): a pickle bomb?"
            )));
        }
        self.copied.set(used);
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(self.invalid(format!("memo holds more than {MAX_MEMO} entries")));
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.invalid(format!("memo has no entry {key}")))?;
        self.push(v)
    }

    /// Reads a bytes payload. When it is long and the stack above the last MARK is the
    /// start of an ndarray state `([version,] shape, dtype, is_fortran` with the data
    /// to come), and the length is exactly shape x itemsize, the payload is converted
    /// to the element type while it is read: no second copy of the data is ever held.
    fn bytes_payload(&mut self, len: u64) -> Result<Payload> {
        if len >= 1 << 16
            && let Some((dt, count)) = self.predict(len)
        {
            if dt.kind != DType::Bool {
                // Charged before a byte is read: the array this becomes is the result.
                self.charge_result(len)?;
            }
            let what = format!(
                "{} payload ({len} bytes claimed by the opcode at byte {})",
                self.op, self.at
            );
            let inp = &mut self.input;
            macro_rules! typed {
                ($v:ident, $t:ty, $n:literal) => {{
                    let v = if dt.big_endian {
                        inp.typed::<$t, $n>(count, <$t>::from_be_bytes, &what)?
                    } else {
                        inp.typed::<$t, $n>(count, <$t>::from_le_bytes, &what)?
                    };
                    NdArray::$v(
                        ArrayD::from_shape_vec(IxDyn(&[count]), v).map_err(|e| {
                            self.invalid(format!("cannot hold {count} elements: {e}"))
                        })?,
                    )
                }};
            }
            let a = match dt.kind {
                DType::F32 => typed!(F32, f32, 4),
                DType::F64 => typed!(F64, f64, 8),
                DType::I64 => typed!(I64, i64, 8),
                DType::I32 => typed!(I32, i32, 4),
                DType::I16 => typed!(I16, i16, 2),
                DType::I8 => typed!(I8, i8, 1),
                DType::U8 => typed!(U8, u8, 1),
                DType::U16 => typed!(U16, u16, 2),
                DType::U32 => typed!(U32, u32, 4),
                DType::U64 => typed!(U64, u64, 8),
                DType::Bool => return self.payload(len).map(Payload::Raw),
            };
            return Ok(Payload::Typed(a, dt.big_endian));
        }
        self.payload(len).map(Payload::Raw)
    }

    fn predict(&self, len: u64) -> Option<(DtypeObj, usize)> {
        let m = *self.marks.last()?;
        let (shape, dtype) = match self.stack.get(m..)? {
            [Obj::Int(_), s @ Obj::Tuple(_), Obj::Dtype(d), _] => (s, d),
            [s @ Obj::Tuple(_), Obj::Dtype(d), _] => (s, d),
            _ => return None,
        };
        let dt = dtype.get();
        let count = self
            .shape_arg(shape)
            .ok()?
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))?;
        (count.checked_mul(dt.kind.itemsize())? as u64 == len).then_some((dt, count))
    }

    fn payload(&mut self, len: u64) -> Result<Raw> {
        let what = format!(
            "{} payload ({len} bytes claimed by the opcode at byte {})",
            self.op, self.at
        );
        self.input.raw(len, &what)
    }

    fn string(&mut self, len: u64) -> Result<Obj> {
        let raw = self.payload(len)?;
        let s = String::from_utf8(raw.concat())
            .map_err(|e| self.invalid(format!("string is not valid UTF-8: {e}")))?;
        Ok(Obj::Str(Rc::from(s)))
    }

    fn bytes(raw: Raw) -> Obj {
        Obj::Bytes(Rc::new(RefCell::new(Some(Payload::Raw(raw)))))
    }

    fn run(mut self) -> Result<Value> {
        loop {
            self.at = self.input.offset();
            let Some(op) = self.input.next_byte()? else {
                self.op = "end of input";
                return Err(if self.at == 0 {
                    Error::InvalidData {
                        format: FORMAT,
                        offset: 0,
                        message: "empty input: not a pickle".into(),
                    }
                } else {
                    self.input.truncated("the next opcode (no STOP seen)")
                });
            };
            self.op = opname(op).unwrap_or("?");
            if op == b'.' {
                let top = self.pop()?;
                if self.input.gz {
                    // Read to the end of the gzip stream so its CRC and length are
                    // checked: a cut or corrupted file is an error, not a silent success.
                    while self.input.fill()? {}
                }
                // Drop everything else first so the result's Rc's are unique.
                self.stack.clear();
                self.memo.clear();
                let limit = self
                    .input
                    .offset()
                    .saturating_mul(MAX_EXPANSION)
                    .saturating_add(EXPANSION_SLACK);
                let mut budget = Budget {
                    left: limit,
                    limit,
                    result: self.result.get(),
                    limits: self.input.limits(),
                };
                budget.charge(VALUE_BYTES)?;
                return to_value(top, 0, &mut budget);
            }
            if let Err(e) = self.step(op) {
                return Err(if self.at == 0 { annotate_first(e) } else { e });
            }
        }
    }

    fn step(&mut self, op: u8) -> Result<()> {
        let inp = &mut self.input;
        match op {
            0x80 => {
                let p = inp.u8("PROTO version")?;
                if p > 5 {
                    return Err(self.unsupported(format!("protocol {p} (at most 5 is known)")));
                }
            }
            0x95 => {
                inp.array::<8>("FRAME length")?;
            }
            0x98 => {
                self.top()?;
            }
            b'(' => {
                if self.marks.len() >= MAX_STACK {
                    return Err(self.invalid("too many MARKs"));
                }
                self.marks.push(self.stack.len());
            }
            b'0' => {
                if self.stack.len() > self.base() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let t = self.top()?.clone();
                self.push(t)?;
            }
            b'N' => self.push(Obj::None)?,
            0x88 => self.push(Obj::Bool(true))?,
            0x89 => self.push(Obj::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(inp.array("BININT argument")?);
                self.push(Obj::Int(v.into()))?;
            }
            b'K' => {
                let v = inp.u8("BININT1 argument")?;
                self.push(Obj::Int(v.into()))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(inp.array("BININT2 argument")?);
                self.push(Obj::Int(v.into()))?;
            }
            0x8a | 0x8b => {
                let n: u64 = if op == 0x8a {
                    inp.u8("LONG1 length")?.into()
                } else {
                    let n = i32::from_le_bytes(inp.array("LONG4 length")?);
                    u64::try_from(n).map_err(|_| self.invalid("negative length"))?
                };
                if n > 64 {
                    return Err(self.unsupported(format!("{n}-byte integer (at most 64 bits)")));
                }
                let raw = self.payload(n)?.concat();
                let v = le_signed(&raw)
                    .ok_or_else(|| self.unsupported("integer wider than 64 bits"))?;
                self.push(Obj::Int(v))?;
            }
            b'I' | b'L' => {
                let line = inp.line(if op == b'I' { "INT" } else { "LONG" }, is_digit_line)?;
                let o = match line.as_str() {
                    "00" if op == b'I' => Obj::Bool(false),
                    "01" if op == b'I' => Obj::Bool(true),
                    s => Obj::Int(decimal_i64(s).ok_or_else(|| {
                        self.unsupported(format!("integer {s:?} does not fit in 64 bits"))
                    })?),
                };
                self.push(o)?;
            }
            b'F' => {
                let line = inp.line("FLOAT", is_float_line)?;
                let v: f64 = line
                    .trim()
                    .parse()
                    .map_err(|_| self.invalid(format!("{line:?} is not a float")))?;
                self.push(Obj::Float(v))?;
            }
            b'G' => {
                let v = f64::from_be_bytes(inp.array("BINFLOAT argument")?);
                self.push(Obj::Float(v))?;
            }
            b'X' => {
                let n = u32::from_le_bytes(inp.array("BINUNICODE length")?);
                let o = self.string(n.into())?;
                self.push(o)?;
            }
            0x8c => {
                let n = inp.u8("SHORT_BINUNICODE length")?;
                let o = self.string(n.into())?;
                self.push(o)?;
            }
            0x8d => {
                let n = u64::from_le_bytes(inp.array("BINUNICODE8 length")?);
                let o = self.string(n)?;
                self.push(o)?;
            }
            b'T' => {
                let n = i32::from_le_bytes(inp.array("BINSTRING length")?);
                let n = u64::try_from(n).map_err(|_| self.invalid("negative length"))?;
                let p = self.bytes_payload(n)?;
                self.push(Obj::Str2(Rc::new(RefCell::new(Some(p)))))?;
            }
            b'U' => {
                let n = inp.u8("SHORT_BINSTRING length")?;
                let raw = self.payload(n.into())?;
                self.push(Obj::Str2(Rc::new(RefCell::new(Some(Payload::Raw(raw))))))?;
            }
            b'B' => {
                let n = u32::from_le_bytes(inp.array("BINBYTES length")?);
                let p = self.bytes_payload(n.into())?;
                self.push(Obj::Bytes(Rc::new(RefCell::new(Some(p)))))?;
            }
            b'C' => {
                let n = inp.u8("SHORT_BINBYTES length")?;
                let raw = self.payload(n.into())?;
                self.push(Self::bytes(raw))?;
            }
            0x8e | 0x96 => {
                let n = u64::from_le_bytes(inp.array("length")?);
                let p = self.bytes_payload(n)?;
                self.push(Obj::Bytes(Rc::new(RefCell::new(Some(p)))))?;
            }
            b')' => {
                let t = self.tuple(Vec::new())?;
                self.push(t)?;
            }
            b't' => {
                let items = self.pop_mark()?;
                let t = self.tuple(items)?;
                self.push(t)?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if self.stack.len() < self.base() + n {
                    return Err(self.invalid("stack underflow"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                let t = self.tuple(items)?;
                self.push(t)?;
            }
            b']' => {
                let l = self.list(Vec::new())?;
                self.push(l)?;
            }
            b'l' => {
                let items = self.pop_mark()?;
                let l = self.list(items)?;
                self.push(l)?;
            }
            b'a' | b'e' => {
                let items = if op == b'a' {
                    vec![self.pop()?]
                } else {
                    self.pop_mark()?
                };
                match self.top()? {
                    Obj::List(l) => {
                        let l = Rc::clone(l);
                        self.extend_list(&l, items)?;
                    }
                    other => {
                        return Err(self.unsupported(format!("append to a {}", other.kind())));
                    }
                }
            }
            b'}' => {
                let d = self.dict(Vec::new())?;
                self.push(d)?;
            }
            b'd' => {
                let items = self.pop_mark()?;
                let d = self.dict(items)?;
                self.push(d)?;
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    vec![k, v]
                } else {
                    self.pop_mark()?
                };
                match self.top()? {
                    Obj::Dict(d) => {
                        let d = Rc::clone(d);
                        self.extend_dict(&d, items)?;
                    }
                    other => {
                        return Err(self.unsupported(format!("set items of a {}", other.kind())));
                    }
                }
            }
            b'q' => {
                let k = inp.u8("BINPUT index")?;
                self.memo_put(k.into())?;
            }
            b'r' => {
                let k = u32::from_le_bytes(inp.array("LONG_BINPUT index")?);
                self.memo_put(k.into())?;
            }
            b'p' => {
                let line = inp.line("PUT", is_digit_line)?;
                let k = line
                    .trim()
                    .parse()
                    .map_err(|_| self.invalid(format!("memo index {line:?}")))?;
                self.memo_put(k)?;
            }
            0x94 => {
                let k = self.memo.len() as u64;
                self.memo_put(k)?;
            }
            b'h' => {
                let k = inp.u8("BINGET index")?;
                self.memo_get(k.into())?;
            }
            b'j' => {
                let k = u32::from_le_bytes(inp.array("LONG_BINGET index")?);
                self.memo_get(k.into())?;
            }
            b'g' => {
                let line = inp.line("GET", is_digit_line)?;
                let k = line
                    .trim()
                    .parse()
                    .map_err(|_| self.invalid(format!("memo index {line:?}")))?;
                self.memo_get(k)?;
            }
            b'c' => {
                let module = inp.line("GLOBAL module", is_name_line)?;
                let name = self.input.line("GLOBAL name", is_name_line)?;
                let g = self.global(&module, &name)?;
                self.push(g)?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Obj::Str(m), Obj::Str(n)) => {
                        let g = self.global(&m, &n)?;
                        self.push(g)?;
                    }
                    (m, n) => {
                        return Err(self.invalid(format!(
                            "module and name must be str, got {} and {}",
                            m.kind(),
                            n.kind()
                        )));
                    }
                }
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let f = self.pop()?;
                let r = self.call(f, args)?;
                self.push(r)?;
            }
            0x92 => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let f = self.pop()?;
                let empty = matches!(&kwargs, Obj::Dict(d) if d.items.borrow().is_empty());
                if !empty {
                    return Err(self.unsupported("keyword arguments"));
                }
                let r = self.call(f, args)?;
                self.push(r)?;
            }
            b'b' => {
                let state = self.pop()?;
                let obj = self.top()?.clone();
                self.build(obj, state)?;
            }
            b'P' | b'Q' => return Err(self.unsupported("persistent ids")),
            0x82..=0x84 => return Err(self.unsupported("extension registry codes")),
            b'i' | b'o' => return Err(self.unsupported("class instances")),
            b'S' | b'V' => {
                return Err(self.unsupported("protocol 0 quoted strings"));
            }
            0x8f..=0x91 => return Err(self.unsupported("sets")),
            0x97 => return Err(self.unsupported("out-of-band buffers")),
            _ => {
                return Err(Error::InvalidData {
                    format: FORMAT,
                    offset: self.at,
                    message: format!("unknown opcode 0x{op:02x}"),
                });
            }
        }
        Ok(())
    }

    fn global(&self, module: &str, name: &str) -> Result<Obj> {
        Global::resolve(module, name)
            .map(Obj::Global)
            .ok_or_else(|| self.unsupported(format!("global {module}.{name} is not allowed")))
    }

    fn args(&self, args: Obj, what: &str) -> Result<Vec<Obj>> {
        match args {
            // No accepted callable or state takes more than 5 items. Checked before the
            // copy below: a memoised 100 000-item tuple passed to REDUCE again and again
            // would otherwise be copied whole each time (quadratic time from a small file).
            Obj::Tuple(t) if t.items.len() > 5 => Err(self.unsupported(format!(
                "{what} with {} arguments (at most 5 are used)",
                t.items.len()
            ))),
            Obj::Tuple(t) => Ok(match Rc::try_unwrap(t) {
                Ok(t) => t.items,
                Err(t) => t.items.clone(),
            }),
            other => Err(self.invalid(format!(
                "{what} arguments must be a tuple, not {}",
                other.kind()
            ))),
        }
    }

    fn call(&self, f: Obj, args: Obj) -> Result<Obj> {
        let g = match f {
            Obj::Global(g) => g,
            other => return Err(self.unsupported(format!("calling a {}", other.kind()))),
        };
        let args = self.args(args, g.name())?;
        let bad = |m: &str| self.invalid(format!("{}: {m}", g.name()));
        match g {
            Global::Reconstruct => {
                match args.first() {
                    Some(Obj::Global(Global::NdarrayType)) => {}
                    Some(o) => {
                        return Err(self.unsupported(format!(
                            "_reconstruct of a {} (only numpy.ndarray)",
                            o.kind()
                        )));
                    }
                    None => return Err(bad("missing class argument")),
                }
                Ok(Obj::Array(Rc::new(RefCell::new(ArrayObj::Pending))))
            }
            Global::Dtype => {
                let descr = args
                    .first()
                    .and_then(Obj::text)
                    .ok_or_else(|| bad("first argument must be a type string"))?;
                let (kind, order) = DType::parse_descr(&descr).map_err(|m| self.unsupported(m))?;
                Ok(Obj::Dtype(Rc::new(Cell::new(DtypeObj {
                    kind,
                    big_endian: order.unwrap_or(cfg!(target_endian = "big")),
                }))))
            }
            Global::FromBuffer => {
                let [buf, dtype, shape, order] = <[Obj; 4]>::try_from(args)
                    .map_err(|_| bad("expects (buffer, dtype, shape, order)"))?;
                let dtype = self.dtype_arg(&dtype)?;
                let shape = self.shape_arg(&shape)?;
                let fortran = match order.text().as_deref() {
                    Some("C") | Some("A") | Some("K") => false,
                    Some("F") => true,
                    _ => return Err(bad("order must be 'C' or 'F'")),
                };
                let raw = self.take_raw(&buf)?;
                let a = self.make_array(raw, dtype, &shape, fortran)?;
                Ok(Obj::Array(Rc::new(RefCell::new(ArrayObj::Built(a)))))
            }
            Global::Scalar => {
                let mut it = args.into_iter();
                let (Some(dtype), Some(data)) = (it.next(), it.next()) else {
                    return Err(bad("expects (dtype, bytes)"));
                };
                let dtype = self.dtype_arg(&dtype)?;
                let raw = self.take_raw(&data)?;
                let a = self.make_array(raw, dtype, &[], false)?;
                Ok(Obj::Array(Rc::new(RefCell::new(ArrayObj::Built(a)))))
            }
            Global::CodecsEncode => {
                let mut it = args.into_iter();
                let s = it.next().ok_or_else(|| bad("missing string"))?;
                let enc = it
                    .next()
                    .and_then(|e| e.text().map(|t| t.to_ascii_lowercase()))
                    .unwrap_or_else(|| "utf-8".into());
                let s = match &s {
                    Obj::Str(s) => Rc::clone(s),
                    other => return Err(bad(&format!("cannot encode a {}", other.kind()))),
                };
                self.encode(&s, &enc)
            }
            Global::Bytes | Global::ByteArray => {
                let mut it = args.into_iter();
                match (it.next(), it.next()) {
                    (None, _) => Ok(Self::bytes(Raw::default())),
                    (Some(Obj::Str(s)), Some(enc)) => {
                        let enc = enc
                            .text()
                            .map(|t| t.to_ascii_lowercase())
                            .ok_or_else(|| bad("encoding must be a str"))?;
                        self.encode(&s, &enc)
                    }
                    (Some(b @ (Obj::Bytes(_) | Obj::Str2(_))), None) => {
                        let p = self.take_raw(&b)?;
                        Ok(Obj::Bytes(Rc::new(RefCell::new(Some(p)))))
                    }
                    _ => Err(self.unsupported(format!("{} with these arguments", g.name()))),
                }
            }
            Global::NdarrayType => Err(self.unsupported("calling numpy.ndarray directly")),
        }
    }

    fn encode(&self, s: &str, enc: &str) -> Result<Obj> {
        self.charge_copy("encoded string", s.len() as u64)?;
        let v: Vec<u8> = match enc {
            "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" | "l1" => {
                let mut v = Vec::with_capacity(s.len());
                for c in s.chars() {
                    let b = u8::try_from(u32::from(c)).map_err(|_| {
                        self.invalid(format!("character U+{:04X} is not latin-1", u32::from(c)))
                    })?;
                    v.push(b);
                }
                v
            }
            "utf-8" | "utf8" => s.as_bytes().to_vec(),
            other => return Err(self.unsupported(format!("encoding {other:?}"))),
        };
        Ok(Self::bytes(Raw::from_vec(v)))
    }

    fn dtype_arg(&self, o: &Obj) -> Result<DtypeObj> {
        match o {
            Obj::Dtype(d) => Ok(d.get()),
            other => Err(self.invalid(format!("expected a numpy.dtype, got {}", other.kind()))),
        }
    }

    fn shape_arg(&self, o: &Obj) -> Result<Vec<usize>> {
        let items: &[Obj] = match o {
            Obj::Tuple(t) => &t.items,
            Obj::Int(_) => std::slice::from_ref(o),
            other => {
                return Err(self.invalid(format!("shape must be a tuple, not {}", other.kind())));
            }
        };
        if items.len() > MAX_NDIM {
            return Err(self.invalid(format!(
                "shape has {} dimensions; numpy allows at most {MAX_NDIM}",
                items.len()
            )));
        }
        items
            .iter()
            .map(|d| {
                d.int()
                    .and_then(|i| usize::try_from(i).ok())
                    .ok_or_else(|| self.invalid("shape entries must be non-negative ints"))
            })
            .collect()
    }

    fn take_raw(&self, o: &Obj) -> Result<Payload> {
        match o {
            Obj::Bytes(r) | Obj::Str2(r) => r
                .borrow_mut()
                .take()
                .ok_or_else(|| self.unsupported("a bytes object used as the data of two arrays")),
            Obj::Str(s) => self.encode(s, "latin-1").and_then(|b| self.take_raw(&b)),
            other => Err(if matches!(other, Obj::List(_)) {
                self.unsupported("array data given as a list (object arrays are not supported)")
            } else {
                self.invalid(format!("array data must be bytes, not {}", other.kind()))
            }),
        }
    }

    fn build(&self, obj: Obj, state: Obj) -> Result<()> {
        match obj {
            Obj::Dtype(d) => {
                let items = match &state {
                    Obj::Tuple(t) => &t.items,
                    other => {
                        return Err(self.invalid(format!(
                            "dtype state must be a tuple, not {}",
                            other.kind()
                        )));
                    }
                };
                let endian = items
                    .get(1)
                    .and_then(Obj::text)
                    .ok_or_else(|| self.invalid("dtype state has no byte order"))?;
                for (i, what) in [(2, "subarray"), (3, "field names"), (4, "fields")] {
                    if items.get(i).is_some_and(|o| !matches!(o, Obj::None)) {
                        return Err(self.unsupported(format!("structured dtype ({what})")));
                    }
                }
                let mut cur = d.get();
                cur.big_endian = match &*endian {
                    "<" => false,
                    ">" => true,
                    "|" | "=" => cfg!(target_endian = "big"),
                    other => return Err(self.invalid(format!("byte order {other:?}"))),
                };
                d.set(cur);
                Ok(())
            }
            Obj::Array(a) => {
                if !matches!(*a.borrow(), ArrayObj::Pending) {
                    return Err(self.invalid("BUILD applied twice to an array"));
                }
                let items = self.args(state, "ndarray state")?;
                let items: &[Obj] = match items.len() {
                    5 => items.get(1..).unwrap_or_default(),
                    4 => &items,
                    n => {
                        return Err(
                            self.invalid(format!("ndarray state has {n} items, not 4 or 5"))
                        );
                    }
                };
                let [shape, dtype, fortran, data] = items else {
                    return Err(self.invalid("ndarray state"));
                };
                let shape = self.shape_arg(shape)?;
                let dtype = self.dtype_arg(dtype)?;
                let fortran = fortran
                    .int()
                    .ok_or_else(|| self.invalid("is_fortran must be a bool"))?
                    != 0;
                let raw = self.take_raw(data)?;
                let arr = self.make_array(raw, dtype, &shape, fortran)?;
                *a.borrow_mut() = ArrayObj::Built(arr);
                Ok(())
            }
            other => Err(self.unsupported(format!("BUILD on a {}", other.kind()))),
        }
    }

    fn make_array(
        &self,
        payload: Payload,
        dt: DtypeObj,
        shape: &[usize],
        fortran: bool,
    ) -> Result<NdArray> {
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| isize::try_from(n).is_ok())
            .ok_or_else(|| self.invalid(format!("shape {shape:?} is too large")))?;
        let raw = match payload {
            Payload::Typed(a, be)
                if a.dtype() == dt.kind && be == dt.big_endian && a.len() == count =>
            {
                // The data was charged when its payload was read.
                self.charge_result(dims_bytes(shape.len()))?;
                let dim = IxDyn(shape).set_f(fortran);
                let r = each_array!(a, x => {
                    let (v, _) = x.into_raw_vec_and_offset();
                    ArrayD::from_shape_vec(dim, v).map(NdArray::from)
                });
                return r
                    .map_err(|e| self.invalid(format!("cannot shape array as {shape:?}: {e}")));
            }
            other => other.into_raw(),
        };
        let need = count
            .checked_mul(dt.kind.itemsize())
            .ok_or_else(|| self.invalid(format!("shape {shape:?} is too large")))?;
        if raw.len != need as u64 {
            return Err(self.invalid(format!(
                "array data is {} bytes but shape {shape:?} of {} ({} bytes each) needs {need}",
                raw.len,
                dt.kind,
                dt.kind.itemsize()
            )));
        }
        self.charge_result((need as u64).saturating_add(dims_bytes(shape.len())))?;
        let dim = IxDyn(shape).set_f(fortran);
        let be = dt.big_endian;
        macro_rules! conv {
            ($v:ident, $t:ty, $n:literal) => {{
                let data = if be {
                    convert::<$t, $n>(raw, count, <$t>::from_be_bytes)
                } else {
                    convert::<$t, $n>(raw, count, <$t>::from_le_bytes)
                };
                ArrayD::from_shape_vec(dim, data).map(NdArray::$v)
            }};
        }
        let r = match dt.kind {
            DType::F32 => conv!(F32, f32, 4),
            DType::F64 => conv!(F64, f64, 8),
            DType::I64 => conv!(I64, i64, 8),
            DType::I32 => conv!(I32, i32, 4),
            DType::I16 => conv!(I16, i16, 2),
            DType::I8 => conv!(I8, i8, 1),
            DType::U8 => conv!(U8, u8, 1),
            DType::U16 => conv!(U16, u16, 2),
            DType::U32 => conv!(U32, u32, 4),
            DType::U64 => conv!(U64, u64, 8),
            DType::Bool => {
                let data = convert::<bool, 1>(raw, count, |b: [u8; 1]| b[0] != 0);
                ArrayD::from_shape_vec(dim, data).map(NdArray::Bool)
            }
        };
        r.map_err(|e| self.invalid(format!("cannot shape array as {shape:?}: {e}")))
    }
}

/// Converts raw bytes to `count` values of `T`, freeing each chunk once converted.
/// Handles chunks whose lengths are not multiples of `N`.
pub(crate) fn convert_chunks<T, const N: usize>(
    chunks: Vec<Vec<u8>>,
    count: usize,
    f: impl Fn([u8; N]) -> T,
) -> Vec<T> {
    let mut out = Vec::with_capacity(count);
    let mut carry = [0u8; N];
    let mut have = 0usize;
    for chunk in chunks {
        let mut rest: &[u8] = &chunk;
        if have > 0 {
            let k = (N - have).min(rest.len());
            carry[have..have + k].copy_from_slice(&rest[..k]);
            have += k;
            rest = &rest[k..];
            if have < N {
                continue;
            }
            out.push(f(carry));
        }
        let mut it = rest.chunks_exact(N);
        out.extend(it.by_ref().map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        }));
        let tail = it.remainder();
        carry[..tail.len()].copy_from_slice(tail);
        have = tail.len();
        drop(chunk);
    }
    out
}

pub(crate) fn convert<T, const N: usize>(
    raw: Raw,
    count: usize,
    f: impl Fn([u8; N]) -> T,
) -> Vec<T> {
    convert_chunks(raw.chunks, count, f)
}

/// What makes two dict keys the same key: `str` and Python 2 `str` by their text, ints,
/// bools, `None`, and floats by value (`0.0 == -0.0`; NaN is never equal). Other keys
/// (tuples, bytes, ...) are never merged.
#[derive(Debug, PartialEq, Eq, Hash)]
enum KeyId {
    None,
    Bool(bool),
    Int(i64),
    Float(u64),
    Text(String),
}

impl KeyId {
    /// The length of a text key, without copying it (0 for other keys).
    fn text_len(o: &Obj) -> u64 {
        match o {
            Obj::Str(s) => s.len() as u64,
            Obj::Str2(r) => r.borrow().as_ref().map_or(0, Payload::latin1_len),
            _ => 0,
        }
    }

    fn of(o: &Obj) -> Option<KeyId> {
        Some(match o {
            Obj::None => KeyId::None,
            Obj::Bool(b) => KeyId::Bool(*b),
            Obj::Int(i) => KeyId::Int(*i),
            Obj::Float(f) if f.is_nan() => return None,
            Obj::Float(f) => KeyId::Float(if *f == 0.0 { 0 } else { f.to_bits() }),
            Obj::Str(_) | Obj::Str2(_) => KeyId::Text(o.text()?.into_owned()),
            _ => return None,
        })
    }
}

fn annotate_first(e: Error) -> Error {
    match e {
        Error::InvalidData {
            format,
            offset,
            message,
        } => Error::InvalidData {
            format,
            offset,
            message: format!("{message} (the input does not start like a pickle)"),
        },
        other => other,
    }
}

/// Bytes of result (`Value` nodes, strings, bytes, copies of shared arrays with their
/// shapes) allowed per byte of decompressed input, on top of [`EXPANSION_SLACK`]. A
/// pickle shares objects by reference (`DUP`, memo `GET`) and [`Value`] is a tree, so
/// every shared object is copied once per reference: without a cap, `N` followed by 60
/// times `DUP TUPLE2` (123 bytes) would expand to 2^60 nodes. A legitimate pickle stays
/// far below: one opcode byte makes at most one node of `size_of::<Value>()` (120)
/// bytes, and a string or bytes object at most two bytes per byte of its payload.
const MAX_EXPANSION: u64 = 256;
/// Expansion allowed whatever the input's size (4 MiB).
const EXPANSION_SLACK: u64 = 1 << 22;

/// Bytes one [`Value`] takes in its parent's vector (or as the root).
const VALUE_BYTES: u64 = std::mem::size_of::<Value>() as u64;

/// Heap bytes of an array's shape and strides beyond its data (`ndim` of each).
fn dims_bytes(ndim: usize) -> u64 {
    (2 * ndim * std::mem::size_of::<usize>()) as u64
}

/// What is left of the expansion allowed to the result, and the result's size so far.
///
/// Every allocation [`to_value`] makes is charged here before it is made, at its real
/// size: a container's vector of values, a string's or bytes' copy, a shared array's
/// data, shape and strides.
struct Budget {
    left: u64,
    limit: u64,
    /// Bytes of result so far (with the arrays built while reading).
    result: u64,
    limits: Limits,
}

impl Budget {
    fn charge(&mut self, bytes: u64) -> Result<()> {
        match self.left.checked_sub(bytes) {
            Some(left) => self.left = left,
            None => {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    offset: 0,
                    message: format!(
                        "the result expands shared references to more than {} bytes \
                         ({MAX_EXPANSION} x the input + {EXPANSION_SLACK}): a pickle bomb?",
                        self.limit
                    ),
                });
            }
        }
        self.result = self.result.saturating_add(bytes);
        self.limits.check_result(FORMAT, self.result)
    }

    /// Charges a vector of `n` items of `T`.
    fn charge_items<T>(&mut self, n: usize) -> Result<()> {
        self.charge((n as u64).saturating_mul(std::mem::size_of::<T>() as u64))
    }
}

fn missing_payload() -> Error {
    Error::Unsupported {
        format: FORMAT,
        offset: 0,
        message: "a bytes object used both as array data and as a value".into(),
    }
}

/// Converts a machine object to a [`Value`]. Its own slot (in its parent's vector, or
/// as the root) has already been charged.
fn to_value(o: Obj, depth: u32, budget: &mut Budget) -> Result<Value> {
    if depth > MAX_DEPTH + 1 {
        return Err(Error::InvalidData {
            format: FORMAT,
            offset: 0,
            message: format!("result nested deeper than {MAX_DEPTH}"),
        });
    }
    let mut seq = |n: usize, items: &mut dyn Iterator<Item = Obj>| -> Result<Vec<Value>> {
        budget.charge_items::<Value>(n)?;
        let mut out = Vec::with_capacity(n);
        for i in items {
            out.push(to_value(i, depth + 1, budget)?);
        }
        Ok(out)
    };
    Ok(match o {
        Obj::None => Value::None,
        Obj::Bool(b) => Value::Bool(b),
        Obj::Int(i) => Value::Int(i),
        Obj::Float(f) => Value::Float(f),
        Obj::Str(s) => {
            budget.charge(s.len() as u64)?;
            Value::Str(s.to_string())
        }
        Obj::Bytes(r) => {
            let len = r.borrow().as_ref().map_or(0, Payload::byte_len);
            budget.charge(len)?;
            Value::Bytes(match Rc::try_unwrap(r) {
                Ok(c) => c
                    .into_inner()
                    .ok_or_else(missing_payload)?
                    .into_raw()
                    .concat(),
                Err(r) => r.borrow().as_ref().ok_or_else(missing_payload)?.to_bytes(),
            })
        }
        Obj::Str2(r) => {
            let len = r.borrow().as_ref().map_or(0, Payload::latin1_len);
            budget.charge(len)?;
            let text = r.borrow().as_ref().ok_or_else(missing_payload)?.latin1();
            Value::Str(text)
        }
        Obj::Tuple(t) => Value::Tuple(match Rc::try_unwrap(t) {
            Ok(t) => seq(t.items.len(), &mut t.items.into_iter())?,
            Err(t) => seq(t.items.len(), &mut t.items.iter().cloned())?,
        }),
        Obj::List(l) => Value::List(match Rc::try_unwrap(l) {
            Ok(l) => {
                let items = l.items.into_inner();
                seq(items.len(), &mut items.into_iter())?
            }
            Err(l) => {
                let items = l.items.borrow();
                seq(items.len(), &mut items.iter().cloned())?
            }
        }),
        Obj::Dict(d) => {
            let mut pairs = |n: usize,
                             items: &mut dyn Iterator<Item = (Obj, Obj)>|
             -> Result<Vec<(Value, Value)>> {
                budget.charge_items::<(Value, Value)>(n)?;
                let mut out = Vec::with_capacity(n);
                for (k, v) in items {
                    out.push((
                        to_value(k, depth + 1, budget)?,
                        to_value(v, depth + 1, budget)?,
                    ));
                }
                Ok(out)
            };
            Value::Dict(match Rc::try_unwrap(d) {
                Ok(d) => {
                    let items = d.items.into_inner();
                    pairs(items.len(), &mut items.into_iter())?
                }
                Err(d) => {
                    let items = d.items.borrow();
                    pairs(items.len(), &mut items.iter().cloned())?
                }
            })
        }
        Obj::Array(a) => {
            let a = match Rc::try_unwrap(a) {
                Ok(a) => a.into_inner(),
                Err(a) => match &*a.borrow() {
                    ArrayObj::Built(x) => {
                        let data = (x.len() as u64).saturating_mul(x.dtype().itemsize() as u64);
                        budget.charge(data.saturating_add(dims_bytes(x.shape().len())))?;
                        ArrayObj::Built(x.clone())
                    }
                    ArrayObj::Pending => ArrayObj::Pending,
                },
            };
            match a {
                ArrayObj::Built(x) => Value::Array(x),
                ArrayObj::Pending => {
                    return Err(Error::InvalidData {
                        format: FORMAT,
                        offset: 0,
                        message: "an ndarray was never given its state (no BUILD)".into(),
                    });
                }
            }
        }
        Obj::Global(g) => {
            return Err(Error::Unsupported {
                format: FORMAT,
                offset: 0,
                message: format!("result contains the global {} itself", g.name()),
            });
        }
        Obj::Dtype(_) => {
            return Err(Error::Unsupported {
                format: FORMAT,
                offset: 0,
                message: "result contains a bare numpy.dtype".into(),
            });
        }
    })
}
