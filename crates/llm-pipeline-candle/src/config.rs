//! The shape of a Llama-family decoder, read from `config.json` or from GGUF metadata.
//!
//! Llama 2/3, Mistral, Qwen2/2.5 and SmolLM2 differ only in numbers (sizes, RoPE base and
//! scaling, tied embeddings, attention biases) and in one layout fact: GGUF files converted for
//! the `llama` architecture store the Q/K rows permuted for llama.cpp's interleaved ("normal")
//! RoPE, while safetensors checkpoints and other GGUF architectures (`qwen2`) are laid out for
//! Hugging Face's rotate-half ("NEOX") RoPE. [`RopeStyle`] records which one the weights expect,
//! so the same model code runs both without un-permuting anything.

use candle_core::{DType, Device, Tensor};
use llm_pipeline_core::gguf::GgufMetadata;
use serde::Deserialize;

use crate::CandleError;

/// How RoPE pairs the dimensions of a head, which depends on how the Q/K weights are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face's rotate-half: dimension `i` pairs with `i + d/2`.
    Halves,
    /// llama.cpp's interleaved layout: dimension `2i` pairs with `2i + 1`.
    Interleaved,
}

/// RoPE frequency scaling from the model's configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scale of the low frequencies.
        factor: f32,
        /// Wavelength bound below which frequencies are scaled fully.
        low_freq_factor: f32,
        /// Wavelength bound above which frequencies are kept.
        high_freq_factor: f32,
        /// The context length before scaling.
        original_max_position_embeddings: u32,
    },
    /// Per-frequency divisors (GGUF `rope_freqs.weight`, Llama 3.1 converted by llama.cpp).
    Factors(Vec<f32>),
}

/// The numbers of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Embedding width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// How the Q/K weights expect RoPE to pair dimensions.
    pub rope_style: RopeStyle,
    /// The context length the model was trained for.
    pub max_position_embeddings: u32,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// The dtype of the stored dense weights (`torch_dtype`), when known.
    pub stored_dtype: Option<DType>,
}

/// `config.json` as written by `transformers` for the supported model types.
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: u32,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    torch_dtype: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_max_positions() -> u32 {
    4096
}

/// Model types whose decoder is the Llama one this crate implements.
const SUPPORTED_MODEL_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];

impl ModelConfig {
    /// Parses a Hugging Face `config.json`.
    ///
    /// # Errors
    /// [`CandleError::Unsupported`] for another model type or an unknown RoPE scaling;
    /// [`CandleError::Json`] when the text is not such a config.
    pub fn from_hf_json(text: &str) -> Result<Self, CandleError> {
        let hf: HfConfig = serde_json::from_str(text).map_err(|source| CandleError::Json {
            what: "config.json",
            source,
        })?;
        if let Some(t) = hf.model_type.as_deref()
            && !SUPPORTED_MODEL_TYPES.contains(&t)
        {
            return Err(CandleError::Unsupported {
                setting: "MODEL_ID",
                message: format!(
                    "model_type `{t}` is not a Llama-family decoder ({SUPPORTED_MODEL_TYPES:?})"
                ),
            });
        }
        let rope_scaling = match &hf.rope_scaling {
            None | Some(serde_json::Value::Null) => RopeScaling::None,
            Some(v) => hf_rope_scaling(v)?,
        };
        Ok(Self {
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            vocab_size: hf.vocab_size,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            rope_scaling,
            rope_style: RopeStyle::Halves,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            stored_dtype: match hf.torch_dtype.as_deref() {
                Some("float16") => Some(DType::F16),
                Some("bfloat16") => Some(DType::BF16),
                Some("float32") => Some(DType::F32),
                _ => None,
            },
        })
    }

    /// Reads the model's numbers from GGUF metadata (`llama` and `qwen2` architectures).
    ///
    /// `vocab_size` is the row count of `token_embd.weight`; `rope_factors` are the contents of
    /// `rope_freqs.weight` when the file has it.
    ///
    /// # Errors
    /// [`CandleError::Unsupported`] for another architecture; [`CandleError::Core`] when a
    /// required key is missing or malformed.
    pub fn from_gguf(
        meta: &GgufMetadata,
        vocab_size: usize,
        rope_factors: Option<Vec<f32>>,
    ) -> Result<Self, CandleError> {
        let arch = meta.architecture()?.to_owned();
        let rope_style = match arch.as_str() {
            "llama" | "mistral" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Halves,
            other => {
                return Err(CandleError::Unsupported {
                    setting: "MODEL_ID",
                    message: format!("GGUF architecture `{other}` is not a Llama-family decoder"),
                });
            }
        };
        let required = |suffix: &str| -> Result<usize, CandleError> {
            meta.arch_u32(suffix)?
                .map(|v| v as usize)
                .ok_or_else(|| CandleError::from(meta.error(format!("{arch}.{suffix} is missing"))))
        };
        let hidden_size = required("embedding_length")?;
        let num_heads = required("attention.head_count")?;
        let num_kv_heads = meta
            .arch_u32("attention.head_count_kv")?
            .map_or(num_heads, |v| v as usize);
        let head_dim = meta
            .arch_u32("attention.key_length")?
            .map_or(hidden_size / num_heads.max(1), |v| v as usize);
        let f32_key = |suffix: &str| meta.get_f32(&format!("{arch}.{suffix}"));
        let rope_scaling = match (
            rope_factors,
            meta.get_str(&format!("{arch}.rope.scaling.type"))?,
        ) {
            (Some(f), _) => RopeScaling::Factors(f),
            (None, Some("linear")) => RopeScaling::Linear {
                factor: f32_key("rope.scaling.factor")?.unwrap_or(1.0),
            },
            (None, None | Some("none")) => RopeScaling::None,
            (None, Some(other)) => {
                return Err(CandleError::Unsupported {
                    setting: "MODEL_ID",
                    message: format!("RoPE scaling `{other}` is not supported"),
                });
            }
        };
        Ok(Self {
            hidden_size,
            intermediate_size: required("feed_forward_length")?,
            num_layers: required("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: f64::from(f32_key("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5)),
            rope_theta: f32_key("rope.freq_base")?.unwrap_or(10_000.0),
            rope_scaling,
            rope_style,
            max_position_embeddings: meta.arch_u32("context_length")?.unwrap_or(4096),
            tie_word_embeddings: false,
            stored_dtype: None,
        })
    }

    /// KV cache bytes per token: keys and values of every layer in `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: DType) -> u64 {
        (2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype.size_in_bytes()) as u64
    }

    /// The RoPE inverse frequencies, scaling applied (`head_dim / 2` values).
    pub fn inv_freqs(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f32 / self.head_dim as f32))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Factors(factors) => base
                .iter()
                .zip(factors.iter().chain(std::iter::repeat(&1.0)))
                .map(|(f, d)| f / d)
                .collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f32::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }

    /// The cos and sin tables for positions `0..positions`, each `(positions, head_dim / 2)`.
    ///
    /// # Errors
    /// [`CandleError::Candle`] if the tables cannot be built on `device`.
    pub fn rope_tables(
        &self,
        positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor), CandleError> {
        let inv = self.inv_freqs();
        let half = inv.len();
        let mut angles = Vec::with_capacity(positions * half);
        for p in 0..positions {
            angles.extend(inv.iter().map(|f| p as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (positions, half), device)
            .map_err(CandleError::candle("RoPE table"))?;
        let cos = angles.cos().and_then(|t| t.to_dtype(dtype));
        let sin = angles.sin().and_then(|t| t.to_dtype(dtype));
        Ok((
            cos.map_err(CandleError::candle("RoPE table"))?,
            sin.map_err(CandleError::candle("RoPE table"))?,
        ))
    }
}

fn hf_rope_scaling(v: &serde_json::Value) -> Result<RopeScaling, CandleError> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("default");
    let num = |key: &str, default: f32| {
        v.get(key)
            .and_then(serde_json::Value::as_f64)
            .map_or(default, |x| x as f32)
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor", 1.0),
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor", 8.0),
            low_freq_factor: num("low_freq_factor", 1.0),
            high_freq_factor: num("high_freq_factor", 4.0),
            original_max_position_embeddings: num("original_max_position_embeddings", 8192.0)
                as u32,
        }),
        other => Err(CandleError::Unsupported {
            setting: "MODEL_ID",
            message: format!("RoPE scaling `{other}` is not supported by the candle backend"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_defaults_and_llama3_scaling() {
        let c = ModelConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
                "vocab_size":100,"rope_theta":500000.0,
                "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
                "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_style, RopeStyle::Halves);
        let inv = c.inv_freqs();
        assert_eq!(inv.len(), 8);
        assert_eq!(inv[0], 1.0, "the highest frequency is kept");
        assert!(
            inv[7] < 1.0 / 500_000f32.powf(14.0 / 16.0),
            "low frequencies are scaled"
        );
    }

    #[test]
    fn unknown_model_types_are_refused() {
        let err = ModelConfig::from_hf_json(
            r#"{"model_type":"gpt2","hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("gpt2"), "{err}");
    }
}
