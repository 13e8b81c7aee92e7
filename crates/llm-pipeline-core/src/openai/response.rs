//! The response bodies of `POST /v1/chat/completions`: one `chat.completion`, or a stream of
//! `chat.completion.chunk`s.
//!
//! Clients parse these byte for byte, so the serialized shape follows OpenAI's own, including
//! which fields are written as `null` rather than left out: a chunk choice always carries
//! `"logprobs"` and `"finish_reason"` (null until the end), and a chunk carries `"usage"` only
//! when the client asked for it with `stream_options.include_usage` — then it is `null` on every
//! chunk but the last. Our one addition, the pricing [`ResponseMetadata`], is left out when
//! absent, so an OpenAI client sees nothing unfamiliar.

use serde::{Deserialize, Deserializer, Serialize};

use super::message::Role;
use super::tool_call::{ToolCall, ToolCallDelta};
use crate::pricing::Price;

/// A whole answer: the body of a non-streamed chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// The completion's id, `chatcmpl-…`.
    pub id: String,
    /// Always [`ChatCompletion::OBJECT`].
    pub object: String,
    /// When the completion was created, in Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// One choice per answer asked for (`n`).
    pub choices: Vec<Choice>,
    /// The tokens the request used.
    pub usage: Usage,
    /// Identifies the backend configuration that produced the answer.
    #[serde(default)]
    pub system_fingerprint: Option<String>,
    /// Extension: the request's price quote and charge. Left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ResponseMetadata>,
}

impl ChatCompletion {
    /// The `object` of a chat completion.
    pub const OBJECT: &'static str = "chat.completion";

    /// A completion with no choices, zero usage, and no fingerprint or metadata.
    pub fn new(id: impl Into<String>, model: impl Into<String>, created: u64) -> Self {
        Self {
            id: id.into(),
            object: Self::OBJECT.to_owned(),
            created,
            model: model.into(),
            choices: Vec::new(),
            usage: Usage::default(),
            system_fingerprint: None,
            metadata: None,
        }
    }
}

/// One answer of a [`ChatCompletion`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// The answer's position among the `n` answers.
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// The tokens' log probabilities, when the request asked for them; `null` otherwise.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// Why generation stopped.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

/// The message the model wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// Always [`Role::Assistant`].
    pub role: Role,
    /// The text; `null` when there is none.
    #[serde(default)]
    pub content: Option<String>,
    /// The tools the model called, when it called any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A reasoning model's reasoning (the text between its thinking tags), when it wrote any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl AssistantMessage {
    /// An assistant message with `content`.
    pub fn new(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: Some(content.into()),
            tool_calls: None,
            reasoning_content: None,
        }
    }

    /// An assistant message that calls `calls`, after `content` (`null` when blank).
    pub fn calling(content: &str, calls: Vec<ToolCall>) -> Self {
        Self {
            role: Role::Assistant,
            content: (!content.trim().is_empty()).then(|| content.to_owned()),
            tool_calls: Some(calls),
            reasoning_content: None,
        }
    }
}

/// One event of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// The completion's id, the same on every chunk of a stream.
    pub id: String,
    /// Always [`ChatCompletionChunk::OBJECT`].
    pub object: String,
    /// When the completion was created, in Unix seconds; the same on every chunk.
    pub created: u64,
    /// The model that answers.
    pub model: String,
    /// The pieces of each answer in this event; empty on the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Identifies the backend configuration that produced the answer.
    #[serde(default)]
    pub system_fingerprint: Option<String>,
    /// Three states, as OpenAI writes them: `None` leaves the field out (the client did not
    /// ask for usage), `Some(None)` writes `"usage": null` (asked for, but this is not the last
    /// chunk), `Some(Some(usage))` is the final usage chunk. [`ChatCompletionChunk::usage`]
    /// reads it flat.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_or_null"
    )]
    pub usage: Option<Option<Usage>>,
    /// Extension: the request's price quote and charge, on the last chunk. Left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ResponseMetadata>,
}

impl ChatCompletionChunk {
    /// The `object` of a chat completion chunk.
    pub const OBJECT: &'static str = "chat.completion.chunk";

    /// A chunk with no choices, no `usage` field, and no fingerprint or metadata.
    pub fn new(id: impl Into<String>, model: impl Into<String>, created: u64) -> Self {
        Self {
            id: id.into(),
            object: Self::OBJECT.to_owned(),
            created,
            model: model.into(),
            choices: Vec::new(),
            system_fingerprint: None,
            usage: None,
            metadata: None,
        }
    }

    /// Adds a choice.
    #[must_use]
    pub fn with_choice(mut self, choice: ChunkChoice) -> Self {
        self.choices.push(choice);
        self
    }

    /// Writes `"usage": null`, as every chunk but the last must when the client asked for usage.
    #[must_use]
    pub fn with_null_usage(mut self) -> Self {
        self.usage = Some(None);
        self
    }

    /// Makes this the final usage chunk.
    #[must_use]
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(Some(usage));
        self
    }

    /// The usage this chunk carries, if any.
    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref().and_then(Option::as_ref)
    }
}

/// Deserializes a field that was present: `null` becomes `Some(None)`. A missing field takes
/// the `#[serde(default)]`, `None`, so the three states survive a round trip.
fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The piece of one answer in a [`ChatCompletionChunk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// The answer's position among the `n` answers.
    pub index: u32,
    /// What is new in this event.
    pub delta: Delta,
    /// The new tokens' log probabilities, when the request asked for them; `null` otherwise.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// `null` until the answer's last chunk, which says why generation stopped.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

impl ChunkChoice {
    /// Choice `index` carrying `delta`, no logprobs, not finished.
    pub fn new(index: u32, delta: Delta) -> Self {
        Self {
            index,
            delta,
            logprobs: None,
            finish_reason: None,
        }
    }

    /// Sets the log probabilities of this piece.
    #[must_use]
    pub fn with_logprobs(mut self, logprobs: ChoiceLogprobs) -> Self {
        self.logprobs = Some(logprobs);
        self
    }

    /// Marks this as the answer's last chunk.
    #[must_use]
    pub fn with_finish_reason(mut self, reason: FinishReason) -> Self {
        self.finish_reason = Some(reason);
        self
    }
}

/// What a chunk adds to an answer. Absent fields are left out: the last chunk's delta is `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The author, on the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Pieces of tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// New reasoning text, for a reasoning model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl Delta {
    /// The first delta of an answer, as OpenAI and vLLM send it:
    /// `{"role": "assistant", "content": ""}`.
    pub fn start() -> Self {
        Self {
            role: Some(Role::Assistant),
            content: Some(String::new()),
            tool_calls: None,
            reasoning_content: None,
        }
    }

    /// A delta with new text.
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            role: None,
            content: Some(content.into()),
            tool_calls: None,
            reasoning_content: None,
        }
    }

    /// A delta with pieces of tool calls.
    pub fn calls(pieces: Vec<ToolCallDelta>) -> Self {
        Self {
            tool_calls: Some(pieces),
            ..Self::default()
        }
    }

    /// A delta with new reasoning text.
    pub fn reasoning(text: impl Into<String>) -> Self {
        Self {
            reasoning_content: Some(text.into()),
            ..Self::default()
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its answer, or a stop sequence matched.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The model called a tool.
    ToolCalls,
    /// Content was withheld by a filter (never produced by this crate).
    ContentFilter,
    /// The model called a function, the deprecated form of tools (never produced by this crate).
    FunctionCall,
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated, over all choices.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
    /// How the prompt tokens were processed; sent when some came from the prefix cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// The breakdown of a request's prompt tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV cache was reused from an earlier request instead of computed.
    #[serde(default)]
    pub cached_tokens: u32,
}

impl Usage {
    /// The usage of `prompt_tokens` in and `completion_tokens` out; the total is their sum.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: None,
        }
    }

    /// Records that `cached` of the prompt tokens came from the prefix cache (nothing when 0).
    pub fn with_cached_tokens(mut self, cached: u32) -> Self {
        self.prompt_tokens_details = (cached > 0).then_some(PromptTokensDetails {
            cached_tokens: cached,
        });
        self
    }
}

/// The log probabilities of a choice's tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    /// One entry per generated token, in order. (OpenAI may send `null`; it reads as empty.)
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: Vec<TokenLogprob>,
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Vec<T>>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// The lowest log probability written. JSON has no `-inf` (serde_json would write `null`), so
/// impossible tokens get this value, as OpenAI does.
pub const MIN_LOGPROB: f32 = -9999.0;

/// A generated token, its log probability, and the most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log probability (at least [`MIN_LOGPROB`]).
    pub logprob: f32,
    /// The token's UTF-8 bytes, for tokens that are not whole characters; may be `null`.
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    /// The most likely tokens at this position, most likely first (`top_logprobs` of them).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub top_logprobs: Vec<TopLogprob>,
}

impl TokenLogprob {
    /// A token with its log probability, clamped to [`MIN_LOGPROB`] (so `-inf` and NaN become
    /// it), its bytes taken from its text, and no alternatives.
    pub fn new(token: impl Into<String>, logprob: f32) -> Self {
        let token = token.into();
        Self {
            bytes: Some(token.as_bytes().to_vec()),
            token,
            logprob: clamp_logprob(logprob),
            top_logprobs: Vec::new(),
        }
    }
}

/// One of the most likely tokens at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log probability (at least [`MIN_LOGPROB`]).
    pub logprob: f32,
    /// The token's UTF-8 bytes; may be `null`.
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
}

impl TopLogprob {
    /// An alternative with its log probability, clamped to [`MIN_LOGPROB`], its bytes taken
    /// from its text.
    pub fn new(token: impl Into<String>, logprob: f32) -> Self {
        let token = token.into();
        Self {
            bytes: Some(token.as_bytes().to_vec()),
            token,
            logprob: clamp_logprob(logprob),
        }
    }
}

fn clamp_logprob(logprob: f32) -> f32 {
    if logprob.is_nan() {
        MIN_LOGPROB
    } else {
        logprob.max(MIN_LOGPROB)
    }
}

/// Extension: pricing of the request, as exact [`Price`]s, which go over the wire as reduced
/// rational strings (`"123/4"`). Sent as `"metadata"` on a completion and on a stream's last
/// chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseMetadata {
    /// The price quoted before generation (`max_tokens × price per unit / units`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_quote: Option<Price>,
    /// The price charged for the tokens actually used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_charged: Option<Price>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Serializes `value`, compares it with OpenAI's shape, and checks it parses back.
    fn assert_wire<T>(value: &T, expected: Value)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let actual = serde_json::to_value(value).unwrap();
        assert_eq!(actual, expected);
        assert_eq!(&serde_json::from_value::<T>(actual).unwrap(), value);
    }

    fn completion() -> ChatCompletion {
        let mut completion = ChatCompletion::new("chatcmpl-1", "tiny-llama", 1_700_000_000);
        completion.choices.push(Choice {
            index: 0,
            message: AssistantMessage::new("Hello there!"),
            logprobs: None,
            finish_reason: Some(FinishReason::Stop),
        });
        completion.usage = Usage::new(9, 3);
        completion
    }

    #[test]
    fn completion_has_openai_shape() {
        assert_wire(
            &completion(),
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "tiny-llama",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello there!"},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
                "system_fingerprint": null
            }),
        );
    }

    #[test]
    fn completion_carries_pricing_metadata_when_set() {
        let mut completion = completion();
        completion.metadata = Some(ResponseMetadata {
            price_quote: Some(Price::new(123, 4).unwrap()),
            price_charged: Some(Price::new(18, 4).unwrap()),
        });
        let value = serde_json::to_value(&completion).unwrap();
        assert_eq!(
            value["metadata"],
            json!({"price_quote": "123/4", "price_charged": "9/2"})
        );
        assert_eq!(
            serde_json::from_value::<ChatCompletion>(value).unwrap(),
            completion
        );
    }

    #[test]
    fn completion_with_logprobs_has_openai_shape() {
        let mut completion = completion();
        let mut token = TokenLogprob::new("Hi", -0.25);
        token.top_logprobs = vec![TopLogprob::new("Hi", -0.25), TopLogprob::new("Yo", -1.5)];
        completion.choices[0].logprobs = Some(ChoiceLogprobs {
            content: vec![token],
        });
        let value = serde_json::to_value(&completion).unwrap();
        assert_eq!(
            value["choices"][0]["logprobs"],
            json!({"content": [{
                "token": "Hi",
                "logprob": -0.25,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                    {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]}
                ]
            }]})
        );
        assert_eq!(
            serde_json::from_value::<ChatCompletion>(value).unwrap(),
            completion
        );
    }

    #[test]
    fn impossible_tokens_get_the_minimum_logprob() {
        assert_eq!(
            TokenLogprob::new("x", f32::NEG_INFINITY).logprob,
            MIN_LOGPROB
        );
        assert_eq!(TopLogprob::new("x", f32::NAN).logprob, MIN_LOGPROB);
        assert_eq!(TopLogprob::new("x", -2.0).logprob, -2.0);
    }

    #[test]
    fn stream_without_usage_has_openai_shape() {
        let header = || ChatCompletionChunk::new("chatcmpl-1", "tiny-llama", 1_700_000_000);
        let chunk = |choice: Value| {
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "tiny-llama",
                "system_fingerprint": null,
                "choices": [choice]
            })
        };
        assert_wire(
            &header().with_choice(ChunkChoice::new(0, Delta::start())),
            chunk(json!({
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": null,
                "finish_reason": null
            })),
        );
        assert_wire(
            &header().with_choice(ChunkChoice::new(0, Delta::text("Hello"))),
            chunk(json!({
                "index": 0,
                "delta": {"content": "Hello"},
                "logprobs": null,
                "finish_reason": null
            })),
        );
        assert_wire(
            &header().with_choice(
                ChunkChoice::new(0, Delta::default()).with_finish_reason(FinishReason::Length),
            ),
            chunk(json!({
                "index": 0,
                "delta": {},
                "logprobs": null,
                "finish_reason": "length"
            })),
        );
    }

    #[test]
    fn stream_with_usage_writes_null_then_the_usage_chunk() {
        let header = || ChatCompletionChunk::new("chatcmpl-1", "tiny-llama", 1_700_000_000);
        let content = header()
            .with_choice(ChunkChoice::new(0, Delta::text("Hi")))
            .with_null_usage();
        assert_wire(
            &content,
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "tiny-llama",
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "delta": {"content": "Hi"},
                    "logprobs": null,
                    "finish_reason": null
                }],
                "usage": null
            }),
        );
        assert_eq!(content.usage(), None);

        let last = header().with_usage(Usage::new(5, 2));
        assert_wire(
            &last,
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "tiny-llama",
                "system_fingerprint": null,
                "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            }),
        );
        assert_eq!(last.usage(), Some(&Usage::new(5, 2)));
    }

    #[test]
    fn parses_real_openai_stream_chunks() {
        // As api.openai.com sends them: extra fields, `refusal`, `service_tier`, usage details.
        let first = r#"{"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741569952,
            "model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf",
            "choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},
            "logprobs":null,"finish_reason":null}],"usage":null}"#;
        let chunk: ChatCompletionChunk = serde_json::from_str(first).unwrap();
        assert_eq!(chunk.system_fingerprint.as_deref(), Some("fp_f9f4fb6dbf"));
        assert_eq!(chunk.choices[0].delta, Delta::start());
        assert_eq!(chunk.usage, Some(None));

        let last = r#"{"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741569952,
            "model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":19,
            "completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let chunk: ChatCompletionChunk = serde_json::from_str(last).unwrap();
        let usage = Usage {
            prompt_tokens_details: Some(PromptTokensDetails::default()),
            ..Usage::new(19, 10)
        };
        assert_eq!(chunk.usage(), Some(&usage));
        assert_eq!(chunk.system_fingerprint, None);
    }

    #[test]
    fn parses_a_real_openai_completion() {
        let text = r#"{"id":"chatcmpl-B9","object":"chat.completion","created":1741569952,
            "model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant",
            "content":"Hello!","refusal":null,"annotations":[]},
            "logprobs":{"content":null,"refusal":null},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29},
            "service_tier":"default"}"#;
        let completion: ChatCompletion = serde_json::from_str(text).unwrap();
        assert_eq!(
            completion.choices[0].message,
            AssistantMessage::new("Hello!")
        );
        assert_eq!(
            completion.choices[0].logprobs,
            Some(ChoiceLogprobs::default())
        );
        assert_eq!(
            completion.choices[0].finish_reason,
            Some(FinishReason::Stop)
        );
        assert_eq!(completion.system_fingerprint, None);
        assert_eq!(completion.metadata, None);
    }

    #[test]
    fn finish_reasons_are_snake_case() {
        let reasons = [
            (FinishReason::Stop, "stop"),
            (FinishReason::Length, "length"),
            (FinishReason::ToolCalls, "tool_calls"),
            (FinishReason::ContentFilter, "content_filter"),
            (FinishReason::FunctionCall, "function_call"),
        ];
        for (reason, text) in reasons {
            assert_wire(&reason, json!(text));
        }
    }
}
