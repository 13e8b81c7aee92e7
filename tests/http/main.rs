//! The server on a real socket with SmolLM2: the `async-openai` client, the Livepeer `/llm`
//! protocol, concurrency beyond `MAX_NUM_SEQS`, disconnects and a burst beyond the queue; and
//! the `llm-pipeline` program as a process of its own ([`lifecycle`], [`program`]), behind a
//! mock Livepeer orchestrator ([`orchestrator`]).
//!
//! One server (4 sequence slots, a queue of 32, so 36 requests in flight at most) runs on its
//! own runtime thread for the whole binary; the tests take turns on it through [`EXCLUSIVE`] so
//! that each one sees the engine to itself and can check that it settles back to idle.

mod go_livepeer;
mod lifecycle;
mod orchestrator;
mod program;
mod python;
mod structured;
#[path = "../support/mod.rs"]
mod support;
mod tools;

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
    FinishReason, Role,
};
use futures::StreamExt;
use llm_pipeline::core::engine::EngineStats;
use llm_pipeline::core::pipeline::{EnginePipeline, Pipeline};
use llm_pipeline::server::{LlmResponse, ServeOptions, ServerConfig, ServerState, router, serve};
use serde_json::{Value, json};

const TOKEN: &str = "test-token";
const SEQS: u32 = 4;
const QUEUE: u32 = 32;
const SYSTEM: &str = "You are a helpful assistant.";
/// `<|endoftext|>` and `<|im_end|>`.
const SMOLLM2_END_OF_GENERATION: [u32; 2] = [0, 2];

struct Served {
    addr: SocketAddr,
    pipeline: EnginePipeline,
}

static SERVER: LazyLock<Served> =
    LazyLock::new(|| start(support::config(1024, SEQS).with_max_queue(QUEUE)));

/// Loads `config` on llama.cpp and serves it on a port of 127.0.0.1, from its own runtime
/// thread.
fn start(config: llm_pipeline::core::config::PipelineConfig) -> Served {
    let pipeline = llm_pipeline::llama_cpp::load(&config).expect("SmolLM2 loads");
    let served = pipeline.clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a local port");
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let config = ServerConfig::default()
                .with_auth_token(TOKEN)
                .with_model_id(served.model_id().to_owned())
                .with_shutdown_grace(Duration::from_secs(1));
            let options = ServeOptions::from(&config);
            let app = router(ServerState::new(served, config));
            serve(listener, app, std::future::pending::<()>(), options)
                .await
                .expect("the server runs");
        });
    });
    let addr = addr_rx.recv().expect("the server starts");
    Served { addr, pipeline }
}

/// Serializes the tests: each needs the engine to itself to check that it settles.
static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn client() -> Client<OpenAIConfig> {
    client_of(&SERVER)
}

/// An OpenAI client of `served`, with the bearer token.
fn client_of(served: &Served) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("http://{}/v1", served.addr))
            .with_api_key(TOKEN),
    )
}

/// Sends a request and reads its answer as JSON, for tests that expect both to work.
trait JsonReply {
    async fn json_reply(self) -> Value;
    async fn text_reply(self) -> String;
}

impl JsonReply for reqwest::RequestBuilder {
    async fn json_reply(self) -> Value {
        self.send()
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("a JSON body")
    }

    async fn text_reply(self) -> String {
        self.send()
            .await
            .expect("the server answers")
            .text()
            .await
            .expect("a body")
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn url(path: &str) -> String {
    format!("http://{}{path}", SERVER.addr)
}

/// A greedy chat request with a neutral system prompt (see `tests/e2e/common`).
fn greedy(model: &str, question: &str, max_tokens: u32) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([
            ChatCompletionRequestSystemMessageArgs::default()
                .content(SYSTEM)
                .build()
                .unwrap()
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content(question)
                .build()
                .unwrap()
                .into(),
        ])
        .temperature(0.0)
        .max_completion_tokens(max_tokens)
        .build()
        .unwrap()
}

fn with_usage(mut request: CreateChatCompletionRequest) -> CreateChatCompletionRequest {
    request.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        ..ChatCompletionStreamOptions::default()
    });
    request
}

/// What one streamed chat completion delivered.
#[derive(Debug, Default)]
struct Streamed {
    text: String,
    first_role: Option<Role>,
    finish: Option<FinishReason>,
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    usage_chunks: usize,
}

async fn stream_chat(request: CreateChatCompletionRequest) -> Streamed {
    let mut stream = client()
        .chat()
        .create_stream(with_usage(request))
        .await
        .expect("the stream opens");
    let mut out = Streamed::default();
    let mut first = true;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a well-formed chunk");
        assert_eq!(chunk.object, "chat.completion.chunk");
        if let Some(usage) = chunk.usage {
            out.usage_chunks += 1;
            assert!(chunk.choices.is_empty(), "the usage chunk has no choices");
            out.prompt_tokens = usage.prompt_tokens;
            out.completion_tokens = usage.completion_tokens;
            out.total_tokens = usage.total_tokens;
        }
        for choice in chunk.choices {
            if first {
                out.first_role = choice.delta.role;
                first = false;
            }
            out.text
                .push_str(choice.delta.content.as_deref().unwrap_or(""));
            if let Some(reason) = choice.finish_reason {
                assert!(out.finish.is_none(), "one finish_reason per stream");
                out.finish = Some(reason);
            }
        }
    }
    out
}

/// The engine's counters once it has nothing running or waiting (panics after a minute). Async,
/// so that the client's own tasks (async-openai reads streams on spawned tasks) keep running.
async fn settled() -> EngineStats {
    settled_on(&SERVER).await
}

/// [`settled`] for the engine of `served`.
async fn settled_on(served: &Served) -> EngineStats {
    let start = Instant::now();
    loop {
        let stats = served.pipeline.engine().stats();
        if stats.running == 0 && stats.waiting == 0 && stats.in_flight == 0 {
            return stats;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "engine did not settle: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metric(name: &str) -> f64 {
    let text = http()
        .get(url("/metrics"))
        .bearer_auth(TOKEN)
        .text_reply()
        .await;
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

#[tokio::test]
async fn the_openai_client_gets_whole_and_streamed_answers() {
    let _turn = EXCLUSIVE.lock().await;
    let models = client().models().list().await.expect("/v1/models");
    assert_eq!(models.data.len(), 1);
    let model = models.data[0].id.clone();
    assert_eq!(
        model, "SmolLM2-135M-Instruct.Q4_1",
        "served under its name, not the path it was loaded from"
    );

    let request = greedy(&model, "What is the capital of France?", 32);
    let whole = client()
        .chat()
        .create(request.clone())
        .await
        .expect("a chat completion");
    let answer = whole.choices[0].message.content.clone().unwrap_or_default();
    assert!(answer.contains("Paris"), "answer: {answer:?}");
    assert_eq!(whole.object, "chat.completion");
    assert_eq!(whole.model, model);
    assert!(whole.id.starts_with("chatcmpl-"));
    assert_eq!(whole.choices[0].message.role, Role::Assistant);
    let usage = whole.usage.expect("usage");
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert!(usage.completion_tokens > 0 && usage.completion_tokens <= 32);

    let streamed = stream_chat(request).await;
    assert_eq!(streamed.text, answer, "greedy: streamed equals whole");
    assert_eq!(streamed.first_role, Some(Role::Assistant));
    assert_eq!(
        streamed.finish,
        Some(whole.choices[0].finish_reason.expect("finish_reason"))
    );
    assert_eq!(streamed.usage_chunks, 1);
    assert_eq!(streamed.prompt_tokens, usage.prompt_tokens);
    assert_eq!(streamed.completion_tokens, usage.completion_tokens);
    assert_eq!(streamed.total_tokens, usage.total_tokens);

    // A client error comes back as OpenAI's error object, which the client parses.
    let mut bad = greedy(&model, "Hello", 8);
    bad.temperature = Some(7.0);
    match client().chat().create(bad).await {
        Err(async_openai::error::OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code, 400, "{e:?}");
            let e = e.api_error;
            assert_eq!(e.param.as_deref(), Some("temperature"), "{e:?}");
            assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"), "{e:?}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    settled().await;
}

async fn post_llm(body: &Value) -> reqwest::Response {
    http()
        .post(url("/llm"))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .expect("/llm answers")
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect()
}

#[tokio::test]
async fn the_livepeer_protocol_answers_whole_and_streamed() {
    let _turn = EXCLUSIVE.lock().await;
    let messages = json!([
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Write a short poem about the sea."},
    ]);
    // Defaults: model "" (the served one), temperature 0.7; here greedy and cut at 12 tokens.
    let whole =
        post_llm(&json!({"messages": messages, "temperature": 0.0, "max_tokens": 12})).await;
    assert_eq!(whole.status(), 200);
    let whole: LlmResponse = whole.json().await.unwrap();
    assert!(whole.id.starts_with("chatcmpl-"));
    assert_eq!(whole.model, SERVER.pipeline.model_id().to_owned());
    let usage = whole.usage.expect("usage on a whole answer");
    assert_eq!(usage.completion_tokens, 12, "cut at max_tokens");
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    let choice = &whole.choices[0];
    assert_eq!(choice.finish_reason, "length", "a cut answer says so");
    let message = choice.message.as_ref().expect("message");
    assert_eq!(message.role, "assistant");
    assert!(!message.content.is_empty());

    let streamed = post_llm(&json!({
        "messages": messages, "temperature": 0.0, "max_tokens": 12, "stream": true
    }))
    .await;
    assert_eq!(streamed.status(), 200);
    assert!(
        streamed.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = streamed.text().await.unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let events: Vec<LlmResponse> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("an LLMResponse event"))
        .collect();
    let text: String = events
        .iter()
        .filter_map(|e| e.choices[0].delta.as_ref())
        .map(|d| d.content.as_str())
        .collect();
    assert_eq!(text, message.content, "greedy: streamed equals whole");
    let last = events.last().unwrap();
    assert_eq!(last.choices[0].finish_reason, "length");
    // The same counts; the streamed request found the whole one's prompt in the cache.
    let last_usage = last.usage.as_ref().expect("usage on the final event");
    assert_eq!(
        (
            last_usage.prompt_tokens,
            last_usage.completion_tokens,
            last_usage.total_tokens
        ),
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        )
    );
    assert_eq!(
        last_usage.prompt_tokens_details.map(|d| d.cached_tokens),
        Some(usage.prompt_tokens - 1),
        "all but the last prompt token reused"
    );
    assert!(events.iter().all(|e| e.id == whole_id(&events)));
    assert!(
        events[..events.len() - 1].iter().all(|e| e.usage.is_none()),
        "usage only at the end"
    );

    // A model that is not the served one, and a wrong type: 400 with the field named, in
    // Livepeer's error shape.
    let wrong = post_llm(&json!({"messages": messages, "model": "gpt-4"})).await;
    assert_eq!(wrong.status(), 400);
    let wrong: Value = wrong.json().await.unwrap();
    let msg = wrong["detail"]["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("model") && msg.contains("gpt-4"), "{wrong}");
    let typed = post_llm(&json!({"messages": messages, "max_tokens": "many"})).await;
    assert_eq!(typed.status(), 400);
    let typed: Value = typed.json().await.unwrap();
    let msg = typed["detail"]["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("max_tokens"), "{typed}");
    settled().await;
}

fn whole_id(events: &[LlmResponse]) -> String {
    events[0].id.clone()
}

#[tokio::test]
async fn thirty_two_streaming_clients_share_four_slots() {
    let _turn = EXCLUSIVE.lock().await;
    let model = SERVER.pipeline.model_id().to_owned();
    let questions = [
        "What is the capital of France?",
        "Name three colors of the rainbow.",
        "What is two plus two?",
        "Write a haiku about the sea.",
    ];
    let watcher = std::thread::spawn(|| {
        // The most running and waiting sequences seen while the clients run.
        let (mut running, mut waiting) = (0, 0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let s = SERVER.pipeline.engine().stats();
            running = running.max(s.running);
            waiting = waiting.max(s.waiting);
            if s.in_flight == 0 && s.steps > 0 && running > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (running, waiting)
    });
    let clients = (0..32).map(|i| stream_chat(greedy(&model, questions[i % 4], 16)));
    let results = futures::future::join_all(clients).await;
    let (max_running, max_waiting) = watcher.join().unwrap();
    assert!(max_running <= SEQS as usize, "running {max_running}");
    assert!(max_waiting > 0, "32 clients on 4 slots must queue");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.usage_chunks, 1, "client {i}");
        assert!(
            r.completion_tokens > 0 && r.completion_tokens <= 16,
            "client {i}: {r:?}"
        );
        assert_eq!(r.total_tokens, r.prompt_tokens + r.completion_tokens);
        if r.finish == Some(FinishReason::Length) {
            assert_eq!(r.completion_tokens, 16, "client {i}");
        } else {
            assert_eq!(r.finish, Some(FinishReason::Stop), "client {i}");
        }
        // Batching does not change greedy answers: every client with the same question got
        // the same text and counts, whichever slots and neighbours it had.
        let twin = &results[i % 4];
        assert_eq!(r.text, twin.text, "client {i} vs client {}", i % 4);
        assert_eq!(r.completion_tokens, twin.completion_tokens, "client {i}");
        assert_eq!(r.prompt_tokens, twin.prompt_tokens, "client {i}");
    }
    settled().await;
}

#[tokio::test]
async fn clients_that_hang_up_leave_nothing_running() {
    let _turn = EXCLUSIVE.lock().await;
    let model = SERVER.pipeline.model_id().to_owned();
    let before = SERVER.pipeline.engine().stats();
    // Long answers that cannot end early: end-of-generation tokens are banned.
    let endless = |question: &str| {
        let mut request = greedy(&model, question, 400);
        request.logit_bias = Some(
            SMOLLM2_END_OF_GENERATION
                .iter()
                .map(|t| (t.to_string(), -100))
                .collect(),
        );
        request
    };
    let mut streams = Vec::new();
    for i in 0..SEQS {
        let request = endless(&format!("Count from 1 to 500. Start at {i}."));
        let mut stream = client().chat().create_stream(request).await.unwrap();
        // Wait for real tokens so that the sequence is running, not just queued.
        let mut text = String::new();
        while text.len() < 3 {
            let chunk = stream.next().await.expect("tokens").expect("a chunk");
            text.extend(chunk.choices.iter().filter_map(|c| c.delta.content.clone()));
        }
        streams.push(stream);
    }
    // A whole-answer request, queued behind the four, whose client gives up: cancelled too.
    let whole = tokio::time::timeout(
        Duration::from_millis(300),
        client().chat().create(endless("Count from 1 to 500.")),
    )
    .await;
    assert!(
        whole.is_err(),
        "a queued 400-token answer does not come in 300 ms"
    );
    let busy = SERVER.pipeline.engine().stats();
    assert_eq!(busy.running, SEQS as usize, "{busy:?}");
    drop(streams);
    let after = settled().await;
    assert_eq!(
        after.cancelled - before.cancelled,
        u64::from(SEQS) + 1,
        "every abandoned request was cancelled: {after:?}"
    );
    assert_eq!(metric("llm_sequences_running").await, 0.0);
    assert_eq!(metric("llm_queue_waiting").await, 0.0);
}

#[tokio::test]
async fn a_burst_beyond_the_queue_is_refused_at_once_and_the_server_stays_healthy() {
    let _turn = EXCLUSIVE.lock().await;
    let model = SERVER.pipeline.model_id().to_owned();
    let capacity = (SEQS + QUEUE) as usize;
    let burst = capacity + 12;
    let start = Instant::now();
    let requests = (0..burst).map(|i| {
        let body = greedy(
            &model,
            &format!("Tell me a story about the number {i}."),
            48,
        );
        async move {
            let response = http()
                .post(url("/v1/chat/completions"))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .expect("an answer");
            let status = response.status().as_u16();
            let retry = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.unwrap();
            (status, retry, body, start.elapsed())
        }
    });
    let results = futures::future::join_all(requests).await;
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    let served: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    assert_eq!(refused.len() + served.len(), burst, "only 200 and 429");
    assert!(served.len() >= capacity, "{} served", served.len());
    assert!(!refused.is_empty(), "the queue is bounded");
    let first_done = served.iter().map(|r| r.3).min().unwrap();
    for (_, retry, body, at) in &refused {
        assert_eq!(retry.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        assert!(
            *at < first_done,
            "a refusal came at {at:?}, after an answer finished at {first_done:?}: it was held"
        );
    }
    settled().await;
    let health: Value = http().get(url("/health")).json_reply().await;
    assert_eq!(health, json!({"status": "IDLE"}));
    let again = client()
        .chat()
        .create(greedy(&model, "What is the capital of France?", 8))
        .await
        .expect("served after the burst");
    assert!(again.usage.unwrap().completion_tokens > 0);
    assert!(
        metric("llm_http_requests_total{route=\"/v1/chat/completions\",status=\"429\"}").await
            >= refused.len() as f64
    );
}
