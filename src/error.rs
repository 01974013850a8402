//! The crate's one error type. Every failure a user can cause (a missing or corrupt file, a
//! config the runtime does not support, a malformed input line, a bad argument, a GPU that runs
//! out of memory) becomes one of these variants with a message that fits on one line; nothing on
//! the input path panics.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path} is missing{hint}")]
    MissingFile { path: PathBuf, hint: String },

    #[error("{path} is not valid JSON for this file: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: corrupt weight file: {message}")]
    CorruptWeights { path: PathBuf, message: String },

    /// A checkpoint whose pickle asks for more than a state dict: nothing of it is run.
    #[error("{path}: refusing to load: {message}")]
    UnsafeWeights { path: PathBuf, message: String },

    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },

    #[error("tensor `{name}` has shape {found:?} but the config implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("input line {line}: {message}")]
    InputLine { line: usize, message: String },

    #[error("{0}")]
    InvalidArgument(String),

    /// Operands of a backend operation whose shapes do not fit together (see
    /// `backend::Backend`): every backend answers the same mistake with the same message.
    #[error("shape mismatch in {0}")]
    Shape(String),

    #[error("model `{repo}`: {message}")]
    Hub { repo: String, message: String },

    #[error("GPU: {0}")]
    Gpu(String),

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
