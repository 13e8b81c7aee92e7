//! `POST /llm`: the Livepeer AI runner's protocol, which orchestrators speak.
//!
//! The body is Livepeer's `LLMRequest` (only `messages` required; `temperature` 0.7,
//! `max_tokens` 256, `top_p` 1.0, `top_k` -1, `stream` false by default) and the answer its
//! `LLMResponse`. It runs through the same [`Pipeline`] as the OpenAI endpoint, so validation
//! errors are 400 with the field named, the finish reason is `length` when cut, and the token
//! counts are exact, where the Python runner sent 500s, always `stop` and estimates. Streaming
//! sends the same shape with a `delta` per SSE event, the usage and finish reason on the final
//! event, then `data: [DONE]`. Choices that are not finished carry `finish_reason: ""`, the
//! Python runner's default, so that its pydantic models still parse them.
//!
//! What go-livepeer relies on, and where it reads it:
//! - every event has `choices[0]`: the orchestrator and the gateway index `Choices[0]` without a
//!   length check and stop at the first event whose `choices[0].finish_reason` is not empty
//!   (`server/ai_http.go`, `handleAIRequest`; `server/ai_process.go`, `handleSSEStream`), so a
//!   stream that fails midway ends with an event whose finish reason is `error` (and an `error`
//!   object beside the choices), never with an event without choices;
//! - the final event carries `usage` (the gateway keeps the last event's `usage.total_tokens`);
//! - errors are `{"detail": {"msg": …}}` ([`ApiError::into_livepeer_response`]), for bad bodies,
//!   authentication and refusals alike;
//! - ai-runner serves every route with and without a trailing slash (`/llm` and `/llm/`).

use std::future::ready;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use llm_pipeline_core::openai::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage, FinishReason, Usage,
};
use llm_pipeline_core::pipeline::Pipeline;
use serde::{Deserialize, Serialize};

use crate::chat::{json_event, refuse, sse, tap};
use crate::error::ApiError;
use crate::error::log_internal;
use crate::extract::JsonBody;
use crate::state::ServerState;

/// Livepeer's `LLMRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    /// The conversation (required).
    pub messages: Vec<ChatMessage>,
    /// The model; empty means the served one, anything else must name it.
    #[serde(default)]
    pub model: String,
    /// Sampling temperature (default 0.7).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// The most tokens to generate (default 256).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Nucleus sampling mass (default 1.0).
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Top-k cut-off; -1 disables it (the default).
    #[serde(default = "default_top_k")]
    pub top_k: i32,
    /// Whether to stream the answer as SSE (default false).
    #[serde(default)]
    pub stream: bool,
}

fn default_temperature() -> f32 {
    0.7
}

fn default_max_tokens() -> u32 {
    256
}

fn default_top_p() -> f32 {
    1.0
}

fn default_top_k() -> i32 {
    -1
}

impl LlmRequest {
    /// The same request in OpenAI's terms (not streamed; the handler adds that).
    pub fn to_chat_request(&self) -> ChatCompletionRequest {
        ChatCompletionRequest::new(self.model.clone(), self.messages.clone())
            .with_temperature(self.temperature)
            .with_max_tokens(self.max_tokens)
            .with_top_p(self.top_p)
            .with_top_k(self.top_k)
    }
}

/// Livepeer's `LLMResponse`, whole or one streamed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmResponse {
    /// `chatcmpl-…`, the same for every event of a stream.
    pub id: String,
    /// The served model.
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    /// Token counts: on a whole answer and on the final event of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The answer (one choice).
    pub choices: Vec<LlmChoice>,
    /// Why a stream failed midway: on its last event only, whose finish reason is `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<LlmError>,
}

/// ai-runner's `APIError`: the `detail` of its error bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmError {
    /// What went wrong.
    pub msg: String,
}

/// Whether `path` is one of Livepeer's generation routes, whose errors take Livepeer's shape.
pub(crate) fn is_livepeer_path(path: &str) -> bool {
    ROUTES.contains(&path)
}

/// `/llm` and ai-runner's alias.
pub(crate) const ROUTES: [&str; 2] = ["/llm", "/llm/"];

/// An error answered in Livepeer's shape.
#[derive(Debug)]
pub(crate) struct LivepeerError(ApiError);

impl<E: Into<ApiError>> From<E> for LivepeerError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for LivepeerError {
    fn into_response(self) -> Response {
        self.0.into_livepeer_response()
    }
}

/// One choice of an [`LlmResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmChoice {
    /// The choice's index (0).
    pub index: u32,
    /// `stop` or `length` once finished; `""` before.
    #[serde(default)]
    pub finish_reason: String,
    /// The new text of a streamed event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<LlmMessage>,
    /// The whole answer of a non-streamed response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<LlmMessage>,
}

/// Livepeer's `LLMMessage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmMessage {
    /// `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl LlmMessage {
    fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: "assistant".to_owned(),
            content: content.into(),
        }
    }
}

fn reason_text(reason: Option<FinishReason>) -> String {
    reason
        .and_then(|r| serde_json::to_value(r).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl From<ChatCompletion> for LlmResponse {
    fn from(completion: ChatCompletion) -> Self {
        let choices = completion
            .choices
            .into_iter()
            .map(|c| LlmChoice {
                index: c.index,
                finish_reason: reason_text(c.finish_reason),
                delta: None,
                message: Some(LlmMessage::assistant(c.message.content.unwrap_or_default())),
            })
            .collect();
        Self {
            id: completion.id,
            model: completion.model,
            created: completion.created,
            usage: Some(completion.usage),
            choices,
            error: None,
        }
    }
}

/// The handler.
pub(crate) async fn llm<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
    headers: HeaderMap,
    body: Result<JsonBody<LlmRequest>, ApiError>,
) -> Result<Response, LivepeerError> {
    let JsonBody(request) = body?;
    let pipeline = state.pipeline()?;
    let mut tracker = state.track("/llm", &headers);
    let chat = request.to_chat_request();
    if !request.stream {
        let completion = match pipeline.chat(chat).await {
            Ok(completion) => completion,
            Err(e) => return Err(refuse(tracker, e).into()),
        };
        tracker.finish(completion.usage, completion.metadata.as_ref());
        return Ok(Json(LlmResponse::from(completion)).into_response());
    }
    let chunks = match pipeline.chat_stream(chat.streaming_with_usage()).await {
        Ok(chunks) => chunks,
        Err(e) => return Err(refuse(tracker, e).into()),
    };
    let events = tap(chunks, tracker, true)
        .scan(Meta::default(), |meta, item| {
            let event = match item {
                Ok(chunk) => to_event(chunk, meta),
                Err(e) => Some(failed_event(meta, e)),
            };
            ready(Some(event.map(|r| json_event(&r))))
        })
        .filter_map(ready);
    Ok(sse(events, state.config().keep_alive))
}

/// What the events of one stream share.
#[derive(Debug, Default)]
struct Meta {
    id: String,
    model: String,
    created: u64,
    finish: Option<FinishReason>,
}

/// The last event of a stream that failed midway: `choices[0]` with finish reason `error`, and
/// the message (details are logged, not sent).
fn failed_event(meta: &Meta, error: llm_pipeline_core::Error) -> LlmResponse {
    log_internal(&error);
    LlmResponse {
        id: meta.id.clone(),
        model: meta.model.clone(),
        created: meta.created,
        usage: None,
        choices: vec![LlmChoice {
            index: 0,
            finish_reason: "error".to_owned(),
            delta: Some(LlmMessage::assistant("")),
            message: None,
        }],
        error: Some(LlmError {
            msg: ApiError::Core(error).body().error.message,
        }),
    }
}

/// The Livepeer event for an OpenAI chunk, if it has one: text becomes a `delta` event, a
/// finish reason is kept for the final event, which the usage chunk produces.
fn to_event(chunk: ChatCompletionChunk, meta: &mut Meta) -> Option<LlmResponse> {
    meta.id.clone_from(&chunk.id);
    meta.model.clone_from(&chunk.model);
    meta.created = chunk.created;
    let finish = &mut meta.finish;
    let event = |choices, usage| LlmResponse {
        id: chunk.id.clone(),
        model: chunk.model.clone(),
        created: chunk.created,
        usage,
        choices,
        error: None,
    };
    if let Some(usage) = chunk.usage().copied() {
        let last = LlmChoice {
            index: 0,
            finish_reason: reason_text(*finish),
            delta: Some(LlmMessage::assistant("")),
            message: None,
        };
        return Some(event(vec![last], Some(usage)));
    }
    let mut choices = Vec::new();
    for c in &chunk.choices {
        if let Some(reason) = c.finish_reason {
            *finish = Some(reason);
        }
        if let Some(text) = c.delta.content.as_deref().filter(|t| !t.is_empty()) {
            choices.push(LlmChoice {
                index: c.index,
                finish_reason: String::new(),
                delta: Some(LlmMessage::assistant(text)),
                message: None,
            });
        }
    }
    (!choices.is_empty()).then(|| event(choices, None))
}
