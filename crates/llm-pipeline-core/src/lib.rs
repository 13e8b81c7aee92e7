//! The backend-independent core of llm-pipeline.
//!
//! A chat request travels through this crate in stages, one module per stage:
//! [`openai`] (the wire types) → [`validation`] (a [`validation::GenerationRequest`] whose values
//! are all legal) → [`template`] (the model's chat template) → [`tokenizer`] → [`engine`]
//! (continuous batching over a [`backend::Backend`], [`sampling`], [`detokenize`] and [`stop`]) →
//! typed events back to the caller through the [`pipeline::Pipeline`] trait. [`pricing`] quotes
//! and charges each request in exact integer arithmetic; [`config`] reads Livepeer's environment
//! variables.

pub mod backend;
pub mod config;
pub mod detokenize;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod memory;
pub mod model;
pub mod openai;
pub mod pipeline;
pub mod pricing;
pub mod sampling;
pub mod stop;
pub mod template;
pub mod tokenizer;
pub mod validation;

pub use error::{Error, Result};
