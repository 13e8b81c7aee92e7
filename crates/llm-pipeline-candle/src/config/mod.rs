//! The shape of a decoder, read from `config.json` (module `hf`) or from GGUF metadata (module
//! `gguf`).
//!
//! Every supported family is the Llama decoder with a few switches, so one model code runs
//! them all and [`ModelConfig`] records the switches as data:
//! - Llama 1/2/3/3.x, Mistral and Qwen2/2.5: numbers only (sizes, RoPE base and scaling, tied
//!   embeddings, attention biases), plus Mistral's sliding window;
//! - Qwen3: RMS norms over each query and key head before RoPE;
//! - Phi-3/3.5: fused QKV and gate-up projections (split on the step's output), LongRoPE;
//! - Gemma 1/2/3: GELU, the embedding scaled by `√hidden`, norms that add one to their weight,
//!   and for Gemma 2/3 a norm after attention and after the MLP, logit soft-capping, and
//!   sliding-window layers between global ones (Gemma 3's with their own RoPE base).
//!
//! One layout fact differs between files: GGUF files converted for the `llama` architecture
//! store the Q/K rows permuted for llama.cpp's interleaved ("normal") RoPE, while safetensors
//! checkpoints and every other GGUF architecture are laid out for Hugging Face's rotate-half
//! ("NEOX") RoPE. [`RopeStyle`] records which one the weights expect, so the same model code
//! runs both without un-permuting anything.

mod gguf;
mod hf;

use candle_core::{DType, Device, Tensor};

pub use gguf::GgufRopeFactors;

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
    /// Phi-3's LongRoPE: per-frequency divisors for short and long contexts, and a factor on
    /// cos/sin. The long ones apply when the served context (`MAX_MODEL_LEN`) exceeds the
    /// original one, a choice made once per load as llama.cpp and vLLM make it (Hugging Face
    /// switches per call by the current length, which changes a sequence's past keys).
    LongRope {
        /// Divisors up to the original context.
        short: Vec<f32>,
        /// Divisors beyond it.
        long: Vec<f32>,
        /// The context length the short factors cover.
        original_max_position_embeddings: u32,
        /// The factor on cos and sin.
        attention_factor: f32,
    },
}

/// The MLP's activation on the gate projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (Llama, Mistral, Qwen, Phi-3).
    Silu,
    /// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
    /// GELU, exact.
    Gelu,
}

/// The decoder families, for what their files name differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama, Mistral, Qwen2/2.5, SmolLM.
    Llama,
    /// Qwen3 (per-head query and key norms).
    Qwen3,
    /// Phi-3/3.5 (fused projections).
    Phi3,
    /// Gemma.
    Gemma,
    /// Gemma 2 (norms around attention and MLP).
    Gemma2,
    /// Gemma 3 (Gemma 2's norms with per-head query and key norms).
    Gemma3,
}

impl Family {
    /// Whether stored norm weights are offsets from one (Gemma's `x * (1 + w)`) in Hugging
    /// Face checkpoints; llama.cpp's converter adds the one, so GGUF norms are plain.
    pub fn unit_offset_norms(self) -> bool {
        matches!(self, Self::Gemma | Self::Gemma2 | Self::Gemma3)
    }

    /// Whether layers carry a norm after attention and after the MLP (Gemma 2/3).
    pub fn sandwich_norms(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }

    /// Whether queries and keys are RMS-normalized per head before RoPE (Qwen3, Gemma 3).
    pub fn qk_norm(self) -> bool {
        matches!(self, Self::Qwen3 | Self::Gemma3)
    }
}

/// One layer's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerAttention {
    /// A query at position `p` sees keys at `p - window + 1 ..= p` (sliding-window attention);
    /// `None`: every earlier key.
    pub window: Option<usize>,
    /// Whether the layer's RoPE uses [`ModelConfig::local_rope_theta`] (Gemma 3's sliding
    /// layers).
    pub local_rope: bool,
}

/// The numbers and switches of a decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The family, for tensor names and norm conventions.
    pub family: Family,
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
    /// The RoPE base of layers with [`LayerAttention::local_rope`] (unscaled).
    pub local_rope_theta: Option<f32>,
    /// How the Q/K weights expect RoPE to pair dimensions.
    pub rope_style: RopeStyle,
    /// The context length the model was trained for.
    pub max_position_embeddings: u32,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// The dtype of the stored dense weights (`torch_dtype`), when known.
    pub stored_dtype: Option<DType>,
    /// The MLP activation.
    pub activation: Activation,
    /// Factor on the token embeddings (Gemma: `√hidden`).
    pub embed_scale: Option<f32>,
    /// Factor on attention scores (`1/√head_dim`, or Gemma's `query_pre_attn_scalar`).
    pub attn_scale: f64,
    /// Attention scores become `cap · tanh(score / cap)` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Logits become `cap · tanh(logit / cap)` (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Each layer's attention, `num_layers` entries.
    pub layers: Vec<LayerAttention>,
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json`.
    ///
    /// # Errors
    /// [`CandleError::Unsupported`] for another model type or an unknown RoPE scaling;
    /// [`CandleError::Json`] when the text is not such a config.
    pub fn from_hf_json(text: &str) -> Result<Self, CandleError> {
        hf::parse(text)
    }

    /// Reads the model's numbers from GGUF metadata.
    ///
    /// `vocab_size` is the row count of `token_embd.weight`; `factors` are the RoPE factor
    /// tensors the file has.
    ///
    /// # Errors
    /// [`CandleError::Unsupported`] for another architecture; [`CandleError::Core`] when a
    /// required key is missing or malformed.
    pub fn from_gguf(
        meta: &llm_pipeline_core::gguf::GgufMetadata,
        vocab_size: usize,
        factors: GgufRopeFactors,
    ) -> Result<Self, CandleError> {
        gguf::parse(meta, vocab_size, factors)
    }

    /// KV cache bytes per token: keys and values of every layer in `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: DType) -> u64 {
        (2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype.size_in_bytes()) as u64
    }

    /// Whether any layer uses the local RoPE base.
    pub fn has_local_rope(&self) -> bool {
        self.local_rope_theta.is_some() && self.layers.iter().any(|l| l.local_rope)
    }

    /// The RoPE inverse frequencies for a served context of `positions`, scaling applied
    /// (`head_dim / 2` values), and the factor on cos/sin.
    pub fn inv_freqs(&self, positions: usize) -> (Vec<f32>, f32) {
        inv_freqs(
            self.rope_theta,
            self.head_dim,
            &self.rope_scaling,
            positions,
        )
    }

    /// The cos and sin tables for positions `0..positions`, each `(positions, head_dim / 2)`;
    /// `local` selects the local RoPE base (unscaled).
    ///
    /// # Errors
    /// [`CandleError::Candle`] if the tables cannot be built on `device`.
    pub fn rope_tables(
        &self,
        positions: usize,
        local: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor), CandleError> {
        let (inv, factor) = match self.local_rope_theta {
            Some(theta) if local => inv_freqs(theta, self.head_dim, &RopeScaling::None, positions),
            _ => self.inv_freqs(positions),
        };
        let half = inv.len();
        let mut angles = Vec::with_capacity(positions * half);
        for p in 0..positions {
            angles.extend(inv.iter().map(|f| p as f32 * f));
        }
        let build = || -> candle_core::Result<(Tensor, Tensor)> {
            let angles = Tensor::from_vec(angles, (positions, half), device)?;
            let scale = f64::from(factor);
            let cos = (angles.cos()? * scale)?.to_dtype(dtype)?;
            let sin = (angles.sin()? * scale)?.to_dtype(dtype)?;
            Ok((cos, sin))
        };
        build().map_err(CandleError::candle("RoPE table"))
    }
}

fn inv_freqs(
    theta: f32,
    head_dim: usize,
    scaling: &RopeScaling,
    positions: usize,
) -> (Vec<f32>, f32) {
    let half = head_dim / 2;
    let base: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let divide = |factors: &[f32]| -> Vec<f32> {
        base.iter()
            .zip(factors.iter().chain(std::iter::repeat(&1.0)))
            .map(|(f, d)| f / d)
            .collect()
    };
    match scaling {
        RopeScaling::None => (base, 1.0),
        RopeScaling::Linear { factor } => (base.iter().map(|f| f / factor).collect(), 1.0),
        RopeScaling::Factors(factors) => (divide(factors), 1.0),
        RopeScaling::LongRope {
            short,
            long,
            original_max_position_embeddings,
            attention_factor,
        } => {
            let factors = if positions > *original_max_position_embeddings as usize {
                long
            } else {
                short
            };
            (divide(factors), *attention_factor)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = *original_max_position_embeddings as f32;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let scaled = base
                .iter()
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
                .collect();
            (scaled, 1.0)
        }
    }
}

/// LongRoPE's factor on cos/sin when the model's context is `scale` times the original one
/// (Phi-3's `sqrt(1 + ln(scale) / ln(original))`).
pub(crate) fn longrope_attention_factor(scale: f32, original: u32) -> f32 {
    if scale <= 1.0 {
        1.0
    } else {
        (1.0 + scale.ln() / (original as f32).ln()).sqrt()
    }
}

/// Gemma 2/3's sliding-window layers: every `pattern`-th layer (1-based) is global, the others
/// see `window` keys (Gemma 2: pattern 2, the even layers slide; Gemma 3: pattern 6; 0: every
/// layer slides, as in llama.cpp).
pub(crate) fn alternating_layers(
    layers: usize,
    pattern: usize,
    window: Option<usize>,
    local_rope: bool,
) -> Vec<LayerAttention> {
    (0..layers)
        .map(|i| {
            let sliding = window.is_some() && (pattern == 0 || (i + 1) % pattern != 0);
            LayerAttention {
                window: window.filter(|_| sliding),
                local_rope: local_rope && sliding,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_patterns_put_the_global_layers_where_their_papers_do() {
        let g2 = alternating_layers(4, 2, Some(8), false);
        assert_eq!(
            g2.iter().map(|l| l.window).collect::<Vec<_>>(),
            [Some(8), None, Some(8), None]
        );
        let g3 = alternating_layers(12, 6, Some(8), true);
        let global: Vec<usize> = (0..12).filter(|&i| g3[i].window.is_none()).collect();
        assert_eq!(global, [5, 11]);
        assert!(g3[0].local_rope && !g3[5].local_rope);
    }

    #[test]
    fn longrope_takes_the_long_factors_beyond_the_original_context() {
        let scaling = RopeScaling::LongRope {
            short: vec![1.0, 2.0],
            long: vec![4.0, 8.0],
            original_max_position_embeddings: 16,
            attention_factor: 1.5,
        };
        let (short, f) = inv_freqs(100.0, 4, &scaling, 16);
        assert_eq!(f, 1.5);
        assert_eq!(short, [1.0, 0.1 / 2.0]);
        let (long, _) = inv_freqs(100.0, 4, &scaling, 17);
        assert_eq!(long, [0.25, 0.1 / 8.0]);
        assert!((longrope_attention_factor(32.0, 4096) - 1.1902).abs() < 1e-3);
    }
}
