//! Authentication, the informational endpoints, metrics, cancellation and shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use futures::StreamExt;
use llm_pipeline_server::ServerConfig;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::common::*;

fn with_token(mut request: Request<Body>, token: &str) -> Request<Body> {
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    request
}

#[tokio::test]
async fn the_token_is_required_everywhere_but_health() {
    let s = server(Setup {
        config: ServerConfig::default().with_auth_token("s3cret"),
        ..Setup::default()
    });
    // Livepeer's route answers in Livepeer's shape (ai-runner: 401 with `WWW-Authenticate`).
    for path in ["/llm", "/llm/"] {
        let reply = call(&s.router, post(path, &chat_body("t9", 2))).await;
        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
        assert!(
            reply.livepeer_error().contains("bearer token"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(call(&s.router, get("/health/")).await.status, 200);
    for request in [
        post("/v1/chat/completions", &chat_body("t9", 2)),
        get("/v1/models"),
        get("/metrics"),
        get("/nowhere"),
        with_token(get("/v1/models"), "wrong"),
        with_token(get("/v1/models"), "s3cre"),
    ] {
        let what = format!("{} {}", request.method(), request.uri());
        let reply = call(&s.router, request).await;
        assert_eq!(reply.status, 401, "{what}");
        assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer", "{what}");
        assert_eq!(reply.error()["code"], "invalid_api_key", "{what}");
    }
    assert_eq!(call(&s.router, get("/health")).await.status, 200);
    let ok = call(
        &s.router,
        with_token(post("/v1/chat/completions", &chat_body("t9", 2)), "s3cret"),
    )
    .await;
    assert_eq!(ok.status, 200);
    let mut lower = with_token(get("/v1/models"), "s3cret");
    lower
        .headers_mut()
        .insert(header::AUTHORIZATION, "bearer s3cret".parse().unwrap());
    assert_eq!(call(&s.router, lower).await.status, 200);
}

#[tokio::test]
async fn informational_endpoints_have_their_shapes() {
    let s = server(Setup::default());
    for path in ["/health", "/health/"] {
        assert_eq!(
            call(&s.router, get(path)).await.json(),
            json!({"status": "IDLE"})
        );
    }
    // ai-runner's trailing-slash twins answer as the routes do.
    for path in ["/version", "/hardware/info", "/hardware/stats"] {
        let plain = call(&s.router, get(path)).await.json();
        let twin = call(&s.router, get(&format!("{path}/"))).await.json();
        assert_eq!(twin["model_id"], plain["model_id"], "{path}");
        assert_eq!(twin["pipeline"], "llm", "{path}");
    }
    let models = call(&s.router, get("/v1/models")).await.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL_ID);
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["backend"], "test");
    let version = call(&s.router, get("/version")).await.json();
    assert_eq!(version["pipeline"], "llm");
    assert_eq!(version["model_id"], MODEL_ID);
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    // Semantic versioning, as go-livepeer parses it (Masterminds/semver, `LowestVersion`).
    let parts: Vec<&str> = version["version"].as_str().unwrap().split('.').collect();
    assert_eq!(parts.len(), 3, "{version}");
    assert!(parts.iter().all(|p| p.parse::<u64>().is_ok()), "{version}");
    assert_eq!(version["backend"], "test");
    // The GPUs are the machine's own: none here, some on a GPU host. The shape is the same.
    let info = call(&s.router, get("/hardware/info")).await.json();
    assert_eq!(info["pipeline"], "llm");
    // The capacity to declare: what the engine runs at once.
    assert_eq!(info["capacity"], s.pipeline.engine().capacity());
    assert_eq!(info["model_id"], MODEL_ID);
    let gpus = info["gpu_info"].as_object().expect("gpu_info is a map");
    let stats = call(&s.router, get("/hardware/stats")).await.json();
    assert_eq!(stats["pipeline"], "llm");
    assert_eq!(stats["model_id"], MODEL_ID);
    let used = stats["gpu_stats"].as_object().expect("gpu_stats is a map");
    assert_eq!(
        gpus.keys().collect::<Vec<_>>(),
        used.keys().collect::<Vec<_>>(),
        "the same GPUs in info and stats"
    );
    for gpu in gpus.values() {
        assert!(gpu["memory_total"].as_u64().is_some_and(|m| m > 0), "{gpu}");
    }
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{line_start}` in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_requests_tokens_latency_and_money() {
    let s = server(Setup::default());
    let body = chat_body("t9", 4);
    let whole = call(&s.router, post("/v1/chat/completions", &body))
        .await
        .json();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    call(&s.router, post("/v1/chat/completions", &streamed)).await;
    call(
        &s.router,
        post("/v1/chat/completions", &json!({"temperature": 9})),
    )
    .await;
    call(&s.router, get("/nowhere")).await;

    let reply = call(&s.router, get("/metrics")).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = reply.text();
    assert_eq!(
        metric(
            &text,
            "llm_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "llm_http_requests_total{route=\"/v1/chat/completions\",status=\"400\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "llm_http_requests_total{route=\"unmatched\",status=\"404\"}"
        ),
        1.0
    );
    let prompt = whole["usage"]["prompt_tokens"].as_f64().unwrap();
    assert_eq!(metric(&text, "llm_prompt_tokens_total"), 2.0 * prompt);
    assert_eq!(metric(&text, "llm_generation_tokens_total"), 8.0);
    assert_eq!(metric(&text, "llm_requests_finished_total"), 2.0);
    assert_eq!(
        metric(&text, "llm_time_to_first_token_seconds_count"),
        1.0,
        "streams only"
    );
    assert_eq!(
        metric(&text, "llm_time_per_output_token_seconds_count"),
        1.0
    );
    assert_eq!(metric(&text, "llm_request_duration_seconds_count"), 2.0);
    // Quotes: 2 × 4 tokens at 3/2; charges: 2 × 4 tokens.
    assert_eq!(metric(&text, "llm_price_quoted_total"), 12.0);
    assert_eq!(metric(&text, "llm_price_charged_total"), 12.0);
    assert_eq!(metric(&text, "llm_queue_waiting"), 0.0);
    assert_eq!(metric(&text, "llm_sequences_running"), 0.0);
}

#[tokio::test]
async fn dropping_a_stream_cancels_its_sequence_and_frees_its_cache() {
    let s = server(Setup {
        step_delay: Duration::from_millis(1),
        ..Setup::default()
    });
    let mut data = open_stream(&s.router, "t9").await;
    data.next().await.unwrap().unwrap();
    data.next().await.unwrap().unwrap();
    drop(data);
    let stats = settle(&s.pipeline).await;
    assert_eq!(stats.cancelled, 1);
    assert_eq!(s.observed.live.load(Ordering::SeqCst), 0);
    let text = call(&s.router, get("/metrics")).await.text();
    assert_eq!(metric(&text, "llm_requests_abandoned_total"), 1.0);
}

#[tokio::test]
async fn a_client_that_hangs_up_on_a_whole_answer_cancels_it() {
    let s = server(Setup {
        step_delay: Duration::from_millis(1),
        ..Setup::default()
    });
    let net = listen(&s.router, Duration::from_secs(5)).await;
    let socket = raw_post(
        net.addr,
        "/v1/chat/completions",
        "content-type: application/json\r\n",
        &chat_body("t9", 100_000),
    )
    .await;
    wait_for(&s.pipeline, |st| st.running == 1 && st.steps > 5).await;
    drop(socket);
    let stats = settle(&s.pipeline).await;
    assert_eq!(stats.cancelled, 1, "the handler's future was dropped");
    assert_eq!(s.observed.live.load(Ordering::SeqCst), 0);

    // A normal request over the socket still works; then shutdown lets the server return.
    let mut socket = raw_post(
        net.addr,
        "/llm",
        "connection: close\r\n",
        &chat_body("t9", 3),
    )
    .await;
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"finish_reason\":\"length\""), "{answer}");
    net.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), net.server)
        .await
        .expect("serve returns after the shutdown signal")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_within_the_grace_period() {
    let s = server(Setup {
        step_delay: Duration::from_millis(1),
        ..Setup::default()
    });
    let net = listen(&s.router, Duration::from_millis(300)).await;
    // One request that ends soon, one that would never end.
    let mut sockets = Vec::new();
    for body in [chat_body("t9", 40), chat_body("t10", 100_000)] {
        let close = "connection: close\r\n";
        sockets.push(raw_post(net.addr, "/v1/chat/completions", close, &body).await);
    }
    wait_for(&s.pipeline, |st| st.running == 2).await;
    net.stop.send(()).unwrap();
    let mut short_answer = String::new();
    sockets[0].read_to_string(&mut short_answer).await.unwrap();
    assert!(short_answer.starts_with("HTTP/1.1 200"), "{short_answer}");
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), net.server)
        .await
        .expect("serve returns after the grace period")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A streamed chat request held open; `routed` as an orchestrator's Live Runner proxy sends it.
async fn held_stream(router: &axum::Router, routed: bool) -> axum::body::BodyDataStream {
    use tower::ServiceExt;
    let mut body = chat_body("t9", 100_000);
    body["stream"] = json!(true);
    let mut request = post("/v1/chat/completions", &body);
    if routed {
        request.headers_mut().insert(
            llm_pipeline_server::ROUTE_HEADER,
            "runner-1".parse().unwrap(),
        );
    }
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.into_body().into_data_stream();
    // The first chunk: the request is in the engine.
    assert!(stream.next().await.is_some());
    stream
}

/// The capacity a registered runner announces leaves out the requests that reached it by other
/// ways, and a runner whose every slot they fill says `busy`.
#[tokio::test]
async fn the_announced_capacity_leaves_out_requests_from_elsewhere() {
    let s = server(Setup {
        step_delay: Duration::from_millis(2),
        ..Setup::default()
    });
    let registration = llm_pipeline_server::register::Registration {
        orchestrator: "http://127.0.0.1:9".into(),
        secret: "orchestrator-secret".into(),
        runner_url: "http://127.0.0.1:8000".into(),
        runner_id: "runner-1".into(),
        app: format!("llm/{MODEL_ID}"),
        label: None,
        capacity: None,
        price: None,
        price_unit: "hour".into(),
    };
    let capacity = s.pipeline.engine().capacity();
    assert!(capacity >= 2);
    let beat = |want: (&str, u32)| {
        let beat = registration.heartbeat(&s.state);
        assert_eq!((beat.status.as_str(), beat.capacity), want);
        assert_eq!(beat.mode, "single-shot");
    };
    beat(("ready", capacity));
    // The orchestrator's own request holds one of its slots on its side: nothing changes.
    let routed = held_stream(&s.router, true).await;
    beat(("ready", capacity));
    drop(routed);
    // Requests from elsewhere take slots away, down to none: busy.
    let mut others = Vec::new();
    for held in 1..=capacity {
        others.push(held_stream(&s.router, false).await);
        let left = capacity - held;
        beat((if left == 0 { "busy" } else { "ready" }, left.max(1)));
    }
    drop(others);
    settle(&s.pipeline).await;
    beat(("ready", capacity));
}
