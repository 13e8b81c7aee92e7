//! [`Backend`] over the candle model: loading, the KV budget, and the step.
//!
//! The backend owns the model and the sequences' KV caches. Its capacity is the KV budget
//! (`CPU_KV_CACHE_SPACE` on the CPU; `GPU_MEMORY_UTILIZATION` of the device's memory, less what
//! is in use after the weights, on CUDA) divided by the bytes one token takes in every layer.
//! Each step runs inside candle's CPU thread pool ([`Device::with_context`]) so its many short
//! parallel sections reuse warm workers.

use std::path::Path;

use candle_core::{DType, Device};
use llm_pipeline_core::backend::{Backend, BackendInfo, BatchEntry, Logits, SeqId};
use llm_pipeline_core::config::{PipelineConfig, Quantization};
use llm_pipeline_core::load::ModelFiles;

use crate::CandleError;
use crate::config::ModelConfig;
use crate::kv::{KvPool, KvShape};
use crate::model::Model;
use crate::weights::{self, GgufFile, GgufKernels, LoadPlan, WeightMemory};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when built with `cuda` and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal (needs the `cuda` feature).
    Cuda(usize),
}

/// The dtype of a safetensors model's dense weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// As stored (`torch_dtype`): a bf16 model stays bf16, using half the memory of f32; on the
    /// CPU candle widens each bf16 matrix to f32 for its product, which costs speed.
    #[default]
    Stored,
    /// f32 throughout: twice a half-precision model's memory, candle's fastest CPU kernels.
    F32,
}

/// Backend-specific load options beyond [`PipelineConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The device.
    pub device: DeviceChoice,
    /// What to do with GGUF tensors whose candle kernel is slow.
    pub kernels: GgufKernels,
    /// The dtype of safetensors weights.
    pub precision: Precision,
}

impl LoadOptions {
    /// Sets the device.
    pub fn with_device(mut self, device: DeviceChoice) -> Self {
        self.device = device;
        self
    }

    /// Sets the GGUF re-quantization policy.
    pub fn with_kernels(mut self, kernels: GgufKernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Sets the dtype of safetensors weights.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }
}

/// The candle backend.
#[derive(Debug)]
pub struct CandleBackend {
    model: Model,
    kv: KvPool,
    info: BackendInfo,
    device: Device,
}

impl CandleBackend {
    /// Loads the model at `path` (a GGUF file or a Hugging Face directory) with default options.
    ///
    /// # Errors
    /// See [`CandleBackend::load_with`].
    pub fn load(path: &Path, config: &PipelineConfig) -> Result<Self, CandleError> {
        Self::load_with(path, config, LoadOptions::default())
    }

    /// Loads the model at `path` (a GGUF file or a Hugging Face directory).
    ///
    /// # Errors
    /// As [`CandleBackend::open`], and core's error when `path` is neither.
    pub fn load_with(
        path: &Path,
        config: &PipelineConfig,
        options: LoadOptions,
    ) -> Result<Self, CandleError> {
        Self::open(&ModelFiles::at(path)?, config, options)
    }

    /// Opens a located model (see [`llm_pipeline_core::load`]).
    ///
    /// # Errors
    /// [`CandleError::Unsupported`] for parallelism above 1, a CUDA device without the `cuda`
    /// feature, an unsupported architecture, or a KV budget that holds no sequence; I/O, format
    /// and candle errors while reading the weights.
    pub fn open(
        files: &ModelFiles,
        config: &PipelineConfig,
        options: LoadOptions,
    ) -> Result<Self, CandleError> {
        refuse_parallelism(config)?;
        crate::set_threads(config.effective_threads());
        let device = pick_device(options.device)?;
        let int8 = config.quantization == Quantization::Int8;
        let (model_config, weights) = match files {
            ModelFiles::Directory(dir) => {
                let config_path = dir.join("config.json");
                let text =
                    std::fs::read_to_string(&config_path).map_err(|source| CandleError::Io {
                        path: config_path,
                        source,
                    })?;
                let mc = ModelConfig::from_hf_json(&text)?;
                let dtype = match (options.precision, mc.stored_dtype) {
                    (Precision::Stored, Some(d @ (DType::F16 | DType::BF16))) => d,
                    _ => DType::F32,
                };
                let plan = LoadPlan {
                    device: device.clone(),
                    dtype,
                    int8,
                    kernels: options.kernels,
                };
                let w = weights::load_safetensors(dir, &mc, &plan)?;
                (mc, w)
            }
            ModelFiles::Gguf(meta) => {
                if int8 {
                    tracing::info!("USE_8BIT: the GGUF is already quantized; loading it as stored");
                }
                let mut gguf = GgufFile::open(meta)?;
                let mc = ModelConfig::from_gguf(meta, gguf.vocab_rows()?, gguf.rope_factors()?)?;
                let plan = LoadPlan {
                    device: device.clone(),
                    dtype: DType::F32,
                    int8: false,
                    kernels: options.kernels,
                };
                let w = weights::load_gguf(gguf, &mc, &plan)?;
                (mc, w)
            }
        };
        let positions = config.max_model_len as usize;
        let model = Model::new(model_config, weights, positions, &device)?;
        let shape = KvShape {
            layers: model.config.num_layers,
            kv_heads: model.config.num_kv_heads,
            head_dim: model.config.head_dim,
        };
        let per_token = model.config.kv_bytes_per_token(model.dtype());
        let budget = kv_budget(&device, config)?;
        let capacity = (budget / per_token.max(1)).min(u64::from(u32::MAX)) as usize;
        if capacity == 0 {
            return Err(CandleError::Unsupported {
                setting: if device.is_cpu() {
                    "CPU_KV_CACHE_SPACE"
                } else {
                    "GPU_MEMORY_UTILIZATION"
                },
                message: format!(
                    "a KV budget of {budget} bytes holds no token ({per_token} bytes each)"
                ),
            });
        }
        let kv = KvPool::new(shape, model.dtype(), device.clone(), capacity)
            .with_max_len(positions)
            .with_prefix_caching(config.prefix_caching);
        let memory = model.weights.memory;
        let info = BackendInfo {
            name: "candle",
            vocab_size: model.config.vocab_size,
            trained_context: model.config.max_position_embeddings,
            kv_capacity: capacity as u32,
            max_batch_tokens: config.max_num_batched_tokens,
            max_seqs: config.max_num_seqs,
            description: format!(
                "candle {} ({:?} activations, weights {:.1} MiB of which linear {:.1} MiB, \
                 {} compute threads)",
                device_name(&device),
                model.dtype(),
                memory.total_bytes() as f64 / (1 << 20) as f64,
                memory.linear_bytes as f64 / (1 << 20) as f64,
                candle_core::utils::get_num_threads(),
            ),
        };
        tracing::info!(
            kv_capacity = capacity,
            linear_bytes = memory.linear_bytes,
            linear_f16_bytes = memory.linear_f16_bytes(),
            "candle backend loaded: {}",
            info.description
        );
        Ok(Self {
            model,
            kv,
            info,
            device,
        })
    }

    /// Bytes of weights as loaded (the measure of `USE_8BIT`'s saving).
    pub fn weight_memory(&self) -> WeightMemory {
        self.model.weights.memory
    }

    /// KV cells allocated to live sequences (at most [`BackendInfo::kv_capacity`]).
    pub fn kv_cells_allocated(&self) -> usize {
        self.kv.allocated()
    }

    /// Sequences holding a KV cache.
    pub fn live_sequences(&self) -> usize {
        self.kv.len()
    }

    /// KV cells of released sequences kept for prefix caching (`ENABLE_PREFIX_CACHING`); live
    /// sequences take them back when they need room.
    pub fn kv_cells_retained(&self) -> usize {
        self.kv.retained()
    }
}

impl Backend for CandleBackend {
    type Error = CandleError;

    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn forward(
        &mut self,
        batch: &[BatchEntry<'_>],
        logits: &mut Logits,
    ) -> Result<(), CandleError> {
        let (model, kv) = (&self.model, &mut self.kv);
        let out = self.device.with_context(|| model.forward(batch, kv))?;
        let Some(out) = out else {
            return Ok(());
        };
        let rows = out
            .to_vec2::<f32>()
            .map_err(CandleError::candle("reading logits"))?;
        for row in &rows {
            logits.push_row(row);
        }
        Ok(())
    }

    fn release(&mut self, seq: SeqId) {
        self.kv.release(seq);
    }

    fn truncate(&mut self, seq: SeqId, len: u32) -> Result<(), CandleError> {
        self.kv.truncate(seq, len as usize);
        Ok(())
    }

    fn reuse_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> u32 {
        self.kv.reuse(seq, tokens) as u32
    }
}

fn refuse_parallelism(config: &PipelineConfig) -> Result<(), CandleError> {
    for (setting, value) in [
        ("TENSOR_PARALLEL_SIZE", config.tensor_parallel_size),
        ("PIPELINE_PARALLEL_SIZE", config.pipeline_parallel_size),
    ] {
        if value > 1 {
            return Err(CandleError::Unsupported {
                setting,
                message: format!(
                    "the candle backend runs a model on one device; {setting}={value} needs \
                     the llama.cpp backend or a value of 1"
                ),
            });
        }
    }
    Ok(())
}

fn pick_device(choice: DeviceChoice) -> Result<Device, CandleError> {
    let cuda = |ordinal: usize| {
        Device::new_cuda(ordinal).map_err(|source| CandleError::Unsupported {
            setting: "MODEL_ID",
            message: format!(
                "CUDA device {ordinal} is unavailable ({source}); the candle backend must be \
                 built with the `cuda` feature to use a GPU"
            ),
        })
    };
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => cuda(n),
        DeviceChoice::Auto if candle_core::utils::cuda_is_available() => cuda(0),
        DeviceChoice::Auto => Ok(Device::Cpu),
    }
}

fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "CPU".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("CUDA:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("Metal:{gpu_id}"),
    }
}

/// The KV budget in bytes.
fn kv_budget(device: &Device, config: &PipelineConfig) -> Result<u64, CandleError> {
    if device.is_cpu() {
        return Ok(config.cpu_kv_cache_bytes);
    }
    gpu_budget(device, config.gpu_memory_utilization)
}

/// `GPU_MEMORY_UTILIZATION × total − memory in use`, measured after the weights are loaded.
#[cfg(feature = "cuda")]
fn gpu_budget(device: &Device, utilization: f32) -> Result<u64, CandleError> {
    use candle_core::cuda::cudarc::driver::result::mem_get_info;
    let Device::Cuda(dev) = device else {
        return Ok(0);
    };
    let query = || -> Result<(usize, usize), candle_core::cuda::cudarc::driver::DriverError> {
        dev.cuda_stream().context().bind_to_thread()?;
        mem_get_info()
    };
    let (free, total) = query().map_err(|e| CandleError::Unsupported {
        setting: "GPU_MEMORY_UTILIZATION",
        message: format!("cannot query device memory: {e}"),
    })?;
    let memory = llm_pipeline_core::memory::DeviceMemory {
        total_bytes: total as u64,
        free_bytes: free as u64,
    };
    Ok(llm_pipeline_core::memory::gpu_kv_budget(
        memory,
        utilization,
        llm_pipeline_core::memory::Weights::Loaded,
    ))
}

#[cfg(not(feature = "cuda"))]
fn gpu_budget(_device: &Device, _utilization: f32) -> Result<u64, CandleError> {
    Err(CandleError::Unsupported {
        setting: "GPU_MEMORY_UTILIZATION",
        message: "GPU devices need the `cuda` feature".into(),
    })
}
