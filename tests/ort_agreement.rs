//! The ONNX Runtime and llama.cpp backends agree on SmolLM2: the first 16 greedy tokens of a set
//! of chat prompts, the ONNX export made from the very GGUF llama.cpp runs (`cargo xtask models`
//! exports it), the same token ids in and the same argmax out.
//!
//! Both backends run through the core's `Backend` trait, token by token, so the comparison sees
//! the models and nothing else. The export holds the GGUF's Q4_1 weights dequantized to f32 and
//! computes in f32, while llama.cpp quantizes activations to 8 bits for its 4-bit kernels, so two
//! near-tied tokens may swap. Where the backends part, the test reports the first divergence:
//! the step, both tokens, and the logit gap (how far the other backend's choice is below its own
//! top logit) on each side; a divergence where both gaps are below [`NEAR_TIE`] is reported as a
//! near-tie rather than failed.

use std::path::{Path, PathBuf};

use llm_pipeline::core::backend::{Backend, BatchEntry, Logits};
use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::gguf::GgufMetadata;
use llm_pipeline::core::template::{ChatMessage, ChatTemplate, SpecialTokenText};
use llm_pipeline::core::tokenizer::Tokenizer;
use llm_pipeline::llama_cpp::LlamaCppBackend;
use llm_pipeline::ort::{OrtBackend, OrtOptions};

const PROMPTS: [&str; 4] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a rainbow is in one sentence.",
];

/// Tokens compared per prompt.
const STEPS: usize = 16;

/// A divergence whose logit gaps are both below this is a near-tie between the f32 export and
/// llama.cpp's 8-bit activations.
const NEAR_TIE: f32 = 0.5;

fn cache() -> PathBuf {
    std::env::var_os("LLM_PIPELINE_CACHE").map_or_else(
        || {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache/llm-pipeline")
        },
        PathBuf::from,
    )
}

fn fixture(var: &str, cached: &str) -> PathBuf {
    let path =
        std::env::var_os(var).map_or_else(|| cache().join("models").join(cached), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask models`",
        path.display()
    );
    path
}

fn config(model: &Path) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(model.to_string_lossy())
        .with_max_model_len(512)
        .with_max_num_seqs(1)
        .with_max_num_batched_tokens(512)
        .with_threads(2)
        .with_cpu_kv_cache_bytes(256 << 20)
        .validated()
        .expect("a valid test configuration")
}

/// The greedy continuation of `prompt` and the logits row of every step.
fn greedy(backend: &mut impl Backend, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let vocab = backend.info().vocab_size;
    let (mut tokens, mut rows) = (Vec::new(), Vec::new());
    let mut input = prompt.to_vec();
    let mut start = 0u32;
    for _ in 0..STEPS {
        let mut logits = Logits::new(vocab);
        let entry = BatchEntry {
            seq: 1,
            start,
            tokens: &input,
            wants_logits: true,
        };
        backend
            .forward(&[entry], &mut logits)
            .unwrap_or_else(|e| panic!("forward failed: {e}"));
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

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// How far `token` is below the row's top logit.
fn gap(row: &[f32], token: u32) -> f32 {
    row[argmax(row) as usize] - row[token as usize]
}

#[test]
fn ort_and_llama_cpp_agree_on_the_first_greedy_tokens() {
    let gguf = fixture("LLM_PIPELINE_SMOLLM2", "SmolLM2-135M-Instruct.Q4_1.gguf");
    let onnx = fixture("LLM_PIPELINE_ONNX_SMOLLM2", "onnx/smollm2-135m-instruct");
    let meta = GgufMetadata::from_path(&gguf).expect("the GGUF reads");
    let tokenizer = Tokenizer::from_gguf(&meta).expect("the GGUF has a tokenizer");
    let special = tokenizer.special();
    let template = ChatTemplate::new(
        meta.chat_template()
            .unwrap()
            .expect("the GGUF has a chat template"),
        SpecialTokenText {
            bos: special.bos_text.clone().unwrap_or_default(),
            eos: special.eos_text.clone().unwrap_or_default(),
        },
    )
    .unwrap();
    let mut llama = LlamaCppBackend::load(&gguf, &config(&gguf)).expect("llama.cpp loads");
    let mut ort = OrtBackend::open(&onnx, &config(&onnx), &OrtOptions::default())
        .expect("the ONNX export loads");

    let mut failures = Vec::new();
    for prompt in PROMPTS {
        let text = template
            .render(&[
                ChatMessage {
                    role: "system",
                    content: "You are a helpful assistant.",
                },
                ChatMessage {
                    role: "user",
                    content: prompt,
                },
            ])
            .unwrap();
        let ids = tokenizer.encode_prompt(&text).unwrap();
        let (want, want_rows) = greedy(&mut llama, &ids);
        let (got, got_rows) = greedy(&mut ort, &ids);
        let Some(step) = want.iter().zip(&got).position(|(a, b)| a != b) else {
            let spread = want_rows
                .iter()
                .zip(&got_rows)
                .map(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f32::max)
                })
                .fold(0.0, f32::max);
            eprintln!("{prompt:?}: {STEPS} tokens agree (largest logit difference {spread:.3})");
            continue;
        };
        let (l, o) = (want[step], got[step]);
        let ort_gap = gap(&got_rows[step], l);
        let llama_gap = gap(&want_rows[step], o);
        let report = format!(
            "{prompt:?}: first divergence at token {step}: llama.cpp {l} ({:?}), ORT {o} ({:?}); \
             ORT ranks llama.cpp's token {ort_gap:.4} below its top, llama.cpp ranks ORT's \
             {llama_gap:.4} below its top",
            tokenizer.token_text(l),
            tokenizer.token_text(o),
        );
        eprintln!("{report}");
        if ort_gap > NEAR_TIE || llama_gap > NEAR_TIE {
            failures.push(report);
        }
    }
    assert!(
        failures.is_empty(),
        "divergences beyond a near-tie:\n{}",
        failures.join("\n")
    );
}
