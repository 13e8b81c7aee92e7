//! The crate's one error type.
//!
//! Every fallible function in `llm-pipeline-core` returns [`Error`]. Each variant names what went
//! wrong with structured fields, so the HTTP edge can map it to a status code and the OpenAI error
//! body without parsing strings. Causes are kept with `#[source]`.

use std::path::PathBuf;

/// A boxed error from a backend or another layer we do not own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the core crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid: `param` names the offending field, `message` says the limit.
    #[error("invalid value for `{param}`: {message}")]
    Validation {
        /// The request field at fault, in the OpenAI spelling (`temperature`, `messages[2].role`).
        param: String,
        /// What is wrong, including the accepted range.
        message: String,
    },
    /// A configuration variable could not be parsed or is out of range.
    #[error("invalid configuration `{variable}`: {message}")]
    Config {
        /// The environment variable (or builder field) at fault, e.g. `MAX_NUM_SEQS`.
        variable: &'static str,
        /// What is wrong, including the accepted range.
        message: String,
    },
    /// A GGUF file could not be read.
    #[error("cannot read GGUF file {path}: {message}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An I/O failure on a model file.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The tokenizer could not be built, or failed to encode or decode.
    #[error("tokenizer error: {message}")]
    Tokenizer {
        /// What failed.
        message: String,
        /// The cause, when the `tokenizers` crate reported one.
        #[source]
        source: Option<BoxError>,
    },
    /// The chat template could not be parsed or rendered.
    #[error("chat template error: {message}")]
    Template {
        /// What failed.
        message: String,
        /// The cause from minijinja.
        #[source]
        source: Option<minijinja::Error>,
    },
    /// The backend failed while loading a model or running a step.
    #[error("backend error: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<BoxError>,
    },
    /// The waiting queue is full; the request was refused without being queued.
    #[error("the server is at capacity: {waiting} requests are already waiting")]
    QueueFull {
        /// How many requests were waiting.
        waiting: usize,
    },
    /// The engine thread has stopped (after a backend failure or at shutdown).
    #[error("the engine has stopped")]
    EngineStopped,
}

impl Error {
    /// A validation error for `param`.
    pub fn validation(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            param: param.into(),
            message: message.into(),
        }
    }

    /// A tokenizer error with a cause from the `tokenizers` crate.
    pub fn tokenizer(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Tokenizer {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A backend error with a cause.
    pub fn backend(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether the client is at fault (a 4xx at the HTTP edge).
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::Validation { .. })
    }
}

/// `Result` with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
