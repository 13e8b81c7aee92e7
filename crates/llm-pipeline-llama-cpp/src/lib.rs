//! The llama.cpp backend of llm-pipeline: GGUF models through `llama-cpp-2`.
//!
//! [`LlamaCppBackend`] implements the core's [`Backend`](llm_pipeline_core::backend::Backend)
//! with one llama.cpp context shared by all running sequences; [`load`] builds the whole
//! [`EnginePipeline`] (tokenizer and chat template from the GGUF metadata, the engine thread,
//! the backend) from a [`PipelineConfig`].

mod backend;
pub mod runtime;

use std::path::PathBuf;
use std::sync::Arc;

pub use backend::{KvLayout, LlamaCppBackend, kv_layout};
pub use llama_cpp_2;
use llm_pipeline_core::config::{PipelineConfig, Quantization};
use llm_pipeline_core::load::ModelFiles;
use llm_pipeline_core::pipeline::EnginePipeline;

/// Errors of the llama.cpp backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlamaCppError {
    /// The ggml runtime could not start.
    #[error("llama.cpp runtime: {message}")]
    Runtime {
        /// What failed.
        message: String,
    },
    /// The model file could not be loaded.
    #[error("cannot load {path}")]
    Load {
        /// The file.
        path: PathBuf,
        /// llama.cpp's error.
        #[source]
        source: llama_cpp_2::LlamaModelLoadError,
    },
    /// The context could not be created (usually: not enough memory for the KV cache).
    #[error("cannot create the llama.cpp context")]
    Context {
        /// llama.cpp's error.
        #[source]
        source: llama_cpp_2::LlamaContextLoadError,
    },
    /// A setting this backend cannot honour.
    #[error("`{setting}` cannot be honoured: {message}")]
    Unsupported {
        /// The variable.
        setting: &'static str,
        /// Why.
        message: String,
    },
    /// More sequences in a batch than the context was created for (an engine bug).
    #[error("more than {max} sequences at once")]
    TooManySequences {
        /// `n_seq_max`.
        max: u32,
    },
    /// The batch could not be filled.
    #[error("cannot build the batch")]
    Batch {
        /// llama-cpp-2's error.
        #[source]
        source: llama_cpp_2::llama_batch::BatchAddError,
    },
    /// `llama_decode` failed.
    #[error("llama_decode failed")]
    Decode {
        /// llama-cpp-2's error.
        #[source]
        source: llama_cpp_2::DecodeError,
    },
    /// A sequence's rejected draft tokens could not be removed from the KV cache (recurrent
    /// models keep no per-position state to cut).
    #[error("cannot cut a sequence's KV cache")]
    Truncate {
        /// llama-cpp-2's error.
        #[source]
        source: llama_cpp_2::context::kv_cache::KvCacheConversionError,
    },
}

impl From<LlamaCppError> for llm_pipeline_core::Error {
    fn from(e: LlamaCppError) -> Self {
        match e {
            LlamaCppError::Unsupported { setting, message } => Self::Config {
                variable: setting,
                message,
            },
            other => Self::backend("llama.cpp backend", other),
        }
    }
}

/// GGUF `general.file_type` values of unquantized weights (F32, F16, BF16).
const UNQUANTIZED_FILE_TYPES: [u32; 3] = [0, 1, 32];

/// Loads the model named by `config.model_id` (a GGUF path, a directory holding one, or a hub id
/// cached in `MODEL_DIR`) and starts an engine over it.
///
/// # Errors
/// [`llm_pipeline_core::Error`] when the model cannot be found or loaded, its tokenizer or
/// template cannot be built, or a setting cannot be honoured.
pub fn load(config: &PipelineConfig) -> llm_pipeline_core::Result<EnginePipeline> {
    let meta = ModelFiles::locate(config)?.require_gguf("the llama.cpp backend")?;
    if config.quantization == Quantization::Int8 {
        match meta.get_u32("general.file_type")? {
            Some(t) if UNQUANTIZED_FILE_TYPES.contains(&t) => {
                return Err(llm_pipeline_core::Error::Config {
                    variable: "USE_8BIT",
                    message: "llama.cpp cannot quantize an unquantized GGUF at load time; \
                              quantize it to Q8_0 with llama-quantize first"
                        .into(),
                });
            }
            _ => tracing::info!("USE_8BIT: the GGUF is already quantized; loading it as stored"),
        }
    }
    let files = ModelFiles::Gguf(Arc::clone(&meta));
    let backend_config = config.clone();
    llm_pipeline_core::load::start(config, &files, move || {
        LlamaCppBackend::load(meta.path(), &backend_config).map_err(Into::into)
    })
}
