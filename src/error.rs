//! The crate-wide error type.
//!
//! Every user-facing failure in `convinit` (a file that is not what it claims to be, a
//! shape that does not fit an op, a configuration value out of range, a method called in
//! the wrong order) is reported as an [`Error`]; the library never panics on bad input.
//! Each variant names where the problem is: the format and byte offset for data files, the
//! op and the offending shapes or values for tensor operations.

use std::fmt;

/// The result type of every fallible function in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and where.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an I/O operation.
    Io {
        /// What was being done (usually names the path).
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The input ended before a complete value could be read.
    Truncated {
        /// The format being read (`"pickle"`, `"gzip"`, `"idx"`, ...).
        format: &'static str,
        /// Byte offset (in the decompressed stream) where more data was needed.
        offset: u64,
        /// What was being read when the input ended.
        context: String,
    },
    /// The input is malformed: not the format it should be, or internally inconsistent.
    InvalidData {
        /// The format being read.
        format: &'static str,
        /// Byte offset (in the decompressed stream) of the offending item.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// The input is well formed but uses something this crate does not support
    /// (an unknown pickle global, an object dtype, ...).
    Unsupported {
        /// The format being read.
        format: &'static str,
        /// Byte offset (in the decompressed stream) of the offending item.
        offset: u64,
        /// What is not supported.
        message: String,
    },
    /// Tensor shapes that do not fit an operation.
    Shape {
        /// The operation, e.g. `"conv2d"`.
        op: &'static str,
        /// The shapes involved and what was expected.
        message: String,
    },
    /// A configuration value out of range (zero stride, groups not dividing channels, ...).
    Config {
        /// The operation or layer, e.g. `"Conv2d"`.
        op: &'static str,
        /// The offending values and what was expected.
        message: String,
    },
    /// An input or result larger than a loader's [`Limits`](crate::limits::Limits)
    /// allow (a decompression bomb, a header claiming billions of items).
    LimitExceeded {
        /// The format being read.
        format: &'static str,
        /// What went over: `"decompressed input"` or `"result"`.
        what: &'static str,
        /// The limit in force, in bytes.
        limit: u64,
        /// The setter that raises it, e.g. `"Limits::with_max_input_bytes"`.
        setting: &'static str,
    },
    /// Memory for an op's buffer could not be reserved (the shapes ask for more than the
    /// machine can give).
    Alloc {
        /// The operation or layer.
        op: &'static str,
        /// The size asked for, in bytes (`u128::MAX` when it overflows).
        bytes: u128,
        /// What the buffer was for, with the shapes involved.
        message: String,
    },
    /// The input is well formed but its content is wrong, or does not fit what it is
    /// loaded into, where no single byte offset is to blame (a parameter missing from a
    /// weights file, tensors the model does not have, offsets that do not tile the data).
    InvalidContent {
        /// The format being read (or written).
        format: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A method called in the wrong state, e.g. `backward` before `forward`.
    State {
        /// The operation or layer.
        op: &'static str,
        /// What was expected to have happened first.
        message: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub(crate) fn shape(op: &'static str, message: impl Into<String>) -> Self {
        Error::Shape {
            op,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Config`].
    pub(crate) fn config(op: &'static str, message: impl Into<String>) -> Self {
        Error::Config {
            op,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::State`].
    pub(crate) fn state(op: &'static str, message: impl Into<String>) -> Self {
        Error::State {
            op,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Truncated {
                format,
                offset,
                context,
            } => write!(
                f,
                "{format}: input truncated at byte {offset} while reading {context}"
            ),
            Error::InvalidData {
                format,
                offset,
                message,
            } => write!(f, "{format}: invalid data at byte {offset}: {message}"),
            Error::Unsupported {
                format,
                offset,
                message,
            } => write!(f, "{format}: unsupported at byte {offset}: {message}"),
            Error::Shape { op, message } => write!(f, "{op}: shape error: {message}"),
            Error::Config { op, message } => write!(f, "{op}: invalid configuration: {message}"),
            Error::LimitExceeded {
                format,
                what,
                limit,
                setting,
            } => write!(
                f,
                "{format}: the {what} exceeds the limit of {limit} bytes; raise it with \
                 `{setting}` (crate::limits::Limits)"
            ),
            Error::Alloc { op, bytes, message } if *bytes == u128::MAX => {
                write!(f, "{op}: cannot allocate {message}: its size overflows")
            }
            Error::Alloc { op, bytes, message } => {
                write!(f, "{op}: cannot allocate {bytes} bytes for {message}")
            }
            Error::InvalidContent { format, message } => write!(f, "{format}: {message}"),
            Error::State { op, message } => write!(f, "{op}: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_format_and_offset() {
        let e = Error::Truncated {
            format: "pickle",
            offset: 42,
            context: "BINSTRING payload".into(),
        };
        assert_eq!(
            e.to_string(),
            "pickle: input truncated at byte 42 while reading BINSTRING payload"
        );
        let e = Error::shape("conv2d", "x (1, 3, 5, 5) has 3 channels, weight expects 2");
        assert!(e.to_string().starts_with("conv2d: shape error: x (1, 3"));
    }

    #[test]
    fn io_error_has_source() {
        use std::error::Error as _;
        let e = Error::io(
            "opening foo",
            std::io::Error::new(std::io::ErrorKind::NotFound, "nope"),
        );
        assert!(e.source().is_some());
    }
}
