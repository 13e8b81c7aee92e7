//! The OpenAI chat-completion wire types: what comes in over HTTP and what goes back.
//!
//! These are plain serde types, faithful to the OpenAI API so that its clients work unchanged:
//! unknown request fields are ignored, and responses are written in OpenAI's exact JSON shape
//! (including which fields are `null` rather than absent). They carry no rules: a request is
//! checked and turned into legal values by [`crate::validation`], and responses are built by the
//! engine and the HTTP edge. Library users build requests in code with
//! [`ChatCompletionRequest::new`] and its `with_*` methods.
//!
//! - [`ChatCompletionRequest`] and its [`ChatMessage`]s: the body of `POST /v1/chat/completions`.
//! - [`ChatCompletion`], or a stream of [`ChatCompletionChunk`]s: the answer, with its
//!   [`ToolCall`]s (streamed as [`ToolCallDelta`]s).
//! - [`ErrorResponse`]: the error body.
//! - [`ModelList`]: the body of `GET /v1/models`.

mod error_body;
mod message;
mod models;
mod request;
mod response;
mod tool_call;

pub use error_body::{ErrorBody, ErrorResponse};
pub use message::{ChatMessage, ContentPart, MessageContent, Role};
pub use models::{ModelCard, ModelList};
pub use request::{ChatCompletionRequest, StopSequences, StreamOptions};
pub use response::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, ChoiceLogprobs, ChunkChoice,
    Delta, FinishReason, MIN_LOGPROB, PromptTokensDetails, ResponseMetadata, TokenLogprob,
    TopLogprob, Usage,
};
pub use tool_call::{FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta};
