//! Fixtures: a tiny random-weight Llama written to a temporary directory, and the SmolLM2 GGUF.
//!
//! The tiny model is a complete Hugging Face directory (`config.json`, `tokenizer.json`,
//! `tokenizer_config.json`, `model.safetensors`) made in code with a fixed seed, so the tests
//! need nothing fetched and every run sees the same weights.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use candle_core::{DType, Device, Tensor};
use llm_pipeline_candle::CandleBackend;
use llm_pipeline_core::backend::{Backend, BatchEntry, Logits};
use llm_pipeline_core::config::PipelineConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// The tiny model's sizes.
pub const HIDDEN: usize = 64;
pub const INTERMEDIATE: usize = 128;
pub const LAYERS: usize = 3;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;

/// The tiny model's directory, written once per test process.
pub static TINY: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("llmp-candle-tiny-{}", std::process::id()));
    write_tiny_llama(&dir, 7).expect("the tiny model is written");
    dir
});

/// The byte-level tokenizer: 256 byte tokens, then `<s>`, `</s>`, `<|im_start|>`, `<|im_end|>`.
fn tokenizer() -> Tokenizer {
    let mut bytes: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    bytes.sort_unstable();
    let vocab: tokenizers::models::bpe::Vocab = bytes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .expect("a byte BPE");
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.add_special_tokens([
        AddedToken::from("<s>", true),
        AddedToken::from("</s>", true),
        AddedToken::from("<|im_start|>", true),
        AddedToken::from("<|im_end|>", true),
    ])
    .expect("special tokens are added");
    tok
}

/// The vocabulary: 256 bytes and 4 special tokens.
pub const VOCAB: usize = 260;

/// Writes a random-weight Llama with `seed` into `dir` as a Hugging Face directory.
pub fn write_tiny_llama(dir: &Path, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    tokenizer()
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = serde_json::json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let tokenizer_config = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "add_bos_token": false,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )?;

    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut random = |name: String, shape: (usize, usize), scale: f32| -> anyhow::Result<()> {
        let data: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| rng.random_range(-scale..scale))
            .collect();
        tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        Ok(())
    };
    let ones = || Tensor::ones(HIDDEN, DType::F32, &Device::Cpu);
    let mut norms: Vec<(String, Tensor)> = vec![("model.norm.weight".into(), ones()?)];
    // Uniform(-s, s) has std s/√3: scale so each projection keeps activations near unit size,
    // and the embeddings and head large enough that the logits are far from uniform.
    let w = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    random("model.embed_tokens.weight".into(), (VOCAB, HIDDEN), 1.0)?;
    random("lm_head.weight".into(), (VOCAB, HIDDEN), 3.0 * w(HIDDEN))?;
    let kv = KV_HEADS * HEAD_DIM;
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        random(
            format!("{p}.self_attn.q_proj.weight"),
            (HIDDEN, HIDDEN),
            w(HIDDEN),
        )?;
        random(
            format!("{p}.self_attn.k_proj.weight"),
            (kv, HIDDEN),
            w(HIDDEN),
        )?;
        random(
            format!("{p}.self_attn.v_proj.weight"),
            (kv, HIDDEN),
            w(HIDDEN),
        )?;
        random(
            format!("{p}.self_attn.o_proj.weight"),
            (HIDDEN, HIDDEN),
            w(HIDDEN),
        )?;
        random(
            format!("{p}.mlp.gate_proj.weight"),
            (INTERMEDIATE, HIDDEN),
            w(HIDDEN),
        )?;
        random(
            format!("{p}.mlp.up_proj.weight"),
            (INTERMEDIATE, HIDDEN),
            w(HIDDEN),
        )?;
        random(
            format!("{p}.mlp.down_proj.weight"),
            (HIDDEN, INTERMEDIATE),
            w(INTERMEDIATE),
        )?;
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            norms.push((format!("{p}.{norm}.weight"), ones()?));
        }
    }
    tensors.extend(norms);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}

/// A CPU configuration over `model`: 2 threads, 8 sequences of 512 tokens.
pub fn config(model: &Path) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(model.to_string_lossy())
        .with_max_model_len(512)
        .with_max_num_seqs(8)
        .with_max_num_batched_tokens(512)
        .with_threads(2)
        .with_cpu_kv_cache_bytes(64 << 20)
        .validated()
        .expect("a valid test configuration")
}

/// The tiny model's backend.
pub fn tiny_backend(config: &PipelineConfig) -> CandleBackend {
    CandleBackend::load(&TINY, config).expect("the tiny model loads")
}

/// Runs one step and returns its logits rows.
pub fn step(backend: &mut CandleBackend, batch: &[BatchEntry<'_>]) -> Vec<Vec<f32>> {
    let mut logits = Logits::new(backend.info().vocab_size);
    backend.forward(batch, &mut logits).expect("the step runs");
    (0..logits.rows()).map(|i| logits.row(i).to_vec()).collect()
}

/// The largest absolute difference between two rows.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The index of the largest value.
pub fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Greedy decoding of `steps` tokens after `prompt` on `backend` as sequence `seq`.
pub fn greedy(backend: &mut CandleBackend, seq: u64, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut logits = step(
        backend,
        &[BatchEntry {
            seq,
            start: 0,
            tokens: prompt,
            logits: 1,
        }],
    );
    for pos in (prompt.len() as u32..).take(steps) {
        let next = argmax(&logits[0]);
        out.push(next);
        logits = step(
            backend,
            &[BatchEntry {
                seq,
                start: pos,
                tokens: &[next],
                logits: 1,
            }],
        );
    }
    backend.release(seq);
    out
}
