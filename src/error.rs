//! The one error type of the library. Every variant names what is wrong: a config key, a file,
//! a checkpoint. `main` prints it with `{:#}` and exits non-zero.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file could not be parsed, or a key in it has the wrong type or is unknown.
    #[error("{file}: {message}")]
    ConfigParse { file: String, message: String },

    /// A config value parsed but is out of range or inconsistent; `key` is its dotted path.
    #[error("{key}: {message}")]
    ConfigValue { key: String, message: String },

    /// A file or directory could not be read or written. The OS error is part of the message
    /// and not a `source`, so that a report of the error chain (`{:#}`) names it once.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// Input data (a text or jsonl file, a source) is unusable.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// A token shard is truncated, corrupt or of another version.
    #[error("shard {}: {message}", path.display())]
    Shard { path: PathBuf, message: String },

    /// A checkpoint is missing, incomplete, corrupt or from another config.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// The tokenizer could not be built, loaded or trained.
    #[error("tokenizer {spec}: {message}")]
    Tokenizer { spec: String, message: String },

    /// The run directory is not in a state the command can work with.
    #[error("run directory {}: {message}", path.display())]
    RunDir { path: PathBuf, message: String },

    /// The requested backend is not compiled in or not usable.
    #[error("run.backend: {0}")]
    Backend(String),

    /// Training produced something unusable.
    #[error("training: {0}")]
    Training(String),

    /// A distributed run lost a rank, timed out, or found the ranks out of step.
    #[error("distributed: {0}")]
    Distributed(String),

    /// A step's loss or gradient was not finite; the step was not applied.
    #[error("training: step {step}: {message}")]
    NonFinite { step: usize, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn value(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::ConfigValue {
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `result.at(path)?` turns an io::Error into one naming the path.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::io(path, source))
    }
}
