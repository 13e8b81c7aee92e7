//! A KV cache too small for the load, on every backend: eight requests that together need more
//! than twice the cells the budget holds. The engine preempts, the backend never
//! refuses what the engine admitted, and every request runs to its full length.

use std::path::Path;
use std::sync::Arc;

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::engine::EngineStats;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage, FinishReason};
use llm_pipeline::core::pipeline::{EnginePipeline, Pipeline};

const REQUESTS: i64 = 8;
const MAX_TOKENS: u32 = 48;
const MAX_MODEL_LEN: u32 = 256;
/// SmolLM2's KV elements per token: key and value × 30 layers × 3 KV heads × 64.
const KV_ELEMENTS: u64 = 2 * 30 * 3 * 64;
/// SmolLM2's end tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`), banned so that every
/// request runs its whole length.
const END_TOKENS: [u32; 3] = [0, 1, 2];

fn config(model: &Path, kv_bytes: u64) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(model.to_string_lossy())
        .with_max_model_len(MAX_MODEL_LEN)
        .with_max_num_seqs(8)
        .with_max_num_batched_tokens(512)
        .with_threads(2)
        .with_cpu_kv_cache_bytes(kv_bytes)
        // llama.cpp shares one pool among the sequences; the other backends always do.
        .with_kv_unified(true)
        .validated()
        .expect("a valid test configuration")
}

/// Sends the requests at once; checks each ran its full length; returns the engine's counters
/// and the most tokens the load needs at once.
async fn overload(pipeline: EnginePipeline) -> (EngineStats, u32) {
    let pipeline = Arc::new(pipeline);
    let requests = (0..REQUESTS).map(|i| {
        let pipeline = Arc::clone(&pipeline);
        tokio::spawn(async move {
            let mut request = ChatCompletionRequest::new(
                "",
                vec![ChatMessage::user(format!("Tell me story number {i}."))],
            )
            .with_max_tokens(MAX_TOKENS)
            .with_temperature(1.0)
            .with_seed(i);
            for t in END_TOKENS {
                request = request.with_logit_bias(t, -100.0);
            }
            pipeline.chat(request).await
        })
    });
    let mut needed = 0;
    for r in futures::future::join_all(requests).await {
        let answer = r.unwrap().expect("every request completes");
        assert_eq!(answer.usage.completion_tokens, MAX_TOKENS);
        assert_eq!(answer.choices[0].finish_reason, Some(FinishReason::Length));
        needed += answer.usage.total_tokens;
    }
    // The last answer arrives just before the engine counts its sequence out.
    let settling = std::time::Instant::now();
    let mut stats = pipeline.engine().stats();
    while stats.in_flight > 0 && settling.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stats = pipeline.engine().stats();
    }
    assert_eq!(stats.faults, 0, "the backend never refused: {stats:?}");
    assert!(!stats.failed && !stats.broken, "{stats:?}");
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    (stats, needed)
}

/// Every backend shares one budget among all sequences: the engine preempts when it is full and
/// brings the preempted sequences back. `cells` is the capacity the budget of 320 cells gives.
async fn preempts(backend: &str, model: &Path, bytes_per_cell: u64, cells: u32) {
    let pipeline = llm_pipeline::load_async(backend, config(model, 320 * bytes_per_cell))
        .await
        .unwrap_or_else(|e| panic!("{backend} loads: {e}"));
    let info = pipeline.engine().backend_info();
    assert_eq!(info.kv_capacity, cells, "{backend}");
    assert_eq!(
        info.max_seqs, 8,
        "{backend}: every sequence slot, whatever the budget"
    );
    let capacity = info.kv_capacity;
    let (stats, needed) = overload(pipeline).await;
    assert!(
        needed > 2 * capacity,
        "{backend}: the load needs {needed} cells"
    );
    assert!(
        stats.preemptions > 0,
        "{backend}: the cache was full: {stats:?}"
    );
}

#[tokio::test]
async fn llama_cpp_preempts_when_its_kv_pool_is_full() {
    // f16 keys and values. The budget holds 1.25 streams of MAX_MODEL_LEN, so with KV_UNIFIED
    // the sequences share one pool, of the whole 256 cells llama.cpp allocates in. The prompts share their
    // start, so released and preempted sequences leave cells that later ones reuse or that
    // running ones need back.
    preempts(
        "llama-cpp",
        &super::support::smollm2(),
        KV_ELEMENTS * 2,
        256,
    )
    .await;
}

#[tokio::test]
async fn llama_cpp_queues_beyond_its_sequence_streams() {
    // Two whole MAX_MODEL_LEN streams of f16 KV, without KV_UNIFIED: llama.cpp reserves each
    // slot's cells, so the engine admits two sequences at a time and queues the rest; none
    // needs preempting.
    let bytes = 2 * u64::from(MAX_MODEL_LEN) * KV_ELEMENTS * 2;
    let config = config(&super::support::smollm2(), bytes).with_kv_unified(false);
    let pipeline = llm_pipeline::load_async("llama-cpp", config)
        .await
        .expect("llama.cpp loads");
    assert_eq!(pipeline.engine().backend_info().max_seqs, 2);
    let (stats, _) = overload(pipeline).await;
    assert_eq!(stats.preemptions, 0, "{stats:?}");
}

/// With KV_UNIFIED, a KV budget of two whole `MAX_MODEL_LEN` streams no longer means two
/// sequences at a time: eight short requests share the pool and run in one batch. (Their greedy answers are not
/// compared with each one's alone: in a pool, attention runs over cells that other sequences'
/// tokens interleave, which changes the last bits of SmolLM2's logits and, at a near-tie, a
/// token.)
#[tokio::test]
async fn llama_cpp_runs_every_sequence_whose_tokens_fit() {
    const LONG_CONTEXT: u32 = 2048;
    const TOKENS: u32 = 24;
    let config = config(
        &super::support::smollm2(),
        2 * u64::from(LONG_CONTEXT) * KV_ELEMENTS * 2,
    )
    .with_max_model_len(LONG_CONTEXT)
    .validated()
    .unwrap();
    let pipeline = Arc::new(
        llm_pipeline::load_async("llama-cpp", config)
            .await
            .expect("llama.cpp loads"),
    );
    let info = pipeline.engine().backend_info();
    assert_eq!((info.max_seqs, info.kv_capacity), (8, 2 * LONG_CONTEXT));
    assert!(
        info.description
            .contains("8 sequences sharing 4096 KV cells"),
        "{info:?}"
    );
    let request = |i: i64| {
        let mut request = ChatCompletionRequest::new(
            "",
            vec![ChatMessage::user(format!("Name a colour, number {i}."))],
        )
        .with_max_tokens(TOKENS)
        .with_temperature(0.0);
        for t in END_TOKENS {
            request = request.with_logit_bias(t, -100.0);
        }
        request
    };
    let before = pipeline.engine().stats();
    let together = futures::future::join_all((0..REQUESTS).map(|i| {
        let pipeline = Arc::clone(&pipeline);
        async move { pipeline.chat(request(i)).await }
    }))
    .await;
    let steps = pipeline.engine().stats().steps - before.steps;
    // Two at a time would take four rounds of TOKENS steps.
    assert!(
        steps < 2 * u64::from(TOKENS),
        "{steps} steps: the requests did not run together"
    );
    for answer in together {
        assert_eq!(answer.unwrap().usage.completion_tokens, TOKENS);
    }
}

#[cfg(feature = "candle")]
#[tokio::test]
async fn candle_preempts_when_its_kv_pool_is_full() {
    // f32 keys and values.
    preempts("candle", &super::support::smollm2(), KV_ELEMENTS * 4, 320).await;
}

#[cfg(feature = "ort")]
#[tokio::test]
async fn ort_preempts_when_its_kv_budget_is_full() {
    // f32 keys and values, counted twice (a graph run's padded past and present).
    let onnx = llm_pipeline::core::testing::fixture(
        "LLM_PIPELINE_ONNX_SMOLLM2",
        "onnx/smollm2-135m-instruct",
    );
    preempts("ort", &onnx, 2 * KV_ELEMENTS * 4, 320).await;
}
