//! Fixtures shared by the end-to-end tests: the SmolLM2 model and pipelines over it.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::engine::EngineStats;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline::core::pipeline::EnginePipeline;

/// The SmolLM2 GGUF: `$LLM_PIPELINE_SMOLLM2`, or the xtask cache.
pub(crate) fn smollm2() -> PathBuf {
    let path = std::env::var_os("LLM_PIPELINE_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache/llm-pipeline/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask models` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// A small configuration: 2 threads, `seqs` sequences of `max_model_len` tokens.
pub(crate) fn config(max_model_len: u32, seqs: u32) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(smollm2().to_string_lossy())
        .with_max_model_len(max_model_len)
        .with_max_num_seqs(seqs)
        .with_max_num_batched_tokens(max_model_len.max(512))
        .with_threads(2)
        .with_cpu_kv_cache_bytes(
            u64::from(max_model_len.div_ceil(256) * 256) * u64::from(seqs) * 24 * 1024,
        )
        .validated()
        .expect("a valid test configuration")
}

/// One pipeline shared by the tests (loading per test would only add time).
pub(crate) static SHARED: LazyLock<EnginePipeline> =
    LazyLock::new(|| llm_pipeline::llama_cpp::load(&config(2048, 8)).expect("SmolLM2 loads"));

/// A one-message user request.
pub(crate) fn ask(text: &str) -> ChatCompletionRequest {
    ChatCompletionRequest::new("", vec![ChatMessage::user(text)])
}

/// Waits until `pipeline`'s engine satisfies `done`, or panics after `timeout`.
pub(crate) fn wait_for(
    pipeline: &EnginePipeline,
    timeout: Duration,
    done: impl Fn(&EngineStats) -> bool,
) -> EngineStats {
    let start = Instant::now();
    loop {
        let stats = pipeline.engine().stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < timeout,
            "engine did not settle: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A user request with a plain system prompt. SmolLM2's built-in default system prompt makes
/// the 135M model answer factual questions in French; a neutral one keeps it on task.
pub(crate) fn sys(text: &str) -> ChatCompletionRequest {
    ChatCompletionRequest::new(
        "",
        vec![
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user(text),
        ],
    )
}
