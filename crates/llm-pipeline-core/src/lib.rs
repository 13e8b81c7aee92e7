//! The backend-independent core of llm-pipeline.
//!
//! A chat request travels through this crate in stages, one module per stage:
//! [`openai`] (the wire types) → [`validation`] (a [`validation::GenerationRequest`] whose values
//! are all legal) → [`template`] (the model's chat template) → [`tokenizer`] → [`engine`]
//! (continuous batching over a [`backend::Backend`], [`sampling`], [`detokenize`] and [`stop`]) →
//! typed events back to the caller through the [`pipeline::Pipeline`] trait. [`pricing`] quotes
//! and charges each request in exact integer arithmetic; [`config`] reads Livepeer's environment
//! variables; [`load`] is the one way every backend crate loads a model ([`model`] finds it,
//! [`gguf`] reads a GGUF header once).

pub mod backend;
pub mod config;
pub mod detokenize;
pub mod engine;
pub mod error;
pub mod gguf;
#[cfg(feature = "hub")]
pub mod hub;
pub mod load;
pub mod memory;
pub mod model;
pub mod openai;
pub mod pipeline;
pub mod pricing;
pub mod sampling;
pub mod stop;
pub mod structured;
pub mod template;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod fuzz;
pub mod tokenizer;
pub mod validation;

pub use error::{Error, Result};
