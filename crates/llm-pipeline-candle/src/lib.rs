//! The candle backend of llm-pipeline: decoder-only chat models on pure-Rust kernels.
//!
//! [`CandleBackend`] implements the core's [`Backend`](llm_pipeline_core::backend::Backend)
//! with its own model code (see `model`) so that one engine step can mix sequences at different
//! positions; [`load`] builds the whole [`EnginePipeline`] (tokenizer, chat template, engine
//! thread, backend) from a [`PipelineConfig`], like the llama.cpp crate's `load`.
//!
//! Models: Llama 1/2/3/3.x, Mistral, Qwen2/2.5, Qwen3, Phi-3/3.5, Gemma 1/2/3 and SmolLM2
//! (see `config` for what each family switches on), from a Hugging Face directory
//! (`config.json`, `tokenizer.json`, `tokenizer_config.json`, `*.safetensors` memory-mapped,
//! weights kept in their stored f32, f16 or bf16 unless [`Precision::F32`] is asked) or a GGUF
//! file (quantized tensors stay quantized). `USE_8BIT` quantizes a safetensors model's linear
//! layers to Q8_0 at load time.
//!
//! Kernels: candle's, except for Q4_1 and (with AVX-512 VNNI) Q8_0 GGUF weights on the CPU,
//! which run through this crate's own SIMD product (`packed`): candle 0.11's Q4_1 dot product
//! is scalar. [`GgufKernels`] selects the alternatives (re-quantizing to Q8_0, or candle's
//! kernels throughout) for comparison.
//!
//! Threads: candle sizes its CPU pools once per process from `CANDLE_NUM_THREADS` (quantized
//! matmuls) and `RAYON_NUM_THREADS` (everything else). The backend sets both to
//! [`PipelineConfig::effective_threads`] when neither is set, before candle first runs (in
//! [`CandleBackend::load`]); when the operator set either, theirs wins and a differing
//! `NUM_THREADS` is logged as ignored. candle's quantized-matmul pool synchronizes with
//! spinning barriers: give it cores of its own (measured here, 2 threads with another busy
//! process on the 2 cores ran 10× slower than 1 thread).

mod backend;
pub mod config;
mod error;
mod kv;
mod model;
mod packed;
mod weights;

use std::sync::Once;

pub use backend::{CandleBackend, DeviceChoice, LoadOptions, Precision};
pub use candle_core;
pub use error::CandleError;
use llm_pipeline_core::config::PipelineConfig;
use llm_pipeline_core::load::ModelFiles;
use llm_pipeline_core::pipeline::EnginePipeline;
pub use weights::{GgufKernels, WeightMemory};

/// Loads the model named by `config.model_id` (a GGUF file, a Hugging Face directory, or a hub
/// id cached in `MODEL_DIR`) and starts an engine over it, with default [`LoadOptions`].
///
/// # Errors
/// [`llm_pipeline_core::Error`] when the model cannot be found or loaded, its tokenizer or
/// template cannot be built, or a setting cannot be honoured.
pub fn load(config: &PipelineConfig) -> llm_pipeline_core::Result<EnginePipeline> {
    load_with(config, LoadOptions::default())
}

/// [`load`] with backend options (device, GGUF re-quantization).
///
/// # Errors
/// As [`load`].
pub fn load_with(
    config: &PipelineConfig,
    options: LoadOptions,
) -> llm_pipeline_core::Result<EnginePipeline> {
    let files = ModelFiles::locate(config)?;
    let backend_files = files.clone();
    let backend_config = config.clone();
    llm_pipeline_core::load::start(config, &files, move || {
        CandleBackend::open(&backend_files, &backend_config, options).map_err(Into::into)
    })
}

/// Sizes candle's CPU thread pools to `threads`, once, unless the operator sized them.
pub(crate) fn set_threads(threads: u32) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let operator = ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
            .iter()
            .find_map(|v| std::env::var(v).ok().map(|value| (*v, value)));
        match operator {
            Some((var, value)) => {
                if value != threads.to_string() {
                    tracing::warn!(
                        "{var}={value} is set and sizes candle's thread pools; \
                         NUM_THREADS ({threads}) is not applied"
                    );
                }
            }
            None => {
                let n = threads.to_string();
                // SAFETY: `set_var` is unsound only when another thread reads or writes the
                // environment at the same moment. This runs once, at model load, before
                // candle's pools exist; the variables are read only by candle and rayon when
                // their pools are first built.
                unsafe {
                    std::env::set_var("CANDLE_NUM_THREADS", &n);
                    std::env::set_var("RAYON_NUM_THREADS", &n);
                }
            }
        }
    });
}
