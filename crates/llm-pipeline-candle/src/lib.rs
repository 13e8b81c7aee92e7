//! The candle backend of llm-pipeline: Llama-family decoders on pure-Rust kernels.
//!
//! [`CandleBackend`] implements the core's [`Backend`](llm_pipeline_core::backend::Backend)
//! with its own model code (see `model`) so that one engine step can mix sequences at different
//! positions; [`load`] builds the whole [`EnginePipeline`] (tokenizer, chat template, engine
//! thread, backend) from a [`PipelineConfig`], like the llama.cpp crate's `load`.
//!
//! Models: Llama 2/3, Mistral, Qwen2/2.5 and SmolLM2, from a Hugging Face directory
//! (`config.json`, `tokenizer.json`, `tokenizer_config.json`, `*.safetensors` in f32, f16 or
//! bf16) or a GGUF file (quantized tensors stay quantized). `USE_8BIT` quantizes a safetensors
//! model's linear layers to Q8_0 at load time.
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

use std::path::Path;
use std::sync::{Arc, Once};

pub use backend::{CandleBackend, DeviceChoice, LoadOptions};
pub use candle_core;
pub use error::CandleError;
use llm_pipeline_core::config::PipelineConfig;
use llm_pipeline_core::engine::{Engine, EngineLimits};
use llm_pipeline_core::gguf::GgufMetadata;
use llm_pipeline_core::model::{ModelSource, find_gguf};
use llm_pipeline_core::pipeline::{EnginePipeline, ModelAssets};
use llm_pipeline_core::template::{ChatTemplate, SpecialTokenText};
use llm_pipeline_core::tokenizer::Tokenizer;
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
    let location = ModelSource::parse(&config.model_id).resolve(&config.model_dir)?;
    let gguf_path = if location.is_dir() && location.join("config.json").is_file() {
        None
    } else {
        Some(find_gguf(&location)?)
    };
    let (tokenizer, template_source) = match &gguf_path {
        Some(path) => {
            let meta = GgufMetadata::from_path(path)?;
            let source = meta.chat_template()?.map(str::to_owned);
            (Tokenizer::from_gguf(&meta)?, source)
        }
        None => (
            Tokenizer::from_dir(&location)?,
            hf_chat_template(&location)?,
        ),
    };
    let source = template_source.ok_or_else(|| llm_pipeline_core::Error::Template {
        message: format!("{} has no chat template", location.display()),
        source: None,
    })?;
    let tokenizer = Arc::new(tokenizer);
    let special = tokenizer.special();
    let template = ChatTemplate::new(
        &source,
        SpecialTokenText {
            bos: special.bos_text.clone().unwrap_or_default(),
            eos: special.eos_text.clone().unwrap_or_default(),
        },
    )?;
    let limits = EngineLimits {
        max_model_len: config.max_model_len,
        max_num_seqs: config.max_num_seqs,
        max_num_batched_tokens: config.max_num_batched_tokens,
        max_queue: config.max_queue,
    };
    let backend_config = config.clone();
    let model_path = gguf_path.unwrap_or(location);
    let engine = Engine::start(
        move || CandleBackend::load_with(&model_path, &backend_config, options).map_err(Into::into),
        Arc::clone(&tokenizer),
        limits,
    )?;
    let assets = ModelAssets {
        model_id: config.model_id.clone(),
        tokenizer,
        template: Arc::new(template),
    };
    Ok(EnginePipeline::new(engine, assets, config.prices))
}

/// The chat template of a Hugging Face directory: `chat_template.jinja`, or
/// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates of which
/// `default` is taken).
///
/// # Errors
/// [`llm_pipeline_core::Error::Io`] when a file exists but cannot be read, and
/// [`llm_pipeline_core::Error::Template`] when `tokenizer_config.json` is not JSON.
pub fn hf_chat_template(dir: &Path) -> llm_pipeline_core::Result<Option<String>> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| llm_pipeline_core::Error::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return read(&jinja).map(Some);
    }
    let config = dir.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(&read(&config)?).map_err(|e| llm_pipeline_core::Error::Template {
            message: format!("{} is not JSON: {e}", config.display()),
            source: None,
        })?;
    Ok(match value.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template")?.as_str())
            .map(str::to_owned),
        _ => None,
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
