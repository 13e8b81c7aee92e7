//! Every architecture the candle backend runs, checked against llama.cpp on a tiny model of it.
//!
//! For each family this module writes a random-weight model (seed fixed) in the layout
//! `transformers` saves: `config.json` with the family's keys, `model.safetensors` (f32),
//! `tokenizer.json` (a byte-level BPE with the family's special tokens) and
//! `tokenizer_config.json` with the family's chat template. It then converts the model to GGUF
//! the way llama.cpp's converter does (tensor names, the Q/K row permutation of the `llama`
//! architecture, Gemma's norm offset folded in, Llama 3's RoPE factors and Phi-3's LongRoPE
//! factors as tensors). candle runs the safetensors; llama.cpp, an implementation we did not
//! write, runs the GGUF.
//!
//! The check: a chat prompt rendered by the fixture's own template and tokenizer, then
//! [`STEPS`] greedy tokens from llama.cpp; candle, fed the same tokens, must pick the same
//! token at every step (or a near-tie) and its logits must be within [`TOLERANCE`] of
//! llama.cpp's, every entry of every row. llama.cpp keeps its KV cache in f16 where candle
//! keeps f32, so the rows differ by rounding (measured up to ~2e-3 here); a wrong norm, RoPE
//! layout, window, soft-cap or scale moves them by tenths or more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llm_pipeline::candle::CandleBackend;
use llm_pipeline::candle::candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use llm_pipeline::candle::candle_core::{Device, Tensor};
use llm_pipeline::core::load::ModelFiles;
use llm_pipeline::core::template::{ChatMessage, KnownTemplate};
use llm_pipeline::llama_cpp::LlamaCppBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::{NEAR_TIE, STEPS, argmax, config, decode, gap, greedy};

/// Largest difference allowed between candle's and llama.cpp's logits.
const TOLERANCE: f32 = 1e-2;

const HIDDEN: usize = 64;
const INTERMEDIATE: usize = 128;
const LAYERS: usize = 6;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const CONTEXT: u32 = 512;

/// One family's tiny model.
struct Arch {
    name: &'static str,
    model_type: &'static str,
    gguf_arch: &'static str,
    head_dim: usize,
    template: KnownTemplate,
    /// Special tokens, after the 256 byte tokens.
    specials: &'static [&'static str],
    bos: Option<&'static str>,
    eos: &'static str,
    /// The family's own `config.json` keys.
    config: Value,
    qkv_bias: bool,
    tied: bool,
}

impl Arch {
    fn gemma(&self) -> bool {
        self.model_type.starts_with("gemma")
    }
    fn sandwich(&self) -> bool {
        matches!(self.model_type, "gemma2" | "gemma3_text")
    }
    fn qk_norm(&self) -> bool {
        matches!(self.model_type, "qwen3" | "gemma3_text")
    }
    fn fused(&self) -> bool {
        self.model_type == "phi3"
    }
    fn vocab(&self) -> usize {
        256 + self.specials.len()
    }
}

const LLAMA3_SPECIALS: &[&str] = &[
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];
const QWEN_SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const GEMMA_SPECIALS: &[&str] = &[
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
];

fn arch(name: &str) -> Arch {
    match name {
        // Llama 3.1/3.2: GQA, RoPE with llama3 scaling (most frequencies scaled at this size).
        "llama3" => Arch {
            name: "llama3",
            model_type: "llama",
            gguf_arch: "llama",
            head_dim: 16,
            template: KnownTemplate::Llama3,
            specials: LLAMA3_SPECIALS,
            bos: Some("<|begin_of_text|>"),
            eos: "<|eot_id|>",
            config: json!({
                "rope_theta": 500000.0,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            }),
            qkv_bias: false,
            tied: false,
        },
        // Mistral: a window wider than the test's sequences (llama.cpp runs Mistral without
        // one; the window itself is checked through Gemma 2 and 3, which share its code).
        "mistral" => Arch {
            name: "mistral",
            model_type: "mistral",
            gguf_arch: "llama",
            head_dim: 16,
            template: KnownTemplate::Mistral,
            specials: &["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
            bos: Some("<s>"),
            eos: "</s>",
            config: json!({"sliding_window": 4096, "rope_theta": 10000.0}),
            qkv_bias: false,
            tied: false,
        },
        // Qwen2/2.5: attention biases, tied embeddings.
        "qwen2" => Arch {
            name: "qwen2",
            model_type: "qwen2",
            gguf_arch: "qwen2",
            head_dim: 16,
            template: KnownTemplate::ChatMl,
            specials: QWEN_SPECIALS,
            bos: None,
            eos: "<|im_end|>",
            config: json!({"rope_theta": 1000000.0, "sliding_window": 32768,
                           "use_sliding_window": false, "max_window_layers": 21}),
            qkv_bias: true,
            tied: true,
        },
        // Qwen3: per-head q/k norms, a head wider than hidden / heads.
        "qwen3" => Arch {
            name: "qwen3",
            model_type: "qwen3",
            gguf_arch: "qwen3",
            head_dim: 32,
            template: KnownTemplate::ChatMl,
            specials: QWEN_SPECIALS,
            bos: None,
            eos: "<|im_end|>",
            config: json!({"rope_theta": 1000000.0, "use_sliding_window": false}),
            qkv_bias: false,
            tied: true,
        },
        // Phi-3.5: fused QKV and gate-up, LongRoPE (short factors at this context).
        "phi3" => Arch {
            name: "phi3",
            model_type: "phi3",
            gguf_arch: "phi3",
            head_dim: 16,
            template: KnownTemplate::Phi3,
            specials: &[
                "<unk>",
                "<s>",
                "</s>",
                "<|endoftext|>",
                "<|system|>",
                "<|user|>",
                "<|assistant|>",
                "<|end|>",
            ],
            bos: Some("<s>"),
            eos: "<|end|>",
            config: json!({
                "rope_theta": 10000.0,
                "max_position_embeddings": 131072,
                "original_max_position_embeddings": 4096,
                "rope_scaling": {"type": "longrope",
                    "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
                    "long_factor": [1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 40.0]},
            }),
            qkv_bias: false,
            tied: false,
        },
        // Gemma 2: four norms per layer, soft-capped attention and logits (caps small enough to
        // bite), every other layer sliding over 8 keys.
        "gemma2" => Arch {
            name: "gemma2",
            model_type: "gemma2",
            gguf_arch: "gemma2",
            head_dim: 16,
            template: KnownTemplate::Gemma,
            specials: GEMMA_SPECIALS,
            bos: Some("<bos>"),
            eos: "<end_of_turn>",
            config: json!({"sliding_window": 8, "query_pre_attn_scalar": 16,
                           "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0,
                           "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 10000.0}),
            qkv_bias: false,
            tied: true,
        },
        // Gemma 3: Gemma 2's norms plus q/k norms, five sliding layers of six with their own
        // RoPE base.
        "gemma3" => Arch {
            name: "gemma3",
            model_type: "gemma3_text",
            gguf_arch: "gemma3",
            head_dim: 32,
            template: KnownTemplate::Gemma,
            specials: GEMMA_SPECIALS,
            bos: Some("<bos>"),
            eos: "<end_of_turn>",
            config: json!({"sliding_window": 8, "sliding_window_pattern": 6,
                           "query_pre_attn_scalar": 32, "rope_theta": 1000000.0,
                           "rope_local_base_freq": 10000.0, "final_logit_softcapping": null,
                           "attn_logit_softcapping": null,
                           "hidden_activation": "gelu_pytorch_tanh"}),
            qkv_bias: false,
            tied: true,
        },
        other => panic!("no fixture named {other}"),
    }
}

/// GPT-2's byte-to-character map: byte `b` is token `b`, spelled as this character.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        char::from(b)
    } else {
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).expect("a valid character")
    }
}

/// The model's tensors in Hugging Face's names, shapes and conventions.
fn hf_tensors(a: &Arch, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = HashMap::new();
    let mut random = |name: String, shape: &[usize], centre: f32, scale: f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| centre + rng.random_range(-scale..scale))
            .collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu).expect("a tensor");
        tensors.insert(name, t);
    };
    // Uniform(-s, s) has std s/√3: each projection keeps activations near unit size, the
    // embedding and head make logits far from uniform. Norm weights vary around their
    // identity (1, or 0 for Gemma's offsets) so that a missed offset shows.
    let w = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    let norm_centre = if a.gemma() { 0.0 } else { 1.0 };
    let (h, i, d, v) = (HIDDEN, INTERMEDIATE, a.head_dim, a.vocab());
    let (q, kv) = (HEADS * d, KV_HEADS * d);
    random("model.embed_tokens.weight".into(), &[v, h], 0.0, 1.0);
    if !a.tied {
        random("lm_head.weight".into(), &[v, h], 0.0, 3.0 * w(h));
    }
    random("model.norm.weight".into(), &[h], norm_centre, 0.2);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        if a.fused() {
            random(
                format!("{p}.self_attn.qkv_proj.weight"),
                &[q + 2 * kv, h],
                0.0,
                w(h),
            );
            random(
                format!("{p}.mlp.gate_up_proj.weight"),
                &[2 * i, h],
                0.0,
                w(h),
            );
        } else {
            random(format!("{p}.self_attn.q_proj.weight"), &[q, h], 0.0, w(h));
            random(format!("{p}.self_attn.k_proj.weight"), &[kv, h], 0.0, w(h));
            random(format!("{p}.self_attn.v_proj.weight"), &[kv, h], 0.0, w(h));
            random(format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.0, w(h));
            random(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.0, w(h));
        }
        if a.qkv_bias {
            random(format!("{p}.self_attn.q_proj.bias"), &[q], 0.0, 0.5);
            random(format!("{p}.self_attn.k_proj.bias"), &[kv], 0.0, 0.5);
            random(format!("{p}.self_attn.v_proj.bias"), &[kv], 0.0, 0.5);
        }
        if a.qk_norm() {
            random(
                format!("{p}.self_attn.q_norm.weight"),
                &[d],
                norm_centre,
                0.2,
            );
            random(
                format!("{p}.self_attn.k_norm.weight"),
                &[d],
                norm_centre,
                0.2,
            );
        }
        random(format!("{p}.self_attn.o_proj.weight"), &[h, q], 0.0, w(q));
        random(format!("{p}.mlp.down_proj.weight"), &[h, i], 0.0, w(i));
        let norms: &[&str] = if a.sandwich() {
            &[
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ]
        } else {
            &["input_layernorm", "post_attention_layernorm"]
        };
        for n in norms {
            random(format!("{p}.{n}.weight"), &[h], norm_centre, 0.2);
        }
    }
    tensors
}

/// Writes the Hugging Face directory of `a`.
fn write_hf(a: &Arch, dir: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).expect("the fixture directory");
    let mut config = json!({
        "model_type": a.model_type,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": a.head_dim,
        "vocab_size": a.vocab(),
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": CONTEXT,
        "tie_word_embeddings": a.tied,
        "torch_dtype": "float32",
    });
    for (k, v) in a.config.as_object().expect("an object") {
        config[k] = v.clone();
    }
    write_json(&dir.join("config.json"), &config);

    let vocab: serde_json::Map<String, Value> = (0..=255u8)
        .map(|b| (byte_char(b).to_string(), json!(b)))
        .collect();
    let added: Vec<Value> = a
        .specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": 256 + i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                            "trim_offsets": true, "use_regex": true});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []},
    });
    write_json(&dir.join("tokenizer.json"), &tokenizer);
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"bos_token": a.bos, "eos_token": a.eos, "add_bos_token": false,
                "chat_template": a.template.source()}),
    );
    llm_pipeline::candle::candle_core::safetensors::save(tensors, dir.join("model.safetensors"))
        .expect("the safetensors file");
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).expect("a JSON file");
}

/// llama.cpp's name for a Hugging Face tensor.
fn gguf_name(a: &Arch, hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, rest) = rest.split_once('.').expect("a layer index");
    let (module, suffix) = rest.rsplit_once('.').expect("weight or bias");
    let name = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if a.sandwich() => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{name}.{suffix}")
}

/// llama.cpp's converter's permutation of Q/K rows for the `llama` architecture's interleaved
/// RoPE: each head's two halves become alternating pairs.
fn permute(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    let d = rows / heads;
    t.reshape((heads, 2, d / 2, cols))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape((rows, cols)))
        .expect("a permuted tensor")
}

/// Writes the GGUF conversion of `a` at `path`.
fn write_gguf(a: &Arch, path: &Path, tensors: &HashMap<String, Tensor>) {
    let arch = a.gguf_arch;
    let key = |k: &str| format!("{arch}.{k}");
    let u32v = gguf_file::Value::U32;
    let f32v = gguf_file::Value::F32;
    let mut meta: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        ),
        (
            "general.name".into(),
            gguf_file::Value::String(a.name.into()),
        ),
        (key("context_length"), u32v(CONTEXT)),
        (key("embedding_length"), u32v(HIDDEN as u32)),
        (key("block_count"), u32v(LAYERS as u32)),
        (key("feed_forward_length"), u32v(INTERMEDIATE as u32)),
        (key("attention.head_count"), u32v(HEADS as u32)),
        (key("attention.head_count_kv"), u32v(KV_HEADS as u32)),
        (key("attention.key_length"), u32v(a.head_dim as u32)),
        (key("attention.value_length"), u32v(a.head_dim as u32)),
        (key("rope.dimension_count"), u32v(a.head_dim as u32)),
        (key("attention.layer_norm_rms_epsilon"), f32v(1e-6)),
    ];
    let c = &a.config;
    let num = |k: &str| c.get(k).and_then(Value::as_f64);
    meta.push((
        key("rope.freq_base"),
        f32v(num("rope_theta").unwrap() as f32),
    ));
    for (hf, gguf) in [
        ("attn_logit_softcapping", "attn_logit_softcapping"),
        ("final_logit_softcapping", "final_logit_softcapping"),
    ] {
        if let Some(v) = num(hf) {
            meta.push((key(gguf), f32v(v as f32)));
        }
    }
    if a.gemma()
        && let Some(w) = num("sliding_window")
    {
        meta.push((key("attention.sliding_window"), u32v(w as u32)));
    }
    let mut extra: Vec<(String, Tensor)> = Vec::new();
    let vector = |v: Vec<f32>| {
        let n = v.len();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    };
    if let Some(s) = c.get("rope_scaling") {
        let f = |k: &str| s[k].as_f64().unwrap() as f32;
        let list = |k: &str| -> Vec<f32> {
            s[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        match s.get("rope_type").or(s.get("type")).and_then(Value::as_str) {
            Some("llama3") => {
                // As llama.cpp's converter: the scaling as per-frequency factors.
                let (factor, low, high) =
                    (f("factor"), f("low_freq_factor"), f("high_freq_factor"));
                let old = f("original_max_position_embeddings");
                let theta = num("rope_theta").unwrap() as f32;
                let factors = (0..a.head_dim / 2)
                    .map(|i| {
                        let freq = 1.0 / theta.powf(2.0 * i as f32 / a.head_dim as f32);
                        let wavelen = 2.0 * std::f32::consts::PI / freq;
                        if wavelen < old / high {
                            1.0
                        } else if wavelen > old / low {
                            factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            1.0 / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect();
                extra.push(("rope_freqs.weight".into(), vector(factors)));
            }
            Some("longrope") => {
                let original = num("original_max_position_embeddings").unwrap() as f32;
                let scale = num("max_position_embeddings").unwrap() as f32 / original;
                let attn = (1.0 + scale.ln() / original.ln()).sqrt();
                meta[2] = (key("context_length"), u32v(scale as u32 * original as u32));
                meta.push((
                    key("rope.scaling.original_context_length"),
                    u32v(original as u32),
                ));
                meta.push((key("rope.scaling.attn_factor"), f32v(attn)));
                extra.push((
                    "rope_factors_long.weight".into(),
                    vector(list("long_factor")),
                ));
                extra.push((
                    "rope_factors_short.weight".into(),
                    vector(list("short_factor")),
                ));
            }
            other => panic!("no conversion for RoPE scaling {other:?}"),
        }
    }
    // The vocabulary: GPT-2 byte tokens, then the specials as control tokens.
    let mut tokens: Vec<gguf_file::Value> = (0..=255u8)
        .map(|b| gguf_file::Value::String(byte_char(b).to_string()))
        .collect();
    tokens.extend(
        a.specials
            .iter()
            .map(|t| gguf_file::Value::String((*t).into())),
    );
    let types: Vec<gguf_file::Value> = (0..a.vocab())
        .map(|i| gguf_file::Value::I32(if i < 256 { 1 } else { 3 }))
        .collect();
    let id = |t: &str| 256 + a.specials.iter().position(|s| *s == t).unwrap() as u32;
    meta.extend([
        (
            "tokenizer.ggml.model".into(),
            gguf_file::Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            gguf_file::Value::Array(tokens),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            gguf_file::Value::Array(types),
        ),
        (
            "tokenizer.ggml.merges".into(),
            gguf_file::Value::Array(vec![gguf_file::Value::String("Ġ Ġ".into())]),
        ),
        ("tokenizer.ggml.eos_token_id".into(), u32v(id(a.eos))),
        (
            "tokenizer.ggml.add_bos_token".into(),
            gguf_file::Value::Bool(false),
        ),
    ]);
    if let Some(bos) = a.bos {
        meta.push(("tokenizer.ggml.bos_token_id".into(), u32v(id(bos))));
    }

    let mut converted: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for hf in names {
        let mut t = tensors[hf].clone();
        if a.gguf_arch == "llama" && hf.ends_with("q_proj.weight") {
            t = permute(&t, HEADS);
        } else if a.gguf_arch == "llama" && hf.ends_with("k_proj.weight") {
            t = permute(&t, KV_HEADS);
        }
        if a.gemma() && hf.ends_with("norm.weight") {
            t = (t + 1.0).unwrap();
        }
        let q = QTensor::quantize(&t, GgmlDType::F32).expect("an f32 GGUF tensor");
        converted.push((gguf_name(a, hf), q));
    }
    for (name, t) in extra {
        converted.push((name, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let meta_refs: Vec<(&str, &gguf_file::Value)> =
        meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        converted.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).expect("the GGUF file");
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).expect("the GGUF is written");
}

/// The families of the fixtures.
pub(crate) const NAMES: [&str; 7] = [
    "llama3", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3",
];

/// The family's model as a Hugging Face directory, apart from the other tests' copies.
pub(crate) fn model_dir(name: &str) -> PathBuf {
    fixture_in(name, "spec").1
}

/// Writes both forms of the family's model; returns the directory and the GGUF path.
fn fixture(name: &str) -> (Arch, PathBuf, PathBuf) {
    fixture_in(name, "arch")
}

/// As [`fixture`], in a scratch directory of its own for each `use_`.
fn fixture_in(name: &str, use_: &str) -> (Arch, PathBuf, PathBuf) {
    let a = arch(name);
    let root = llm_pipeline::core::testing::scratch_dir(&format!("{use_}-{name}"));
    let dir = root.join(name);
    let gguf = root.join(format!("{name}.gguf"));
    let tensors = hf_tensors(&a, 11);
    write_hf(&a, &dir, &tensors);
    write_gguf(&a, &gguf, &tensors);
    (a, dir, gguf)
}

/// The prompt as a user of the model would send it, through the fixture's own files.
fn prompt(a: &Arch, dir: &Path) -> Vec<u32> {
    let files = ModelFiles::at(dir).expect("the fixture is a model directory");
    let tokenizer = files.tokenizer().expect("the fixture's tokenizer loads");
    let template = files
        .chat_template(&tokenizer, None)
        .expect("the fixture's template compiles")
        .expect("the fixture has a template");
    let mut messages = vec![ChatMessage {
        role: "user",
        content: "Name three colours of the rainbow, please.",
    }];
    if a.template != KnownTemplate::Mistral {
        messages.insert(
            0,
            ChatMessage {
                role: "system",
                content: "You are terse.",
            },
        );
    }
    let text = template.render(&messages).expect("the template renders");
    let ids = tokenizer.encode_prompt(&text).expect("the prompt encodes");
    assert!(ids.len() > 16, "a prompt longer than the windows: {ids:?}");
    ids
}

fn check(name: &str) {
    let (a, dir, gguf) = fixture(name);
    let ids = prompt(&a, &dir);
    let mut llama = LlamaCppBackend::load(&gguf, &config(&gguf)).expect("llama.cpp loads the GGUF");
    let (want, want_rows) = greedy(&mut llama, &ids);
    let mut candle = CandleBackend::load(&dir, &config(&dir)).expect("candle loads the directory");
    let (_, got_rows) = decode(&mut candle, &ids, want.len(), |step, _| want[step]);
    let mut worst = 0.0f32;
    for (step, (w, g)) in want_rows.iter().zip(&got_rows).enumerate() {
        let diff = w
            .iter()
            .zip(g)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        worst = worst.max(diff);
        let ours = argmax(g);
        assert!(
            ours == want[step] || (gap(g, want[step]) < NEAR_TIE && gap(w, ours) < NEAR_TIE),
            "{name}: at step {step} llama.cpp picks {} and candle {ours} (candle ranks \
             llama.cpp's {:.4} below its top)",
            want[step],
            gap(g, want[step]),
        );
    }
    // The comparison is not vacuous: the logits are far from uniform.
    let row = &want_rows[0];
    let spread =
        row.iter().fold(f32::MIN, |m, x| m.max(*x)) - row.iter().fold(f32::MAX, |m, x| m.min(*x));
    eprintln!(
        "{name}: {STEPS} greedy tokens agree; largest logit difference {worst:.2e} \
         ({:.2}% of the first row's spread {spread:.1})",
        100.0 * worst / spread
    );
    assert!(spread > 1.0, "{name}: logits spread only {spread}");
    assert!(
        worst < TOLERANCE * spread,
        "{name}: candle's logits differ from llama.cpp's by up to {worst} (spread {spread})"
    );
}

#[test]
fn llama3_agrees_with_llama_cpp() {
    check("llama3");
}

#[test]
fn mistral_agrees_with_llama_cpp() {
    check("mistral");
}

#[test]
fn qwen2_agrees_with_llama_cpp() {
    check("qwen2");
}

#[test]
fn qwen3_agrees_with_llama_cpp() {
    check("qwen3");
}

#[test]
fn phi3_agrees_with_llama_cpp() {
    check("phi3");
}

#[test]
fn gemma2_agrees_with_llama_cpp() {
    check("gemma2");
}

#[test]
fn gemma3_agrees_with_llama_cpp() {
    check("gemma3");
}
