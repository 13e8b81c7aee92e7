//! Pipeline configuration from Livepeer's environment variables.
//!
//! The names and defaults are those of Livepeer's `llm` runner, so that an operator's existing
//! environment works unchanged: `MODEL_ID`, `MODEL_DIR`, `USE_8BIT` (false),
//! `MAX_NUM_BATCHED_TOKENS` (8192), `MAX_NUM_SEQS` (128), `MAX_MODEL_LEN` (8192),
//! `GPU_MEMORY_UTILIZATION` (0.85), `TENSOR_PARALLEL_SIZE` (1), `PIPELINE_PARALLEL_SIZE` (1).
//! A few variables of our own cover what vLLM decides internally: `CPU_KV_CACHE_SPACE` (GiB of
//! KV cache on CPU, like vLLM's `VLLM_CPU_KVCACHE_SPACE`, default 4), `NUM_THREADS` (CPU
//! threads, default: the available cores), `SAMPLING_THREADS` (threads that sample a step's
//! rows, default: `NUM_THREADS`), `MAX_QUEUE` (waiting requests before refusal),
//! `ENABLE_PREFIX_CACHING` (reuse the KV cache of earlier requests' common prefixes where the
//! backend can, default true, as in vLLM), `KV_UNIFIED` (llama.cpp: one KV pool shared by all
//! sequences when their streams do not all fit, default false), `SPECULATIVE_TOKENS` (draft
//! tokens per step of speculative decoding by prompt lookup while few sequences run, default
//! 8, 0 turns it off), `CHAT_TEMPLATE` (a template file replacing the
//! model's), `TOOL_CALL_PARSER` (the tool-call format, by default the template's), the hub's `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE`, and the prices
//! `PRICE_PER_UNIT`/`PIXELS_PER_UNIT`.
//!
//! Values are checked once, here, so that everything downstream can rely on them.

use std::path::PathBuf;

/// The most draft tokens per step `SPECULATIVE_TOKENS` may ask for: beyond a few, a lookup's
/// guesses are rarely all kept, and each costs a position in the step.
pub const MAX_SPECULATIVE_TOKENS: u32 = 16;

use crate::pricing::PriceTable;
use crate::structured::tools::ToolFormat;
use crate::{Error, Result};

/// Whether to quantize weights to 8 bits at load time (`USE_8BIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// Load the weights as stored.
    #[default]
    AsStored,
    /// Quantize linear layers to 8 bits where the backend can.
    Int8,
}

/// How models missing from `MODEL_DIR` are fetched from the Hugging Face Hub (the variables of
/// `huggingface_hub`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct HubSettings {
    /// `HF_ENDPOINT`: the hub's address; `None` for `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`): sent as a bearer token, for gated and private
    /// repositories.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: never connect; only models already in `MODEL_DIR` load.
    pub offline: bool,
}

impl std::fmt::Debug for HubSettings {
    // The token is a credential: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .finish()
    }
}

/// Everything the engine and backends need to know, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// `MODEL_ID`: the served model's id (a Hugging Face id, or a path to a GGUF file or directory).
    pub model_id: String,
    /// `MODEL_DIR`: where models are cached (`models--org--name` layout).
    pub model_dir: PathBuf,
    /// `USE_8BIT`.
    pub quantization: Quantization,
    /// `MAX_NUM_BATCHED_TOKENS`: tokens per engine step (prefill chunks plus decodes).
    pub max_num_batched_tokens: u32,
    /// `MAX_NUM_SEQS`: sequences running at once.
    pub max_num_seqs: u32,
    /// `MAX_MODEL_LEN`: the longest sequence, prompt plus completion.
    pub max_model_len: u32,
    /// `GPU_MEMORY_UTILIZATION`: fraction of device memory the backend may use, in (0, 1].
    pub gpu_memory_utilization: f32,
    /// `TENSOR_PARALLEL_SIZE`.
    pub tensor_parallel_size: u32,
    /// `PIPELINE_PARALLEL_SIZE`.
    pub pipeline_parallel_size: u32,
    /// `CPU_KV_CACHE_SPACE` in bytes: the KV cache budget of CPU backends.
    pub cpu_kv_cache_bytes: u64,
    /// `NUM_THREADS`: CPU threads for compute; `None` means the available cores.
    pub threads: Option<u32>,
    /// `SAMPLING_THREADS`: threads that sample a step's logits rows in parallel; `None` means
    /// as many as `threads`.
    pub sampling_threads: Option<u32>,
    /// `MAX_QUEUE`: requests that may wait beyond the running ones before new ones are refused.
    pub max_queue: u32,
    /// `ENABLE_PREFIX_CACHING`: whether backends that can reuse the KV cache of a prefix
    /// computed for an earlier request do so.
    pub prefix_caching: bool,
    /// `KV_UNIFIED`: whether the llama.cpp backend, when the KV budget cannot hold a
    /// `MAX_MODEL_LEN` stream for every sequence, shares one pool of cells among them all
    /// (llama.cpp's unified cache) rather than running only as many sequences as streams fit.
    /// More sequences at once, but attention then reads every sequence's cells: on a CPU it
    /// made decoding 2.5 to 2.9 times slower (`BENCHMARKS.md`). The other backends always
    /// share their budget.
    pub kv_unified: bool,
    /// `SPECULATIVE_TOKENS`: draft tokens a sequence may carry per step (speculative decoding by
    /// prompt lookup), made while at most [`SPECULATION_MAX_SEQS`] sequences run; 0 turns it
    /// off. Answers are the same with or without it.
    ///
    /// [`SPECULATION_MAX_SEQS`]: crate::engine::SPECULATION_MAX_SEQS
    pub speculative_tokens: u32,
    /// `PRICE_PER_UNIT` / `PIXELS_PER_UNIT`.
    pub prices: PriceTable,
    /// `CHAT_TEMPLATE`: a file holding a Jinja chat template to use instead of the model's own
    /// (or for a model without one).
    pub chat_template: Option<PathBuf>,
    /// `TOOL_CALL_PARSER`: the tool-call format (`hermes`, `llama3_json`, `mistral`, `json`);
    /// by default the one the chat template teaches.
    pub tool_call_parser: Option<ToolFormat>,
    /// `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`: downloads of models not in `MODEL_DIR`.
    pub hub: HubSettings,
}

impl Default for PipelineConfig {
    /// Livepeer's defaults.
    fn default() -> Self {
        Self {
            model_id: String::new(),
            model_dir: PathBuf::from("/models"),
            quantization: Quantization::AsStored,
            max_num_batched_tokens: 8192,
            max_num_seqs: 128,
            max_model_len: 8192,
            gpu_memory_utilization: 0.85,
            tensor_parallel_size: 1,
            pipeline_parallel_size: 1,
            cpu_kv_cache_bytes: 4 << 30,
            threads: None,
            sampling_threads: None,
            max_queue: 1024,
            prefix_caching: true,
            kv_unified: false,
            speculative_tokens: crate::engine::DEFAULT_SPECULATIVE_TOKENS,
            prices: PriceTable::default(),
            chat_template: None,
            tool_call_parser: None,
            hub: HubSettings::default(),
        }
    }
}

impl PipelineConfig {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable when a value does not parse or is out of range.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable when a value does not parse or is out of range.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let d = Self::default();
        let get = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        let cfg = Self {
            model_id: get("MODEL_ID").unwrap_or(d.model_id),
            model_dir: get("MODEL_DIR").map(PathBuf::from).unwrap_or(d.model_dir),
            quantization: match get("USE_8BIT") {
                Some(v) if parse_bool("USE_8BIT", &v)? => Quantization::Int8,
                _ => Quantization::AsStored,
            },
            max_num_batched_tokens: parse_or(
                "MAX_NUM_BATCHED_TOKENS",
                get("MAX_NUM_BATCHED_TOKENS"),
                d.max_num_batched_tokens,
            )?,
            max_num_seqs: parse_or("MAX_NUM_SEQS", get("MAX_NUM_SEQS"), d.max_num_seqs)?,
            max_model_len: parse_or("MAX_MODEL_LEN", get("MAX_MODEL_LEN"), d.max_model_len)?,
            gpu_memory_utilization: parse_or(
                "GPU_MEMORY_UTILIZATION",
                get("GPU_MEMORY_UTILIZATION"),
                d.gpu_memory_utilization,
            )?,
            tensor_parallel_size: parse_or(
                "TENSOR_PARALLEL_SIZE",
                get("TENSOR_PARALLEL_SIZE"),
                d.tensor_parallel_size,
            )?,
            pipeline_parallel_size: parse_or(
                "PIPELINE_PARALLEL_SIZE",
                get("PIPELINE_PARALLEL_SIZE"),
                d.pipeline_parallel_size,
            )?,
            cpu_kv_cache_bytes: {
                let gib: f64 = parse_or("CPU_KV_CACHE_SPACE", get("CPU_KV_CACHE_SPACE"), 4.0)?;
                if !(gib > 0.0 && gib < 1.0e6) {
                    return Err(Error::Config {
                        variable: "CPU_KV_CACHE_SPACE",
                        message: format!("{gib} GiB is not in (0, 1e6)"),
                    });
                }
                (gib * f64::from(1u32 << 30)) as u64
            },
            threads: get("NUM_THREADS")
                .map(|v| parse_or("NUM_THREADS", Some(v), 0u32))
                .transpose()?,
            sampling_threads: get("SAMPLING_THREADS")
                .map(|v| parse_or("SAMPLING_THREADS", Some(v), 0u32))
                .transpose()?,
            max_queue: parse_or("MAX_QUEUE", get("MAX_QUEUE"), d.max_queue)?,
            prefix_caching: match get("ENABLE_PREFIX_CACHING") {
                Some(v) => parse_bool("ENABLE_PREFIX_CACHING", &v)?,
                None => d.prefix_caching,
            },
            kv_unified: match get("KV_UNIFIED") {
                Some(v) => parse_bool("KV_UNIFIED", &v)?,
                None => d.kv_unified,
            },
            speculative_tokens: parse_or(
                "SPECULATIVE_TOKENS",
                get("SPECULATIVE_TOKENS"),
                d.speculative_tokens,
            )?,
            prices: PriceTable {
                price_per_unit: parse_or("PRICE_PER_UNIT", get("PRICE_PER_UNIT"), 0u64)?,
                pixels_per_unit: parse_or("PIXELS_PER_UNIT", get("PIXELS_PER_UNIT"), 1u64)?,
            },
            chat_template: get("CHAT_TEMPLATE").map(PathBuf::from),
            tool_call_parser: get("TOOL_CALL_PARSER")
                .map(|name| {
                    ToolFormat::from_name(&name).ok_or_else(|| Error::Config {
                        variable: "TOOL_CALL_PARSER",
                        message: format!(
                            "`{name}` is not one of {}",
                            ToolFormat::ALL.map(|(n, _)| n).join(", ")
                        ),
                    })
                })
                .transpose()?,
            hub: HubSettings {
                endpoint: get("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_owned()),
                token: get("HF_TOKEN").or_else(|| get("HUGGING_FACE_HUB_TOKEN")),
                offline: match get("HF_HUB_OFFLINE") {
                    Some(v) => parse_bool("HF_HUB_OFFLINE", &v)?,
                    None => false,
                },
            },
        };
        cfg.validated()
    }

    /// Checks ranges and applies Livepeer's adjustments; builders call this at the end.
    ///
    /// `MAX_NUM_BATCHED_TOKENS` below `MAX_MODEL_LEN` is raised to it (with a log line), as vLLM
    /// requires, so that any legal prompt fits one step's budget.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first setting out of range.
    pub fn validated(mut self) -> Result<Self> {
        let positive = [
            ("MAX_NUM_BATCHED_TOKENS", self.max_num_batched_tokens),
            ("MAX_NUM_SEQS", self.max_num_seqs),
            ("MAX_MODEL_LEN", self.max_model_len),
            ("TENSOR_PARALLEL_SIZE", self.tensor_parallel_size),
            ("PIPELINE_PARALLEL_SIZE", self.pipeline_parallel_size),
            (
                "PIXELS_PER_UNIT",
                u32::from(self.prices.pixels_per_unit > 0),
            ),
            ("NUM_THREADS", self.threads.unwrap_or(1)),
            ("SAMPLING_THREADS", self.sampling_threads.unwrap_or(1)),
        ];
        for (variable, value) in positive {
            if value == 0 {
                return Err(Error::Config {
                    variable,
                    message: "must be at least 1".into(),
                });
            }
        }
        if self.speculative_tokens > MAX_SPECULATIVE_TOKENS {
            return Err(Error::Config {
                variable: "SPECULATIVE_TOKENS",
                message: format!(
                    "{} draft tokens per step; at most {MAX_SPECULATIVE_TOKENS} (0 turns \
                     speculative decoding off)",
                    self.speculative_tokens
                ),
            });
        }
        if self.max_model_len < 2 {
            return Err(Error::Config {
                variable: "MAX_MODEL_LEN",
                message: "must be at least 2 (one prompt token and one generated token)".into(),
            });
        }
        let u = self.gpu_memory_utilization;
        if !(u > 0.0 && u <= 1.0) {
            return Err(Error::Config {
                variable: "GPU_MEMORY_UTILIZATION",
                message: format!("{u} is not in (0, 1]"),
            });
        }
        if self.max_num_batched_tokens < self.max_model_len {
            tracing::info!(
                from = self.max_num_batched_tokens,
                to = self.max_model_len,
                "raising MAX_NUM_BATCHED_TOKENS to MAX_MODEL_LEN"
            );
            self.max_num_batched_tokens = self.max_model_len;
        }
        Ok(self)
    }

    /// Sets `MODEL_ID`.
    pub fn with_model_id(mut self, id: impl Into<String>) -> Self {
        self.model_id = id.into();
        self
    }

    /// Sets `MODEL_DIR`.
    #[must_use]
    pub fn with_model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.model_dir = dir.into();
        self
    }

    /// Sets `MAX_NUM_SEQS`.
    pub fn with_max_num_seqs(mut self, n: u32) -> Self {
        self.max_num_seqs = n;
        self
    }

    /// Sets `MAX_NUM_BATCHED_TOKENS`.
    pub fn with_max_num_batched_tokens(mut self, n: u32) -> Self {
        self.max_num_batched_tokens = n;
        self
    }

    /// Sets `MAX_MODEL_LEN`.
    pub fn with_max_model_len(mut self, n: u32) -> Self {
        self.max_model_len = n;
        self
    }

    /// Sets `GPU_MEMORY_UTILIZATION`.
    pub fn with_gpu_memory_utilization(mut self, fraction: f32) -> Self {
        self.gpu_memory_utilization = fraction;
        self
    }

    /// Sets `USE_8BIT`.
    pub fn with_quantization(mut self, q: Quantization) -> Self {
        self.quantization = q;
        self
    }

    /// Sets `TENSOR_PARALLEL_SIZE` and `PIPELINE_PARALLEL_SIZE`.
    pub fn with_parallelism(mut self, tensor: u32, pipeline: u32) -> Self {
        self.tensor_parallel_size = tensor;
        self.pipeline_parallel_size = pipeline;
        self
    }

    /// Sets the CPU KV cache budget in bytes.
    pub fn with_cpu_kv_cache_bytes(mut self, bytes: u64) -> Self {
        self.cpu_kv_cache_bytes = bytes;
        self
    }

    /// Sets the compute threads.
    pub fn with_threads(mut self, threads: u32) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Sets the threads that sample a step's rows.
    pub fn with_sampling_threads(mut self, threads: u32) -> Self {
        self.sampling_threads = Some(threads);
        self
    }

    /// Sets the draft tokens per step of speculative decoding (0: off).
    pub fn with_speculative_tokens(mut self, n: u32) -> Self {
        self.speculative_tokens = n;
        self
    }

    /// Sets the waiting-queue limit.
    pub fn with_max_queue(mut self, n: u32) -> Self {
        self.max_queue = n;
        self
    }

    /// Turns prefix caching on or off.
    pub fn with_prefix_caching(mut self, on: bool) -> Self {
        self.prefix_caching = on;
        self
    }

    /// Lets the llama.cpp backend share one KV pool among all sequences (`KV_UNIFIED`).
    pub fn with_kv_unified(mut self, on: bool) -> Self {
        self.kv_unified = on;
        self
    }

    /// Sets how missing models are downloaded (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`).
    #[must_use]
    pub fn with_hub(mut self, hub: HubSettings) -> Self {
        self.hub = hub;
        self
    }

    /// Sets the tool-call format (`TOOL_CALL_PARSER`) instead of the one the template teaches.
    #[must_use]
    pub fn with_tool_call_parser(mut self, format: ToolFormat) -> Self {
        self.tool_call_parser = Some(format);
        self
    }

    /// Sets the chat template file (`CHAT_TEMPLATE`).
    #[must_use]
    pub fn with_chat_template(mut self, file: impl Into<PathBuf>) -> Self {
        self.chat_template = Some(file.into());
        self
    }

    /// Sets the prices.
    pub fn with_prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// The compute threads to use: `NUM_THREADS`, or the cores available to this process.
    pub fn effective_threads(&self) -> u32 {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        })
    }
}

fn parse_bool(variable: &'static str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(Error::Config {
            variable,
            message: format!("`{other}` is not a boolean (true/false)"),
        }),
    }
}

fn parse_or<T: std::str::FromStr>(
    variable: &'static str,
    v: Option<String>,
    default: T,
) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match v {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e| Error::Config {
            variable,
            message: format!("cannot parse `{v}`: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<PipelineConfig> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PipelineConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn livepeer_defaults() {
        let c = from(&[]).unwrap();
        assert_eq!(c.quantization, Quantization::AsStored);
        assert_eq!(c.max_num_batched_tokens, 8192);
        assert_eq!(c.max_num_seqs, 128);
        assert_eq!(c.max_model_len, 8192);
        assert_eq!(c.gpu_memory_utilization, 0.85);
        assert_eq!(c.tensor_parallel_size, 1);
        assert_eq!(c.pipeline_parallel_size, 1);
        assert!(c.prefix_caching);
    }

    #[test]
    fn values_are_read() {
        let c = from(&[
            ("USE_8BIT", "true"),
            ("MAX_NUM_SEQS", "4"),
            ("MAX_MODEL_LEN", "1024"),
            ("MAX_NUM_BATCHED_TOKENS", "2048"),
            ("GPU_MEMORY_UTILIZATION", "0.5"),
            ("MODEL_ID", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            ("PRICE_PER_UNIT", "7"),
            ("PIXELS_PER_UNIT", "3"),
            ("ENABLE_PREFIX_CACHING", "false"),
            ("KV_UNIFIED", "true"),
        ])
        .unwrap();
        assert!(!c.prefix_caching);
        assert!(c.kv_unified);
        assert_eq!(c.quantization, Quantization::Int8);
        assert_eq!(
            (c.max_num_seqs, c.max_model_len, c.max_num_batched_tokens),
            (4, 1024, 2048)
        );
        assert_eq!(c.gpu_memory_utilization, 0.5);
        assert_eq!(c.model_id, "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(c.prices.quote(3).to_string(), "7");
    }

    #[test]
    fn batched_tokens_raised_to_model_len() {
        let c = from(&[("MAX_NUM_BATCHED_TOKENS", "512"), ("MAX_MODEL_LEN", "4096")]).unwrap();
        assert_eq!(c.max_num_batched_tokens, 4096);
    }

    #[test]
    fn errors_name_the_variable() {
        for (k, v) in [
            ("MAX_NUM_SEQS", "many"),
            ("MAX_NUM_SEQS", "0"),
            ("GPU_MEMORY_UTILIZATION", "1.5"),
            ("GPU_MEMORY_UTILIZATION", "0"),
            ("USE_8BIT", "maybe"),
            ("TENSOR_PARALLEL_SIZE", "-1"),
        ] {
            let err = from(&[(k, v)]).unwrap_err();
            assert!(
                matches!(&err, Error::Config { variable, .. } if *variable == k),
                "{k}={v}: {err}"
            );
            assert!(err.to_string().contains(k));
        }
    }
}
