//! Fixtures shared by the end-to-end tests: the SmolLM2 model and pipelines over it.

#[path = "../../support/mod.rs"]
mod support;

pub(crate) use support::config;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use llm_pipeline::core::engine::EngineStats;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline::core::pipeline::EnginePipeline;

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
