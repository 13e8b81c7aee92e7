//! The candle and llama.cpp backends agree on SmolLM2: the first 16 greedy tokens of a set of
//! prompts, on the same GGUF file, the same token ids in and the same argmax out.
//!
//! Both backends run through the core's `Backend` trait, token by token, so the comparison sees
//! the models and nothing else (no sampling, templates or text). Where they part, the test
//! reports the first divergence: the step, both tokens, and the logit gap, i.e. how far the
//! other backend's choice is below its own top logit, for each side. Two different kernels on a
//! 4-bit model can legitimately swap two near-tied tokens, so a divergence where both gaps are
//! tiny is reported as a near-tie rather than failed.

use llm_pipeline::candle::{CandleBackend, GgufKernels, LoadOptions};
use llm_pipeline::core::backend::{Backend, BatchEntry, Logits};
use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::gguf::GgufMetadata;
use llm_pipeline::core::tokenizer::Tokenizer;
use llm_pipeline::llama_cpp::LlamaCppBackend;

#[path = "../support/mod.rs"]
#[allow(
    dead_code,
    reason = "the shared SmolLM2 fixtures; this test builds its own config"
)]
mod support;

const PROMPTS: [&str; 4] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a rainbow is in one sentence.",
];

/// Tokens compared per prompt.
const STEPS: usize = 16;

/// A divergence whose logit gaps are both below this is a near-tie between kernels. The two
/// backends quantize activations differently (llama.cpp to 8 bits per 32-block, candle's exact
/// path not at all), which moves SmolLM2's logits by up to ~1.4 between candle's own kernel
/// choices; 0.5 is the threshold the ONNX Runtime comparison uses too. A wrong model (rotary
/// layout, norm, attention) parts at the first tokens by several logits.
const NEAR_TIE: f32 = 0.5;

fn config() -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(support::smollm2().to_string_lossy())
        .with_max_model_len(512)
        .with_max_num_seqs(1)
        .with_max_num_batched_tokens(512)
        .with_threads(2)
        .with_cpu_kv_cache_bytes(64 << 20)
        .validated()
        .expect("a valid test configuration")
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Greedy decoding of `STEPS` tokens; returns the tokens and each step's logits.
fn greedy<B: Backend>(backend: &mut B, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let vocab = backend.info().vocab_size;
    let mut logits = Logits::new(vocab);
    let (mut tokens, mut rows) = (Vec::new(), Vec::new());
    let mut input = prompt.to_vec();
    let mut start = 0u32;
    for _ in 0..STEPS {
        logits.clear();
        let batch = [BatchEntry {
            seq: 1,
            start,
            tokens: &input,
            wants_logits: true,
        }];
        if let Err(e) = backend.forward(&batch, &mut logits) {
            panic!("forward failed: {e}");
        }
        start += input.len() as u32;
        let row = logits.row(0).to_vec();
        let next = argmax(&row);
        tokens.push(next);
        rows.push(row);
        input = vec![next];
    }
    backend.release(1);
    (tokens, rows)
}

#[test]
fn candle_and_llama_cpp_agree_on_the_first_greedy_tokens() {
    let path = support::smollm2();
    let cfg = config();
    let meta = GgufMetadata::from_path(&path).unwrap();
    let tokenizer = Tokenizer::from_gguf(&meta).unwrap();
    let mut llama = LlamaCppBackend::load(&path, &cfg).expect("llama.cpp loads SmolLM2");
    let mut report = Vec::new();
    let mut failures = 0;
    for kernels in [
        GgufKernels::Auto,
        GgufKernels::RequantizeToQ8_0,
        GgufKernels::Candle,
    ] {
        let options = LoadOptions::default().with_kernels(kernels);
        let mut candle =
            CandleBackend::load_with(&path, &cfg, options).expect("candle loads SmolLM2");
        for text in PROMPTS {
            let prompt = tokenizer
                .encode_prompt(&format!(
                    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
                     <|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
                ))
                .unwrap();
            let (ours, our_rows) = greedy(&mut candle, &prompt);
            let (theirs, their_rows) = greedy(&mut llama, &prompt);
            let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) else {
                report.push(format!("{kernels:?} {text:?}: all {STEPS} tokens agree"));
                continue;
            };
            let (a, b) = (ours[i] as usize, theirs[i] as usize);
            // How much lower each side scores the other's choice than its own.
            let candle_gap = our_rows[i][a] - our_rows[i][b];
            let llama_gap = their_rows[i][b] - their_rows[i][a];
            let tie = candle_gap < NEAR_TIE && llama_gap < NEAR_TIE;
            report.push(format!(
                "{kernels:?} {text:?}: first divergence at token {i}: candle {a} \
                 ({:?}) vs llama.cpp {b} ({:?}); logit gap candle {candle_gap:.4}, \
                 llama.cpp {llama_gap:.4}{}",
                tokenizer.token_text(a as u32).unwrap_or_default(),
                tokenizer.token_text(b as u32).unwrap_or_default(),
                if tie { " (near-tie)" } else { "" }
            ));
            if !tie {
                failures += 1;
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(
        failures,
        0,
        "divergences beyond a near-tie:\n{}",
        report.join("\n")
    );
}
