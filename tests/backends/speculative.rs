//! Speculative decoding on every backend: greedy answers are the same with and without draft
//! tokens, on SmolLM2 through llama.cpp, candle and ONNX Runtime, and on every architecture
//! candle runs; and drafts were made and kept. The prompts ask for a copy, where prompt lookup
//! guesses well, so most steps verify drafts.

use std::path::Path;

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::engine::EngineStats;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline::core::pipeline::Pipeline;

const MAX_TOKENS: u32 = 40;

const COPY: &str = "Repeat this sentence exactly, twice: The old lighthouse keeper climbed \
    the narrow stairs every evening to light the great lamp for the ships at sea.";

fn config(model: &Path, speculative_tokens: u32) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(model.to_string_lossy())
        .with_max_model_len(512)
        .with_max_num_seqs(2)
        .with_max_num_batched_tokens(512)
        .with_threads(2)
        .with_cpu_kv_cache_bytes(256 << 20)
        .with_speculative_tokens(speculative_tokens)
        .validated()
        .expect("a valid test configuration")
}

/// Two greedy answers (one alone, then one beside another request, so that drafts are also
/// verified in a batch of two) and the engine's counters.
async fn answers(
    backend: &str,
    model: &Path,
    speculative_tokens: u32,
) -> (Vec<String>, EngineStats) {
    let pipeline = llm_pipeline::load_async(backend, config(model, speculative_tokens))
        .await
        .unwrap_or_else(|e| panic!("{backend} loads {}: {e}", model.display()));
    let request = |text: &str| {
        ChatCompletionRequest::new("", vec![ChatMessage::user(text)])
            .with_max_tokens(MAX_TOKENS)
            .with_temperature(0.0)
    };
    let mut out = Vec::new();
    let alone = pipeline.chat(request(COPY)).await.expect("an answer");
    out.push(alone.choices[0].message.content.clone().unwrap_or_default());
    let (a, b) = tokio::join!(
        pipeline.chat(request(COPY)),
        pipeline.chat(request(
            "Spell the word 'banana', letter by letter, three times."
        ))
    );
    for answer in [a, b] {
        let answer = answer.expect("an answer");
        out.push(
            answer.choices[0]
                .message
                .content
                .clone()
                .unwrap_or_default(),
        );
    }
    // The last answer arrives just before the engine counts its sequence out.
    let settling = std::time::Instant::now();
    let mut stats = pipeline.engine().stats();
    while stats.in_flight > 0 && settling.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stats = pipeline.engine().stats();
    }
    (out, stats)
}

/// Greedy answers with 4 draft tokens per step equal those without; returns the counters with
/// drafts.
async fn same_answers(backend: &str, model: &Path) -> EngineStats {
    let (plain, plain_stats) = answers(backend, model, 0).await;
    let (drafted, stats) = answers(backend, model, 4).await;
    assert_eq!(drafted, plain, "{backend} on {}", model.display());
    assert_eq!(plain_stats.draft_tokens, 0);
    assert_eq!(stats.generated_tokens, plain_stats.generated_tokens);
    eprintln!(
        "{backend} on {}: {} of {} draft tokens kept; {} steps against {}",
        model.display(),
        stats.accepted_tokens,
        stats.draft_tokens,
        stats.steps,
        plain_stats.steps
    );
    stats
}

/// On a real model, copying is guessed and kept, and saves steps.
fn assert_drafts_kept(stats: &EngineStats) {
    assert!(
        stats.accepted_tokens >= 10 && stats.accepted_tokens * 4 >= stats.draft_tokens,
        "{stats:?}"
    );
}

#[tokio::test]
async fn llama_cpp_answers_the_same_with_drafts() {
    assert_drafts_kept(&same_answers("llama-cpp", &super::support::smollm2()).await);
}

#[cfg(feature = "candle")]
#[tokio::test]
async fn candle_answers_the_same_with_drafts() {
    assert_drafts_kept(&same_answers("candle", &super::support::smollm2()).await);
}

#[cfg(feature = "ort")]
#[tokio::test]
async fn ort_answers_the_same_with_drafts() {
    let onnx = llm_pipeline::core::testing::fixture(
        "LLM_PIPELINE_ONNX_SMOLLM2",
        "onnx/smollm2-135m-instruct",
    );
    assert_drafts_kept(&same_answers("ort", &onnx).await);
}

/// candle's architectures, on the tiny random-weight fixtures: the same answers with drafts.
/// Random weights copy little, so only the sameness is asserted, with drafts made.
#[cfg(feature = "candle")]
#[tokio::test]
async fn every_candle_architecture_answers_the_same_with_drafts() {
    for name in super::architectures::NAMES {
        let dir = super::architectures::model_dir(name);
        let stats = same_answers("candle", &dir).await;
        assert!(stats.draft_tokens > 0, "{name}: {stats:?}");
    }
}
