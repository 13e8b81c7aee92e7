//! Loading a decoder's weights from a Hugging Face directory or a GGUF file.
//!
//! Safetensors shards are memory-mapped and each tensor is copied out once, in its stored
//! dtype unless the plan says otherwise, so loading peaks at the model's size rather than
//! twice it. Both formats end as the same [`ModelWeights`]: norms and the token embedding as dense
//! tensors, every linear layer as a [`Linear`] over candle's [`QMatMul`], which holds either a
//! dense matrix or a quantized one. That is where the two load-time conversions happen:
//! `USE_8BIT` quantizes a safetensors model's linear layers to Q8_0, and on the CPU GGUF tensors
//! whose candle dot product is scalar go to this crate's Q4_1 kernel or are re-quantized to
//! Q8_0, whose candle dot product is SIMD (see [`GgufKernels`]). Sizes are counted as they load ([`WeightMemory`]), so
//! the 8-bit saving is measured, not assumed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};

use llm_pipeline_core::gguf::GgufMetadata;

use crate::CandleError;
use crate::config::{GgufRopeFactors, ModelConfig};
use crate::packed::PackedMatrix;

/// Which CPU kernels run GGUF tensors whose candle 0.11 dot product is scalar (Q4_1, Q5_0,
/// Q5_1). Other types, and every tensor on CUDA, always use candle's kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufKernels {
    /// Q4_1 (and Q8_0 where the CPU has AVX-512 VNNI) through this crate's SIMD kernels,
    /// repacked without changing a weight; Q5_0 and Q5_1 re-quantized to Q8_0.
    #[default]
    Auto,
    /// Re-quantize Q4_1, Q5_0 and Q5_1 to Q8_0 at load time and use candle's SIMD Q8_0 path:
    /// 8.5 bits per weight instead of 5 or 6, and a small rounding error on top of the stored
    /// quantization.
    RequantizeToQ8_0,
    /// candle's kernels on every tensor as stored.
    Candle,
}

/// GGUF types whose candle 0.11 CPU dot product has no SIMD path.
const SCALAR_KERNEL_TYPES: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// Bytes of weights as loaded, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightMemory {
    /// Parameters in linear layers (projections, MLP, LM head).
    pub linear_params: u64,
    /// Bytes those parameters take as loaded.
    pub linear_bytes: u64,
    /// Bytes of everything else (embedding table, norms, biases).
    pub other_bytes: u64,
}

impl WeightMemory {
    /// What the linear layers would take in f16.
    pub fn linear_f16_bytes(&self) -> u64 {
        self.linear_params * 2
    }

    /// All bytes.
    pub fn total_bytes(&self) -> u64 {
        self.linear_bytes + self.other_bytes
    }
}

/// A linear layer's weight: candle's (dense or quantized) or this crate's Q4_1 kernel.
#[derive(Debug)]
enum Weight {
    Candle(QMatMul),
    Packed(PackedMatrix),
}

/// A linear layer `x Wᵀ + b` whose weight may be quantized.
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// `x` is `(tokens, in)`; the result `(tokens, out)`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Packed(w) => w.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The query, key and value projections: three matrices, or one whose output rows are the
/// three in turn (Phi-3), split on the output so the weights are never copied.
#[derive(Debug)]
pub(crate) enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

impl Qkv {
    /// `(q, k, v)` of `h`, `q` with `q_width` columns and `k`, `v` with `kv_width`.
    pub(crate) fn forward(
        &self,
        h: &Tensor,
        q_width: usize,
        kv_width: usize,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        match self {
            Self::Separate { q, k, v } => Ok((q.forward(h)?, k.forward(h)?, v.forward(h)?)),
            Self::Fused(qkv) => {
                let y = qkv.forward(h)?;
                Ok((
                    y.narrow(1, 0, q_width)?.contiguous()?,
                    y.narrow(1, q_width, kv_width)?.contiguous()?,
                    y.narrow(1, q_width + kv_width, kv_width)?.contiguous()?,
                ))
            }
        }
    }
}

/// The MLP's gate and up projections: two matrices, or one with the gate rows first (Phi-3).
#[derive(Debug)]
pub(crate) enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

impl GateUp {
    /// `(gate, up)` of `h`, each `width` columns.
    pub(crate) fn forward(
        &self,
        h: &Tensor,
        width: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match self {
            Self::Separate { gate, up } => Ok((gate.forward(h)?, up.forward(h)?)),
            Self::Fused(w) => {
                let y = w.forward(h)?;
                Ok((y.narrow(1, 0, width)?, y.narrow(1, width, width)?))
            }
        }
    }
}

/// One decoder layer.
#[derive(Debug)]
pub(crate) struct LayerWeights {
    pub(crate) attn_norm: Tensor,
    pub(crate) qkv: Qkv,
    /// Per-head RMS norms of queries and keys (Qwen3, Gemma 3).
    pub(crate) q_norm: Option<Tensor>,
    pub(crate) k_norm: Option<Tensor>,
    pub(crate) o: Linear,
    /// The norm on the attention output before the residual (Gemma 2/3).
    pub(crate) post_attn_norm: Option<Tensor>,
    pub(crate) mlp_norm: Tensor,
    pub(crate) gate_up: GateUp,
    pub(crate) down: Linear,
    /// The norm on the MLP output before the residual (Gemma 2/3).
    pub(crate) post_mlp_norm: Option<Tensor>,
}

/// The whole decoder.
#[derive(Debug)]
pub(crate) struct ModelWeights {
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<LayerWeights>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Linear,
    pub(crate) memory: WeightMemory,
}

/// How a load should place and convert the weights.
#[derive(Debug, Clone)]
pub(crate) struct LoadPlan {
    pub(crate) device: Device,
    /// Activation and dense-weight dtype.
    pub(crate) dtype: DType,
    /// `USE_8BIT`: quantize dense linear layers to Q8_0.
    pub(crate) int8: bool,
    pub(crate) kernels: GgufKernels,
}

/// Where tensors come from while building [`ModelWeights`].
enum Source {
    Safetensors(MmapedSafetensors),
    Gguf {
        content: gguf_file::Content,
        file: std::fs::File,
    },
}

struct Builder<'a> {
    source: Source,
    plan: &'a LoadPlan,
    memory: WeightMemory,
    /// Norm weights are stored as offsets from one (Gemma's safetensors).
    unit_offset_norms: bool,
}

impl Builder<'_> {
    fn has(&self, name: &str) -> bool {
        match &self.source {
            Source::Safetensors(st) => st.get(name).is_ok(),
            Source::Gguf { content, .. } => content.tensor_infos.contains_key(name),
        }
    }

    fn qtensor(&mut self, name: &str) -> Result<QTensor, CandleError> {
        let Source::Gguf { content, file } = &mut self.source else {
            unreachable!("qtensor is only called on GGUF sources");
        };
        if !content.tensor_infos.contains_key(name) {
            return Err(CandleError::MissingTensor { name: name.into() });
        }
        content
            .tensor(file, name, &Device::Cpu)
            .map_err(CandleError::candle("reading a GGUF tensor"))
    }

    /// A dense tensor in the plan's dtype on the plan's device, counted as "other".
    fn dense(&mut self, name: &str) -> Result<Tensor, CandleError> {
        let t = self.raw(name)?;
        self.place(t)
    }

    /// A tensor as the file stores it (GGUF tensors dequantized), on the CPU.
    fn raw(&mut self, name: &str) -> Result<Tensor, CandleError> {
        match &mut self.source {
            Source::Safetensors(_) => self.stored(name),
            Source::Gguf { .. } => self
                .qtensor(name)?
                .dequantize(&Device::Cpu)
                .map_err(CandleError::candle("dequantizing a GGUF tensor")),
        }
    }

    /// `t` in the plan's dtype on the plan's device, counted as "other".
    fn place(&mut self, t: Tensor) -> Result<Tensor, CandleError> {
        let t = t
            .to_dtype(self.plan.dtype)
            .and_then(|t| t.to_device(&self.plan.device))
            .map_err(CandleError::candle("placing a tensor"))?;
        self.memory.other_bytes += (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        Ok(t)
    }

    /// A safetensors tensor as stored, copied out of the mapping.
    fn stored(&self, name: &str) -> Result<Tensor, CandleError> {
        let Source::Safetensors(st) = &self.source else {
            unreachable!("stored is only called on safetensors sources");
        };
        if st.get(name).is_err() {
            return Err(CandleError::MissingTensor { name: name.into() });
        }
        st.load(name, &Device::Cpu)
            .map_err(CandleError::candle("reading safetensors"))
    }

    fn optional_dense(&mut self, name: &str) -> Result<Option<Tensor>, CandleError> {
        if self.has(name) {
            self.dense(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A norm weight, with Gemma's offset from one added (in f32, before any narrowing)
    /// where the format stores it.
    fn norm(&mut self, name: &str) -> Result<Tensor, CandleError> {
        let w = self.raw(name)?;
        let w = if self.unit_offset_norms {
            w.to_dtype(DType::F32)
                .and_then(|w| w + 1.0)
                .map_err(CandleError::candle("offsetting a norm"))?
        } else {
            w
        };
        self.place(w)
    }

    fn optional_norm(&mut self, name: &str) -> Result<Option<Tensor>, CandleError> {
        if self.has(name) {
            self.norm(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A linear layer from `weight` and the optional `bias`.
    fn linear(&mut self, weight: &str, bias: &str) -> Result<Linear, CandleError> {
        let weight = match &self.source {
            Source::Safetensors(_) => {
                let w = self.stored(weight)?;
                Weight::Candle(self.dense_matmul(w)?)
            }
            Source::Gguf { .. } => {
                let q = self.qtensor(weight)?;
                self.quantized_weight(q)?
            }
        };
        let bias = self.optional_dense(bias)?;
        Ok(Linear { weight, bias })
    }

    /// A dense weight: quantized to Q8_0 under `USE_8BIT`, else kept dense in the plan's dtype.
    fn dense_matmul(&mut self, w: Tensor) -> Result<QMatMul, CandleError> {
        self.memory.linear_params += w.elem_count() as u64;
        if self.plan.int8 {
            let w = w
                .to_dtype(DType::F32)
                .map_err(CandleError::candle("widening for quantization"))?;
            let q = QTensor::quantize_onto(&w, GgmlDType::Q8_0, &self.plan.device)
                .map_err(CandleError::candle("quantizing to Q8_0 (USE_8BIT)"))?;
            self.memory.linear_bytes += q.storage_size_in_bytes() as u64;
            return Ok(QMatMul::QTensor(Arc::new(q)));
        }
        let w = w
            .to_dtype(self.plan.dtype)
            .and_then(|t| t.to_device(&self.plan.device))
            .map_err(CandleError::candle("placing a weight"))?;
        self.memory.linear_bytes += (w.elem_count() * w.dtype().size_in_bytes()) as u64;
        Ok(QMatMul::Tensor(w))
    }

    /// A GGUF weight, kept quantized (re-quantized to Q8_0, or given to our Q4_1 kernel, where
    /// the plan says so).
    fn quantized_weight(&mut self, q: QTensor) -> Result<Weight, CandleError> {
        let params = q.shape().elem_count() as u64;
        if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            let w = q
                .dequantize(&Device::Cpu)
                .map_err(CandleError::candle("reading a dense GGUF weight"))?;
            return self.dense_matmul(w).map(Weight::Candle);
        }
        let cpu = self.plan.device.is_cpu();
        if cpu && self.plan.kernels == GgufKernels::Auto {
            let ours = PackedMatrix::from_qtensor(&q)
                .map_err(CandleError::candle("repacking quantized blocks"))?;
            if let Some(m) = ours {
                self.memory.linear_params += params;
                self.memory.linear_bytes += m.bytes() as u64;
                return Ok(Weight::Packed(m));
            }
        }
        let q = if cpu
            && self.plan.kernels != GgufKernels::Candle
            && SCALAR_KERNEL_TYPES.contains(&q.dtype())
        {
            let w = q
                .dequantize(&Device::Cpu)
                .map_err(CandleError::candle("dequantizing for Q8_0"))?;
            QTensor::quantize(&w, GgmlDType::Q8_0)
                .map_err(CandleError::candle("re-quantizing to Q8_0"))?
        } else if cpu {
            q
        } else {
            let w = q
                .dequantize(&Device::Cpu)
                .map_err(CandleError::candle("dequantizing for the device"))?;
            QTensor::quantize_onto(&w, q.dtype(), &self.plan.device)
                .map_err(CandleError::candle("moving a quantized weight"))?
        };
        self.memory.linear_params += params;
        self.memory.linear_bytes += q.storage_size_in_bytes() as u64;
        Ok(Weight::Candle(QMatMul::QTensor(Arc::new(q))))
    }
}

/// Loads the weights of a Hugging Face directory (`*.safetensors`, sharded or not).
pub(crate) fn load_safetensors(
    dir: &Path,
    config: &ModelConfig,
    plan: &LoadPlan,
) -> Result<ModelWeights, CandleError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| CandleError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CandleError::Unsupported {
            setting: "MODEL_ID",
            message: format!("no .safetensors file in {}", dir.display()),
        });
    }
    // SAFETY: the mapping is read while the weights load and dropped before this returns; a
    // file changed on disk meanwhile would give wrong weights, never unsound memory, since the
    // bytes are copied into tensors and checked against the header's sizes.
    let st = unsafe { MmapedSafetensors::multi(&files) }
        .map_err(CandleError::candle("mapping safetensors"))?;
    let b = Builder {
        source: Source::Safetensors(st),
        plan,
        memory: WeightMemory::default(),
        unit_offset_norms: config.family.unit_offset_norms(),
    };
    let names = if config.family.sandwich_norms() {
        &HF_SANDWICH_NAMES
    } else {
        &HF_NAMES
    };
    build(b, config, names, config.tie_word_embeddings)
}

/// A GGUF file opened for loading, with the tensor directory core read with its metadata (the
/// header is parsed once per load).
#[derive(Debug)]
pub(crate) struct GgufFile {
    content: gguf_file::Content,
    file: std::fs::File,
}

impl GgufFile {
    /// Opens the file whose header `meta` holds.
    pub(crate) fn open(meta: &GgufMetadata) -> Result<Self, CandleError> {
        let path = meta.path();
        let file = std::fs::File::open(path).map_err(|source| CandleError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let tensor_infos = meta
            .tensors()
            .iter()
            .map(|t| {
                let ggml_dtype = ggml_dtype(t.ggml_type).ok_or_else(|| {
                    CandleError::from(meta.error(format!(
                        "tensor `{}` has ggml type {}, which candle does not read",
                        t.name, t.ggml_type
                    )))
                })?;
                // GGUF lists the innermost dimension first; candle's shapes are outermost first.
                let dims: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
                let info = gguf_file::TensorInfo {
                    ggml_dtype,
                    shape: dims.into(),
                    offset: t.offset,
                };
                Ok((t.name.clone(), info))
            })
            .collect::<Result<_, CandleError>>()?;
        let content = gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            // The metadata is read through core's `GgufMetadata`; candle reads only tensors.
            metadata: Default::default(),
            tensor_infos,
            tensor_data_offset: meta.data_offset(),
        };
        Ok(Self { content, file })
    }

    /// Rows of `token_embd.weight` (the vocabulary size).
    pub(crate) fn vocab_rows(&self) -> Result<usize, CandleError> {
        let info = self.content.tensor_infos.get("token_embd.weight").ok_or(
            CandleError::MissingTensor {
                name: "token_embd.weight".into(),
            },
        )?;
        Ok(info.shape.dims()[0])
    }

    /// The RoPE factor tensors the file has.
    pub(crate) fn rope_factors(&mut self) -> Result<GgufRopeFactors, CandleError> {
        Ok(GgufRopeFactors {
            freqs: self.vector("rope_freqs.weight")?,
            long: self.vector("rope_factors_long.weight")?,
            short: self.vector("rope_factors_short.weight")?,
        })
    }

    /// The contents of a one-dimensional tensor, when present.
    fn vector(&mut self, name: &str) -> Result<Option<Vec<f32>>, CandleError> {
        if !self.content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        let t = self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(CandleError::candle("reading a RoPE factor tensor"))?;
        Ok(Some(t))
    }
}

/// Loads the weights of a GGUF file, keeping quantized tensors quantized.
pub(crate) fn load_gguf(
    gguf: GgufFile,
    config: &ModelConfig,
    plan: &LoadPlan,
) -> Result<ModelWeights, CandleError> {
    let b = Builder {
        source: Source::Gguf {
            content: gguf.content,
            file: gguf.file,
        },
        plan,
        memory: WeightMemory::default(),
        unit_offset_norms: false,
    };
    build(b, config, &GGUF_NAMES, false)
}

/// Where a weight format keeps each tensor of a decoder.
struct TensorNames {
    embed: &'static str,
    /// Layer `i`'s tensors are `{layer}.{i}.{name}.weight` (and `.bias`).
    layer: &'static str,
    attn_norm: &'static str,
    q: &'static str,
    k: &'static str,
    v: &'static str,
    /// Q, K and V in one matrix (Phi-3), used when present.
    qkv: &'static str,
    q_norm: &'static str,
    k_norm: &'static str,
    o: &'static str,
    post_attn_norm: &'static str,
    mlp_norm: &'static str,
    gate: &'static str,
    up: &'static str,
    /// Gate and up in one matrix (Phi-3), used when there is no separate gate.
    gate_up: &'static str,
    down: &'static str,
    post_mlp_norm: &'static str,
    norm: &'static str,
    /// The untied LM head; the embedding serves when it is tied or absent.
    head: &'static str,
    head_bias: &'static str,
}

/// Hugging Face's names, in safetensors.
const HF_NAMES: TensorNames = TensorNames {
    embed: "model.embed_tokens.weight",
    layer: "model.layers",
    attn_norm: "input_layernorm",
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    qkv: "self_attn.qkv_proj",
    q_norm: "self_attn.q_norm",
    k_norm: "self_attn.k_norm",
    o: "self_attn.o_proj",
    // Llama's "post-attention" norm is the MLP's input norm; Gemma 2/3 name theirs apart.
    post_attn_norm: "",
    mlp_norm: "post_attention_layernorm",
    gate: "mlp.gate_proj",
    up: "mlp.up_proj",
    gate_up: "mlp.gate_up_proj",
    down: "mlp.down_proj",
    post_mlp_norm: "",
    norm: "model.norm.weight",
    head: "lm_head.weight",
    head_bias: "lm_head.bias",
};

/// Hugging Face's names for Gemma 2/3, whose layers have four norms.
const HF_SANDWICH_NAMES: TensorNames = TensorNames {
    post_attn_norm: "post_attention_layernorm",
    mlp_norm: "pre_feedforward_layernorm",
    post_mlp_norm: "post_feedforward_layernorm",
    ..HF_NAMES
};

/// llama.cpp's names, in GGUF.
const GGUF_NAMES: TensorNames = TensorNames {
    embed: "token_embd.weight",
    layer: "blk",
    attn_norm: "attn_norm",
    q: "attn_q",
    k: "attn_k",
    v: "attn_v",
    qkv: "attn_qkv",
    q_norm: "attn_q_norm",
    k_norm: "attn_k_norm",
    o: "attn_output",
    post_attn_norm: "post_attention_norm",
    mlp_norm: "ffn_norm",
    gate: "ffn_gate",
    up: "ffn_up",
    gate_up: "ffn_up",
    down: "ffn_down",
    post_mlp_norm: "post_ffw_norm",
    norm: "output_norm.weight",
    head: "output.weight",
    head_bias: "output.bias",
};

/// Loads every tensor of the model through `b`, under `names`; `tied` forces the embedding
/// to serve as the LM head.
fn build(
    mut b: Builder<'_>,
    config: &ModelConfig,
    names: &TensorNames,
    tied: bool,
) -> Result<ModelWeights, CandleError> {
    let embed = b.dense(names.embed)?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("{}.{i}", names.layer);
        let weight = |name: &str| format!("{p}.{name}.weight");
        let lin = |b: &mut Builder<'_>, name: &str| {
            b.linear(&format!("{p}.{name}.weight"), &format!("{p}.{name}.bias"))
        };
        let optional_norm = |b: &mut Builder<'_>, name: &str| {
            if name.is_empty() {
                Ok(None)
            } else {
                b.optional_norm(&weight(name))
            }
        };
        let attn_norm = b.norm(&weight(names.attn_norm))?;
        let qkv = if b.has(&weight(names.qkv)) {
            Qkv::Fused(lin(&mut b, names.qkv)?)
        } else {
            Qkv::Separate {
                q: lin(&mut b, names.q)?,
                k: lin(&mut b, names.k)?,
                v: lin(&mut b, names.v)?,
            }
        };
        let gate_up = if b.has(&weight(names.gate)) {
            GateUp::Separate {
                gate: lin(&mut b, names.gate)?,
                up: lin(&mut b, names.up)?,
            }
        } else {
            GateUp::Fused(lin(&mut b, names.gate_up)?)
        };
        layers.push(LayerWeights {
            attn_norm,
            qkv,
            q_norm: optional_norm(&mut b, names.q_norm)?,
            k_norm: optional_norm(&mut b, names.k_norm)?,
            o: lin(&mut b, names.o)?,
            post_attn_norm: optional_norm(&mut b, names.post_attn_norm)?,
            mlp_norm: b.norm(&weight(names.mlp_norm))?,
            gate_up,
            down: lin(&mut b, names.down)?,
            post_mlp_norm: optional_norm(&mut b, names.post_mlp_norm)?,
        });
        check_layer(config, &layers[i], i)?;
    }
    let norm = b.norm(names.norm)?;
    let head = if !tied && b.has(names.head) {
        names.head
    } else {
        names.embed
    };
    let lm_head = b.linear(head, names.head_bias)?;
    Ok(ModelWeights {
        embed,
        layers,
        norm,
        lm_head,
        memory: b.memory,
    })
}

/// Refuses a layer whose optional tensors disagree with the configuration: a family switch
/// without its weights (or weights the configuration does not use) would run a different model.
fn check_layer(config: &ModelConfig, layer: &LayerWeights, i: usize) -> Result<(), CandleError> {
    let qk = config.family.qk_norm();
    let sandwich = config.family.sandwich_norms();
    for (present, wanted, what) in [
        (layer.q_norm.is_some(), qk, "query norm"),
        (layer.k_norm.is_some(), qk, "key norm"),
        (
            layer.post_attn_norm.is_some(),
            sandwich,
            "post-attention norm",
        ),
        (layer.post_mlp_norm.is_some(), sandwich, "post-MLP norm"),
    ] {
        if present != wanted {
            return Err(CandleError::Unsupported {
                setting: "MODEL_ID",
                message: format!(
                    "layer {i} {} a {what}, which a {:?} model {}",
                    if present { "has" } else { "lacks" },
                    config.family,
                    if wanted { "needs" } else { "does not have" }
                ),
            });
        }
    }
    Ok(())
}

/// candle's dtype for a ggml type id (the ids of ggml's `ggml_type` enum).
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}
