//! The decoder's numbers from GGUF metadata, under llama.cpp's keys and conventions.
//!
//! Some facts are not in the file and llama.cpp fixes them per architecture; they are fixed
//! the same way here: Gemma 2 slides on every other layer (over 4096 keys unless the file says)
//! and Gemma 3 on five of six, Gemma 3's sliding layers use a RoPE base of 10 000 unless the
//! file says, Gemma 2/3 27B scale attention by `1/√(hidden/heads)` where the smaller models use
//! `1/√head_dim`, and Phi-3's sliding window is not applied (llama.cpp disables it for files
//! whose converter wrote it wrongly).

use llm_pipeline_core::gguf::GgufMetadata;

use super::{
    Activation, Family, LayerAttention, ModelConfig, RopeScaling, RopeStyle, alternating_layers,
    longrope_attention_factor,
};
use crate::CandleError;

/// The RoPE factor tensors a GGUF file may carry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufRopeFactors {
    /// `rope_freqs.weight` (Llama 3.1 converted by llama.cpp).
    pub freqs: Option<Vec<f32>>,
    /// `rope_factors_long.weight` (Phi-3 LongRoPE).
    pub long: Option<Vec<f32>>,
    /// `rope_factors_short.weight` (Phi-3 LongRoPE).
    pub short: Option<Vec<f32>>,
}

/// llama.cpp architectures this crate runs: their family and RoPE layout.
const ARCHITECTURES: [(&str, Family, RopeStyle); 7] = [
    ("llama", Family::Llama, RopeStyle::Interleaved),
    ("qwen2", Family::Llama, RopeStyle::Halves),
    ("qwen3", Family::Qwen3, RopeStyle::Halves),
    ("phi3", Family::Phi3, RopeStyle::Halves),
    ("gemma", Family::Gemma, RopeStyle::Halves),
    ("gemma2", Family::Gemma2, RopeStyle::Halves),
    ("gemma3", Family::Gemma3, RopeStyle::Halves),
];

/// Layer counts of Gemma 2 27B and Gemma 3 27B, the sizes llama.cpp scales attention by
/// `hidden / heads`.
const GEMMA_27B_LAYERS: [(Family, usize); 2] = [(Family::Gemma2, 46), (Family::Gemma3, 62)];

pub(super) fn parse(
    meta: &GgufMetadata,
    vocab_size: usize,
    factors: GgufRopeFactors,
) -> Result<ModelConfig, CandleError> {
    let arch = meta.architecture()?.to_owned();
    let Some(&(_, family, rope_style)) = ARCHITECTURES.iter().find(|(a, ..)| *a == arch) else {
        let known: Vec<&str> = ARCHITECTURES.iter().map(|(a, ..)| *a).collect();
        return Err(CandleError::Unsupported {
            setting: "MODEL_ID",
            message: format!(
                "GGUF architecture `{arch}` is not one the candle backend runs ({known:?})"
            ),
        });
    };
    let required = |suffix: &str| -> Result<usize, CandleError> {
        meta.arch_u32(suffix)?
            .map(|v| v as usize)
            .ok_or_else(|| CandleError::from(meta.error(format!("{arch}.{suffix} is missing"))))
    };
    let f32_key = |suffix: &str| meta.get_f32(&format!("{arch}.{suffix}"));
    let hidden_size = required("embedding_length")?;
    let num_layers = required("block_count")?;
    let num_heads = required("attention.head_count")?;
    let num_kv_heads = meta
        .arch_u32("attention.head_count_kv")?
        .map_or(num_heads, |v| v as usize);
    let head_dim = meta
        .arch_u32("attention.key_length")?
        .map_or(hidden_size / num_heads.max(1), |v| v as usize);
    let context = meta.arch_u32("context_length")?.unwrap_or(4096);
    let rope_scaling = match (factors, meta.get_str(&format!("{arch}.rope.scaling.type"))?) {
        (
            GgufRopeFactors {
                long: Some(long),
                short: Some(short),
                ..
            },
            _,
        ) => {
            let original = meta
                .arch_u32("rope.scaling.original_context_length")?
                .unwrap_or(context);
            let attention_factor = match f32_key("rope.scaling.attn_factor")? {
                Some(f) => f,
                None => longrope_attention_factor(context as f32 / original as f32, original),
            };
            RopeScaling::LongRope {
                short,
                long,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        (GgufRopeFactors { freqs: Some(f), .. }, _) => RopeScaling::Factors(f),
        (_, Some("linear")) => RopeScaling::Linear {
            factor: f32_key("rope.scaling.factor")?.unwrap_or(1.0),
        },
        (_, None | Some("none")) => RopeScaling::None,
        (_, Some(other)) => {
            return Err(CandleError::Unsupported {
                setting: "MODEL_ID",
                message: format!("RoPE scaling `{other}` is not supported"),
            });
        }
    };
    let window = meta
        .arch_u32("attention.sliding_window")?
        .map(|w| w as usize)
        .filter(|&w| w > 0);
    // The pattern key may also be a per-layer array, which this reader leaves to the default.
    let pattern = |default: usize| {
        meta.arch_u32("attention.sliding_window_pattern")
            .ok()
            .flatten()
            .map_or(default, |p| p as usize)
    };
    let local_theta = f32_key("rope.freq_base_swa")?;
    let layers = match family {
        Family::Gemma2 => alternating_layers(
            num_layers,
            pattern(2),
            window.or(Some(4096)),
            local_theta.is_some(),
        ),
        Family::Gemma3 => alternating_layers(num_layers, pattern(6), window, true),
        Family::Phi3 => vec![LayerAttention::default(); num_layers],
        // llama.cpp runs Mistral's GGUF (architecture `llama`) without a window; so do we,
        // since the file does not say it has one.
        _ => vec![
            LayerAttention {
                window,
                local_rope: false
            };
            num_layers
        ],
    };
    let gemma = family.unit_offset_norms();
    let big = GEMMA_27B_LAYERS.contains(&(family, num_layers));
    let attn_scale = if big {
        (hidden_size as f64 / num_heads as f64).powf(-0.5)
    } else {
        (head_dim as f64).powf(-0.5)
    };
    Ok(ModelConfig {
        family,
        hidden_size,
        intermediate_size: required("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        rms_norm_eps: f64::from(f32_key("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5)),
        rope_theta: f32_key("rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling,
        local_rope_theta: match family {
            Family::Gemma3 => Some(local_theta.unwrap_or(10_000.0)),
            Family::Gemma2 => local_theta,
            _ => None,
        },
        rope_style,
        max_position_embeddings: context,
        tie_word_embeddings: false,
        stored_dtype: None,
        activation: if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        embed_scale: gemma.then(|| (hidden_size as f32).sqrt()),
        attn_scale,
        attn_softcap: f32_key("attn_logit_softcapping")?.filter(|_| gemma),
        final_softcap: f32_key("final_logit_softcapping")?.filter(|_| gemma),
        layers,
    })
}
