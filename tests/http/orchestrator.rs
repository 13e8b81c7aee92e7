//! Runners registered with a mock Livepeer orchestrator through the Live Runner heartbeat.
//!
//! The mock plays go-livepeer's side as its code does it (`ai/runner/live_runner.go`, the
//! registry; `server/ai_http.go`, the routes and the proxy): it checks the secret of every call
//! (the orchestrator's secret to register, the heartbeat secret it hands out after that), checks
//! every field of every heartbeat as `normalizeHeartbeat` does (and that no unknown field is
//! sent), forgets runners not heard from within its TTL, and proxies requests to a runner's
//! `runner_url` in single-shot mode, one capacity slot each, with the `Livepeer-Runner-Route`
//! header, streaming the answer back. Its interval and TTL are short (200 ms, 1 s) so that the
//! tests can watch a runner leave.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::JsonReply;

use crate::program::{Process, free_port, program};

const SECRET: &str = "orchestrator-secret";
const RUNNER_TOKEN: &str = "runner-token";
const TTL: Duration = Duration::from_secs(1);

/// go-livepeer's `LiveRunnerHeartbeatRequest`; unknown fields are refused here (go-livepeer
/// ignores them), so that a misspelt field cannot pass unnoticed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct HeartbeatRequest {
    #[serde(default)]
    runner_id: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    proxy: bool,
    runner_url: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    mode: String,
    gpu: Option<Value>,
    app: String,
    capacity: i64,
    price_info: PriceInfo,
    #[serde(default)]
    session_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceInfo {
    price: serde_json::Number,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    unit: String,
}

/// `normalizeHeartbeat`'s checks; `Err` is the 400's text.
fn check(request: &HeartbeatRequest) -> Result<(), String> {
    let url = reqwest::Url::parse(&request.runner_url).map_err(|_| "invalid runner_url")?;
    if !["http", "https"].contains(&url.scheme()) || url.host_str().is_none() {
        return Err("invalid runner_url".into());
    }
    if request.app.is_empty() || request.app.trim() != request.app {
        return Err("app must be trimmed".into());
    }
    if request.metadata.len() > 1024 {
        return Err("metadata too long".into());
    }
    if request.status.trim().to_lowercase() != request.status {
        return Err("status must be lowercase and trimmed".into());
    }
    if !["", "persistent", "single-shot", "single_shot"].contains(&request.mode.as_str()) {
        return Err("invalid mode".into());
    }
    if request.capacity < 0 {
        return Err("capacity must be >= 0".into());
    }
    if !["", "usd"].contains(&request.price_info.currency.as_str())
        || !["", "hour", "720p", "fixed"].contains(&request.price_info.unit.as_str())
        || request.price_info.price.as_f64().is_none_or(|p| p < 0.0)
    {
        return Err("invalid price_info".into());
    }
    Ok(())
}

#[derive(Debug)]
struct Runner {
    heartbeat: HeartbeatRequest,
    secret: String,
    last: Instant,
    in_flight: i64,
    served: usize,
    statuses: Vec<String>,
}

#[derive(Debug, Default)]
struct Registry {
    runners: HashMap<String, Runner>,
    registrations: usize,
    refused: Vec<String>,
    unregistered: Vec<String>,
    secrets: usize,
}

impl Registry {
    fn expire(&mut self) {
        self.runners.retain(|_, r| r.last.elapsed() <= TTL);
    }
}

type Shared = Arc<Mutex<Registry>>;

/// The mock orchestrator on a port of 127.0.0.1.
pub(crate) struct Orchestrator {
    addr: SocketAddr,
    registry: Shared,
}

impl Orchestrator {
    pub(crate) async fn start() -> Self {
        let registry = Shared::default();
        let app = Router::new()
            .route("/runners/heartbeat", post(heartbeat))
            .route("/runners/{id}/unregister", post(unregister))
            .route("/apps/{id}/app/{*path}", any(proxy_to))
            .route("/balance/{*path}", any(balance))
            .with_state(Arc::clone(&registry));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, registry }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The live runners' ids with their last status.
    fn ready(&self) -> Vec<String> {
        let mut registry = self.registry.lock().unwrap();
        registry.expire();
        let mut ids: Vec<String> = registry
            .runners
            .iter()
            .filter(|(_, r)| r.heartbeat.status == "ready")
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    async fn wait_ready(&self, n: usize, limit: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let ready = self.ready();
            if ready.len() == n {
                return ready;
            }
            assert!(
                started.elapsed() < limit,
                "{} ready runners after {limit:?}, not {n}: {:#?}",
                ready.len(),
                self.registry.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Forgets every runner, as a restarted orchestrator has.
    fn restart(&self) {
        self.registry.lock().unwrap().runners.clear();
    }

    fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry.lock().unwrap())
    }
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, message.to_owned()).into_response()
}

async fn heartbeat(State(registry): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut registry = registry.lock().unwrap();
    registry.expire();
    let request: HeartbeatRequest = match serde_json::from_str(&body) {
        Ok(request) => request,
        Err(e) => {
            registry.refused.push(format!("{e}: {body}"));
            return text(StatusCode::BAD_REQUEST, "invalid request body");
        }
    };
    if let Err(e) = check(&request) {
        registry.refused.push(format!("{e}: {body}"));
        return text(StatusCode::BAD_REQUEST, &e);
    }
    let id = request.runner_id.clone();
    let interval = json!({"heartbeat_interval": "200ms", "heartbeat_ttl": "1s"});
    if let Some(runner) = registry.runners.get_mut(&id) {
        if auth != runner.secret {
            return text(StatusCode::UNAUTHORIZED, "invalid heartbeat authorization");
        }
        runner.statuses.push(request.status.clone());
        runner.heartbeat = request;
        runner.last = Instant::now();
        return axum::Json(json!({
            "runner_id": id, "session_ids": [],
            "heartbeat_interval": interval["heartbeat_interval"],
            "heartbeat_ttl": interval["heartbeat_ttl"],
        }))
        .into_response();
    }
    if auth != SECRET {
        return text(
            StatusCode::UNAUTHORIZED,
            "invalid registration authorization",
        );
    }
    registry.secrets += 1;
    let secret = format!("heartbeat-{}-{}", registry.secrets, id);
    registry.registrations += 1;
    registry.runners.insert(
        id.clone(),
        Runner {
            statuses: vec![request.status.clone()],
            heartbeat: request,
            secret: secret.clone(),
            last: Instant::now(),
            in_flight: 0,
            served: 0,
        },
    );
    axum::Json(json!({
        "runner_id": id, "session_ids": [], "heartbeat_secret": secret,
        "heartbeat_interval": interval["heartbeat_interval"],
        "heartbeat_ttl": interval["heartbeat_ttl"],
    }))
    .into_response()
}

async fn unregister(
    State(registry): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let mut registry = registry.lock().unwrap();
    match registry.runners.get(&id) {
        None => text(StatusCode::NOT_FOUND, "runner not found"),
        Some(r) if Some(r.secret.as_str()) != auth => {
            text(StatusCode::UNAUTHORIZED, "invalid authorization")
        }
        Some(_) => {
            registry.runners.remove(&id);
            registry.unregistered.push(id);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// `/apps/{id}/app/{path}`: a client that chose its runner.
async fn proxy_to(
    State(registry): State<Shared>,
    Path((id, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    proxy(&registry, Some(id), &path, request).await
}

/// `/balance/{path}`: the runner with the most free slots, as clients choosing through
/// discovery spread over runners.
async fn balance(
    State(registry): State<Shared>,
    Path(path): Path<String>,
    request: Request,
) -> Response {
    proxy(&registry, None, &path, request).await
}

/// Releases a reserved slot when the proxied answer ends (or is dropped).
struct Slot(Shared, String);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(r) = self.0.lock().unwrap().runners.get_mut(&self.1) {
            r.in_flight -= 1;
        }
    }
}

async fn proxy(registry: &Shared, id: Option<String>, path: &str, request: Request) -> Response {
    // Reserve a slot (`ReserveSession`: 503 when the runner's sessions fill its capacity).
    let (id, target) = {
        let mut reg = registry.lock().unwrap();
        reg.expire();
        let chosen = match id {
            Some(id) => reg.runners.get(&id).map(|_| id),
            None => reg
                .runners
                .iter()
                .filter(|(_, r)| r.heartbeat.status == "ready")
                .max_by_key(|(id, r)| (r.heartbeat.capacity.max(1) - r.in_flight, (*id).clone()))
                .map(|(id, _)| id.clone()),
        };
        let Some(id) = chosen else {
            return text(StatusCode::NOT_FOUND, "runner not found");
        };
        let runner = reg.runners.get_mut(&id).unwrap();
        if runner.heartbeat.status != "ready" {
            return text(StatusCode::NOT_FOUND, "runner not ready");
        }
        if runner.in_flight >= runner.heartbeat.capacity.max(1) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no capacity available for runner",
            );
        }
        runner.in_flight += 1;
        runner.served += 1;
        (id, runner.heartbeat.runner_url.clone())
    };
    let slot = Slot(Arc::clone(registry), id.clone());
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut out = reqwest::Client::new()
        .request(parts.method, format!("{target}/{path}"))
        .header("Livepeer-Runner-Route", &id)
        .body(body);
    for name in ["authorization", "content-type"] {
        if let Some(value) = parts.headers.get(name) {
            out = out.header(name, value);
        }
    }
    let answer = match out.send().await {
        Ok(answer) => answer,
        Err(e) => return text(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let status = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    // The answer streams through; the slot is held until its end.
    let chunks = futures::stream::unfold((answer, slot), |(mut answer, slot)| async move {
        match answer.chunk().await {
            Ok(Some(bytes)) => Some((Ok::<_, std::io::Error>(bytes), (answer, slot))),
            _ => None,
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert("content-type", ct);
    }
    response
}

/// `llm-pipeline serve` registered with `orchestrator`, on a port of its own.
fn runner(orchestrator: &Orchestrator, seqs: u32) -> Process {
    let port = free_port();
    let mut command = Command::new(program());
    command
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--orchestrator", &orchestrator.url()])
        .args(["--runner-url", &format!("http://127.0.0.1:{port}")])
        .env("ORCHESTRATOR_SECRET", SECRET)
        .env("MODEL_ID", crate::support::smollm2())
        .env("AUTH_TOKEN", RUNNER_TOKEN)
        .env("MAX_NUM_SEQS", seqs.to_string())
        .env("MAX_MODEL_LEN", "1024")
        .env("CPU_KV_CACHE_SPACE", "1")
        .env("NUM_THREADS", "1")
        .env("RUST_LOG", "info");
    Process::spawn(&mut command, port)
}

fn via(orchestrator: &Orchestrator, id: &str, path: &str) -> String {
    format!("{}/apps/{id}/app/{path}", orchestrator.url())
}

#[tokio::test]
async fn a_runner_registers_serves_the_openai_api_through_the_orchestrator_and_unregisters() {
    let orchestrator = Orchestrator::start().await;
    let mut runner = runner(&orchestrator, 3);
    runner.wait_for("IDLE", Duration::from_secs(120)).await;
    let id = orchestrator
        .wait_ready(1, Duration::from_secs(10))
        .await
        .remove(0);

    // Every field, as the orchestrator stored it.
    let http = reqwest::Client::new();
    let info: Value = http
        .get(format!("http://127.0.0.1:{}/hardware/info", runner.port))
        .bearer_auth(RUNNER_TOKEN)
        .json_reply()
        .await;
    let beat = orchestrator.with(|r| r.runners[&id].heartbeat.clone());
    assert!(id.starts_with("llm-pipeline-"), "{id}");
    assert_eq!(beat.runner_id, id);
    assert_eq!(beat.runner_url, format!("http://127.0.0.1:{}", runner.port));
    assert_eq!(
        beat.app,
        format!("llm/{}", info["model_id"].as_str().unwrap())
    );
    assert_eq!(beat.mode, "single-shot");
    assert_eq!(beat.status, "ready");
    assert_eq!(beat.capacity, 3);
    assert_eq!(info["capacity"], 3);
    assert_eq!(beat.version, env!("CARGO_PKG_VERSION"));
    assert!(beat.gpu.is_none(), "no GPU here: {beat:?}");
    assert_eq!(beat.price_info.currency, "usd");
    assert_eq!(beat.price_info.unit, "hour");
    let metadata: Value = serde_json::from_str(&beat.metadata).unwrap();
    assert_eq!(metadata["model"], info["model_id"]);
    assert_eq!(
        metadata["backend"]
            .as_str()
            .map(|b| b.starts_with("llama-cpp")),
        Some(true)
    );
    assert!(
        orchestrator.with(|r| r.refused.is_empty()),
        "{:?}",
        orchestrator.with(|r| r.refused.clone())
    );
    let statuses = orchestrator.with(|r| r.runners[&id].statuses.clone());
    assert!(
        statuses.iter().all(|s| s == "loading" || s == "ready"),
        "{statuses:?}"
    );

    // The whole OpenAI API through the orchestrator's proxy: a JSON schema, and a tool call.
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": false
    });
    let answer: Value = http
        .post(via(&orchestrator, &id, "v1/chat/completions"))
        .bearer_auth(RUNNER_TOKEN)
        .json(&json!({
            "messages": [{"role": "user", "content": "Plan a trip to Paris."}],
            "max_tokens": 128,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}}
        }))
        .json_reply()
        .await;
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    let trip: Value = serde_json::from_str(content).expect("the answer is JSON");
    assert!(jsonschema::is_valid(&schema, &trip), "{trip}");
    let answer: Value = http
        .post(via(&orchestrator, &id, "v1/chat/completions"))
        .bearer_auth(RUNNER_TOKEN)
        .json(&json!({
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "max_tokens": 128,
            "temperature": 0,
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                "additionalProperties": false}}}],
            "tool_choice": "required"
        }))
        .json_reply()
        .await;
    assert_eq!(
        answer["choices"][0]["finish_reason"], "tool_calls",
        "{answer}"
    );
    assert_eq!(
        answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    // Livepeer's /llm through it, streamed, ends with usage and a finish reason.
    let body = http
        .post(via(&orchestrator, &id, "llm"))
        .bearer_auth(RUNNER_TOKEN)
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "stream": true}))
        .text_reply()
        .await;
    let last: Value = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .rfind(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{body}");
    assert_eq!(last["usage"]["completion_tokens"], 6, "{body}");
    assert_eq!(orchestrator.with(|r| r.runners[&id].served), 3);

    // A restarted orchestrator has forgotten the runner: it registers again, same id.
    let before = orchestrator.with(|r| r.registrations);
    orchestrator.restart();
    assert_eq!(
        orchestrator.wait_ready(1, Duration::from_secs(5)).await,
        std::slice::from_ref(&id)
    );
    assert_eq!(orchestrator.with(|r| r.registrations), before + 1);

    // SIGTERM: the runner unregisters at once (long before the TTL) and exits cleanly.
    runner.signal("TERM");
    assert!(runner.exit_within(Duration::from_secs(10)).await.success());
    assert_eq!(orchestrator.with(|r| r.unregistered.clone()), [id]);
    assert!(orchestrator.ready().is_empty());
}

#[tokio::test]
async fn two_runners_share_the_load_and_a_dead_one_leaves_within_the_ttl() {
    let orchestrator = Orchestrator::start().await;
    let mut first = runner(&orchestrator, 2);
    let mut second = runner(&orchestrator, 2);
    first.wait_for("IDLE", Duration::from_secs(120)).await;
    second.wait_for("IDLE", Duration::from_secs(120)).await;
    let ids = orchestrator.wait_ready(2, Duration::from_secs(10)).await;

    let ask = |n: usize| {
        let url = format!("{}/balance/llm", orchestrator.url());
        async move {
            let answers = futures::future::join_all((0..n).map(|i| {
                reqwest::Client::new()
                    .post(&url)
                    .bearer_auth(RUNNER_TOKEN)
                    .json(&json!({
                        "messages": [{"role": "user", "content": format!("Count to {i}.")}],
                        "max_tokens": 16
                    }))
                    .send()
            }))
            .await;
            answers
                .into_iter()
                .map(|a| a.map(|a| a.status().as_u16()).unwrap_or(0))
                .collect::<Vec<_>>()
        }
    };
    // Four at once fill both runners' two slots: each serves two.
    assert_eq!(ask(4).await, [200; 4]);
    let served = orchestrator.with(|r| {
        ids.iter()
            .map(|id| r.runners[id].served)
            .collect::<Vec<_>>()
    });
    assert_eq!(served, [2, 2]);

    // A runner that dies without unregistering is gone once the TTL has run out.
    let dead = orchestrator.with(|r| {
        ids.iter()
            .find(|id| {
                r.runners[*id]
                    .heartbeat
                    .runner_url
                    .ends_with(&format!(":{}", first.port))
            })
            .cloned()
            .unwrap()
    });
    first.signal("KILL");
    let killed = Instant::now();
    let left = orchestrator.wait_ready(1, TTL * 3).await;
    assert!(!left.contains(&dead), "{left:?}");
    assert!(
        killed.elapsed() >= TTL / 2,
        "removed before the TTL: {:?}",
        killed.elapsed()
    );
    assert!(orchestrator.with(|r| r.unregistered.is_empty()));
    // The survivor serves everything (two at a time: the rest wait their turn and retry).
    for _ in 0..2 {
        assert_eq!(ask(2).await, [200; 2]);
    }
    second.signal("TERM");
    assert!(second.exit_within(Duration::from_secs(10)).await.success());
}
