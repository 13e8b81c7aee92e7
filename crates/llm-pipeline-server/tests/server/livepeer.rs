//! `POST /llm`: Livepeer's runner protocol.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn whole_answer_has_livepeers_shape_and_exact_usage() {
    let s = server(Setup::default());
    let body = json!({"messages": [{"role": "user", "content": "t20 t21"}], "max_tokens": 5,
                      "temperature": 0});
    let (text, _, completion) = expected(&s.pipeline, &chat_body("t20 t21", 5)).await;
    let reply = call(&s.router, post("/llm", &body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], MODEL_ID);
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": text})
    );
    assert_eq!(
        v["choices"][0]["finish_reason"], "length",
        "cut at max_tokens"
    );
    assert_eq!(v["usage"]["completion_tokens"], completion);
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
}

#[tokio::test]
async fn defaults_apply_and_a_natural_end_is_stop() {
    let s = server(Setup::default());
    // Only `messages`: temperature 0.7 (the model is sharp enough to stay deterministic),
    // max_tokens 256.
    let chat = stopping_prompt(&s.pipeline, 256).await;
    let (text, _, completion) = expected(&s.pipeline, &chat).await;
    let body = json!({"messages": chat["messages"]});
    let v = call(&s.router, post("/llm", &body)).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(v["usage"]["completion_tokens"], completion);
}

#[tokio::test]
async fn stream_sends_deltas_then_a_final_event_with_usage_then_done() {
    let s = server(Setup::default());
    let (text, _, completion) = expected(&s.pipeline, &chat_body("t33", 7)).await;
    let body = json!({"messages": [{"role": "user", "content": "t33"}], "max_tokens": 7,
                      "temperature": 0, "stream": true});
    let reply = call(&s.router, post("/llm", &body)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let events = sse_events(&reply.sse_data());
    let (last, deltas) = events.split_last().unwrap();
    assert!(!deltas.is_empty());
    for e in deltas {
        assert_eq!(e["id"], last["id"]);
        assert_eq!(e["choices"][0]["finish_reason"], "");
        assert_eq!(e["choices"][0]["delta"]["role"], "assistant");
        assert!(e.get("usage").is_none());
    }
    let streamed: String = deltas
        .iter()
        .map(|e| e["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"]["content"], "");
    assert_eq!(last["usage"]["completion_tokens"], completion);
}

#[tokio::test]
async fn bad_livepeer_requests_are_400_naming_the_field() {
    let s = server(Setup::default());
    let cases = [
        (json!({"model": MODEL_ID}), None),
        (
            json!({"messages": [{"role": "user", "content": "t9"}], "model": "gpt-4"}),
            Some("model"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "t9"}], "temperature": 9}),
            Some("temperature"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "t9"}], "max_tokens": "many"}),
            Some("max_tokens"),
        ),
        (
            json!({"messages": [{"role": "robot", "content": "t9"}]}),
            Some("messages[0].role"),
        ),
    ];
    // Livepeer's error shape (ai-runner's `HTTPError`), the field named in the message; on the
    // trailing-slash alias too.
    for (body, param) in cases {
        for path in ["/llm", "/llm/"] {
            let reply = call(&s.router, post(path, &body)).await;
            assert_eq!(reply.status, 400, "{body}: {}", reply.text());
            let msg = reply.livepeer_error();
            assert!(msg.contains(param.unwrap_or("messages")), "{body}: {msg}");
        }
    }
}

#[tokio::test]
async fn a_stream_that_fails_midway_ends_with_choices_and_finish_reason_error() {
    let s = server(Setup {
        fail_at_step: Some(4),
        ..Setup::default()
    });
    let body = json!({"messages": [{"role": "user", "content": "t9"}], "max_tokens": 20,
                      "stream": true});
    let reply = call(&s.router, post("/llm", &body)).await;
    assert_eq!(reply.status, 200);
    // go-livepeer indexes choices[0] of every event and stops at a non-empty finish reason.
    let events = sse_events(&reply.sse_data());
    assert!(events.len() >= 2, "{events:?}");
    for e in &events {
        assert!(e["choices"][0].is_object(), "{e}");
    }
    let (last, before) = events.split_last().unwrap();
    assert!(
        before
            .iter()
            .all(|e| e["choices"][0]["finish_reason"] == "")
    );
    assert_eq!(last["choices"][0]["finish_reason"], "error", "{last}");
    assert_eq!(last["id"], before[0]["id"]);
    assert!(last["error"]["msg"].is_string(), "{last}");
    assert!(
        !reply.text().contains("deadbeef"),
        "details are logged, not sent"
    );
}
