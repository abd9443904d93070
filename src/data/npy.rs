//! numpy's `.npy` files (`np.save`): `convinit::data::npy`.
//!
//! [`load`] (a path) and [`from_reader`] (any [`Read`]) read one array written by
//! `np.save` / `numpy.lib.format.write_array` and return it as the same typed
//! [`NdArray`] the [pickle reader](crate::data::pickle) gives, with its shape, byte
//! order and memory order (C, or Fortran when the header says `'fortran_order': True`).
//! The `_with` variants take [`Limits`]; the others use [`Limits::default`] (1 GiB of
//! input and 1 GiB of result). For `.npz` archives see [`crate::data::npz`].
//!
//! ## What it reads
//! Format versions 1.0, 2.0 and 3.0 (numpy writes 1.0 unless the header needs more
//! room; 3.0 allows UTF-8 in the header). Element types `f4 f8 i1 i2 i4 i8 u1 u2 u4 u8
//! b1` in either byte order (a descriptor without one, like `'f4'`, is native order, as
//! numpy reads it). Object (`O`, which needs pickle), string (`S`, `U`), structured,
//! complex, float16 and datetime arrays are [`Error::Unsupported`]. Like numpy, a
//! header may be at most [`MAX_HEADER_LEN`] bytes and a shape at most [`MAX_DIMS`]
//! dimensions.
//!
//! ## Memory
//! The header's shape is checked against the limits before any data is read: the file
//! (header plus data) against [`Limits::max_input_bytes`], the array (its data plus 16
//! bytes per dimension) against [`Limits::max_result_bytes`]. When the input's length is
//! known (a file, a `.npz` member) a shape that asks for more data than there is fails
//! at once; otherwise the data is read in chunks of 1 MiB into an array that grows with
//! what has actually arrived, so a lying shape ends in [`Error::Truncated`] without the
//! claimed size ever being allocated.
//!
//! ## Errors
//! Bad input never panics: a malformed header (bad magic, unknown version, a header
//! that is not the `{'descr': ..., 'fortran_order': ..., 'shape': ...}` literal numpy
//! writes) is [`Error::InvalidData`] with the byte offset of the fault; an input that
//! ends early is [`Error::Truncated`]; going over a limit is [`Error::LimitExceeded`].
//!
//! # Examples
//! ```
//! use convinit::data::{npy, DType};
//! # fn main() -> convinit::Result<()> {
//! // np.save(f, np.array([[1, 2, 3]], dtype='<i2'))
//! let mut bytes = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
//! let header = "{'descr': '<i2', 'fortran_order': False, 'shape': (1, 3), }";
//! bytes.extend(format!("{header:<117}\n").bytes());
//! bytes.extend([1, 0, 2, 0, 3, 0]);
//! let a = npy::from_reader(&bytes[..])?;
//! assert_eq!(a.dtype(), DType::I16);
//! assert_eq!(a.shape(), &[1, 3]);
//! assert_eq!(a.as_i16().unwrap().iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
//! # Ok(())
//! # }
//! ```

use std::io::Read;
use std::path::Path;

use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::data::pickle::{DType, NdArray};
use crate::error::{Error, Result};
use crate::limits::Limits;

const FORMAT: &str = "npy";

/// The magic string every `.npy` file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Longest header accepted, in bytes: numpy's own default (`max_header_size` of
/// `np.load`). Only structured dtypes with very many fields need more, and those are
/// not supported.
pub const MAX_HEADER_LEN: usize = 10_000;

/// Most dimensions accepted, as in numpy 2 (`NPY_MAXDIMS`).
pub const MAX_DIMS: usize = 64;

/// Size of the pieces the data is read in.
const CHUNK: usize = 1 << 20;

/// Deepest nesting of brackets accepted in a header literal.
const MAX_NESTING: u32 = 16;

/// Reads the `.npy` file at `path` with the default [`Limits`].
///
/// The file must end where the array's data ends.
///
/// # Examples
/// ```no_run
/// use convinit::data::npy;
/// # fn main() -> convinit::Result<()> {
/// let x = npy::load("x_train.npy")?.into_f32().expect("a float32 array");
/// println!("{:?}", x.shape());
/// # Ok(())
/// # }
/// ```
pub fn load(path: impl AsRef<Path>) -> Result<NdArray> {
    load_with(path, Limits::default())
}

/// Reads the `.npy` file at `path` within `limits`.
///
/// The file must end where the array's data ends: trailing bytes are
/// [`Error::InvalidData`] (numpy ignores them; here they usually mean a wrong shape).
pub fn load_with(path: impl AsRef<Path>, limits: Limits) -> Result<NdArray> {
    let path = path.as_ref();
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?
        .len();
    limits.check_input(FORMAT, len)?;
    let mut src = Src::new(file, FORMAT, file_error);
    let mut budget = Budget::new(FORMAT, limits);
    let a = read_array(&mut src, &mut budget, Some(len))?;
    src.expect_end("the array data")?;
    Ok(a)
}

/// Reads one `.npy` array from any reader with the default [`Limits`].
///
/// The reader is consumed exactly up to the end of the array's data, so several arrays
/// saved one after the other into one file (`np.save(f, a); np.save(f, b)`) are read by
/// calling this again on the same reader.
pub fn from_reader<R: Read>(reader: R) -> Result<NdArray> {
    from_reader_with(reader, Limits::default())
}

/// Reads one `.npy` array from any reader within `limits`; see [`from_reader`].
pub fn from_reader_with<R: Read>(reader: R, limits: Limits) -> Result<NdArray> {
    let mut src = Src::new(reader, FORMAT, file_error);
    read_array(&mut src, &mut Budget::new(FORMAT, limits), None)
}

// ---------------------------------------------------------------------------------
// Input with offsets (shared with the npz reader)

fn file_error(e: std::io::Error, _offset: u64) -> Error {
    Error::io("reading npy", e)
}

/// A reader that knows its offset and turns end of input into [`Error::Truncated`].
pub(crate) struct Src<R> {
    inner: R,
    offset: u64,
    format: &'static str,
    io_error: fn(std::io::Error, u64) -> Error,
}

impl<R: Read> Src<R> {
    pub(crate) fn new(
        inner: R,
        format: &'static str,
        io_error: fn(std::io::Error, u64) -> Error,
    ) -> Self {
        Src {
            inner,
            offset: 0,
            format,
            io_error,
        }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Fills `dst`, or fails with `Truncated` naming `what`.
    fn exact(&mut self, dst: &mut [u8], what: &str) -> Result<()> {
        let mut done = 0;
        while done < dst.len() {
            match self.inner.read(&mut dst[done..]) {
                Ok(0) => {
                    return Err(Error::Truncated {
                        format: self.format,
                        offset: self.offset,
                        context: what.to_string(),
                    });
                }
                Ok(n) => {
                    done += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err((self.io_error)(e, self.offset)),
            }
        }
        Ok(())
    }

    /// Fails with `InvalidData` if any byte is left.
    pub(crate) fn expect_end(&mut self, after: &str) -> Result<()> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(Error::InvalidData {
                        format: self.format,
                        offset: self.offset,
                        message: format!("unexpected bytes after {after}"),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err((self.io_error)(e, self.offset)),
            }
        }
    }

    fn invalid(&self, offset: u64, message: impl Into<String>) -> Error {
        Error::InvalidData {
            format: self.format,
            offset,
            message: message.into(),
        }
    }
}

/// What has been read and built so far, against the limits (across the members of an
/// `.npz`).
pub(crate) struct Budget {
    pub(crate) format: &'static str,
    pub(crate) limits: Limits,
    /// Decompressed input bytes consumed before the current array.
    pub(crate) input: u64,
    /// Result bytes built so far.
    pub(crate) result: u64,
}

impl Budget {
    pub(crate) fn new(format: &'static str, limits: Limits) -> Self {
        Budget {
            format,
            limits,
            input: 0,
            result: 0,
        }
    }

    /// Charges `bytes` of result.
    pub(crate) fn charge_result(&mut self, bytes: u64) -> Result<()> {
        let total = self.result.saturating_add(bytes);
        self.limits.check_result(self.format, total)?;
        self.result = total;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The array

/// The parsed header.
struct Header {
    dtype: DType,
    big_endian: bool,
    fortran: bool,
    shape: Vec<usize>,
}

/// Reads one array: magic, version, header, data. `avail` is the number of bytes the
/// input holds from the current offset when known; the input and result are charged
/// to `budget`.
pub(crate) fn read_array<R: Read>(
    src: &mut Src<R>,
    budget: &mut Budget,
    avail: Option<u64>,
) -> Result<NdArray> {
    let start = src.offset();
    let mut magic = [0u8; 8];
    src.exact(&mut magic, "the magic string and version")?;
    if &magic[..6] != MAGIC {
        return Err(src.invalid(
            start,
            "not a .npy file: it does not start with the magic string \\x93NUMPY",
        ));
    }
    let (major, minor) = (magic[6], magic[7]);
    let len_at = src.offset();
    let header_len = match (major, minor) {
        (1, 0) => {
            let mut b = [0u8; 2];
            src.exact(&mut b, "the header length")?;
            u64::from(u16::from_le_bytes(b))
        }
        (2 | 3, 0) => {
            let mut b = [0u8; 4];
            src.exact(&mut b, "the header length")?;
            u64::from(u32::from_le_bytes(b))
        }
        _ => {
            return Err(Error::Unsupported {
                format: src.format,
                offset: start + 6,
                message: format!("format version {major}.{minor} (only 1.0, 2.0 and 3.0 exist)"),
            });
        }
    };
    if header_len > MAX_HEADER_LEN as u64 {
        return Err(src.invalid(
            len_at,
            format!(
                "header length {header_len} is more than the {MAX_HEADER_LEN} bytes numpy \
                 reads by default"
            ),
        ));
    }
    let header_at = src.offset();
    if let Some(avail) = avail {
        let have = avail.saturating_sub(header_at - start);
        if header_len > have {
            return Err(src.invalid(
                len_at,
                format!("header length {header_len} is more than the {have} bytes left"),
            ));
        }
    }
    let mut text = vec![0u8; header_len as usize];
    src.exact(&mut text, "the header")?;
    if major == 3
        && let Err(e) = std::str::from_utf8(&text)
    {
        return Err(src.invalid(
            header_at + e.valid_up_to() as u64,
            "a version 3.0 header must be UTF-8",
        ));
    }
    let header = parse_header(&text, header_at, src.format)?;

    // The size the header asks for, checked before reading any of it.
    let itemsize = header.dtype.itemsize();
    let count = element_count(&header.shape)
        .ok_or_else(|| src.invalid(header_at, format!("shape {:?} is too large", header.shape)))?;
    let data_bytes = (count as u64) * itemsize as u64;
    let data_at = src.offset();
    if let Some(avail) = avail {
        let have = avail.saturating_sub(data_at - start);
        if data_bytes > have {
            return Err(src.invalid(
                header_at,
                format!(
                    "shape {:?} of {} needs {data_bytes} bytes of data but only {have} remain",
                    header.shape, header.dtype
                ),
            ));
        }
    }
    let consumed = budget
        .input
        .saturating_add(data_at - start)
        .saturating_add(data_bytes);
    budget.limits.check_input(budget.format, consumed)?;
    budget.charge_result(data_bytes.saturating_add(16 * header.shape.len() as u64))?;
    budget.input = consumed;

    let dim = IxDyn(&header.shape).set_f(header.fortran);
    let be = header.big_endian;
    macro_rules! conv {
        ($v:ident, $t:ty, $n:literal) => {{
            let data = if be {
                read_data::<_, $t, $n>(src, count, <$t>::from_be_bytes)?
            } else {
                read_data::<_, $t, $n>(src, count, <$t>::from_le_bytes)?
            };
            ArrayD::from_shape_vec(dim, data).map(NdArray::$v)
        }};
    }
    let r = match header.dtype {
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
            let data = read_data::<_, bool, 1>(src, count, |b| b[0] != 0)?;
            ArrayD::from_shape_vec(dim, data).map(NdArray::Bool)
        }
    };
    r.map_err(|e| {
        src.invalid(
            header_at,
            format!("cannot shape the data as {:?}: {e}", header.shape),
        )
    })
}

/// The number of elements of `shape`, if the product of its non-zero lengths fits in
/// `isize` (what `ndarray` requires) and the data in bytes fits too.
fn element_count(shape: &[usize]) -> Option<usize> {
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n.checked_mul(8).is_some_and(|b| isize::try_from(b).is_ok()))?;
    Some(if shape.contains(&0) { 0 } else { nonzero })
}

/// Reads `count` elements of `N` bytes through one staging buffer of at most [`CHUNK`]
/// bytes. The result grows (at most doubling, reserved fallibly) with the data that has
/// actually arrived and ends at exactly `count`.
fn read_data<R: Read, T, const N: usize>(
    src: &mut Src<R>,
    count: usize,
    f: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    let per = CHUNK / N;
    let mut out: Vec<T> = Vec::new();
    let mut stage = vec![0u8; count.min(per) * N];
    while out.len() < count {
        let n = (count - out.len()).min(per);
        if out.capacity() - out.len() < n {
            let target = count.min(out.capacity().saturating_mul(2).max(out.len() + n));
            out.try_reserve_exact(target - out.len())
                .map_err(|_| Error::Alloc {
                    op: "npy",
                    bytes: (target as u128) * N as u128,
                    message: format!("the data of {count} elements"),
                })?;
        }
        let Some(buf) = stage.get_mut(..n * N) else {
            break;
        };
        src.exact(buf, "the array data")?;
        out.extend(buf.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        }));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// The header: the repr of a Python dict

/// The Python literals a header may hold.
enum Lit {
    Str(String),
    Bool(bool),
    None,
    Int { negative: bool, value: Option<u64> },
    Tuple(Vec<(u64, Lit)>),
    List,
    Dict(Vec<((u64, Lit), (u64, Lit))>),
}

impl Lit {
    fn kind(&self) -> &'static str {
        match self {
            Lit::Str(_) => "a string",
            Lit::Bool(_) => "a bool",
            Lit::None => "None",
            Lit::Int { .. } => "an integer",
            Lit::Tuple(_) => "a tuple",
            Lit::List => "a list",
            Lit::Dict(_) => "a dict",
        }
    }
}

struct HeaderParser<'a> {
    text: &'a [u8],
    pos: usize,
    base: u64,
    format: &'static str,
}

impl HeaderParser<'_> {
    fn at(&self, pos: usize) -> u64 {
        self.base + pos as u64
    }

    fn err(&self, pos: usize, message: impl Into<String>) -> Error {
        Error::InvalidData {
            format: self.format,
            offset: self.at(pos),
            message: format!("header: {}", message.into()),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.get(self.pos).copied()
    }

    fn value(&mut self, depth: u32) -> Result<(u64, Lit)> {
        let Some(b) = self.peek() else {
            return Err(self.err(self.pos, "ends where a value was expected"));
        };
        let at = self.pos;
        let lit = match b {
            b'\'' | b'"' => self.string(b)?,
            b'(' | b'[' | b'{' => {
                if depth >= MAX_NESTING {
                    return Err(self.err(at, format!("nested deeper than {MAX_NESTING}")));
                }
                self.pos += 1;
                match b {
                    b'(' => self.tuple(depth + 1)?,
                    b'[' => {
                        self.items(b']', depth + 1)?;
                        Lit::List
                    }
                    _ => self.dict(depth + 1)?,
                }
            }
            b'-' | b'0'..=b'9' => self.int()?,
            _ => {
                let word: &[u8] = &self.text[at..];
                let len = word
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                let lit = match &word[..len] {
                    b"True" => Lit::Bool(true),
                    b"False" => Lit::Bool(false),
                    b"None" => Lit::None,
                    _ => return Err(self.err(at, "expected a Python literal")),
                };
                self.pos += len;
                lit
            }
        };
        Ok((self.at(at), lit))
    }

    fn string(&mut self, quote: u8) -> Result<Lit> {
        let at = self.pos;
        self.pos += 1;
        let mut s = Vec::new();
        loop {
            match self.text.get(self.pos) {
                None | Some(b'\n') => return Err(self.err(at, "unterminated string")),
                Some(&b) if b == quote => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(&e) = self.text.get(self.pos + 1) else {
                        return Err(self.err(at, "unterminated string"));
                    };
                    s.push(e);
                    self.pos += 2;
                }
                Some(&b) => {
                    s.push(b);
                    self.pos += 1;
                }
            }
        }
        // Version 3 headers are UTF-8 (checked before parsing), 1 and 2 are latin-1.
        let text = match String::from_utf8(s) {
            Ok(t) => t,
            Err(e) => e.into_bytes().iter().map(|&b| char::from(b)).collect(),
        };
        Ok(Lit::Str(text))
    }

    fn int(&mut self) -> Result<Lit> {
        let at = self.pos;
        let negative = self.text.get(self.pos) == Some(&b'-');
        if negative {
            self.pos += 1;
        }
        let digits = self.text[self.pos..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err(self.err(at, "expected digits"));
        }
        let value = self.text[self.pos..self.pos + digits]
            .iter()
            .try_fold(0u64, |a, &d| {
                a.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
        self.pos += digits;
        // Python 2 wrote long integers with an `L` suffix: `(3L, 4L)`.
        if let Some(b'L' | b'l') = self.text.get(self.pos) {
            self.pos += 1;
        }
        Ok(Lit::Int { negative, value })
    }

    /// Comma-separated values up to `close` (just consumed); whether a comma was seen.
    fn items(&mut self, close: u8, depth: u32) -> Result<(Vec<(u64, Lit)>, bool)> {
        let mut items = Vec::new();
        let mut comma = false;
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, comma));
            }
            items.push(self.value(depth)?);
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    comma = true;
                }
                Some(c) if c == close => {}
                _ => {
                    return Err(
                        self.err(self.pos, format!("expected ',' or '{}'", char::from(close)))
                    );
                }
            }
        }
    }

    fn tuple(&mut self, depth: u32) -> Result<Lit> {
        let (mut items, comma) = self.items(b')', depth)?;
        // `(x)` is x in parentheses, not a tuple.
        if items.len() == 1 && !comma {
            return Ok(items.pop().map(|(_, v)| v).unwrap_or(Lit::None));
        }
        Ok(Lit::Tuple(items))
    }

    fn dict(&mut self, depth: u32) -> Result<Lit> {
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(Lit::Dict(entries));
            }
            let key = self.value(depth)?;
            if self.peek() != Some(b':') {
                return Err(self.err(self.pos, "expected ':' after a dict key"));
            }
            self.pos += 1;
            let value = self.value(depth)?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.err(self.pos, "expected ',' or '}'")),
            }
        }
    }
}

/// Parses `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` (the keys in
/// any order, nothing else), `base` being the header's offset in the input.
fn parse_header(text: &[u8], base: u64, format: &'static str) -> Result<Header> {
    let mut p = HeaderParser {
        text,
        pos: 0,
        base,
        format,
    };
    let (top_at, top) = p.value(0)?;
    if p.peek().is_some() {
        return Err(p.err(p.pos, "unexpected text after the header dict"));
    }
    let Lit::Dict(entries) = top else {
        return Err(Error::InvalidData {
            format,
            offset: top_at,
            message: format!("header: expected a dict, found {}", top.kind()),
        });
    };
    let invalid = |offset: u64, message: String| Error::InvalidData {
        format,
        offset,
        message: format!("header: {message}"),
    };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for ((key_at, key), (at, value)) in entries {
        let Lit::Str(key) = key else {
            return Err(invalid(key_at, format!("a key is {}", key.kind())));
        };
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            _ => {
                return Err(invalid(
                    key_at,
                    format!(
                        "unexpected key {key:?} (a .npy header has exactly 'descr', \
                         'fortran_order' and 'shape')"
                    ),
                ));
            }
        };
        if slot.is_some() {
            return Err(invalid(key_at, format!("key {key:?} appears twice")));
        }
        *slot = Some((at, value));
    }
    let missing = |k: &str| invalid(base, format!("the key {k:?} is missing"));
    let (descr_at, descr) = descr.ok_or_else(|| missing("descr"))?;
    let (fortran_at, fortran) = fortran.ok_or_else(|| missing("fortran_order"))?;
    let (shape_at, shape) = shape.ok_or_else(|| missing("shape"))?;

    let (dtype, big_endian) = match descr {
        Lit::Str(d) => {
            let (t, order) = DType::parse_descr(&d).map_err(|message| Error::Unsupported {
                format,
                offset: descr_at,
                message,
            })?;
            (t, order.unwrap_or(cfg!(target_endian = "big")))
        }
        Lit::List => {
            return Err(Error::Unsupported {
                format,
                offset: descr_at,
                message: "structured (record) arrays are not supported".into(),
            });
        }
        other => {
            return Err(invalid(
                descr_at,
                format!("'descr' is {}, not a string", other.kind()),
            ));
        }
    };
    let Lit::Bool(fortran) = fortran else {
        return Err(invalid(
            fortran_at,
            format!("'fortran_order' is {}, not True or False", fortran.kind()),
        ));
    };
    let Lit::Tuple(dims) = shape else {
        return Err(invalid(
            shape_at,
            format!("'shape' is {}, not a tuple", shape.kind()),
        ));
    };
    if dims.len() > MAX_DIMS {
        return Err(invalid(
            shape_at,
            format!(
                "shape has {} dimensions; numpy allows at most {MAX_DIMS}",
                dims.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(dims.len());
    for (at, d) in dims {
        let n = match d {
            Lit::Int {
                negative: false,
                value: Some(v),
            } => usize::try_from(v).ok(),
            Lit::Int { negative: true, .. } => {
                return Err(invalid(at, "a negative dimension".into()));
            }
            Lit::Int { value: None, .. } => None,
            other => {
                return Err(invalid(
                    at,
                    format!("a dimension is {}, not an integer", other.kind()),
                ));
            }
        };
        out.push(n.ok_or_else(|| invalid(at, "a dimension is too large".into()))?);
    }
    Ok(Header {
        dtype,
        big_endian,
        fortran,
        shape: out,
    })
}
