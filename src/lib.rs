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
