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
    pub use crate::{BACKENDS, load, load_async};
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

/// The loader of the backend named `backend`.
///
/// # Errors
/// [`Error::Config`](crate::core::Error::Config) naming the backends built in when `backend` is
/// not one of them.
pub fn loader(backend: &str) -> crate::core::Result<Loader> {
    BACKENDS
        .iter()
        .find(|(name, _)| *name == backend)
        .map(|(_, loader)| *loader)
        .ok_or_else(|| crate::core::Error::Config {
            variable: "backend",
            message: format!(
                "unknown backend `{backend}`; this build has: {} (the features `llama-cpp`, \
                 `candle` and `ort` add them)",
                BACKENDS
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// Loads `config.model_id` with the backend named `backend`.
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
