//! Saving and loading a [`Sequential`]'s parameters and buffers (its `state_dict`) as
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
//! strings), then the raw little-endian tensor data. Parameters are stored as `F32`;
//! buffers (a batch norm's running statistics, [`crate::nn::Layer::buffers`]) under
//! their `state_dict` names too: `"1.running_mean"` and `"1.running_var"` as `F32`,
//! `"1.num_batches_tracked"` as a 0-dimensional `I64`, so a trained network with batch
//! norm loads into PyTorch strictly, and back.
//!
//! # Saving
//! [`save_safetensors`] is atomic: it writes a temporary file beside the file it
//! replaces, flushes it to disk and renames it over, so an interrupted save leaves the old
//! file or the new one, never half a model. The temporary has a short fixed-length name,
//! so any name the file system accepts (255 bytes on most) can be saved to. A symbolic
//! link (or a chain of them) is followed and the file it points to is replaced, the links
//! left in place; a dangling link creates the file it names. Replacing a file keeps its
//! permissions (a `0600` file stays private); a new file gets the usual default.
//!
//! # Loading
//! [`load_safetensors`] reads a file as its header describes it and never blindly to its
//! end: the header length (at most the format's 100 MB), then the JSON header, checked,
//! then exactly the tensor data it declares, once that size has been checked against the
//! file's size on disk and against [`LoadOptions::limits`] (1 GiB by default, see
//! [`Limits`]; going over is [`Error::LimitExceeded`]). A special file that never ends
//! (a FIFO, `/dev/zero`) is refused as soon as what it sent is not a safetensors file
//! or declares more than the limit.
//!
//! Everything is checked before a parameter is written, so a failed load leaves the
//! model unchanged. Errors say what is wrong and where: [`Error::Truncated`] at the byte
//! where the input ends, [`Error::InvalidData`] at the offending byte (the header length,
//! a byte that is not UTF-8 or JSON, bytes after the data), [`Error::Unsupported`] at a
//! tensor's data when its dtype is not the model's (`F32`, `I64` for
//! `num_batches_tracked`); where no byte is to blame (a parameter or buffer
//! missing from the file, tensors the model does not have, a tensor table whose offsets
//! do not tile the data) [`Error::InvalidContent`] names the keys. Lists of keys name
//! the first eight and how many more, and text quoted from the file is cut, so a message
//! stays short whatever the file holds.
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

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use safetensors::tensor::{Dtype, Metadata, TensorView};

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::nn::{BufferView, BufferViewMut, Sequential};

const FORMAT: &str = "safetensors";

/// The byte length of the header-length prefix.
const N_LEN: u64 = 8;

/// The largest header the format allows (the `safetensors` crate's limit): a larger
/// header length is not a safetensors file.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// At most this many keys are named in an error message (then "and N more").
const LISTED_KEYS: usize = 8;

/// A key longer than this many bytes is cut in an error message.
const KEY_BYTES: usize = 64;

/// A message quoted from the JSON parser is cut after this many bytes.
const QUOTED_BYTES: usize = 200;

/// Content errors with no byte offset to point at.
fn content(message: impl Into<String>) -> Error {
    Error::InvalidContent {
        format: FORMAT,
        message: message.into(),
    }
}

fn invalid_at(offset: u64, message: impl Into<String>) -> Error {
    Error::InvalidData {
        format: FORMAT,
        offset,
        message: message.into(),
    }
}

fn truncated(offset: u64, context: impl Into<String>) -> Error {
    Error::Truncated {
        format: FORMAT,
        offset,
        context: context.into(),
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), saying how long it was.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &s[..end], s.len())
}

/// The first [`LISTED_KEYS`] of `keys`, each cut to [`KEY_BYTES`], then how many more:
/// an error message stays short however many keys a file holds.
fn key_list<S: AsRef<str>>(keys: &[S]) -> String {
    let shown: Vec<String> = keys
        .iter()
        .take(LISTED_KEYS)
        .map(|k| {
            let k = k.as_ref();
            if k.len() <= KEY_BYTES {
                format!("{k:?}")
            } else {
                let mut end = KEY_BYTES;
                while !k.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{:?}... ({} bytes)", &k[..end], k.len())
            }
        })
        .collect();
    let list = format!("[{}]", shown.join(", "));
    match keys.len().saturating_sub(LISTED_KEYS) {
        0 => list,
        more => format!("{list} and {more} more"),
    }
}

/// How strictly [`load_safetensors`] matches the file's tensors to the model's
/// parameters, and how large a file it reads.
///
/// Build it from [`LoadOptions::default`] or [`LoadOptions::lenient`], then
/// [`LoadOptions::with_limits`]; the fields are public to read and set, and more may be
/// added (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// When true (the default, as PyTorch's `load_state_dict(strict=True)`), a tensor in
    /// the file that is not a parameter of the model is an error; when false it is
    /// ignored (and listed in [`LoadReport::ignored`]). A parameter missing from the file
    /// is an error either way, so a load never leaves a parameter uninitialised.
    pub strict: bool,
    /// The largest file read: its size as the header declares it (8 + header + data
    /// bytes) is checked against [`Limits::max_input_bytes`] before the data is read.
    /// The default is [`Limits::default`] (1 GiB). The result limit does not apply: a
    /// load writes into the model's existing parameters.
    pub limits: Limits,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            strict: true,
            limits: Limits::default(),
        }
    }
}

impl LoadOptions {
    /// Ignore tensors in the file that are not parameters of the model.
    pub fn lenient() -> Self {
        LoadOptions {
            strict: false,
            ..LoadOptions::default()
        }
    }

    /// The same options with these size limits (only the input limit applies).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// What [`load_safetensors`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// The parameters set from the file, in the model's order, then the buffers.
    pub loaded: Vec<String>,
    /// The file's tensors that are neither parameters nor buffers of the model
    /// (non-strict loads only),
    /// sorted.
    pub ignored: Vec<String>,
}

/// The model's parameters (`F32`) and buffers (`F32` running statistics, `I64`
/// `num_batches_tracked`) in the safetensors format, under their `state_dict` names, with
/// `__metadata__`
/// `{"format": "pt"}` (what `safetensors.torch.save_file` and the Hugging Face tools
/// expect).
///
/// # Errors
/// [`Error::InvalidContent`] if the serializer rejects the tensors (two parameters with
/// the same name, a header too large).
pub fn to_safetensors_bytes(net: &Sequential) -> Result<Vec<u8>> {
    let params = net.named_parameters();
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = params
        .iter()
        .map(|p| {
            let bytes = p.value.iter().flat_map(|v| v.to_le_bytes()).collect();
            (p.name.clone(), Dtype::F32, p.value.shape().to_vec(), bytes)
        })
        .collect();
    data.extend(net.named_buffers().into_iter().map(|b| {
        let shape = b.value.shape().to_vec();
        match b.value {
            BufferView::F32(a) => (
                b.name,
                Dtype::F32,
                shape,
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            BufferView::I64(a) => (
                b.name,
                Dtype::I64,
                shape,
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        }
    }));
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| content(format!("tensor {}: {e}", cut(name, KEY_BYTES))))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| content(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// Saving

/// The most symbolic links followed from the path a save is given (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// How many temporary names a save tries before giving up (each is taken only if no file
/// of that name exists, so a stale temporary from a crashed process is skipped).
const TEMP_ATTEMPTS: u32 = 64;

/// `path` with every symbolic link at its end followed, through chains, to the file the
/// save should replace. A dangling link resolves to the (missing) file it names, so the
/// save creates that file, as `open(path, "w")` does in Python and PyTorch.
fn resolve_symlinks(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..=MAX_SYMLINKS {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&p)?;
                // A relative target is relative to the link's directory; joining an
                // absolute one replaces the directory.
                p = match p.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "more than {MAX_SYMLINKS} levels of symbolic links"
    )))
}

/// A new, empty temporary file in `dir` with a short name of fixed length
/// (`.convinit-PPPPPPPP-NNNNNNNN.tmp`, 31 bytes, whatever the target's name), so it
/// fits any file system's name limit. Process id and a per-process counter keep
/// concurrent saves apart; `create_new` never reuses a file that exists.
///
/// On Unix it is created with `mode` (further restricted by the umask), so a temporary
/// that replaces a private file is never readable by more users than the file was.
fn create_temp(dir: &Path, #[allow(unused)] mode: u32) -> io::Result<(fs::File, PathBuf)> {
    static SAVES: AtomicU32 = AtomicU32::new(0);
    for _ in 0..TEMP_ATTEMPTS {
        let n = SAVES.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".convinit-{:08x}-{n:08x}.tmp", std::process::id()));
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        match options.open(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "no free temporary file name in {} after {TEMP_ATTEMPTS} tries",
            dir.display()
        ),
    ))
}

/// Writes `bytes` to `target` atomically: a temporary file in the same directory,
/// written, given the permissions of the file it replaces (if any), flushed to disk,
/// then renamed over `target`. The temporary file is removed on any error.
fn write_atomically(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // The file being replaced: its permissions are kept. (A target that is not a
    // regular file is left to the rename to refuse.)
    let existing = fs::metadata(target)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions());
    #[cfg(unix)]
    let mode = existing.as_ref().map_or(0o666, |p| {
        std::os::unix::fs::PermissionsExt::mode(p) & 0o777
    });
    #[cfg(not(unix))]
    let mode = 0;
    let (mut file, tmp) = create_temp(dir, mode)?;
    let result = (|| {
        if let Some(permissions) = existing {
            // Exactly the old mode (the umask narrowed the one the file was created with).
            file.set_permissions(permissions)?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)
    })();
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Saves the model's parameters and buffers to `path` as safetensors (see [`to_safetensors_bytes`]).
///
/// The save is atomic: the bytes go to a temporary file in the same directory as the
/// file being replaced, which is flushed to disk and then renamed over it, so an
/// interrupted save leaves either the old file or the new one, never half a model.
/// Concurrent saves to the same path each write their own temporary; the last rename
/// wins.
///
/// - **Names**: the temporary file has a short name of fixed length
///   (`.convinit-<pid>-<n>.tmp`), so any file name the file system accepts can be saved
///   to, up to its limit (255 bytes on most).
/// - **Symbolic links** are followed, through chains, and the file they point to is
///   replaced (its temporary written in *that* file's directory); the links themselves
///   are left as they are. A dangling link is followed too: the save creates the file it
///   names (as Python's and PyTorch's `open(path, "w")` do), an [`Error::Io`] if that
///   file's directory does not exist. More than 40 links in a chain (or a loop) is an
///   [`Error::Io`].
/// - **Permissions**: replacing an existing file keeps its permissions (a `0600` file
///   stays `0600`; the temporary is never more widely readable than the file it
///   replaces). A new file gets the usual default (`0666` less the umask on Unix). The
///   replaced file's owner is not kept: the new file belongs to the user saving.
///
/// # Errors
/// [`Error::Io`] naming the path (and the link's target when it differs) when the file
/// cannot be written or renamed (the temporary file is removed); as
/// [`to_safetensors_bytes`].
pub fn save_safetensors(net: &Sequential, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_safetensors_bytes(net)?;
    let target = resolve_symlinks(path).map_err(|e| {
        Error::io(
            format!(
                "saving model to {}: following symbolic links",
                path.display()
            ),
            e,
        )
    })?;
    write_atomically(&target, &bytes).map_err(|e| {
        let context = if target == path {
            format!("saving model to {}", path.display())
        } else {
            format!(
                "saving model to {} (the target of the symbolic link {})",
                target.display(),
                path.display()
            )
        };
        Error::io(context, e)
    })
}

// ---------------------------------------------------------------------------------------
// Loading

/// The header of a safetensors file, parsed and checked (tensor offsets tile the data
/// exactly, sizes match dtypes and shapes), and the file's size it declares.
struct Header {
    /// Byte length of the JSON header.
    len: u64,
    metadata: Metadata,
}

impl Header {
    /// The offset of the tensor data in the file.
    fn data_start(&self) -> u64 {
        N_LEN + self.len
    }

    /// The file's size as the header declares it.
    fn file_len(&self) -> u64 {
        self.data_start() + self.metadata.data_len() as u64
    }
}

/// The JSON header length from the first 8 bytes, checked against the format's maximum.
fn header_len(prefix: [u8; 8]) -> Result<u64> {
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_BYTES {
        return Err(invalid_at(
            0,
            format!(
                "the header length is {n} bytes, more than the format's maximum of \
                 {MAX_HEADER_BYTES} (not a safetensors file?)"
            ),
        ));
    }
    Ok(n)
}

/// The byte offset in `text` of serde_json's one-based (line, column).
fn json_position(text: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].iter().position(|&b| b == b'\n') {
            Some(i) => start += i + 1,
            None => break,
        }
    }
    (start + column.saturating_sub(1)).min(text.len())
}

/// Parses and checks the JSON header (`bytes`, which start at byte 8 of the file).
fn parse_header(bytes: &[u8]) -> Result<Header> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        invalid_at(
            N_LEN + e.valid_up_to() as u64,
            "the JSON header is not valid UTF-8",
        )
    })?;
    let metadata: Metadata = serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        let at = format!(" at line {} column {}", e.line(), e.column());
        let message = cut(full.strip_suffix(&at).unwrap_or(&full), QUOTED_BYTES);
        let pos = json_position(bytes, e.line(), e.column());
        // The tensor table is read whole before its entries are checked (the format's
        // header type buffers them), so a wrong entry (an unknown dtype, offsets that do
        // not tile the data) is reported at the closing brace (or nowhere: line 0),
        // which is not where the problem is: no offset then.
        let end = text.trim_end().len();
        if e.line() == 0 || (e.is_data() && pos + 1 >= end) {
            content(format!("the header's tensor table: {message}"))
        } else {
            invalid_at(N_LEN + pos as u64, format!("the JSON header: {message}"))
        }
    })?;
    Ok(Header {
        len: bytes.len() as u64,
        metadata,
    })
}

/// Checks a file of known length `actual` against what `header` declares: shorter is
/// truncated, longer has trailing bytes.
fn check_file_len(header: &Header, actual: u64) -> Result<()> {
    let declared = header.file_len();
    if actual < declared {
        return Err(truncated(
            actual,
            format!(
                "the tensor data (the header declares {} bytes of it, ending at byte \
                 {declared})",
                header.metadata.data_len()
            ),
        ));
    }
    if actual > declared {
        return Err(invalid_at(
            declared,
            format!(
                "{} bytes follow the end of the tensor data the header declares",
                actual - declared
            ),
        ));
    }
    Ok(())
}

/// Reads up to `n` bytes of `reader` onto the end of `buf`; returns how many it read.
fn read_up_to(reader: &mut impl Read, buf: &mut Vec<u8>, n: u64) -> io::Result<u64> {
    reader.take(n).read_to_end(buf).map(|got| got as u64)
}

/// Loads the model's parameters and buffers from a safetensors file (see [`load_safetensors_bytes`]).
///
/// The file is read as the header says, never to its end blindly: first the 8-byte
/// header length (at most 100 MB, the format's limit), then the JSON header, which is
/// checked; then exactly the tensor data it declares, once the declared size has been
/// checked against `options.limits` (and, for a regular file, against its size on
/// disk). A special file that never ends (a FIFO, `/dev/zero`, `/dev/urandom`) is an
/// error as soon as what it sent is not a safetensors file or declares more than the
/// limit; memory stays bounded by the limit.
///
/// # Errors
/// [`Error::Io`] naming the path when it cannot be opened or read; as
/// [`load_safetensors_bytes`].
pub fn load_safetensors(
    net: &mut Sequential,
    path: impl AsRef<Path>,
    options: LoadOptions,
) -> Result<LoadReport> {
    let path = path.as_ref();
    let io_err = |e| Error::io(format!("reading model {}", path.display()), e);
    let mut file = fs::File::open(path).map_err(io_err)?;
    // The size to check the header against, when the file is a regular one.
    let stat = file.metadata().map_err(io_err)?;
    let on_disk = stat.is_file().then_some(stat.len());

    let mut prefix = Vec::with_capacity(N_LEN as usize);
    let got = read_up_to(&mut file, &mut prefix, N_LEN).map_err(io_err)?;
    let Ok(prefix) = <[u8; 8]>::try_from(prefix) else {
        return Err(truncated(got, "the 8-byte header length"));
    };
    let n = header_len(prefix)?;
    if let Some(len) = on_disk.filter(|&len| len < N_LEN + n) {
        return Err(truncated(len, format!("the {n}-byte JSON header")));
    }
    options.limits.check_input(FORMAT, N_LEN + n)?;
    // A stream may end early: grow as bytes arrive rather than trusting `n`.
    let mut header = Vec::new();
    if on_disk.is_some() {
        header = crate::limits::try_vec_with_capacity("load_safetensors", n as usize, || {
            format!("the {n}-byte JSON header")
        })?;
    }
    let got = read_up_to(&mut file, &mut header, n).map_err(io_err)?;
    if got < n {
        return Err(truncated(N_LEN + got, format!("the {n}-byte JSON header")));
    }
    let header = parse_header(&header)?;
    if let Some(len) = on_disk {
        check_file_len(&header, len)?;
    }
    options.limits.check_input(FORMAT, header.file_len())?;

    let data_len = header.metadata.data_len();
    let mut data = Vec::new();
    if on_disk.is_some() {
        data = crate::limits::try_vec_with_capacity("load_safetensors", data_len, || {
            format!("{data_len} bytes of tensor data")
        })?;
    }
    let got = read_up_to(&mut file, &mut data, data_len as u64).map_err(io_err)?;
    if got < data_len as u64 {
        return Err(truncated(
            header.data_start() + got,
            format!("the tensor data (the header declares {data_len} bytes of it)"),
        ));
    }
    // Nothing may follow the data (a file that grew since, a stream that goes on).
    let mut probe = [0u8; 1];
    let more = loop {
        match file.read(&mut probe) {
            Ok(k) => break k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
    };
    if more > 0 {
        return Err(invalid_at(
            header.file_len(),
            "more bytes follow the end of the tensor data the header declares",
        ));
    }
    apply(net, &header, &data, options)
}

/// Sets every parameter and buffer of `net` from the tensor of the same name in `bytes`
/// (a safetensors file), as PyTorch's `load_state_dict`.
///
/// Everything is checked before anything is written: on error the model is unchanged.
/// The checks are those of [`load_safetensors`], `options.limits` included.
///
/// Messages that list keys name the first 8 (each cut to 64 bytes) and say how many
/// more, and text quoted from the file is cut short, so an error stays a few hundred
/// bytes whatever the file holds.
///
/// # Errors
/// - [`Error::Truncated`] when the bytes end before the header length, the header or the
///   data the header declares (at the byte where they end);
/// - [`Error::InvalidData`] at the offending byte when the header length is more than
///   the format's 100 MB, the header is not UTF-8 JSON of the format's shape, or bytes
///   follow the declared data;
/// - [`Error::LimitExceeded`] when the declared size is more than
///   `options.limits.max_input_bytes()`;
/// - [`Error::InvalidContent`] when the header's tensor table is inconsistent (offsets
///   that do not tile the data, sizes that do not match dtype and shape), a parameter
///   or buffer is missing from the file (the missing keys are named), or (when
///   `options.strict`) the file holds tensors that are neither (the unexpected keys are
///   named);
/// - [`Error::Unsupported`] at the tensor's data when a needed tensor does not have the
///   model's dtype (`F32`; `I64` for `num_batches_tracked`) (its
///   key and dtype named);
/// - [`Error::Shape`] when a tensor's shape differs from its parameter's or buffer's
///   (the key and both shapes named).
pub fn load_safetensors_bytes(
    net: &mut Sequential,
    bytes: &[u8],
    options: LoadOptions,
) -> Result<LoadReport> {
    let len = bytes.len() as u64;
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(truncated(len, "the 8-byte header length"));
    };
    let n = header_len(*prefix)?;
    let Some(header) = bytes.get(N_LEN as usize..(N_LEN + n) as usize) else {
        return Err(truncated(len, format!("the {n}-byte JSON header")));
    };
    options.limits.check_input(FORMAT, N_LEN + n)?;
    let header = parse_header(header)?;
    check_file_len(&header, len)?;
    options.limits.check_input(FORMAT, header.file_len())?;
    apply(
        net,
        &header,
        &bytes[header.data_start() as usize..],
        options,
    )
}

/// What the model needs from the file: a parameter or a buffer, its name, shape and
/// dtype.
struct Wanted {
    name: String,
    shape: Vec<usize>,
    dtype: Dtype,
    what: &'static str,
}

/// Every tensor of the model's `state_dict`: the parameters (F32), then the buffers (F32
/// running statistics, I64 `num_batches_tracked`).
fn wanted(net: &Sequential) -> Vec<Wanted> {
    let params = net.named_parameters().into_iter().map(|p| Wanted {
        shape: p.value.shape().to_vec(),
        name: p.name,
        dtype: Dtype::F32,
        what: "parameter",
    });
    let buffers = net.named_buffers().into_iter().map(|b| Wanted {
        shape: b.value.shape().to_vec(),
        dtype: match b.value {
            BufferView::F32(_) => Dtype::F32,
            BufferView::I64(_) => Dtype::I64,
        },
        name: b.name,
        what: "buffer",
    });
    params.chain(buffers).collect()
}

/// Matches the checked file (`header`, and `data`, the bytes after it) to the model's
/// parameters and buffers, checks every match, then writes them all.
fn apply(
    net: &mut Sequential,
    header: &Header,
    data: &[u8],
    options: LoadOptions,
) -> Result<LoadReport> {
    let wanted = wanted(net);
    let missing: Vec<&str> = wanted
        .iter()
        .map(|w| w.name.as_str())
        .filter(|name| header.metadata.info(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(content(format!(
            "missing key(s) {}: the model has them, the file does not",
            key_list(&missing)
        )));
    }
    let names: HashSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    let mut ignored: Vec<String> = header
        .metadata
        .offset_keys()
        .into_iter()
        .filter(|name| !names.contains(name.as_str()))
        .collect();
    ignored.sort_unstable();
    if options.strict && !ignored.is_empty() {
        return Err(content(format!(
            "unexpected key(s) {}: the file has them, the model does not (load with \
             LoadOptions::lenient() to ignore them)",
            key_list(&ignored)
        )));
    }
    let mut tensors = Vec::with_capacity(wanted.len());
    for w in &wanted {
        let info = header
            .metadata
            .info(&w.name)
            .ok_or_else(|| content(format!("key {} vanished", cut(&w.name, KEY_BYTES))))?;
        let (start, end) = info.data_offsets;
        if info.dtype != w.dtype {
            return Err(Error::Unsupported {
                format: FORMAT,
                offset: header.data_start() + start as u64,
                message: format!(
                    "key {} has dtype {:?}, the model's {} is {:?}",
                    w.name, info.dtype, w.what, w.dtype
                ),
            });
        }
        if info.shape != w.shape {
            return Err(Error::shape(
                "load_safetensors",
                format!(
                    "key {}: the file has shape {:?}, the model's {} is {:?}",
                    w.name, info.shape, w.what, w.shape
                ),
            ));
        }
        // The header's checks and the file length make this in range.
        let Some(bytes) = data.get(start..end) else {
            return Err(content(format!(
                "key {}: data_offsets [{start}, {end}] lie outside the {} bytes of data",
                w.name,
                data.len()
            )));
        };
        tensors.push(bytes);
    }
    let mut bytes = tensors.into_iter();
    for (p, b) in net.named_parameters_mut().iter_mut().zip(bytes.by_ref()) {
        let values = b
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        for (dst, v) in p.value.iter_mut().zip(values) {
            *dst = v;
        }
    }
    for (buffer, b) in net.named_buffers_mut().into_iter().zip(bytes) {
        match buffer.value {
            BufferViewMut::F32(mut a) => {
                let values = b
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                for (dst, v) in a.iter_mut().zip(values) {
                    *dst = v;
                }
            }
            BufferViewMut::I64(mut a) => {
                let values = b
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
                for (dst, v) in a.iter_mut().zip(values) {
                    *dst = v;
                }
            }
        }
    }
    Ok(LoadReport {
        loaded: wanted.into_iter().map(|w| w.name).collect(),
        ignored,
    })
}
