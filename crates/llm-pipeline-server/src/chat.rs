//! `POST /v1/chat/completions`: the OpenAI chat API, whole or as Server-Sent Events.
//!
//! A stream is asked of the pipeline always with a usage chunk, because the server needs the
//! token counts for its log line, metrics and prices even when the client did not ask for them;
//! [`tap`] then gives the client exactly what it asked for: without `include_usage`, the usage
//! chunk is dropped, the `usage: null` fields removed, and the price metadata moved onto the last
//! chunk, as the pipeline itself does. SSE framing, keep-alive comments and `data: [DONE]` are
//! added here, at the edge. Dropping the response body (the client went away) drops the
//! pipeline's stream, which cancels the sequences; a dropped non-streaming handler drops the
//! pipeline's future, which does the same.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use llm_pipeline_core::openai::{ChatCompletionChunk, ChatCompletionRequest};
use llm_pipeline_core::pipeline::{ChatStream, Pipeline};
use llm_pipeline_core::{Error, Result};

use crate::error::{ApiError, log_internal};
use crate::extract::JsonBody;
use crate::state::{RequestTracker, ServerState};

/// The handler.
pub(crate) async fn completions<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let pipeline = state.pipeline()?;
    let mut tracker = state.track("/v1/chat/completions", &headers);
    if request.is_stream() {
        let client_usage = request.include_usage();
        let chunks = match pipeline.chat_stream(request.streaming_with_usage()).await {
            Ok(chunks) => chunks,
            Err(e) => return Err(refuse(tracker, e)),
        };
        let events = tap(chunks, tracker, client_usage).map(|item| match item {
            Ok(chunk) => json_event(&chunk),
            Err(e) => error_event(e),
        });
        return Ok(sse(events, state.config().keep_alive));
    }
    let completion = match pipeline.chat(request).await {
        Ok(completion) => completion,
        Err(e) => return Err(refuse(tracker, e)),
    };
    tracker.finish(completion.usage, completion.metadata.as_ref());
    Ok(Json(completion).into_response())
}

/// Turns a pipeline error into the response error; a refusal (bad request, full queue) is not
/// an abandoned request, a fault is (the tracker's drop counts it).
pub(crate) fn refuse(tracker: RequestTracker, error: Error) -> ApiError {
    if error.is_client_error() || matches!(error, Error::QueueFull { .. }) {
        tracker.refused();
    }
    ApiError::Core(error)
}

/// An SSE response of `events`, with keep-alive comments and `data: [DONE]` last.
pub(crate) fn sse<S>(events: S, keep_alive: Duration) -> Response
where
    S: Stream<Item = Event> + Send + 'static,
{
    let done = stream::once(async { Event::default().data("[DONE]") });
    let body = events.chain(done).map(Ok::<_, Infallible>);
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response()
}

/// `data: <json>`.
pub(crate) fn json_event<T: serde::Serialize>(value: &T) -> Event {
    Event::default().json_data(value).unwrap_or_else(|e| {
        log_internal(&e);
        Event::default().data(r#"{"error":{"message":"cannot encode a chunk","type":"server_error","param":null,"code":null}}"#)
    })
}

/// The OpenAI error body as the last event of a stream that failed mid-way (the status line
/// has already gone out). The details are logged, not sent.
pub(crate) fn error_event(error: Error) -> Event {
    log_internal(&error);
    json_event(&ApiError::Core(error).body())
}

/// Follows a stream asked for with a usage chunk: records timing, tokens and prices on the
/// tracker, and reshapes the chunks to what the client asked for (see the module docs).
pub(crate) fn tap(
    chunks: ChatStream,
    tracker: RequestTracker,
    client_usage: bool,
) -> impl Stream<Item = Result<ChatCompletionChunk>> + Send {
    let tap = Tap {
        chunks,
        tracker,
        client_usage,
        held: None,
        over: false,
    };
    stream::unfold(tap, |mut tap| async move {
        let items = tap.next_items().await?;
        Some((stream::iter(items), tap))
    })
    .flatten()
}

struct Tap {
    chunks: ChatStream,
    tracker: RequestTracker,
    client_usage: bool,
    /// A chunk with a finish reason, held until we know whether price metadata joins it.
    held: Option<ChatCompletionChunk>,
    over: bool,
}

impl Tap {
    async fn next_items(&mut self) -> Option<Vec<Result<ChatCompletionChunk>>> {
        if self.over {
            return None;
        }
        let mut out = Vec::new();
        let mut chunk = match self.chunks.next().await {
            None => {
                self.over = true;
                out.extend(self.held.take().map(Ok));
                return Some(out);
            }
            Some(Err(e)) => {
                self.over = true;
                out.extend(self.held.take().map(Ok));
                out.push(Err(e));
                return Some(out);
            }
            Some(Ok(chunk)) => chunk,
        };
        if chunk.choices.is_empty()
            && let Some(usage) = chunk.usage().copied()
        {
            self.tracker.finish(usage, chunk.metadata.as_ref());
            if self.client_usage {
                out.push(Ok(chunk));
            } else if let Some(mut last) = self.held.take() {
                last.metadata = chunk.metadata.take();
                out.push(Ok(last));
            }
            return Some(out);
        }
        let has_text = chunk
            .choices
            .iter()
            .any(|c| c.delta.content.as_deref().is_some_and(|t| !t.is_empty()));
        if has_text {
            self.tracker.token();
        }
        out.extend(self.held.take().map(Ok));
        if self.client_usage {
            out.push(Ok(chunk));
        } else {
            chunk.usage = None;
            if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
                self.held = Some(chunk);
            } else {
                out.push(Ok(chunk));
            }
        }
        Some(out)
    }
}
