//! Typed errors for the library. Every variant carries what a user needs to fix the problem:
//! the file, the config key, the expected value. The CLI adds context and prints them; the
//! library never panics on input a user controls.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config key with a bad value (or an unknown key). `key` is the dotted path.
    #[error("config key `{key}`: {msg}")]
    Config { key: String, msg: String },

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its contents are not what lmforge expects.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    /// The requested model does not fit, said before anything is allocated.
    #[error("{0}")]
    DoesNotFit(String),

    /// Any other invalid request (bad CLI combination, empty data, ...).
    #[error("{0}")]
    Invalid(String),

    /// A collective across training processes failed or timed out (see `distributed`).
    #[error("distributed: {0}")]
    Distributed(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn config(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { key: key.into(), msg: msg.into() }
    }
}

/// Adds the path to an `io::Result`, so no I/O error reaches the user without a file name.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
