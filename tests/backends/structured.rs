//! Structured output on every backend: the grammar's mask is applied in core's sampler to the
//! logits each backend computes, so a JSON schema holds for sampled answers on llama.cpp, candle
//! and ONNX Runtime alike.

use std::path::Path;

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage, FinishReason};
use llm_pipeline::core::pipeline::Pipeline;
use serde_json::{Value, json};

fn config(model: &Path) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(model.to_string_lossy())
        .with_max_model_len(512)
        .with_max_num_seqs(4)
        .with_max_num_batched_tokens(512)
        .with_threads(2)
        .with_cpu_kv_cache_bytes(64 << 20)
        .validated()
        .expect("a valid test configuration")
}

/// Four answers at temperature 1.0, batched together, each valid against a schema with a
/// nested object, an enum, a bounded array and required fields.
async fn follows_the_schema(backend: &str, model: &Path) {
    let pipeline = llm_pipeline::load_async(backend, config(model))
        .await
        .unwrap_or_else(|e| panic!("{backend} loads: {e}"));
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "forecast": {
                "type": "object",
                "properties": {
                    "sky": {"enum": ["sunny", "cloudy", "rain"]},
                    "highs": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}
                },
                "required": ["sky", "highs"],
                "additionalProperties": false
            }
        },
        "required": ["city", "forecast"],
        "additionalProperties": false
    });
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let answers = (0..4).map(|i| {
        let mut request = ChatCompletionRequest::new(
            "",
            vec![ChatMessage::user("Give me the weather in Paris as JSON.")],
        )
        .with_max_tokens(128)
        .with_temperature(1.0)
        .with_seed(i);
        request.response_format = Some(json!({
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": schema.clone()}
        }));
        pipeline.chat(request)
    });
    for answer in futures::future::join_all(answers).await {
        let answer = answer.unwrap_or_else(|e| panic!("{backend} answers: {e}"));
        let choice = &answer.choices[0];
        let text = choice.message.content.clone().unwrap_or_default();
        assert_eq!(
            choice.finish_reason,
            Some(FinishReason::Stop),
            "{backend}: {text}"
        );
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{backend} ({e}): {text}"));
        assert!(validator.is_valid(&value), "{backend}: {text}");
    }
}

#[tokio::test]
async fn llama_cpp_follows_a_json_schema() {
    follows_the_schema("llama-cpp", &super::support::smollm2()).await;
}

#[cfg(feature = "candle")]
#[tokio::test]
async fn candle_follows_a_json_schema() {
    follows_the_schema("candle", &super::support::smollm2()).await;
}

#[cfg(feature = "ort")]
#[tokio::test]
async fn ort_follows_a_json_schema() {
    let onnx = llm_pipeline::core::testing::fixture(
        "LLM_PIPELINE_ONNX_SMOLLM2",
        "onnx/smollm2-135m-instruct",
    );
    follows_the_schema("ort", &onnx).await;
}
