//! Chat template rendering: the per-request cost of turning messages into a prompt.
//!
//! Included by `benches/core.rs` (`mod template;`). It renders SmolLM2's real template (the
//! GGUF fixture's `tokenizer.chat_template`) over a six-message conversation, so the number is
//! what every chat request pays before tokenization.

use std::hint::black_box;

use criterion::Criterion;
use llm_pipeline_core::template::{ChatMessage, ChatTemplate, SpecialTokenText};

const SMOLLM2_TEMPLATE: &str =
    include_str!("../crates/llm-pipeline-core/tests/fixtures/templates/smollm2.jinja");

/// Benchmarks `ChatTemplate::render` on a six-message conversation with SmolLM2's template.
pub(crate) fn bench_template(c: &mut Criterion) {
    let tokens = SpecialTokenText {
        bos: "<|im_start|>".to_owned(),
        eos: "<|im_end|>".to_owned(),
    };
    let template =
        ChatTemplate::new(SMOLLM2_TEMPLATE, tokens).expect("the SmolLM2 template compiles");
    let messages = [
        ChatMessage {
            role: "system",
            content: "You are a concise assistant. Answer in one paragraph.",
        },
        ChatMessage {
            role: "user",
            content: "What is continuous batching in LLM serving?",
        },
        ChatMessage {
            role: "assistant",
            content: "Continuous batching adds and removes sequences from the running batch at every \
                      decoding step instead of waiting for the whole batch to finish.",
        },
        ChatMessage {
            role: "user",
            content: "Why does that improve throughput?",
        },
        ChatMessage {
            role: "assistant",
            content: "Short requests no longer wait for long ones, so the accelerator stays busy \
                      with useful work and the queue drains faster.",
        },
        ChatMessage {
            role: "user",
            content: "And what limits it?",
        },
    ];
    c.bench_function("template/render_smollm2_6_messages", |b| {
        b.iter(|| template.render(black_box(&messages)).expect("renders"));
    });
}
