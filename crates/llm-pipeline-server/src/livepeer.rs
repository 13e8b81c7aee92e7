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

use std::future::ready;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use llm_pipeline_core::openai::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage, FinishReason, Usage,
};
use llm_pipeline_core::pipeline::Pipeline;
use serde::{Deserialize, Serialize};

use crate::chat::{error_event, json_event, refuse, sse, tap};
use crate::error::ApiError;
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
        }
    }
}

/// The handler.
pub(crate) async fn llm<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
    JsonBody(request): JsonBody<LlmRequest>,
) -> Result<Response, ApiError> {
    let pipeline = state.pipeline()?;
    let mut tracker = state.track("/llm");
    let chat = request.to_chat_request();
    if !request.stream {
        let completion = match pipeline.chat(chat).await {
            Ok(completion) => completion,
            Err(e) => return Err(refuse(tracker, e)),
        };
        tracker.finish(completion.usage, completion.metadata.as_ref());
        return Ok(Json(LlmResponse::from(completion)).into_response());
    }
    let chunks = match pipeline.chat_stream(chat.streaming_with_usage()).await {
        Ok(chunks) => chunks,
        Err(e) => return Err(refuse(tracker, e)),
    };
    let events = tap(chunks, tracker, true)
        .scan(None, |finish, item| {
            let event = match item {
                Ok(chunk) => to_event(chunk, finish).map(|r| json_event(&r)),
                Err(e) => Some(error_event(e)),
            };
            ready(Some(event))
        })
        .filter_map(ready);
    Ok(sse(events, state.config().keep_alive))
}

/// The Livepeer event for an OpenAI chunk, if it has one: text becomes a `delta` event, a
/// finish reason is kept for the final event, which the usage chunk produces.
fn to_event(chunk: ChatCompletionChunk, finish: &mut Option<FinishReason>) -> Option<LlmResponse> {
    let event = |choices, usage| LlmResponse {
        id: chunk.id.clone(),
        model: chunk.model.clone(),
        created: chunk.created,
        usage,
        choices,
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
