//! The request body of `POST /v1/chat/completions`.
//!
//! These types say what the client *sent*, not what is legal: every field is optional or
//! defaulted, unknown fields are ignored, and fields we cannot honour yet (`tools`,
//! `response_format`, …) are captured as raw JSON so that validation can refuse them by name
//! instead of dropping them silently. Turning a [`ChatCompletionRequest`] into values the engine
//! can trust is the job of [`crate::validation`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::message::ChatMessage;

/// A chat completion request, as the OpenAI API defines it, plus the sampling extensions vLLM
/// accepts (`top_k`, `min_p`, `repetition_penalty`).
///
/// Build one in code with [`ChatCompletionRequest::new`] and the `with_*` methods:
///
/// ```
/// use llm_pipeline_core::openai::{ChatCompletionRequest, ChatMessage};
///
/// let request = ChatCompletionRequest::new("tiny-llama", vec![ChatMessage::user("Hello!")])
///     .with_max_tokens(32)
///     .with_temperature(0.0)
///     .with_stop(["\n\n"]);
/// assert_eq!(request.max_tokens, Some(32));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// The model to use; selects among the served models (never a path). May be empty when
    /// only one model is served.
    #[serde(default)]
    pub model: String,
    /// The conversation so far.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature; `0` means greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// The most tokens to generate (the older name of `max_completion_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Whether to stream the answer as `chat.completion.chunk` server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Options for a streamed answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Up to four strings that end the generation; the stop text is not returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSequences>,
    /// Seed for the sampler, for reproducible answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Penalty on tokens that have appeared at all, in `[-2, 2]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// Penalty on tokens in proportion to how often they appeared, in `[-2, 2]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Bias added to the logits of tokens, keyed by token id written as a decimal string (as
    /// JSON object keys must be). Validation parses the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Whether to return the log probability of each generated token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// How many most likely alternatives to return with each token (needs `logprobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u8>,
    /// How many answers to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// An identifier of the end user, for the caller's own tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Extension: keep only the `top_k` most likely tokens; `-1` or `0` disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    /// Extension: drop tokens less likely than `min_p` times the most likely one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Extension: divide the logits of tokens already seen by this factor (`1` disables it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// Not supported yet: tool definitions. Captured so validation can refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    /// Not supported yet: how to choose a tool. Captured so validation can refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Not supported yet: the deprecated form of `tools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Value>,
    /// Not supported yet: the deprecated form of `tool_choice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<Value>,
    /// The output format; only `{"type": "text"}` is supported (JSON modes are not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Not supported yet: whether tools may be called in parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<Value>,
    /// Not supported: audio output parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<Value>,
    /// Not supported: output modalities other than text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Value>,
    /// Not supported: predicted output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Value>,
    /// Not supported: reasoning effort of reasoning models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<Value>,
    /// Not supported: web search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_search_options: Option<Value>,
}

impl ChatCompletionRequest {
    /// A request for `model` over `messages`, every other field unset.
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            model: model.into(),
            messages,
            ..Self::default()
        }
    }

    /// Sets `max_tokens`, the most tokens to generate.
    #[must_use]
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets `max_completion_tokens`, the newer name of `max_tokens`.
    #[must_use]
    pub fn with_max_completion_tokens(mut self, max_tokens: u32) -> Self {
        self.max_completion_tokens = Some(max_tokens);
        self
    }

    /// Sets the sampling temperature (`0` is greedy).
    #[must_use]
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets `top_p`.
    #[must_use]
    pub fn with_top_p(mut self, top_p: f32) -> Self {
        self.top_p = Some(top_p);
        self
    }

    /// Sets the `top_k` extension.
    #[must_use]
    pub fn with_top_k(mut self, top_k: i32) -> Self {
        self.top_k = Some(top_k);
        self
    }

    /// Sets the `min_p` extension.
    #[must_use]
    pub fn with_min_p(mut self, min_p: f32) -> Self {
        self.min_p = Some(min_p);
        self
    }

    /// Sets the `repetition_penalty` extension.
    #[must_use]
    pub fn with_repetition_penalty(mut self, penalty: f32) -> Self {
        self.repetition_penalty = Some(penalty);
        self
    }

    /// Sets `presence_penalty`.
    #[must_use]
    pub fn with_presence_penalty(mut self, penalty: f32) -> Self {
        self.presence_penalty = Some(penalty);
        self
    }

    /// Sets `frequency_penalty`.
    #[must_use]
    pub fn with_frequency_penalty(mut self, penalty: f32) -> Self {
        self.frequency_penalty = Some(penalty);
        self
    }

    /// Adds `bias` to the logit of token `token_id` (an entry of `logit_bias`).
    #[must_use]
    pub fn with_logit_bias(mut self, token_id: u32, bias: f32) -> Self {
        self.logit_bias
            .get_or_insert_with(HashMap::new)
            .insert(token_id.to_string(), bias);
        self
    }

    /// Asks for the answer as a stream of chunks (`stream: true`).
    #[must_use]
    pub fn streaming(mut self) -> Self {
        self.stream = Some(true);
        self
    }

    /// Asks for a stream whose last chunk carries the token usage
    /// (`stream: true, stream_options: {include_usage: true}`).
    #[must_use]
    pub fn streaming_with_usage(mut self) -> Self {
        self.stream = Some(true);
        self.stream_options = Some(StreamOptions {
            include_usage: Some(true),
        });
        self
    }

    /// Sets the stop sequences: a string, or a list of strings.
    #[must_use]
    pub fn with_stop(mut self, stop: impl Into<StopSequences>) -> Self {
        self.stop = Some(stop.into());
        self
    }

    /// Sets the sampler's seed.
    #[must_use]
    pub fn with_seed(mut self, seed: i64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Asks for log probabilities of each token, with the `top` most likely alternatives.
    #[must_use]
    pub fn with_logprobs(mut self, top: u8) -> Self {
        self.logprobs = Some(true);
        self.top_logprobs = Some(top);
        self
    }

    /// Sets `n`, how many answers to generate.
    #[must_use]
    pub fn with_n(mut self, n: u32) -> Self {
        self.n = Some(n);
        self
    }

    /// Sets `user`, the caller's end-user identifier.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Whether the client asked for a stream (`stream: true`).
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether a stream should end with a usage chunk (`stream_options.include_usage: true`).
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|options| options.include_usage)
            == Some(true)
    }
}

/// Options of a streamed answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// If true, a last chunk with empty `choices` carries the usage of the whole request, and
    /// every other chunk has `"usage": null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// The `stop` field: one string, or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopSequences {
    /// `"stop": "\n"`.
    Single(String),
    /// `"stop": ["\n", "User:"]`.
    Many(Vec<String>),
}

impl StopSequences {
    /// The stop strings as a slice, whichever form was sent.
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::Single(stop) => std::slice::from_ref(stop),
            Self::Many(stops) => stops,
        }
    }
}

impl From<&str> for StopSequences {
    fn from(stop: &str) -> Self {
        Self::Single(stop.to_owned())
    }
}

impl From<String> for StopSequences {
    fn from(stop: String) -> Self {
        Self::Single(stop)
    }
}

impl From<Vec<String>> for StopSequences {
    fn from(stops: Vec<String>) -> Self {
        Self::Many(stops)
    }
}

impl<const N: usize> From<[&str; N]> for StopSequences {
    fn from(stops: [&str; N]) -> Self {
        Self::Many(stops.iter().map(|stop| (*stop).to_owned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::openai::Role;

    fn parse(value: Value) -> ChatCompletionRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn parses_a_minimal_request_with_string_content() {
        let request = parse(json!({
            "model": "tiny-llama",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello!"}
            ]
        }));
        assert_eq!(
            request,
            ChatCompletionRequest::new(
                "tiny-llama",
                vec![
                    ChatMessage::system("Be brief."),
                    ChatMessage::user("Hello!")
                ]
            )
        );
        assert!(!request.is_stream());
        assert!(!request.include_usage());
    }

    #[test]
    fn parses_a_request_as_the_openai_python_client_sends_it() {
        let text = r#"{"messages":[{"role":"developer","content":"You are terse."},
            {"role":"user","content":[{"type":"text","text":"Name a colour."}]}],
            "model":"tiny-llama","max_completion_tokens":16,"stream":true,
            "stream_options":{"include_usage":true},"stop":"\n","logit_bias":{"198":-100},
            "store":false}"#;
        let request: ChatCompletionRequest = serde_json::from_str(text).unwrap();
        assert_eq!(request.messages[0].role, Role::Developer);
        assert_eq!(
            request.messages[1].text().as_deref(),
            Some("Name a colour.")
        );
        assert_eq!(request.max_completion_tokens, Some(16));
        assert!(request.is_stream() && request.include_usage());
        assert_eq!(request.stop, Some(StopSequences::Single("\n".into())));
        assert_eq!(
            request.logit_bias,
            Some(HashMap::from([("198".to_owned(), -100.0)]))
        );
    }

    #[test]
    fn model_and_messages_may_be_missing() {
        let request = parse(json!({}));
        assert_eq!(request.model, "");
        assert!(request.messages.is_empty());
    }

    #[test]
    fn stop_is_a_string_or_a_list() {
        let single = parse(json!({"stop": "\n"}));
        assert_eq!(single.stop, Some(StopSequences::Single("\n".into())));
        assert_eq!(single.stop.unwrap().as_slice(), ["\n"]);

        let many = parse(json!({"stop": ["User:", "###"]}));
        assert_eq!(many.stop.as_ref().unwrap().as_slice(), ["User:", "###"]);

        assert_eq!(parse(json!({"stop": null})).stop, None);
    }

    #[test]
    fn parses_sampling_and_stream_fields() {
        let request = parse(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.5,
            "top_p": 0.25,
            "max_tokens": 64,
            "max_completion_tokens": 32,
            "stream": true,
            "stream_options": {"include_usage": true},
            "seed": -7,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "logit_bias": {"50256": -100, "13": 2.5},
            "logprobs": true,
            "top_logprobs": 5,
            "n": 1,
            "user": "user-123",
            "top_k": 40,
            "min_p": 0.125,
            "repetition_penalty": 1.5
        }));
        let expected = ChatCompletionRequest::new("m", vec![ChatMessage::user("hi")])
            .with_temperature(0.5)
            .with_top_p(0.25)
            .with_max_tokens(64)
            .with_max_completion_tokens(32)
            .streaming_with_usage()
            .with_seed(-7)
            .with_presence_penalty(0.5)
            .with_frequency_penalty(-0.5)
            .with_logit_bias(50256, -100.0)
            .with_logit_bias(13, 2.5)
            .with_logprobs(5)
            .with_n(1)
            .with_user("user-123")
            .with_top_k(40)
            .with_min_p(0.125)
            .with_repetition_penalty(1.5);
        assert_eq!(request, expected);
        assert!(request.is_stream());
        assert!(request.include_usage());
        assert_eq!(request.logit_bias.as_ref().unwrap()["50256"], -100.0);
    }

    #[test]
    fn ignores_unknown_fields_and_captures_unsupported_ones() {
        let request = parse(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi", "some_future_field": 1}],
            "store": true,
            "metadata": {"k": "v"},
            "service_tier": "auto",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
            "response_format": {"type": "json_object"},
            "parallel_tool_calls": false,
            "modalities": ["text", "audio"]
        }));
        assert_eq!(
            request.tools,
            Some(json!([{"type": "function", "function": {"name": "f"}}]))
        );
        assert_eq!(request.tool_choice, Some(json!("auto")));
        assert_eq!(
            request.response_format,
            Some(json!({"type": "json_object"}))
        );
        assert_eq!(request.parallel_tool_calls, Some(json!(false)));
        assert_eq!(request.modalities, Some(json!(["text", "audio"])));
        assert_eq!(request.messages, [ChatMessage::user("hi")]);
    }

    #[test]
    fn serializes_only_the_fields_that_are_set() {
        let request = ChatCompletionRequest::new("m", vec![ChatMessage::user("hi")])
            .with_max_tokens(8)
            .with_stop(["a", "b"])
            .streaming();
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(
            value,
            json!({
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8,
                "stream": true,
                "stop": ["a", "b"]
            })
        );
        assert_eq!(parse(value), request);
    }
}
