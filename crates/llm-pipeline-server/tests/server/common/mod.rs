//! A real `EnginePipeline` over a tiny deterministic model, and helpers to call the router.
//!
//! The model is a backend whose next token is a hash of the sequence's whole history (after
//! `t7` it always says EOS), with a word-level tokenizer over `t0 … t63` plus the ChatML tokens,
//! and a real ChatML Jinja template. It checks that every batch entry continues its sequence's
//! cache, so the server runs on the same engine, templates, tokenizer and sampler as with a real
//! model; only the arithmetic of the network is replaced. Expected answers are computed from the
//! same function, token by token.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use llm_pipeline_core::engine::{Engine, EngineLimits, EngineStats};
use llm_pipeline_core::openai::{ChatCompletionRequest, ChatMessage, FinishReason};
use llm_pipeline_core::pipeline::{EnginePipeline, ModelAssets};
use llm_pipeline_core::pricing::PriceTable;
use llm_pipeline_core::template::{ChatTemplate, SpecialTokenText};
use llm_pipeline_core::testing::{self, CHATML_TEMPLATE, Observed, Stops, TestBackend};
pub use llm_pipeline_core::testing::{EOS, VOCAB};
use llm_pipeline_core::tokenizer::{SkipSpecial, Tokenizer};
use llm_pipeline_server::{ServerConfig, ServerState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

pub const MODEL_ID: &str = "tiny-chatml";

/// The model: the next token after `history` (it may end an answer on its own).
pub fn next_token(history: &[u32]) -> u32 {
    testing::next_token(history, Stops::Naturally)
}

fn tokenizer() -> Arc<Tokenizer> {
    testing::word_tokenizer(true)
}

/// How to build the server under test.
pub struct Setup {
    pub max_seqs: u32,
    pub max_queue: u32,
    pub max_model_len: u32,
    pub step_delay: Duration,
    pub fail_at_step: Option<usize>,
    /// Every step from this one on fails.
    pub fail_from_step: Option<usize>,
    /// A base model: no chat template.
    pub no_template: bool,
    pub config: ServerConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            max_seqs: 8,
            max_queue: 64,
            max_model_len: 1024,
            step_delay: Duration::ZERO,
            fail_at_step: None,
            fail_from_step: None,
            no_template: false,
            config: ServerConfig::default(),
        }
    }
}

/// A pipeline over the test model, and what its backend sees.
pub fn pipeline(setup: &Setup) -> (EnginePipeline, Arc<Observed>) {
    let observed = Arc::new(Observed::default());
    let backend_observed = Arc::clone(&observed);
    let info = testing::test_info(16_384, 512, setup.max_seqs);
    let (step_delay, fail_at_step, fail_from_step) =
        (setup.step_delay, setup.fail_at_step, setup.fail_from_step);
    let engine = Engine::start(
        move || {
            Ok(TestBackend::new(info, Stops::Naturally)
                .with_step_delay(step_delay)
                .failing_at_step(fail_at_step)
                .failing_from_step(fail_from_step)
                .observed_by(backend_observed))
        },
        tokenizer(),
        EngineLimits {
            max_model_len: setup.max_model_len,
            max_num_seqs: setup.max_seqs,
            max_num_batched_tokens: 512,
            max_queue: setup.max_queue,
            sampling_threads: 0,
            speculative_tokens: llm_pipeline_core::engine::DEFAULT_SPECULATIVE_TOKENS,
        },
    )
    .unwrap();
    let assets = ModelAssets {
        model_id: MODEL_ID.to_owned(),
        tokenizer: tokenizer(),
        template: (!setup.no_template).then(|| {
            Arc::new(ChatTemplate::new(CHATML_TEMPLATE, SpecialTokenText::default()).unwrap())
        }),
        defaults: Default::default(),
        tool_format: llm_pipeline_core::structured::tools::ToolFormat::Hermes,
        thinks: false,
    };
    let prices = PriceTable {
        price_per_unit: 3,
        pixels_per_unit: 2,
    };
    (EnginePipeline::new(engine, assets, prices), observed)
}

/// The server under test.
pub struct Server {
    pub router: Router,
    pub pipeline: EnginePipeline,
    pub state: ServerState<EnginePipeline>,
    /// What the backend sees (`live`: sequences holding KV cache).
    pub observed: Arc<Observed>,
}

pub fn server(setup: Setup) -> Server {
    let (pipeline, observed) = pipeline(&setup);
    let state = ServerState::new(pipeline.clone(), setup.config);
    Server {
        router: router(state.clone()),
        pipeline,
        state,
        observed,
    }
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        let text = self.text();
        assert!(
            text.ends_with("\n\n"),
            "SSE ends with a blank line: {text:?}"
        );
        text.split("\n\n")
            .filter(|event| !event.is_empty())
            .filter_map(|event| event.strip_prefix("data: ").map(str::to_owned))
            .collect()
    }

    /// The message of Livepeer's error body, `{"detail": {"msg": …}}` and nothing else.
    pub fn livepeer_error(&self) -> String {
        let body = self.json();
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
        assert_eq!(
            body["detail"].as_object().map(|o| o.len()),
            Some(1),
            "{body}"
        );
        body["detail"]["msg"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail.msg: {body}"))
            .to_owned()
    }

    /// The OpenAI error body, checked for shape.
    pub fn error(&self) -> Value {
        let body = self.json();
        let error = &body["error"];
        assert!(error["message"].is_string(), "{body}");
        assert!(error["type"].is_string(), "{body}");
        assert!(
            error.get("param").is_some() && error.get("code").is_some(),
            "{body}"
        );
        error.clone()
    }
}

/// The JSON events of an SSE body's data, checked to end with one `[DONE]`.
pub fn sse_events(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1);
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

pub async fn call(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post(path: &str, body: &Value) -> Request<Body> {
    post_raw(path, body.to_string())
}

pub fn post_raw(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// An OpenAI chat body with one user message, greedy.
pub fn chat_body(content: &str, max_tokens: u32) -> Value {
    json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0
    })
}

/// What the model answers: text, finish reason and completion tokens (EOS included).
pub async fn expected(pipeline: &EnginePipeline, body: &Value) -> (String, FinishReason, u32) {
    let request: ChatCompletionRequest = serde_json::from_value(body.clone()).unwrap();
    let max_tokens = request.max_tokens.unwrap();
    let mut history = pipeline.prompt_tokens(&request).await.unwrap();
    let mut out = Vec::new();
    let reason = loop {
        let t = next_token(&history);
        history.push(t);
        out.push(t);
        if t == EOS {
            break FinishReason::Stop;
        }
        if out.len() as u32 >= max_tokens {
            break FinishReason::Length;
        }
    };
    let text = tokenizer().decode(&out, SkipSpecial::Yes).unwrap();
    (text, reason, out.len() as u32)
}

/// A conversation whose answer ends with EOS (`stop`) within `max_tokens`.
pub async fn stopping_prompt(pipeline: &EnginePipeline, max_tokens: u32) -> Value {
    for i in 8..VOCAB {
        let body = chat_body(&format!("t{i} t{}", (i * 7) % VOCAB), max_tokens);
        if expected(pipeline, &body).await.1 == FinishReason::Stop {
            return body;
        }
    }
    panic!("no prompt stops within {max_tokens} tokens");
}

/// A user message in OpenAI's shape.
pub fn user(content: &str) -> ChatMessage {
    ChatMessage::user(content)
}

/// Waits until the engine has nothing in flight, and returns its counters.
pub async fn settle(pipeline: &EnginePipeline) -> EngineStats {
    let start = Instant::now();
    loop {
        let s = pipeline.engine().stats();
        if s.running == 0 && s.waiting == 0 && s.in_flight == 0 {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "engine busy: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `cond` holds on the engine's counters.
pub async fn wait_for(pipeline: &EnginePipeline, cond: impl Fn(&EngineStats) -> bool) {
    let start = Instant::now();
    loop {
        let s = pipeline.engine().stats();
        if cond(&s) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never reached: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens a streamed chat completion of `content` on the router and returns its body frames,
/// unread: the sequence runs until the stream is read to the end or dropped.
pub async fn open_stream(router: &Router, content: &str) -> axum::body::BodyDataStream {
    let mut body = chat_body(content, 100_000);
    body["stream"] = json!(true);
    let response = router
        .clone()
        .oneshot(post("/v1/chat/completions", &body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().into_data_stream()
}

/// A router served on a real socket on 127.0.0.1 until `stop` is sent.
pub struct Socket {
    pub addr: std::net::SocketAddr,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `router` on a free port of 127.0.0.1 with a shutdown grace of `grace`.
pub async fn listen(router: &Router, grace: Duration) -> Socket {
    let config = llm_pipeline_server::ServerConfig::default().with_shutdown_grace(grace);
    listen_with(router, llm_pipeline_server::ServeOptions::from(&config)).await
}

/// Serves `router` on a free port of 127.0.0.1 with `options`.
pub async fn listen_with(router: &Router, options: llm_pipeline_server::ServeOptions) -> Socket {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(llm_pipeline_server::serve(
        listener,
        router.clone(),
        async move {
            let _ = stopped.await;
        },
        options,
    ));
    Socket { addr, stop, server }
}

/// Connects to `addr` and writes a raw HTTP/1.1 POST of `body` to `path`, with `headers`
/// (each ending in `\r\n`); returns the open connection for reading the answer.
pub async fn raw_post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &str,
    body: &Value,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let body = body.to_string();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
}
