//! The crate's one error type.
//!
//! Every failure names what the backend was doing (`context`) and keeps candle's error as the
//! source, so a log line says "which step of which load" without parsing strings. Settings the
//! backend cannot honour become [`llm_pipeline_core::Error::Config`] naming the variable.

use std::path::PathBuf;

use llm_pipeline_core::backend::SeqId;

/// Errors of the candle backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CandleError {
    /// A candle operation failed.
    #[error("candle failed: {context}")]
    Candle {
        /// What the backend was doing.
        context: &'static str,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// The core library failed (GGUF metadata, tokenizer, template).
    #[error(transparent)]
    Core(#[from] llm_pipeline_core::Error),
    /// A model file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file of the model is malformed.
    #[error("malformed {what}")]
    Json {
        /// Which file.
        what: &'static str,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// A tensor the model needs is not in its weights.
    #[error("the weights have no tensor `{name}`")]
    MissingTensor {
        /// The tensor's name.
        name: String,
    },
    /// A setting or model this backend cannot honour.
    #[error("`{setting}` cannot be honoured: {message}")]
    Unsupported {
        /// The variable.
        setting: &'static str,
        /// Why.
        message: String,
    },
    /// The KV cache budget is spent (the engine keeps within the capacity, so an engine bug).
    #[error("KV cache full: sequence {seq} needs {needed} more cells, {free} are free")]
    KvExhausted {
        /// The sequence.
        seq: SeqId,
        /// Cells it asked for.
        needed: usize,
        /// Cells left.
        free: usize,
    },
    /// A batch entry does not continue its sequence where the cache ends (an engine bug).
    #[error("sequence {seq}: batch starts at {start} but {cached} tokens are cached")]
    OutOfOrder {
        /// The sequence.
        seq: SeqId,
        /// The entry's start position.
        start: u32,
        /// Tokens in the sequence's KV cache.
        cached: usize,
    },
    /// A position beyond the RoPE table (longer than `MAX_MODEL_LEN`).
    #[error("sequence {seq}: position {position} is beyond the limit of {limit}")]
    PositionOutOfRange {
        /// The sequence.
        seq: SeqId,
        /// The position.
        position: usize,
        /// The table length.
        limit: usize,
    },
}

impl CandleError {
    /// Wraps a candle error with what the backend was doing; for `map_err`.
    pub(crate) fn candle(context: &'static str) -> impl FnOnce(candle_core::Error) -> Self {
        move |source| Self::Candle { context, source }
    }
}

impl From<CandleError> for llm_pipeline_core::Error {
    fn from(e: CandleError) -> Self {
        match e {
            CandleError::Unsupported { setting, message } => Self::Config {
                variable: setting,
                message,
            },
            CandleError::Core(e) => e,
            other => Self::backend("candle backend", other),
        }
    }
}
