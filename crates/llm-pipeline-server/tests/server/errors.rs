//! Every error status, with the OpenAI error body.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use futures::StreamExt;
use llm_pipeline_server::{ServerConfig, ServerState, router};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn bad_bodies_are_400_with_the_field_named() {
    let s = server(Setup::default());
    let malformed = call(
        &s.router,
        post_raw("/v1/chat/completions", "{\"messages\": ["),
    )
    .await;
    assert_eq!(malformed.status, 400);
    let error = malformed.error();
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{error}"
    );

    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "t9"}], "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"messages": [{"role": "user", "content": "t9"}], "temperature": 3.5}),
            "temperature",
        ),
        (
            json!({"messages": [{"role": "user", "content": "t9"}], "model": "gpt-9"}),
            "model",
        ),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "user", "content": "t9"}], "n": 0}),
            "n",
        ),
    ];
    for (body, param) in cases {
        let reply = call(&s.router, post("/v1/chat/completions", &body)).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
        assert_eq!(reply.error()["param"], param, "{body}");
    }
    // A missing Content-Type is tolerated: the body is JSON on every endpoint.
    let request = Request::post("/v1/chat/completions")
        .body(Body::from(chat_body("t9", 2).to_string()))
        .unwrap();
    assert_eq!(call(&s.router, request).await.status, 200);
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_400() {
    let s = server(Setup {
        max_model_len: 32,
        ..Setup::default()
    });
    let long = vec!["t9"; 40].join(" ");
    let reply = call(
        &s.router,
        post("/v1/chat/completions", &chat_body(&long, 4)),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.error()["param"], "messages");
}

#[tokio::test]
async fn a_model_without_a_chat_template_serves_but_refuses_chats_with_400() {
    let s = server(Setup {
        no_template: true,
        ..Setup::default()
    });
    assert_eq!(call(&s.router, get("/health")).await.status, 200);
    for path in ["/v1/chat/completions", "/llm"] {
        let reply = call(&s.router, post(path, &chat_body("t9 t10", 4))).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
        let text = reply.text();
        assert!(
            text.contains("no chat template") && text.contains("CHAT_TEMPLATE"),
            "{path}: {text}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let s = server(Setup::default());
    let reply = call(&s.router, post("/v1/completions", &json!({}))).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.error()["message"],
        "Invalid URL (POST /v1/completions)"
    );
    let reply = call(&s.router, get("/v1/chat/completions")).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.error()["type"], "invalid_request_error");
    let reply = call(&s.router, post("/health", &json!({}))).await;
    assert_eq!(reply.status, 405);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let s = server(Setup {
        config: ServerConfig::default().with_max_request_bytes(1024),
        ..Setup::default()
    });
    let big = chat_body(&"t9 ".repeat(1000), 2);
    let reply = call(&s.router, post("/v1/chat/completions", &big)).await;
    assert_eq!(reply.status, 413);
    assert!(reply.error()["message"].as_str().unwrap().contains("1024"));
    let reply = call(&s.router, post("/llm", &big)).await;
    assert_eq!(reply.status, 413);
    // Under the limit it is served.
    let reply = call(&s.router, post("/v1/chat/completions", &chat_body("t9", 2))).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_full_queue_is_refused_at_once_with_429_and_retry_after() {
    let s = server(Setup {
        max_seqs: 1,
        max_queue: 1,
        step_delay: Duration::from_millis(2),
        ..Setup::default()
    });
    // Two long streams take the one running slot and the one queue slot.
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(open_stream(&s.router, "t9").await);
    }
    let started = std::time::Instant::now();
    for path in ["/v1/chat/completions", "/llm"] {
        let reply = call(&s.router, post(path, &chat_body("t9", 2))).await;
        assert_eq!(reply.status, 429, "{path}: {}", reply.text());
        assert_eq!(reply.headers[header::RETRY_AFTER], "1");
        if path == "/llm" {
            assert!(
                reply.livepeer_error().contains("capacity"),
                "{}",
                reply.text()
            );
        } else {
            assert_eq!(reply.error()["code"], "rate_limit_exceeded");
        }
    }
    // Requests are running: the runner is busy, not idle.
    assert_eq!(
        call(&s.router, get("/health")).await.json(),
        json!({"status": "OK"})
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused, not held"
    );
    // The open streams are live; dropping them frees the capacity.
    let first = open[0].next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(open);
    settle(&s.pipeline).await;
    assert_eq!(
        call(&s.router, post("/v1/chat/completions", &chat_body("t9", 2)))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_backend_fault_is_500_without_details_and_health_stays_ok() {
    let s = server(Setup {
        fail_at_step: Some(2),
        ..Setup::default()
    });
    let reply = call(
        &s.router,
        post("/v1/chat/completions", &chat_body("t9", 20)),
    )
    .await;
    assert_eq!(reply.status, 500);
    let error = reply.error();
    assert_eq!(error["type"], "server_error");
    assert!(
        !reply.text().contains("deadbeef"),
        "details are logged, not sent"
    );
    // One fault fails its request only: the runner stays in rotation (idle again) and serves
    // the next.
    settle(&s.pipeline).await;
    assert_eq!(
        call(&s.router, get("/health")).await.json(),
        json!({"status": "IDLE"})
    );
    let next = call(&s.router, post("/v1/chat/completions", &chat_body("t9", 4))).await;
    assert_eq!(next.status, 200, "{}", next.text());
}

#[tokio::test]
async fn persistent_backend_faults_turn_health_error() {
    let s = server(Setup {
        fail_from_step: Some(1),
        ..Setup::default()
    });
    for _ in 0..llm_pipeline_core::engine::FAULTS_BEFORE_ERROR {
        let reply = call(&s.router, post("/v1/chat/completions", &chat_body("t9", 4))).await;
        assert_eq!(reply.status, 500);
    }
    assert_eq!(
        call(&s.router, get("/health")).await.json(),
        json!({"status": "ERROR"})
    );
}

#[tokio::test]
async fn a_stream_that_fails_midway_ends_with_an_error_event_and_done() {
    let s = server(Setup {
        fail_at_step: Some(4),
        ..Setup::default()
    });
    let mut body = chat_body("t9", 20);
    body["stream"] = json!(true);
    let reply = call(&s.router, post("/v1/chat/completions", &body)).await;
    assert_eq!(reply.status, 200);
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let error: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert!(!reply.text().contains("deadbeef"));
}

#[tokio::test]
async fn while_loading_model_endpoints_are_503_and_health_says_loading() {
    let state = ServerState::<llm_pipeline_core::pipeline::EnginePipeline>::loading(
        ServerConfig::default().with_model_id("later"),
    );
    let app = router(state.clone());
    assert_eq!(
        call(&app, get("/health")).await.json(),
        json!({"status": "LOADING"})
    );
    let reply = call(&app, post("/v1/chat/completions", &chat_body("t9", 2))).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    assert_eq!(reply.error()["type"], "server_error");
    let reply = call(&app, post("/llm", &chat_body("t9", 2))).await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.livepeer_error().contains("loading"),
        "{}",
        reply.text()
    );
    assert_eq!(
        call(&app, get("/version")).await.json()["model_id"],
        "later"
    );

    let (pipeline, _) = pipeline(&Setup::default());
    assert!(state.set_ready(pipeline));
    assert_eq!(
        call(&app, get("/health")).await.json(),
        json!({"status": "IDLE"})
    );
    assert_eq!(
        call(&app, post("/llm", &chat_body("t9", 2))).await.status,
        200
    );

    let failed = ServerState::<llm_pipeline_core::pipeline::EnginePipeline>::loading(
        ServerConfig::default(),
    );
    failed.set_failed("no such file");
    let app = router(failed);
    assert_eq!(
        call(&app, get("/health")).await.json(),
        json!({"status": "ERROR"})
    );
    assert_eq!(call(&app, get("/v1/models")).await.status, 503);
}

#[tokio::test]
async fn a_load_that_fails_or_panics_turns_health_to_error() {
    for panics in [false, true] {
        let state = ServerState::<llm_pipeline_core::pipeline::EnginePipeline>::loading(
            ServerConfig::default().with_model_id("/models/secret/place/model.gguf"),
        );
        let app = router(state.clone());
        assert_eq!(
            call(&app, get("/version")).await.json()["model_id"],
            "model",
            "the model's name while loading, never its path"
        );
        state.load_in_background(move || {
            if panics {
                panic!("the weights are corrupt");
            }
            Err("no such file")
        });
        let started = std::time::Instant::now();
        loop {
            let health = call(&app, get("/health")).await.json();
            if health == json!({"status": "ERROR"}) {
                break;
            }
            assert_eq!(health, json!({"status": "LOADING"}));
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "still LOADING after the load ended (panics: {panics})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn messages_too_long_for_any_tokenization_are_refused_before_tokenizing() {
    let s = server(Setup::default());
    let bytes_per_token = s.pipeline.tokenizer().max_token_bytes();
    // Four times the most bytes the context could hold, whatever the tokens.
    let long = "t9 ".repeat(4 * bytes_per_token * 1024 / 3 + 1);
    let reply = call(
        &s.router,
        post("/v1/chat/completions", &chat_body(&long, 2)),
    )
    .await;
    assert_eq!(reply.status, 400);
    let error = reply.error();
    assert_eq!(error["param"], "messages");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("at least") && message.contains("MAX_MODEL_LEN"),
        "{message}"
    );
    assert_eq!(s.pipeline.engine().stats().in_flight, 0);
}
