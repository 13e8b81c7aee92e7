//! llm-pipeline: OpenAI-compatible chat completion for Rust services, with continuous batching
//! over pluggable inference backends.
//!
//! This facade re-exports the crates of the workspace:
//! - [`core`]: the OpenAI types, validation, chat templates, tokenization, sampling, the
//!   batching engine, pricing and the [`Pipeline`](core::pipeline::Pipeline) trait;
//! - [`llama_cpp`] (feature `llama-cpp`, on by default): the llama.cpp backend for GGUF models;
//! - `candle` (feature `candle`): the candle backend for Llama-family models from safetensors
//!   or GGUF, on pure-Rust kernels;
//! - `ort` (feature `ort`): the ONNX Runtime backend for decoder-with-past ONNX exports;
//! - `server` (feature `server`): the axum router serving the OpenAI API and the Livepeer runner
//!   protocol over any pipeline.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use llm_pipeline::core::config::PipelineConfig;
//! use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
//! use llm_pipeline::core::pipeline::Pipeline;
//!
//! let config = PipelineConfig::from_env()?.with_model_id("SmolLM2-135M-Instruct.Q4_1.gguf");
//! let pipeline = llm_pipeline::llama_cpp::load(&config)?;
//! let request = ChatCompletionRequest::new("", vec![ChatMessage::user("Hello!")]);
//! let answer = pipeline.chat(request).await?;
//! println!("{}", answer.choices[0].message.content.as_deref().unwrap_or(""));
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "candle")]
pub use llm_pipeline_candle as candle;
pub use llm_pipeline_core as core;
#[cfg(feature = "llama-cpp")]
pub use llm_pipeline_llama_cpp as llama_cpp;
#[cfg(feature = "ort")]
pub use llm_pipeline_ort as ort;
#[cfg(feature = "server")]
pub use llm_pipeline_server as server;

use crate::core::config::PipelineConfig;
use crate::core::pipeline::EnginePipeline;

/// The names a service that embeds a pipeline needs, in one `use llm_pipeline::prelude::*;`.
pub mod prelude {
    pub use crate::core::Error;
    pub use crate::core::config::PipelineConfig;
    pub use crate::core::openai::{
        ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage,
    };
    pub use crate::core::pipeline::{ChatStream, DynPipeline, EnginePipeline, Pipeline};
    pub use crate::{AUTO, BACKENDS, load, load_async};
}

/// A backend's loader: every backend builds the same [`EnginePipeline`] from a configuration.
pub type Loader = fn(&PipelineConfig) -> crate::core::Result<EnginePipeline>;

/// The backends this build has, by the name servers and benches take on their command line
/// (`llama-cpp`, `candle`, `ort`), each with its default options.
pub const BACKENDS: &[(&str, Loader)] = &[
    #[cfg(feature = "llama-cpp")]
    ("llama-cpp", llama_cpp::load),
    #[cfg(feature = "candle")]
    ("candle", candle::load),
    #[cfg(feature = "ort")]
    ("ort", ort::load),
];

/// The backend name that chooses among [`BACKENDS`] by the model's files (see
/// [`choose_backend`]); the default of the examples and of [`load`]'s callers that have no
/// preference.
pub const AUTO: &str = "auto";

/// The backend [`AUTO`] picks for the model `config` names, and why: a GGUF goes to llama.cpp
/// (candle when llama.cpp is not built), safetensors to candle, an ONNX export to ONNX Runtime.
/// Only file names are read.
///
/// # Errors
/// [`Error::Config`](crate::core::Error::Config): `MODEL_ID` when the model cannot be found or
/// is in no format a backend reads (naming what was found); `backend` when the backend its
/// format needs is not built in (naming the feature).
pub fn choose_backend(config: &PipelineConfig) -> crate::core::Result<(&'static str, String)> {
    use crate::core::load::ModelFormat;
    let (format, why) = ModelFormat::detect(config)?;
    let wanted: &[&'static str] = match format {
        ModelFormat::Gguf => &["llama-cpp", "candle"],
        ModelFormat::Safetensors => &["candle"],
        ModelFormat::Onnx => &["ort"],
    };
    wanted
        .iter()
        .find(|name| BACKENDS.iter().any(|(built, _)| built == *name))
        .map(|name| (*name, why.clone()))
        .ok_or_else(|| crate::core::Error::Config {
            variable: "backend",
            message: format!(
                "{why}, which the {} backend reads, and this build has only: {} (build with \
                 the feature `{}`)",
                wanted.join(" or "),
                built_in(),
                wanted[0]
            ),
        })
}

/// Loads with the backend [`choose_backend`] picks, logging it and why; the pipeline reports
/// both through [`Pipeline::backend`](crate::core::pipeline::Pipeline::backend).
///
/// # Errors
/// As [`choose_backend`], then the backend's own load errors.
pub fn load_auto(config: &PipelineConfig) -> crate::core::Result<EnginePipeline> {
    let (backend, why) = choose_backend(config)?;
    tracing::info!(backend, reason = %why, "backend chosen automatically");
    Ok(loader(backend)?(config)?.with_choice_reason(why))
}

fn built_in() -> String {
    BACKENDS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The loader of the backend named `backend` ([`AUTO`] or one of [`BACKENDS`]).
///
/// # Errors
/// [`Error::Config`](crate::core::Error::Config) naming the backends built in when `backend` is
/// not one of them.
pub fn loader(backend: &str) -> crate::core::Result<Loader> {
    if backend == AUTO {
        return Ok(load_auto);
    }
    BACKENDS
        .iter()
        .find(|(name, _)| *name == backend)
        .map(|(_, loader)| *loader)
        .ok_or_else(|| crate::core::Error::Config {
            variable: "backend",
            message: format!(
                "unknown backend `{backend}`; this build has: {AUTO}, {} (the features \
                 `llama-cpp`, `candle` and `ort` add them)",
                built_in()
            ),
        })
}

/// Loads `config.model_id` with the backend named `backend` ([`AUTO`] chooses by the model's
/// files).
///
/// It blocks the calling thread until the model is loaded (seconds for a large model): from
/// async code, use [`load_async`].
///
/// # Errors
/// As [`loader`]; otherwise the backend's own load errors.
pub fn load(backend: &str, config: &PipelineConfig) -> crate::core::Result<EnginePipeline> {
    loader(backend)?(config)
}

/// [`load`] for async code: the model is read and the engine started on tokio's blocking pool,
/// so the runtime's worker threads stay free to serve while it loads.
///
/// # Errors
/// As [`load`]; [`Error::Backend`](crate::core::Error::Backend) when the load panicked.
pub async fn load_async(
    backend: &str,
    config: PipelineConfig,
) -> crate::core::Result<EnginePipeline> {
    let loader = loader(backend)?;
    tokio::task::spawn_blocking(move || loader(&config))
        .await
        .map_err(|e| crate::core::Error::Backend {
            message: format!("loading the model failed: {e}"),
            source: None,
        })?
}

/// The README's examples, compiled as doctests so that they stay true to the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
