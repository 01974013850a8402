//! The crate's one error type. Every failure a user can cause (a missing or corrupt file, a
//! config the runtime does not support, a malformed input line, a bad argument, a GPU that runs
//! out of memory) becomes one of these variants with a message that fits on one line; nothing on
//! the input path panics.

use std::path::PathBuf;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure of the library, each with a one-line message (its `Display`). The fields
/// name the file, tensor, line or request at fault.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields: each variant's message says what they hold
pub enum Error {
    /// A file that exists could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A file the model needs is absent; `hint` says how to get it, where known.
    #[error("{path} is missing{hint}")]
    MissingFile { path: PathBuf, hint: String },

    /// A JSON file (config, tokenizer settings, pooling) that does not parse.
    #[error("{path} is not valid JSON for this file: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// A config this runtime cannot run faithfully (architecture, activation, sizes).
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    /// A weight file that is not what it claims to be.
    #[error("{path}: corrupt weight file: {message}")]
    CorruptWeights { path: PathBuf, message: String },

    /// A checkpoint whose pickle asks for more than a state dict: nothing of it is run.
    #[error("{path}: refusing to load: {message}")]
    UnsafeWeights { path: PathBuf, message: String },

    /// A tensor the config implies is not in the checkpoint.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },

    /// A tensor of the checkpoint whose shape disagrees with the config.
    #[error("tensor `{name}` has shape {found:?} but the config implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// The tokenizer failed to load or to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A line of JSONL input that is not what the command reads (numbered from 1).
    #[error("input line {line}: {message}")]
    InputLine { line: usize, message: String },

    /// An argument out of range or of the wrong kind (a length, a batch size, a device, a
    /// dtype the device cannot run, an output the model has no head for).
    #[error("{0}")]
    InvalidArgument(String),

    /// Operands of a backend operation whose shapes do not fit together (see
    /// `backend::Backend`): every backend answers the same mistake with the same message.
    #[error("shape mismatch in {0}")]
    Shape(String),

    /// A model that could not be found in, or fetched into, the Hugging Face cache.
    #[error("model `{repo}`: {message}")]
    Hub { repo: String, message: String },

    /// The GPU or its driver failed (no adapter, a lost device, a shader it cannot compile).
    #[error("GPU: {0}")]
    Gpu(String),

    /// The server could not start or serve (an address in use, a stopped worker).
    #[error("server: {0}")]
    Server(String),

    /// The GPU could not give a buffer this large.
    #[error(
        "GPU out of memory while allocating {bytes} bytes for {what}; try a smaller batch size or max length"
    )]
    GpuOutOfMemory { what: String, bytes: u64 },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::CorruptWeights {
            path: path.into(),
            message: message.into(),
        }
    }
}
