//! numpy's `.npz` archives (`np.savez`, `np.savez_compressed`): `convinit::data::npz`.
//!
//! An `.npz` is a zip archive of `.npy` files. [`load`] (a path) and [`from_reader`]
//! (any [`Read`] + [`Seek`]) return its arrays by name (the member name without `.npy`,
//! as `np.load(...)[name]` has it), in archive order, each read by the
//! [`.npy` reader](crate::data::npy) with the same dtypes, orders and errors.
//!
//! ## What it reads
//! Members stored (`np.savez`) or deflate-compressed (`np.savez_compressed`), with or
//! without the zip64 extensions numpy writes (it forces zip64 on every member), and
//! zip64 archives. The central directory at the end of the archive is what is read, so
//! members written with a trailing data descriptor are fine too. Each member's CRC-32
//! and sizes are checked. Other compression methods, encryption, multi-disk archives
//! and members that are not `.npy` files are [`Error::Unsupported`].
//!
//! ## Memory
//! [`Limits::max_input_bytes`] bounds the *decompressed* size of all members together,
//! checked from the sizes the central directory declares before anything is
//! decompressed, and no member is ever inflated past its declared size;
//! [`Limits::max_result_bytes`] bounds all the arrays together (data plus 16 bytes per
//! dimension) and their names.
//!
//! ## Errors
//! Zip structure errors are [`Error::InvalidData`] (format `"npz"`, offset in the
//! archive); errors inside a member are those of the `.npy` reader (format `"npy"`,
//! offset in the decompressed member) with the member's name in the message.
//!
//! # Examples
//! ```no_run
//! use convinit::data::npz;
//! # fn main() -> convinit::Result<()> {
//! // np.savez_compressed("mnist.npz", x_train=x, y_train=y)
//! for (name, a) in npz::load("mnist.npz")? {
//!     println!("{name}: {} {:?}", a.dtype(), a.shape());
//! }
//! # Ok(())
//! # }
//! ```

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::data::npy::{Budget, Src, read_array};
use crate::data::pickle::NdArray;
use crate::error::{Error, Result};
use crate::limits::Limits;

const FORMAT: &str = "npz";

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: u64 = 22;
const MAX_COMMENT: u64 = 0xFFFF;

/// Reads every array of the `.npz` file at `path` with the default [`Limits`].
pub fn load(path: impl AsRef<Path>) -> Result<Vec<(String, NdArray)>> {
    load_with(path, Limits::default())
}

/// Reads every array of the `.npz` file at `path` within `limits`.
pub fn load_with(path: impl AsRef<Path>, limits: Limits) -> Result<Vec<(String, NdArray)>> {
    let path = path.as_ref();
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    from_reader_with(std::io::BufReader::new(file), limits)
}

/// Reads every array of an `.npz` archive with the default [`Limits`].
///
/// # Examples
/// ```
/// use convinit::data::npz;
/// # fn main() -> convinit::Result<()> {
/// // An empty archive: just the end of central directory record.
/// let empty = b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
/// assert!(npz::from_reader(std::io::Cursor::new(&empty[..]))?.is_empty());
/// # Ok(())
/// # }
/// ```
pub fn from_reader<R: Read + Seek>(reader: R) -> Result<Vec<(String, NdArray)>> {
    from_reader_with(reader, Limits::default())
}

/// Reads every array of an `.npz` archive within `limits`.
pub fn from_reader_with<R: Read + Seek>(
    mut reader: R,
    limits: Limits,
) -> Result<Vec<(String, NdArray)>> {
    let dir = Directory::read(&mut reader)?;
    let entries = dir.entries(&mut reader)?;
    let total = entries
        .iter()
        .try_fold(0u64, |a, e| a.checked_add(e.size))
        .unwrap_or(u64::MAX);
    limits.check_input(FORMAT, total)?;
    let mut budget = Budget::new(FORMAT, limits);
    let mut out = Vec::new();
    for e in entries {
        let a = read_member(&mut reader, &e, dir.cd_offset, &mut budget)?;
        out.push((e.name, a));
    }
    Ok(out)
}

fn invalid(offset: u64, message: impl Into<String>) -> Error {
    Error::InvalidData {
        format: FORMAT,
        offset,
        message: message.into(),
    }
}

fn unsupported(offset: u64, message: impl Into<String>) -> Error {
    Error::Unsupported {
        format: FORMAT,
        offset,
        message: message.into(),
    }
}

fn io(e: std::io::Error) -> Error {
    Error::io("reading npz", e)
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Reads `len` bytes at `offset`, or `Truncated`.
fn read_at<R: Read + Seek>(r: &mut R, offset: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    r.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = Vec::new();
    r.take(len as u64).read_to_end(&mut buf).map_err(io)?;
    if buf.len() < len {
        return Err(Error::Truncated {
            format: FORMAT,
            offset: offset + buf.len() as u64,
            context: what.to_string(),
        });
    }
    Ok(buf)
}

/// Where the central directory is, from the end of central directory record.
struct Directory {
    entries: u64,
    cd_offset: u64,
    cd_size: u64,
}

impl Directory {
    fn read<R: Read + Seek>(r: &mut R) -> Result<Directory> {
        let len = r.seek(SeekFrom::End(0)).map_err(io)?;
        let tail_len = len.min(EOCD_LEN + MAX_COMMENT);
        let tail_at = len - tail_len;
        let tail = read_at(r, tail_at, tail_len as usize, "the end of the archive")?;
        let not_zip = || {
            invalid(
                0,
                "not an .npz (zip) archive: no end of central directory record",
            )
        };
        if tail.len() < EOCD_LEN as usize {
            return Err(not_zip());
        }
        let pos = (0..=tail.len() - EOCD_LEN as usize)
            .rev()
            .find(|&i| u32_at(&tail, i) == EOCD_SIG)
            .ok_or_else(not_zip)?;
        let eocd_at = tail_at + pos as u64;
        let e = &tail[pos..];
        let (disk, cd_disk) = (u16_at(e, 4), u16_at(e, 6));
        let (on_disk, entries) = (u16_at(e, 8), u16_at(e, 10));
        let (cd_size, cd_offset) = (u32_at(e, 12), u32_at(e, 16));
        let zip64 = entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF;
        let mut dir = Directory {
            entries: u64::from(entries),
            cd_offset: u64::from(cd_offset),
            cd_size: u64::from(cd_size),
        };
        let mut end = eocd_at;
        if zip64 {
            let at = eocd_at
                .checked_sub(20)
                .ok_or_else(|| invalid(eocd_at, "zip64 archive without its locator"))?;
            let loc = read_at(r, at, 20, "the zip64 locator")?;
            if u32_at(&loc, 0) != ZIP64_LOCATOR_SIG {
                return Err(invalid(at, "zip64 archive without its locator"));
            }
            if u32_at(&loc, 4) != 0 || u32_at(&loc, 16) > 1 {
                return Err(unsupported(at, "multi-disk archive"));
            }
            let rec_at = u64_at(&loc, 8);
            if rec_at.checked_add(56).is_none_or(|x| x > at) {
                return Err(invalid(at, "zip64 end of central directory out of place"));
            }
            let rec = read_at(r, rec_at, 56, "the zip64 end of central directory")?;
            if u32_at(&rec, 0) != ZIP64_EOCD_SIG {
                return Err(invalid(rec_at, "bad zip64 end of central directory record"));
            }
            if u32_at(&rec, 16) != 0 || u32_at(&rec, 20) != 0 {
                return Err(unsupported(rec_at, "multi-disk archive"));
            }
            if u64_at(&rec, 24) != u64_at(&rec, 32) {
                return Err(unsupported(rec_at, "multi-disk archive"));
            }
            dir = Directory {
                entries: u64_at(&rec, 32),
                cd_size: u64_at(&rec, 40),
                cd_offset: u64_at(&rec, 48),
            };
            end = rec_at;
        } else if disk != 0 || cd_disk != 0 || on_disk != entries {
            return Err(unsupported(eocd_at, "multi-disk archive"));
        }
        if dir
            .cd_offset
            .checked_add(dir.cd_size)
            .is_none_or(|x| x > end)
        {
            return Err(invalid(
                eocd_at,
                format!(
                    "central directory ({} bytes at {}) does not end before its end record \
                     at {end}",
                    dir.cd_size, dir.cd_offset
                ),
            ));
        }
        Ok(dir)
    }

    /// The central directory's entries, in order.
    fn entries<R: Read + Seek>(&self, r: &mut R) -> Result<Vec<Entry>> {
        // The size was checked to lie inside the archive: these bytes exist.
        let size = usize::try_from(self.cd_size)
            .map_err(|_| invalid(self.cd_offset, "central directory too large"))?;
        let cd = read_at(r, self.cd_offset, size, "the central directory")?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        for _ in 0..self.entries {
            let at = self.cd_offset + pos as u64;
            let short = || {
                invalid(
                    at,
                    "central directory entry runs past the end of the directory",
                )
            };
            let h = cd.get(pos..pos + 46).ok_or_else(short)?;
            if u32_at(h, 0) != CENTRAL_SIG {
                return Err(invalid(at, "bad central directory entry signature"));
            }
            let flags = u16_at(h, 8);
            let method = u16_at(h, 10);
            let crc = u32_at(h, 16);
            let mut csize = u64::from(u32_at(h, 20));
            let mut size = u64::from(u32_at(h, 24));
            let (n, x, c) = (
                usize::from(u16_at(h, 28)),
                usize::from(u16_at(h, 30)),
                usize::from(u16_at(h, 32)),
            );
            let disk = u16_at(h, 34);
            let mut local = u64::from(u32_at(h, 42));
            let name = cd.get(pos + 46..pos + 46 + n).ok_or_else(short)?;
            let extra = cd.get(pos + 46 + n..pos + 46 + n + x).ok_or_else(short)?;
            cd.get(pos + 46 + n + x..pos + 46 + n + x + c)
                .ok_or_else(short)?;
            let raw_name = name.to_vec();
            let name = match std::str::from_utf8(name) {
                Ok(s) => s.to_string(),
                Err(_) => name.iter().map(|&b| char::from(b)).collect(),
            };
            // zip64: the fields that overflowed are in extra field 0x0001, in this order.
            let mut i = 0;
            while i + 4 <= extra.len() {
                let (id, len) = (u16_at(extra, i), usize::from(u16_at(extra, i + 2)));
                let body = extra.get(i + 4..i + 4 + len).ok_or_else(|| {
                    invalid(at, format!("{name:?}: extra field runs past its end"))
                })?;
                if id == 1 {
                    let mut k = 0;
                    for field in [&mut size, &mut csize, &mut local] {
                        if *field == 0xFFFF_FFFF {
                            let v = body.get(k..k + 8).ok_or_else(|| {
                                invalid(at, format!("{name:?}: zip64 extra field too short"))
                            })?;
                            *field = u64_at(v, 0);
                            k += 8;
                        }
                    }
                }
                i += 4 + len;
            }
            if flags & 1 != 0 {
                return Err(unsupported(at, format!("{name:?} is encrypted")));
            }
            if disk != 0 && disk != 0xFFFF {
                return Err(unsupported(at, "multi-disk archive"));
            }
            let method = match method {
                0 => Method::Stored,
                8 => Method::Deflated,
                m => {
                    return Err(unsupported(
                        at,
                        format!(
                            "{name:?} is compressed with method {m} (only stored and \
                             deflate, what numpy writes, are supported)"
                        ),
                    ));
                }
            };
            if method == Method::Stored && csize != size {
                return Err(invalid(
                    at,
                    format!("{name:?} is stored but its sizes differ ({csize} and {size})"),
                ));
            }
            let Some(key) = name.strip_suffix(".npy") else {
                return Err(unsupported(
                    at,
                    format!("member {name:?} is not an .npy file"),
                ));
            };
            out.push(Entry {
                name: key.to_string(),
                member: name.clone(),
                raw_name,
                at,
                method,
                crc,
                csize,
                size,
                local,
            });
            pos += 46 + n + x + c;
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Stored,
    Deflated,
}

/// One member, from the central directory.
struct Entry {
    /// The array's name (the member's without `.npy`).
    name: String,
    /// The member's name.
    member: String,
    /// The member's name as stored.
    raw_name: Vec<u8>,
    /// Offset of its central directory entry.
    at: u64,
    method: Method,
    crc: u32,
    csize: u64,
    size: u64,
    /// Offset of its local header.
    local: u64,
}

fn member_error(e: std::io::Error, offset: u64) -> Error {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::UnexpectedEof => Error::Truncated {
            format: "deflate",
            offset,
            context: format!("the compressed member ({e})"),
        },
        ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::Other => Error::InvalidData {
            format: "deflate",
            offset,
            message: format!("corrupt compressed member: {e}"),
        },
        _ => Error::io("reading npz", e),
    }
}

/// Puts the member's name into an error from inside it.
fn in_member(e: Error, name: &str) -> Error {
    match e {
        Error::Truncated {
            format,
            offset,
            context,
        } => Error::Truncated {
            format,
            offset,
            context: format!("{context} of member {name:?}"),
        },
        Error::InvalidData {
            format,
            offset,
            message,
        } => Error::InvalidData {
            format,
            offset,
            message: format!("member {name:?}: {message}"),
        },
        Error::Unsupported {
            format,
            offset,
            message,
        } => Error::Unsupported {
            format,
            offset,
            message: format!("member {name:?}: {message}"),
        },
        other => other,
    }
}

fn read_member<R: Read + Seek>(
    r: &mut R,
    e: &Entry,
    cd_offset: u64,
    budget: &mut Budget,
) -> Result<NdArray> {
    let h = read_at(r, e.local, 30, "a local header")?;
    if u32_at(&h, 0) != LOCAL_SIG {
        return Err(invalid(
            e.local,
            format!("{:?}: bad local header signature", e.member),
        ));
    }
    let (n, x) = (u64::from(u16_at(&h, 26)), u64::from(u16_at(&h, 28)));
    let name = read_at(r, e.local + 30, n as usize, "a local header")?;
    if name != e.raw_name {
        return Err(invalid(
            e.local + 30,
            format!(
                "the local header names {:?} but the directory {:?}",
                String::from_utf8_lossy(&name),
                e.member
            ),
        ));
    }
    let data_at = e.local + 30 + n + x;
    if data_at
        .checked_add(e.csize)
        .is_none_or(|end| end > cd_offset)
    {
        return Err(invalid(
            e.at,
            format!(
                "{:?}: {} bytes of data at {data_at} run into the central directory",
                e.member, e.csize
            ),
        ));
    }
    budget.charge_result(e.name.len() as u64)?;
    r.seek(SeekFrom::Start(data_at)).map_err(io)?;
    let compressed = r.by_ref().take(e.csize);
    let a = match e.method {
        Method::Stored => {
            let crc = flate2::CrcReader::new(compressed.take(e.size));
            one_array(crc, e, budget)
        }
        Method::Deflated => {
            let inflate = flate2::read::DeflateDecoder::new(compressed);
            let crc = flate2::CrcReader::new(inflate.take(e.size));
            one_array(crc, e, budget)
        }
    };
    a.map_err(|err| in_member(err, &e.member))
}

/// Reads the member's array and checks that it fills the member and matches its CRC.
fn one_array<R: Read>(
    crc: flate2::CrcReader<R>,
    e: &Entry,
    budget: &mut Budget,
) -> Result<NdArray> {
    let mut src = Src::new(crc, "npy", member_error);
    let a = read_array(&mut src, budget, Some(e.size))?;
    src.expect_end("the array data")?;
    if src.offset() != e.size {
        // The decompressed member ended before its declared size.
        return Err(invalid(
            e.at,
            format!(
                "the member inflates to {} bytes but the directory says {}",
                src.offset(),
                e.size
            ),
        ));
    }
    let crc = src.into_inner();
    if crc.crc().sum() != e.crc {
        return Err(invalid(
            e.at,
            format!(
                "CRC-32 mismatch: the directory says {:08x}, the data gives {:08x}",
                e.crc,
                crc.crc().sum()
            ),
        ));
    }
    Ok(a)
}
