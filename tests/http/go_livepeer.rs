//! The server as go-livepeer's AI worker uses an external LLM runner, played by a client written
//! from go-livepeer's own types and code: the request and response structs of
//! `ai/worker/runner.gen.go` (`LLMRequest`, `LLMResponse`, `LLMChoice`, `LLMMessage`,
//! `LLMTokenUsage`, `HTTPError`, `HealthCheck`), the readiness poll of `ai/worker/container.go`
//! (`runnerWaitUntilReady`), the SSE reading of `ai/worker/worker.go`
//! (`handleStreamingResponse`) and the orchestrator's relay of `server/ai_http.go`
//! (`handleAIRequest`), and the capacity an external container declares in `aiModels.json`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{EXCLUSIVE, JsonReply, TOKEN, http, metric, settled, url};

/// `LLMRequest`: pointers with `omitempty`, as the gateway fills them.
#[derive(Debug, Clone, Serialize)]
struct LlmRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<i64>,
    messages: Vec<LlmMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LlmMessage {
    content: String,
    role: String,
}

/// `LLMResponse`; Go's decoder fills absent fields with zero values and ignores unknown ones.
#[derive(Debug, Clone, Deserialize)]
struct LlmResponse {
    choices: Vec<LlmChoice>,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: LlmTokenUsage,
}

#[derive(Debug, Clone, Deserialize)]
struct LlmChoice {
    delta: Option<LlmMessage>,
    finish_reason: Option<String>,
    #[serde(default)]
    index: i64,
    message: Option<LlmMessage>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct LlmTokenUsage {
    #[serde(default)]
    completion_tokens: i64,
    #[serde(default)]
    prompt_tokens: i64,
    #[serde(default)]
    total_tokens: i64,
}

/// `HTTPError` (`detail` is an `APIError`).
#[derive(Debug, Deserialize)]
struct HttpError {
    detail: ApiError,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    msg: String,
}

#[derive(Debug, Deserialize)]
struct HealthCheck {
    status: String,
}

fn request(content: &str, max_tokens: i64, stream: bool) -> LlmRequest {
    LlmRequest {
        max_tokens: Some(max_tokens),
        messages: vec![LlmMessage {
            content: content.to_owned(),
            role: "user".to_owned(),
        }],
        model: Some(String::new()),
        stream: Some(stream),
        temperature: Some(0.0),
        top_k: None,
        top_p: None,
    }
}

/// `runnerWaitUntilReady`: `/health` every 500 ms until a 200 with a JSON body (the generated
/// client parses `JSON200` only for a JSON content type) whose status is not `ERROR`.
async fn wait_until_ready() -> String {
    let started = Instant::now();
    loop {
        let reply = http()
            .get(url("/health"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let json = reply
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        if reply.status() == 200 && json {
            let health: HealthCheck = reply.json().await.unwrap();
            assert_ne!(health.status, "ERROR");
            return health.status;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "never ready");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `POST /llm` with the bearer token, as the worker's generated client sends it: the status and
/// the body.
async fn post(body: &LlmRequest, token: &str) -> (u16, String) {
    let reply = http()
        .post(url("/llm"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("/llm answers");
    let status = reply.status().as_u16();
    (status, reply.text().await.expect("a body"))
}

/// `handleNonStreamingResponse`: a 200 is an `LLMResponse`; 400, 401 and 500 are `HTTPError`s
/// whose `detail.msg` the worker passes on.
async fn whole(body: &LlmRequest, token: &str) -> Result<LlmResponse, (u16, String)> {
    let (status, text) = post(body, token).await;
    if status == 200 {
        return Ok(serde_json::from_str(&text).expect("an LLMResponse"));
    }
    assert!([400, 401, 500].contains(&status), "{status}: {text}");
    let error: HttpError = serde_json::from_str(&text).expect("an HTTPError");
    Err((status, error.detail.msg))
}

/// `handleStreamingResponse`, then the orchestrator's relay: each line without its `data: `
/// prefix, blank lines and `[DONE]` skipped, every other line decoded whole into an
/// `LLMResponse` (a line that does not decode would be logged and lost: none may), relayed
/// until the first event whose `choices[0].finish_reason` is not empty (indexing `choices[0]`
/// without a check, as go-livepeer does). Returns the relayed events.
async fn streamed(body: &LlmRequest) -> Vec<LlmResponse> {
    let (status, text) = post(body, TOKEN).await;
    assert_eq!(status, 200, "{text}");
    let mut relayed = Vec::new();
    for line in text.lines() {
        let data = line.strip_prefix("data: ").unwrap_or(line);
        if data.is_empty() || data == "[DONE]" {
            continue;
        }
        let event: LlmResponse = serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("go-livepeer cannot decode `{data}`: {e}"));
        let finished = event.choices[0]
            .finish_reason
            .as_deref()
            .is_some_and(|r| !r.is_empty());
        relayed.push(event);
        if finished {
            break;
        }
    }
    relayed
}

#[tokio::test]
async fn go_livepeers_worker_reads_every_answer_and_error() {
    let _turn = EXCLUSIVE.lock().await;
    // A request another test sent last may still be finishing, as in the capacity test.
    settled().await;
    assert_eq!(wait_until_ready().await, "IDLE");

    let answer = whole(&request("What is the capital of France?", 12, false), TOKEN)
        .await
        .expect("answered");
    let choice = &answer.choices[0];
    assert_eq!(choice.index, 0);
    assert!(!choice.message.as_ref().unwrap().content.is_empty());
    assert!(
        choice
            .finish_reason
            .as_deref()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(answer.id.starts_with("chatcmpl-") && !answer.model.is_empty() && answer.created > 0);
    let u = answer.usage;
    assert!(u.prompt_tokens > 0 && u.completion_tokens > 0);
    assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens);

    // Errors reach the gateway as "LLM container returned N: msg", the msg naming the field.
    let mut hot = request("Hi", 8, false);
    hot.temperature = Some(7.0);
    let (status, msg) = whole(&hot, TOKEN).await.unwrap_err();
    assert_eq!(status, 400);
    assert!(msg.contains("temperature"), "{msg}");
    let (status, msg) = whole(&request("Hi", 8, false), "wrong").await.unwrap_err();
    assert_eq!(status, 401, "{msg}");

    // Streamed: every event decodes, the relay ends at the finish reason, and the last relayed
    // event carries the usage the gateway keeps (the last event's `usage.total_tokens`).
    let events = streamed(&request("Name three colors.", 24, true)).await;
    let (last, deltas) = events.split_last().unwrap();
    assert!(!deltas.is_empty());
    let text: String = deltas
        .iter()
        .map(|e| e.choices[0].delta.as_ref().unwrap().content.as_str())
        .collect();
    assert!(!text.is_empty());
    assert!(last.usage.total_tokens > 0);
    assert_eq!(
        last.usage.completion_tokens + last.usage.prompt_tokens,
        last.usage.total_tokens
    );
    assert!(["stop", "length"].contains(&last.choices[0].finish_reason.as_deref().unwrap()));
    assert!(deltas.iter().all(|e| e.id == last.id));
    settled().await;
}

#[tokio::test]
async fn the_declared_capacity_runs_in_one_batch() {
    let _turn = EXCLUSIVE.lock().await;
    wait_until_ready().await;
    // What `aiModels.json`'s `capacity` should say: the orchestrator sends that many at once.
    let info: serde_json::Value = http()
        .get(url("/hardware/info"))
        .bearer_auth(TOKEN)
        .json_reply()
        .await;
    let capacity = info["capacity"]
        .as_u64()
        .expect("capacity in /hardware/info") as usize;
    assert_eq!(capacity, crate::SEQS as usize);

    let requests: Vec<LlmRequest> = (0..capacity)
        .map(|i| request(&format!("Tell a story about the number {i}."), 48, true))
        .collect();
    let batch = futures::future::join_all(requests.iter().map(streamed));
    // While they run: all of them in the engine's running set at once (a request may wait for
    // the next step to be admitted, never longer), and /health says OK (go-livepeer would keep a borrowed container until IDLE).
    let watch = async {
        let mut most = 0.0f64;
        let mut busy = false;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            most = most.max(metric("llm_sequences_running").await);
            let health: serde_json::Value = http().get(url("/health")).json_reply().await;
            busy |= health["status"] == "OK";
            if most >= capacity as f64 && busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (most, busy)
    };
    let (events, (most, busy)) = tokio::join!(batch, watch);
    assert_eq!(
        most, capacity as f64,
        "the declared capacity ran as one batch"
    );
    assert!(busy);
    for answer in events {
        let last = answer.last().unwrap();
        assert!(last.usage.completion_tokens > 0);
    }
    settled().await;
    assert_eq!(wait_until_ready().await, "IDLE");
}
