//! `config.json` as `transformers` writes it for the supported model types.

use candle_core::DType;
use serde::Deserialize;
use serde_json::Value;

use super::{
    Activation, Family, LayerAttention, ModelConfig, RopeScaling, RopeStyle, alternating_layers,
    longrope_attention_factor,
};
use crate::CandleError;

/// `model_type`s this crate runs, and their family.
const MODEL_TYPES: [(&str, Family); 8] = [
    ("llama", Family::Llama),
    ("mistral", Family::Llama),
    ("qwen2", Family::Llama),
    ("qwen3", Family::Qwen3),
    ("phi3", Family::Phi3),
    ("gemma", Family::Gemma),
    ("gemma2", Family::Gemma2),
    ("gemma3_text", Family::Gemma3),
];

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
    rope_scaling: Option<Value>,
    #[serde(default)]
    rope_local_base_freq: Option<f32>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: u32,
    #[serde(default)]
    original_max_position_embeddings: Option<u32>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    torch_dtype: Option<String>,
    /// `torch_dtype`'s name in recent `transformers`.
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    hidden_activation: Option<String>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    sliding_window_pattern: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    attn_logit_softcapping: Option<f32>,
    #[serde(default)]
    final_logit_softcapping: Option<f32>,
    #[serde(default)]
    partial_rotary_factor: Option<f32>,
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

fn unsupported(message: String) -> CandleError {
    CandleError::Unsupported {
        setting: "MODEL_ID",
        message,
    }
}

pub(super) fn parse(text: &str) -> Result<ModelConfig, CandleError> {
    let hf: HfConfig = serde_json::from_str(text).map_err(|source| CandleError::Json {
        what: "config.json",
        source,
    })?;
    let family = match hf.model_type.as_deref() {
        None => Family::Llama,
        Some(t) => MODEL_TYPES
            .iter()
            .find(|(name, _)| *name == t)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let known: Vec<&str> = MODEL_TYPES.iter().map(|(n, _)| *n).collect();
                unsupported(format!(
                    "model_type `{t}` is not one the candle backend runs ({known:?}){}",
                    if t == "gemma3" {
                        "; Gemma 3 checkpoints with a vision tower are not served, their \
                         text-only ones (gemma3_text) are"
                    } else {
                        ""
                    }
                ))
            })?,
    };
    if let Some(p) = hf.partial_rotary_factor
        && p != 1.0
    {
        return Err(unsupported(format!(
            "partial_rotary_factor {p} (RoPE on part of each head) is not supported"
        )));
    }
    let head_dim = hf
        .head_dim
        .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
    let rope_scaling = match &hf.rope_scaling {
        None | Some(Value::Null) => RopeScaling::None,
        Some(v) => rope_scaling(v, &hf)?,
    };
    let gemma = family.unit_offset_norms();
    let activation = if gemma {
        // Gemma's configs say `gelu` but every implementation runs the tanh approximation.
        Activation::GeluTanh
    } else {
        match hf.hidden_activation.as_deref().or(hf.hidden_act.as_deref()) {
            None | Some("silu" | "swish") => Activation::Silu,
            Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") => Activation::GeluTanh,
            Some("gelu") => Activation::Gelu,
            Some(other) => return Err(unsupported(format!("activation `{other}`"))),
        }
    };
    let layers = layers(&hf, family)?;
    let attn_scale = match hf.query_pre_attn_scalar {
        Some(s) if gemma => s.powf(-0.5),
        _ => (head_dim as f64).powf(-0.5),
    };
    let dtype = hf.dtype.as_deref().or(hf.torch_dtype.as_deref());
    Ok(ModelConfig {
        family,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_layers: hf.num_hidden_layers,
        num_heads: hf.num_attention_heads,
        num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        head_dim,
        vocab_size: hf.vocab_size,
        rms_norm_eps: hf.rms_norm_eps,
        rope_theta: hf.rope_theta,
        rope_scaling,
        local_rope_theta: (family == Family::Gemma3)
            .then(|| hf.rope_local_base_freq.unwrap_or(10_000.0)),
        rope_style: RopeStyle::Halves,
        max_position_embeddings: hf.max_position_embeddings,
        // Gemma ties its head to the embedding unless told otherwise; the others do not.
        tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(gemma),
        stored_dtype: match dtype {
            Some("float16") => Some(DType::F16),
            Some("bfloat16") => Some(DType::BF16),
            Some("float32") => Some(DType::F32),
            _ => None,
        },
        activation,
        embed_scale: gemma.then(|| (hf.hidden_size as f32).sqrt()),
        attn_scale,
        attn_softcap: hf.attn_logit_softcapping.filter(|_| gemma),
        final_softcap: hf.final_logit_softcapping.filter(|_| gemma),
        layers,
    })
}

/// Each layer's attention: `layer_types` when the config lists them, else the family's rule.
fn layers(hf: &HfConfig, family: Family) -> Result<Vec<LayerAttention>, CandleError> {
    let n = hf.num_hidden_layers;
    let local_rope = family == Family::Gemma3;
    if let Some(types) = &hf.layer_types {
        if types.len() != n {
            return Err(unsupported(format!(
                "layer_types lists {} layers for num_hidden_layers {n}",
                types.len()
            )));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(LayerAttention::default()),
                "sliding_attention" => Ok(LayerAttention {
                    window: Some(hf.sliding_window.unwrap_or(4096)),
                    local_rope,
                }),
                other => Err(unsupported(format!("layer type `{other}`"))),
            })
            .collect();
    }
    let all = |window: Option<usize>| {
        vec![
            LayerAttention {
                window,
                local_rope: false
            };
            n
        ]
    };
    Ok(match family {
        Family::Gemma2 => alternating_layers(n, 2, Some(hf.sliding_window.unwrap_or(4096)), false),
        Family::Gemma3 => alternating_layers(
            n,
            hf.sliding_window_pattern.unwrap_or(6),
            Some(hf.sliding_window.unwrap_or(4096)),
            true,
        ),
        Family::Gemma => all(None),
        // Qwen's configs carry a window that applies only with `use_sliding_window`, to the
        // layers from `max_window_layers` on.
        Family::Llama | Family::Qwen3 if hf.model_type.as_deref() != Some("mistral") => {
            match hf
                .sliding_window
                .filter(|_| hf.use_sliding_window == Some(true))
            {
                Some(w) => (0..n)
                    .map(|i| LayerAttention {
                        window: (i >= hf.max_window_layers.unwrap_or(0)).then_some(w),
                        local_rope: false,
                    })
                    .collect(),
                None => all(None),
            }
        }
        // Mistral and Phi-3: the window, when set, on every layer.
        _ => all(hf.sliding_window),
    })
}

fn rope_scaling(v: &Value, hf: &HfConfig) -> Result<RopeScaling, CandleError> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str, default: f32| {
        v.get(key)
            .and_then(Value::as_f64)
            .map_or(default, |x| x as f32)
    };
    let factors = |key: &str| -> Result<Vec<f32>, CandleError> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .map(|x| x as f32)
                    .collect()
            })
            .ok_or_else(|| unsupported(format!("rope_scaling `{kind}` without `{key}`")))
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
        "longrope" | "su" => {
            let original = hf
                .original_max_position_embeddings
                .or_else(|| {
                    v.get("original_max_position_embeddings")
                        .and_then(Value::as_u64)
                        .map(|x| x as u32)
                })
                .unwrap_or(hf.max_position_embeddings);
            let scale = hf.max_position_embeddings as f32 / original as f32;
            let attention_factor = v
                .get("attention_factor")
                .and_then(Value::as_f64)
                .map_or_else(|| longrope_attention_factor(scale, original), |x| x as f32);
            Ok(RopeScaling::LongRope {
                short: factors("short_factor")?,
                long: factors("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            })
        }
        other => Err(unsupported(format!(
            "RoPE scaling `{other}` is not supported by the candle backend"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_llama3_scaling() {
        let c = parse(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
                "vocab_size":100,"rope_theta":500000.0,
                "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
                "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_style, RopeStyle::Halves);
        let (inv, factor) = c.inv_freqs(512);
        assert_eq!((inv.len(), factor), (8, 1.0));
        assert_eq!(inv[0], 1.0, "the highest frequency is kept");
        assert!(
            inv[7] < 1.0 / 500_000f32.powf(14.0 / 16.0),
            "low frequencies are scaled"
        );
        assert!(c.layers.iter().all(|l| l.window.is_none()));
    }

    #[test]
    fn unknown_model_types_are_refused() {
        let err = parse(
            r#"{"model_type":"gpt2","hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("gpt2"), "{err}");
    }

    #[test]
    fn windows_follow_each_family() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":4,
                      "num_attention_heads":4,"vocab_size":100,"sliding_window":32"#;
        let windows = |extra: &str| -> Vec<Option<usize>> {
            parse(&format!("{{{base},{extra}}}"))
                .unwrap()
                .layers
                .iter()
                .map(|l| l.window)
                .collect()
        };
        assert_eq!(windows(r#""model_type":"mistral""#), [Some(32); 4]);
        assert_eq!(windows(r#""model_type":"qwen2""#), [None; 4]);
        assert_eq!(
            windows(r#""model_type":"qwen2","use_sliding_window":true,"max_window_layers":2"#),
            [None, None, Some(32), Some(32)]
        );
        assert_eq!(
            windows(r#""model_type":"gemma2""#),
            [Some(32), None, Some(32), None]
        );
        assert_eq!(
            windows(
                r#""model_type":"gemma3_text","layer_types":["full_attention",
                "sliding_attention","full_attention","sliding_attention"]"#
            ),
            [None, Some(32), None, Some(32)]
        );
    }

    #[test]
    fn gemma_switches() {
        let c = parse(
            r#"{"model_type":"gemma3_text","hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":6,"num_attention_heads":4,"head_dim":32,"vocab_size":100,
                "query_pre_attn_scalar":64,"rope_theta":1000000.0,"sliding_window":8,
                "final_logit_softcapping":null}"#,
        )
        .unwrap();
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.embed_scale, Some(8.0));
        assert_eq!(c.attn_scale, 0.125);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.local_rope_theta, Some(10_000.0));
        assert!(c.layers[0].local_rope && c.layers[5].window.is_none());
        assert!(c.has_local_rope());
    }
}
