//! The ONNX Runtime backend of llm-pipeline: decoder-with-past ONNX exports through `ort`.
//!
//! It runs the layout Hugging Face Optimum and transformers.js export causal language models in
//! (`onnx-community/*` chat models among them): `input_ids`, `attention_mask`, optional
//! `position_ids` and `past_key_values.{i}.key/value` in; `logits` and `present.{i}.key/value`
//! out. A graph that also takes `logits_index` (`[batch, n]` int64, the columns whose logits it
//! computes, as the exports `cargo xtask models` makes do) is told which rows the engine samples
//! from, so a prompt's step skips the LM head for every other prompt token. [`layout`] checks a directory is such an export, [`runtime`] opens ONNX Runtime (a
//! shared library loaded at run time) on the chosen execution provider, [`OrtBackend`]
//! implements the core's [`Backend`](llm_pipeline_core::backend::Backend) with continuous
//! batching over KV tensors (see [`kv`] for how copies are kept few), and [`load`] builds the
//! whole [`EnginePipeline`] from a [`PipelineConfig`], with the tokenizer and chat template
//! from the same directory.

mod backend;
pub mod kv;
pub mod layout;
pub mod runtime;

use std::path::{Path, PathBuf};

pub use backend::OrtBackend;
pub use kv::{KvCopyMeter, KvCopyStats};
use layout::{Dtype, ModelConfig, Port, Precision};
use llm_pipeline_core::backend::BackendInfo;
use llm_pipeline_core::config::{PipelineConfig, Quantization};
use llm_pipeline_core::load::ModelFiles;
use llm_pipeline_core::pipeline::EnginePipeline;
pub use ort;
pub use runtime::{Device, Fallback, OrtOptions, Placement};

/// Errors of the ONNX Runtime backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrtError {
    /// The ONNX Runtime library could not be found or opened.
    #[error("ONNX Runtime: {message}")]
    Runtime {
        /// What failed.
        message: String,
    },
    /// The directory is not a decoder-with-past export.
    #[error("{dir} is not a decoder-with-past ONNX export: missing {missing}")]
    NotAnExport {
        /// The directory.
        dir: PathBuf,
        /// What is missing, by name.
        missing: String,
    },
    /// `config.json` could not be parsed.
    #[error("cannot parse {path}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// ONNX Runtime could not create a session for the model.
    #[error("cannot load {path} into ONNX Runtime")]
    Session {
        /// The model file.
        path: PathBuf,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// A setting this backend cannot honour.
    #[error("`{setting}` cannot be honoured: {message}")]
    Unsupported {
        /// The variable.
        setting: &'static str,
        /// Why.
        message: String,
    },
    /// A step failed inside ONNX Runtime.
    #[error("ONNX Runtime step failed")]
    Run {
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// The graph did not return an output it declares.
    #[error("the graph returned no `{name}` output")]
    MissingOutput {
        /// The output.
        name: &'static str,
    },
    /// A batch entry does not continue its sequence's cache (an engine bug).
    #[error("sequence {seq} has {cached} cached tokens but the step starts at {start}")]
    Position {
        /// The sequence.
        seq: u64,
        /// Tokens in its cache.
        cached: usize,
        /// The entry's start.
        start: u32,
    },
}

impl From<OrtError> for llm_pipeline_core::Error {
    fn from(e: OrtError) -> Self {
        match e {
            OrtError::Unsupported { setting, message } => Self::Config {
                variable: setting,
                message,
            },
            OrtError::NotAnExport { .. } => Self::Config {
                variable: "MODEL_ID",
                message: e.to_string(),
            },
            other => Self::backend(format!("ONNX Runtime backend: {other}"), other),
        }
    }
}

/// Loads the export named by `config.model_id` (a directory, an `.onnx` file in one, or a hub
/// id cached in `MODEL_DIR`) and starts an engine over it, with [`OrtOptions::from_env`].
///
/// # Errors
/// [`llm_pipeline_core::Error`] when the directory is not a decoder-with-past export, ONNX
/// Runtime cannot load it, its tokenizer or template cannot be built, or a setting cannot be
/// honoured.
pub fn load(config: &PipelineConfig) -> llm_pipeline_core::Result<EnginePipeline> {
    load_with(config, &OrtOptions::from_env()?).map(|(pipeline, _)| pipeline)
}

/// As [`load`], with explicit options; also returns the backend's KV copy counters.
///
/// # Errors
/// As [`load`].
pub fn load_with(
    config: &PipelineConfig,
    options: &OrtOptions,
) -> llm_pipeline_core::Result<(EnginePipeline, KvCopyMeter)> {
    for (setting, value) in [
        ("TENSOR_PARALLEL_SIZE", config.tensor_parallel_size),
        ("PIPELINE_PARALLEL_SIZE", config.pipeline_parallel_size),
    ] {
        if value > 1 {
            return Err(OrtError::Unsupported {
                setting,
                message: "the ONNX Runtime backend runs a model on one device".into(),
            }
            .into());
        }
    }
    let files = ModelFiles::locate(config)?;
    let dir = files
        .require_directory("the ONNX Runtime backend")?
        .to_path_buf();
    check_files(&dir)?;
    let meter = KvCopyMeter::default();
    let backend_meter = meter.clone();
    let backend_config = config.clone();
    let options = options.clone();
    let pipeline = llm_pipeline_core::load::start(config, &files, move || {
        OrtBackend::open_metered(&dir, &backend_config, &options, backend_meter).map_err(Into::into)
    })?;
    Ok((pipeline, meter))
}

/// Refuses a directory without the files every export has, naming all that are missing.
fn check_files(dir: &Path) -> Result<(), OrtError> {
    let missing: Vec<&str> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    let has_model = [
        "model.onnx",
        "model_fp16.onnx",
        "model_quantized.onnx",
        "model_int8.onnx",
    ]
    .iter()
    .any(|f| dir.join(f).is_file() || dir.join("onnx").join(f).is_file());
    let mut names: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
    if !has_model {
        names.push("model.onnx (in the directory or onnx/)".into());
    }
    if names.is_empty() {
        Ok(())
    } else {
        Err(OrtError::NotAnExport {
            dir: dir.to_path_buf(),
            missing: names.join(", "),
        })
    }
}

fn port(outlet: &ort::value::Outlet) -> Port {
    use ort::value::{TensorElementType as E, ValueType};
    let (dtype, shape) = match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => (
            match ty {
                E::Float32 => Dtype::F32,
                E::Float16 => Dtype::F16,
                E::Int64 => Dtype::I64,
                _ => Dtype::Other("non-float"),
            },
            shape.to_vec(),
        ),
        _ => (Dtype::Other("non-tensor"), Vec::new()),
    };
    Port {
        name: outlet.name().to_owned(),
        dtype,
        shape,
    }
}

impl OrtBackend {
    /// Opens the export in `dir` without an engine (for tests and tools): finds the model file
    /// (`USE_8BIT` picks the int8 variant), opens a session, checks its interface against
    /// `config.json` and sizes the KV budget from `CPU_KV_CACHE_SPACE`.
    ///
    /// # Errors
    /// [`OrtError::NotAnExport`] naming what is missing, [`OrtError::Unsupported`] for a
    /// setting that cannot be honoured, [`OrtError::Session`] when ONNX Runtime refuses the
    /// model.
    pub fn open(
        dir: &Path,
        config: &PipelineConfig,
        options: &OrtOptions,
    ) -> Result<Self, OrtError> {
        Self::open_metered(dir, config, options, KvCopyMeter::default())
    }

    fn open_metered(
        dir: &Path,
        config: &PipelineConfig,
        options: &OrtOptions,
        meter: KvCopyMeter,
    ) -> Result<Self, OrtError> {
        check_files(dir)?;
        let model_config = ModelConfig::from_dir(dir)?;
        let precision = match config.quantization {
            Quantization::Int8 => Precision::Int8,
            _ => Precision::Full,
        };
        let model = layout::find_model(dir, precision)?;
        open(dir, &model, &model_config, config, options, meter)
    }
}

/// Opens a session for `model`, checks its interface and sizes the KV budget.
fn open(
    dir: &Path,
    model: &Path,
    model_config: &ModelConfig,
    config: &PipelineConfig,
    options: &OrtOptions,
    meter: KvCopyMeter,
) -> Result<OrtBackend, OrtError> {
    let (session, placement) = runtime::session(model, config, options)?;
    let inputs: Vec<Port> = session.inputs().iter().map(port).collect();
    let outputs: Vec<Port> = session.outputs().iter().map(port).collect();
    let iface = layout::check_interface(dir, model_config, &inputs, &outputs)?;
    let elem = if iface.kv_dtype == Dtype::F16 { 2 } else { 4 };
    let bytes_per_token = (2 * iface.layers * iface.kv_heads * iface.head_dim * elem) as u64;
    // Half the budget for the compact caches, half for one graph run's padded past and present
    // (the graph's concatenation): see `backend`'s docs.
    let kv_capacity = (config.cpu_kv_cache_bytes / (2 * bytes_per_token)).min(u64::from(u32::MAX));
    if kv_capacity < u64::from(config.max_model_len) {
        return Err(OrtError::Unsupported {
            setting: "MAX_MODEL_LEN",
            message: format!(
                "one sequence of MAX_MODEL_LEN={} needs {} bytes of KV (twice {bytes_per_token} \
                 per token, past and present) but CPU_KV_CACHE_SPACE holds {}",
                config.max_model_len,
                2 * bytes_per_token * u64::from(config.max_model_len),
                config.cpu_kv_cache_bytes
            ),
        });
    }
    let file = model.file_name().map(|f| f.to_string_lossy().into_owned());
    let info = BackendInfo {
        name: "ort",
        vocab_size: iface.vocab_size,
        trained_context: model_config
            .max_position_embeddings
            .unwrap_or(config.max_model_len),
        kv_capacity: kv_capacity as u32,
        max_batch_tokens: config.max_num_batched_tokens,
        max_seqs: config.max_num_seqs,
        description: format!(
            "onnxruntime ({placement:?}; {} intra-op threads; {} with {:?} KV)",
            config.effective_threads(),
            file.unwrap_or_default(),
            iface.kv_dtype
        ),
    };
    tracing::info!(?info, ?iface, "ONNX Runtime backend loaded");
    Ok(OrtBackend::new(session, iface, info, meter))
}
