//! `POST /v1/chat/completions`, whole and streamed.

use llm_pipeline_core::openai::FinishReason;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn whole_answer_is_the_models_with_exact_usage_and_prices() {
    let s = server(Setup::default());
    let body = chat_body("t12 t30 hello", 6);
    let (text, reason, completion) = expected(&s.pipeline, &body).await;
    let prompt = s
        .pipeline
        .prompt_tokens(&serde_json::from_value(body.clone()).unwrap())
        .await
        .unwrap()
        .len() as u64;

    let reply = call(&s.router, post("/v1/chat/completions", &body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL_ID);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], json!(reason));
    assert_eq!(v["usage"]["prompt_tokens"], prompt);
    assert_eq!(v["usage"]["completion_tokens"], completion);
    assert_eq!(v["usage"]["total_tokens"], prompt + u64::from(completion));
    // 3 per 2 tokens: quote on max_tokens (6), charge on completion tokens.
    assert_eq!(v["metadata"]["price_quote"], "9");
    settle(&s.pipeline).await;
}

#[tokio::test]
async fn a_natural_end_is_stop() {
    let s = server(Setup::default());
    let body = stopping_prompt(&s.pipeline, 40).await;
    let (text, _, completion) = expected(&s.pipeline, &body).await;
    let v = call(&s.router, post("/v1/chat/completions", &body))
        .await
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(v["usage"]["completion_tokens"], completion);
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn stream_frames_chunks_with_role_first_usage_last_then_done() {
    let s = server(Setup::default());
    let mut body = chat_body("t40 t41", 8);
    let (text, reason, completion) = expected(&s.pipeline, &body).await;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});

    let reply = call(&s.router, post("/v1/chat/completions", &body)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let chunks = sse_events(&reply.sse_data());
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id), "one id per stream");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks), text);

    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], completion);
    assert!(usage["metadata"]["price_charged"].is_string(), "{usage}");
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], json!(reason));
    // With include_usage, every other chunk says `usage: null`, as OpenAI does.
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
}

#[tokio::test]
async fn stream_without_usage_has_no_usage_and_prices_on_the_last_chunk() {
    let s = server(Setup::default());
    let mut body = chat_body("t40 t41", 8);
    let (text, reason, _) = expected(&s.pipeline, &body).await;
    body["stream"] = json!(true);

    let reply = call(&s.router, post("/v1/chat/completions", &body)).await;
    let chunks = sse_events(&reply.sse_data());
    assert_eq!(streamed_text(&chunks), text);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:?}"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], json!(reason));
    assert_eq!(last["metadata"]["price_quote"], "12");
}

#[tokio::test]
async fn stream_and_whole_answers_agree() {
    let s = server(Setup::default());
    let body = chat_body("t9 t10 t11", 12);
    let whole = call(&s.router, post("/v1/chat/completions", &body))
        .await
        .json();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = sse_events(
        &call(&s.router, post("/v1/chat/completions", &streamed))
            .await
            .sse_data(),
    );
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str().unwrap(),
        streamed_text(&chunks)
    );
    assert_eq!(
        FinishReason::Length,
        serde_json::from_value(whole["choices"][0]["finish_reason"].clone()).unwrap()
    );
}

#[tokio::test]
async fn a_queued_stream_sends_keep_alive_comments() {
    let s = server(Setup {
        max_seqs: 1,
        step_delay: std::time::Duration::from_millis(2),
        config: llm_pipeline_server::ServerConfig::default()
            .with_keep_alive(std::time::Duration::from_millis(20)),
        ..Setup::default()
    });
    let _running = open_stream(&s.router, "t9").await;
    let mut queued = open_stream(&s.router, "t10").await;
    let mut saw_comment = false;
    for _ in 0..20 {
        let frame = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            futures::StreamExt::next(&mut queued),
        )
        .await
        .expect("a frame within the keep-alive interval")
        .unwrap()
        .unwrap();
        if frame.starts_with(b":") {
            saw_comment = true;
            break;
        }
        let text = String::from_utf8_lossy(&frame);
        assert!(
            !text.contains("\"content\":\"t"),
            "a queued request generated text: {text}"
        );
    }
    assert!(saw_comment);
    assert_eq!(s.pipeline.engine().stats().waiting, 1);
}

#[tokio::test]
async fn a_type_erased_pipeline_serves_like_the_concrete_one() {
    use std::sync::Arc;

    use llm_pipeline_core::pipeline::DynPipeline;
    use llm_pipeline_server::{ServerConfig, ServerState, router};

    let (concrete, _) = pipeline(&Setup::default());
    let erased: Arc<dyn DynPipeline> = Arc::new(concrete.clone());
    let router = router(ServerState::new(erased, ServerConfig::default()));
    let body = chat_body("t12 t30 hello", 6);
    let (text, reason, _) = expected(&concrete, &body).await;
    let v = call(&router, post("/v1/chat/completions", &body))
        .await
        .json();
    assert_eq!(v["model"], MODEL_ID);
    assert_eq!(v["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], json!(reason));
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let streamed = call(&router, post("/v1/chat/completions", &stream_body)).await;
    assert_eq!(streamed_text(&sse_events(&streamed.sse_data())), text);
    settle(&concrete).await;
}
