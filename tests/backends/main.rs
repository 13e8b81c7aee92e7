//! Every other backend agrees with llama.cpp: on SmolLM2, the first 16 greedy tokens of a set of
//! chat prompts, the same token ids in and the same argmax out; on each architecture candle runs,
//! a tiny model's logits (`architectures`); and on Gemma 3 270M, served whole through `auto` and
//! through candle. candle reads the very GGUF
//! llama.cpp runs; ONNX Runtime runs the export `cargo xtask models` makes from it (its Q4_1
//! weights dequantized to f32).
//!
//! Every backend runs through the core's `Backend` trait, token by token, so the comparison sees
//! the models and nothing else (no sampling or text). Where two backends part, the test reports
//! the first divergence: the step, both tokens, and the logit gap, i.e. how far the other
//! backend's choice is below its own top logit, on each side. Different kernels on a 4-bit model
//! can legitimately swap two near-tied tokens (llama.cpp quantizes activations to 8 bits per
//! 32-block, candle's exact path and the f32 export do not), so a divergence where both gaps are
//! below [`NEAR_TIE`] is reported as a near-tie rather than failed.

use std::path::Path;

use llm_pipeline::core::backend::{Backend, BatchEntry, Logits};
use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::gguf::GgufMetadata;
use llm_pipeline::core::template::{ChatMessage, ChatTemplate, SpecialTokenText};
use llm_pipeline::core::tokenizer::Tokenizer;
use llm_pipeline::llama_cpp::LlamaCppBackend;

#[cfg(feature = "candle")]
mod architectures;
mod kv;
mod speculative;
mod structured;

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

/// A divergence whose logit gaps are both below this is a near-tie between kernels: candle's
/// own kernel choices move SmolLM2's logits by up to ~1.4, while a wrong model (rotary layout,
/// norm, attention) parts at the first tokens by several logits.
const NEAR_TIE: f32 = 0.5;

/// One sequence, 512 tokens: the same limits for every backend.
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

/// The reference side: llama.cpp, the GGUF's tokenizer, and the prompts in its chat template.
struct Reference {
    llama: LlamaCppBackend,
    tokenizer: Tokenizer,
    prompts: Vec<Vec<u32>>,
}

impl Reference {
    fn load() -> Self {
        let gguf = support::smollm2();
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
        let prompts = PROMPTS
            .iter()
            .map(|prompt| {
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
                tokenizer.encode_prompt(&text).unwrap()
            })
            .collect();
        let llama = LlamaCppBackend::load(&gguf, &config(&gguf)).expect("llama.cpp loads");
        Self {
            llama,
            tokenizer,
            prompts,
        }
    }

    /// Compares `backend` with llama.cpp on every prompt: one report line per prompt, and the
    /// number of divergences beyond a near-tie.
    fn compare(&mut self, label: &str, backend: &mut impl Backend) -> (Vec<String>, usize) {
        let (mut report, mut failures) = (Vec::new(), 0);
        for (prompt, ids) in PROMPTS.iter().zip(&self.prompts) {
            let (want, want_rows) = greedy(&mut self.llama, ids);
            let (got, got_rows) = greedy(backend, ids);
            let Some(step) = want.iter().zip(&got).position(|(a, b)| a != b) else {
                let spread = want_rows
                    .iter()
                    .zip(&got_rows)
                    .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
                    .fold(0.0, f32::max);
                report.push(format!(
                    "{label} {prompt:?}: all {STEPS} tokens agree (largest logit difference \
                     {spread:.3})"
                ));
                continue;
            };
            let (l, o) = (want[step], got[step]);
            let their_gap = gap(&got_rows[step], l);
            let llama_gap = gap(&want_rows[step], o);
            let tie = their_gap < NEAR_TIE && llama_gap < NEAR_TIE;
            report.push(format!(
                "{label} {prompt:?}: first divergence at token {step}: llama.cpp {l} ({:?}), \
                 {label} {o} ({:?}); {label} ranks llama.cpp's token {their_gap:.4} below its \
                 top, llama.cpp ranks {label}'s {llama_gap:.4} below its top{}",
                self.tokenizer.token_text(l).unwrap_or_default(),
                self.tokenizer.token_text(o).unwrap_or_default(),
                if tie { " (near-tie)" } else { "" }
            ));
            failures += usize::from(!tie);
        }
        (report, failures)
    }
}

/// Greedy decoding of `STEPS` tokens; returns the tokens and each step's logits.
fn greedy(backend: &mut impl Backend, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    decode(backend, prompt, STEPS, |_, row| argmax(row))
}

/// Feeds `prompt`, then for `steps` steps the token `pick` chooses from the step's index and
/// logits row; returns the tokens chosen and each step's logits.
fn decode(
    backend: &mut impl Backend,
    prompt: &[u32],
    steps: usize,
    mut pick: impl FnMut(usize, &[f32]) -> u32,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut logits = Logits::new(backend.info().vocab_size);
    let (mut tokens, mut rows) = (Vec::new(), Vec::new());
    let mut input = prompt.to_vec();
    let mut start = 0u32;
    for step in 0..steps {
        logits.clear();
        let batch = [BatchEntry {
            seq: 1,
            start,
            tokens: &input,
            logits: 1,
        }];
        if let Err(e) = backend.forward(&batch, &mut logits) {
            panic!("forward failed: {e}");
        }
        start += input.len() as u32;
        let row = logits.row(0).to_vec();
        let next = pick(step, &row);
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

fn assert_agreement(report: &[String], failures: usize) {
    eprintln!("{}", report.join("\n"));
    assert_eq!(
        failures,
        0,
        "divergences beyond a near-tie:\n{}",
        report.join("\n")
    );
}

#[cfg(feature = "candle")]
#[test]
fn candle_agrees_with_llama_cpp_on_the_first_greedy_tokens() {
    use llm_pipeline::candle::{CandleBackend, GgufKernels, LoadOptions};

    let mut reference = Reference::load();
    let gguf = support::smollm2();
    let (mut report, mut failures) = (Vec::new(), 0);
    for kernels in [
        GgufKernels::Auto,
        GgufKernels::RequantizeToQ8_0,
        GgufKernels::Candle,
    ] {
        let options = LoadOptions::default().with_kernels(kernels);
        let mut candle =
            CandleBackend::load_with(&gguf, &config(&gguf), options).expect("candle loads");
        let (lines, n) = reference.compare(&format!("candle {kernels:?}"), &mut candle);
        report.extend(lines);
        failures += n;
    }
    assert_agreement(&report, failures);
}

#[cfg(feature = "ort")]
#[test]
fn ort_agrees_with_llama_cpp_on_the_first_greedy_tokens() {
    use llm_pipeline::ort::{OrtBackend, OrtOptions};

    let mut reference = Reference::load();
    let onnx = llm_pipeline::core::testing::fixture(
        "LLM_PIPELINE_ONNX_SMOLLM2",
        "onnx/smollm2-135m-instruct",
    );
    let mut ort = OrtBackend::open(&onnx, &config(&onnx), &OrtOptions::default())
        .expect("the ONNX export loads");
    let (report, failures) = reference.compare("ORT", &mut ort);
    assert_agreement(&report, failures);
}

/// Gemma 3 270M, a real non-Llama model whose GGUF has no chat template: `auto` serves it
/// through llama.cpp and candle serves the same file through its GGUF path, both with the
/// family's known template, and their greedy answers begin with the same tokens.
#[cfg(feature = "candle")]
#[tokio::test]
async fn gemma3_270m_serves_through_auto_and_candle_alike() {
    use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
    use llm_pipeline::core::pipeline::Pipeline;

    let gguf = llm_pipeline::core::testing::gemma3();
    let meta = GgufMetadata::from_path(&gguf).unwrap();
    assert_eq!(meta.architecture().unwrap(), "gemma3");
    assert!(
        meta.chat_template().unwrap().is_none(),
        "the fixture is a model without a chat template"
    );
    let config = config(&gguf);
    let request = || {
        ChatCompletionRequest::new(
            "",
            vec![ChatMessage::user("Write one sentence about the sea.")],
        )
        .with_max_tokens(8)
        .with_temperature(0.0)
    };
    let auto = llm_pipeline::load_async(llm_pipeline::AUTO, config.clone())
        .await
        .expect("auto serves Gemma 3");
    assert!(auto.backend().unwrap().starts_with("llama-cpp"));
    let candle = llm_pipeline::load_async("candle", config)
        .await
        .expect("candle serves Gemma 3's GGUF");
    let answers = [
        auto.chat(request()).await.expect("llama.cpp answers"),
        candle.chat(request()).await.expect("candle answers"),
    ];
    let texts: Vec<&str> = answers
        .iter()
        .map(|a| a.choices[0].message.content.as_deref().unwrap_or(""))
        .collect();
    eprintln!("llama.cpp: {:?}\ncandle:    {:?}", texts[0], texts[1]);
    assert!(!texts[0].trim().is_empty(), "llama.cpp said nothing");
    assert_eq!(
        answers[0].usage.prompt_tokens, answers[1].usage.prompt_tokens,
        "both render the family template into the same prompt"
    );
    // The first words agree (a 4-bit model may part later on a near-tie between kernels).
    let first_words = |t: &str| t.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    assert_eq!(first_words(texts[0]), first_words(texts[1]));
}
