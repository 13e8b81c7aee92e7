//! Validation: an OpenAI request becomes a [`GenerationRequest`] whose values are all legal.
//!
//! Parse, don't validate: everything after this module takes a `GenerationRequest` and never
//! checks a range again. Every failure is an [`Error::Validation`] naming the field in the
//! OpenAI spelling and the accepted limit. Fields we cannot honour (images, audio) are refused
//! by name rather than silently dropped. Tool use has its own file, `tools.rs`.

use serde_json::Value;

use crate::openai::{ChatCompletionRequest, ChatMessage, ContentPart, MessageContent, Role};
use crate::sampling::{Logprobs, SamplingParams};
use crate::structured::Grammar;
use crate::structured::tools::{ToolChoice, ToolUse};
use crate::{Error, Result};

mod tools;

pub use tools::{MAX_TOOLS, PromptToolCall};

/// The most stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string, in bytes (each one is matched against the text at every token).
pub const MAX_STOP_LEN: usize = 1024;
/// Longest `user` and message `name`, `tool_call_id`, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// The most choices per request.
pub const MAX_N: u32 = 8;
/// The most alternatives in `top_logprobs` (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// What validation needs to know about the served model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLimits {
    /// The served model's id; a request's non-empty `model` must equal it.
    pub model_id: String,
    /// The vocabulary size, bounding `logit_bias` keys.
    pub vocab_size: usize,
    /// The model's sampling defaults, for the fields a request leaves out.
    pub defaults: SamplingDefaults,
}

/// A model's sampling defaults (`generation_config.json`), used for the fields a request
/// leaves out, as vLLM does by default: Llama 3.1 asks temperature 0.6 and top-p 0.9, Qwen2.5
/// adds top-k 20 and a repetition penalty. `do_sample` is not read (vLLM does not either): a
/// request wanting greedy output says `temperature: 0`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingDefaults {
    /// Default `temperature`.
    pub temperature: Option<f32>,
    /// Default `top_p`.
    pub top_p: Option<f32>,
    /// Default `top_k`.
    pub top_k: Option<i32>,
    /// Default `min_p`.
    pub min_p: Option<f32>,
    /// Default `repetition_penalty`.
    pub repetition_penalty: Option<f32>,
}

impl SamplingDefaults {
    /// Reads the defaults of a `generation_config.json`; a value outside what a request may ask
    /// is left out (and logged), so a default can never make a request invalid.
    pub fn from_generation_config(config: &serde_json::Value) -> Self {
        let number = |key: &str, valid: &dyn Fn(f64) -> bool| -> Option<f64> {
            let v = config.get(key)?.as_f64()?;
            if valid(v) {
                Some(v)
            } else {
                tracing::warn!(key, value = v, "generation_config.json default ignored");
                None
            }
        };
        Self {
            temperature: number("temperature", &|v| (0.0..=2.0).contains(&v)).map(|v| v as f32),
            top_p: number("top_p", &|v| v > 0.0 && v <= 1.0).map(|v| v as f32),
            top_k: number("top_k", &|v| v >= -1.0 && v.fract() == 0.0 && v < 1e9).map(|v| v as i32),
            min_p: number("min_p", &|v| (0.0..=1.0).contains(&v)).map(|v| v as f32),
            repetition_penalty: number("repetition_penalty", &|v| v > 0.0 && v.is_finite())
                .map(|v| v as f32),
        }
    }
}

/// One message ready for the chat template: a role and plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMessage {
    /// `system`, `user`, `assistant` or `tool` (`developer` becomes `system`).
    pub role: Role,
    /// The text (text parts joined).
    pub content: String,
    /// For an assistant message: the tool calls it made.
    pub tool_calls: Vec<PromptToolCall>,
    /// For a tool message: the call it answers.
    pub tool_call_id: Option<String>,
}

impl PromptMessage {
    /// The message in OpenAI's shape, for a chat template that may use tools: `role`,
    /// `content`, and `tool_calls` (arguments as objects) or `tool_call_id` where set.
    pub fn to_template(&self) -> Value {
        let mut message = serde_json::json!({"role": self.role.as_str(), "content": self.content});
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = self
                .tool_calls
                .iter()
                .map(PromptToolCall::to_template)
                .collect();
        }
        if let Some(id) = &self.tool_call_id {
            message["tool_call_id"] = Value::from(id.as_str());
        }
        message
    }
}

/// Whether the answer is streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One `chat.completion`.
    Whole,
    /// `chat.completion.chunk`s; with a final usage chunk when `include_usage` is set.
    Stream {
        /// `stream_options.include_usage`.
        include_usage: bool,
    },
}

/// A chat request with every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The conversation.
    pub messages: Vec<PromptMessage>,
    /// `max_completion_tokens` or `max_tokens`, at least 1; `None` means up to the context end.
    pub max_tokens: Option<u32>,
    /// Sampling settings (the seed is the request's, or a random one).
    pub sampling: SamplingParams,
    /// At most [`MAX_STOP_STRINGS`] non-empty stop strings.
    pub stop: Vec<String>,
    /// Choices to generate, in `1..=MAX_N`.
    pub n: u32,
    /// Streamed or whole.
    pub delivery: Delivery,
    /// The grammar `response_format` asks the answer to follow; `None` for free text.
    pub format: Option<Grammar>,
    /// The tools the model is shown and how it may call them; `None` without tools.
    pub tools: Option<ToolUse>,
}

/// Validates `request` against the served model.
///
/// # Errors
/// [`Error::Validation`] for the first invalid field, naming it and its limit.
pub fn validate(request: &ChatCompletionRequest, model: &ModelLimits) -> Result<GenerationRequest> {
    refuse_unsupported(request)?;
    // A client may name the model as served or as the operator configured it (a path).
    if !request.model.is_empty() && crate::model::served_name(&request.model) != model.model_id {
        return Err(Error::validation(
            "model",
            format!(
                "the model `{}` is not served here; this server serves `{}`",
                request.model, model.model_id
            ),
        ));
    }
    let messages = messages(&request.messages)?;
    let tools = tools::tool_use(request)?;
    let format = response_format(request.response_format.as_ref())?;
    if format.is_some()
        && let Some(tools) = &tools
        && tools.choice != ToolChoice::None
    {
        return Err(Error::validation(
            "response_format",
            "cannot be combined with tool calls; set `tool_choice` to `none` or leave \
             `response_format` out",
        ));
    }
    bounded("user", request.user.as_deref())?;
    if request.stream_options.is_some() && !request.stream.unwrap_or(false) {
        return Err(Error::validation(
            "stream_options",
            "is only allowed when `stream` is true",
        ));
    }
    let defaults = &model.defaults;
    let temperature = in_range(
        "temperature",
        request.temperature.or(defaults.temperature),
        1.0,
        0.0..=2.0,
    )?;
    let top_p = request.top_p.or(defaults.top_p).unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(Error::validation(
            "top_p",
            format!("{top_p} is not in (0, 1]"),
        ));
    }
    let top_k = match request.top_k.or(defaults.top_k).unwrap_or(-1) {
        k if k < -1 => {
            return Err(Error::validation(
                "top_k",
                format!("{k} is below -1 (-1 or 0 disables top-k)"),
            ));
        }
        k => k.max(0) as usize,
    };
    let min_p = in_range("min_p", request.min_p.or(defaults.min_p), 0.0, 0.0..=1.0)?;
    let presence_penalty = in_range(
        "presence_penalty",
        request.presence_penalty,
        0.0,
        -2.0..=2.0,
    )?;
    let frequency_penalty = in_range(
        "frequency_penalty",
        request.frequency_penalty,
        0.0,
        -2.0..=2.0,
    )?;
    let repetition_penalty = request
        .repetition_penalty
        .or(defaults.repetition_penalty)
        .unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
        return Err(Error::validation(
            "repetition_penalty",
            format!("{repetition_penalty} must be greater than 0"),
        ));
    }
    let max_tokens = max_tokens(request)?;
    let stop = stop_strings(request)?;
    let n = request.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(Error::validation(
            "n",
            format!("{n} is not in [1, {MAX_N}]"),
        ));
    }
    let logprobs = logprobs(request)?;
    let logit_bias = logit_bias(request, model.vocab_size)?;
    let seed = match request.seed {
        Some(seed) => seed as u64,
        None => rand::random(),
    };
    let delivery = if request.stream.unwrap_or(false) {
        Delivery::Stream {
            include_usage: request.include_usage(),
        }
    } else {
        Delivery::Whole
    };
    Ok(GenerationRequest {
        messages,
        max_tokens,
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
            presence_penalty,
            frequency_penalty,
            repetition_penalty,
            logit_bias,
            seed,
            logprobs,
        },
        stop,
        n,
        delivery,
        format,
        tools,
    })
}

/// The most bytes of a `response_format` JSON schema (it is compiled for each request).
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// Reads `response_format`: `text`, `json_object`, or `json_schema` with its `schema` (a JSON
/// object, at most [`MAX_SCHEMA_BYTES`]). Whether the schema compiles is checked by the
/// pipeline, which owns the grammar engine.
fn response_format(format: Option<&Value>) -> Result<Option<Grammar>> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let kind = format.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::JsonObject)),
        Some("json_schema") => {
            let param = "response_format.json_schema";
            let Some(spec) = format.get("json_schema").filter(|s| !s.is_null()) else {
                return Err(Error::validation(
                    param,
                    "is required when `type` is `json_schema`",
                ));
            };
            if let Some(name) = spec.get("name")
                && !name.as_str().is_some_and(is_function_name)
            {
                return Err(Error::validation(
                    "response_format.json_schema.name",
                    "must be 1 to 64 letters, digits, `_` or `-`",
                ));
            }
            let schema = match spec.get("schema") {
                None | Some(Value::Null) => serde_json::json!({}),
                Some(schema @ (Value::Object(_) | Value::Bool(_))) => schema.clone(),
                Some(other) => {
                    return Err(Error::validation(
                        "response_format.json_schema.schema",
                        format!("must be a JSON Schema object, not {other}"),
                    ));
                }
            };
            let bytes = schema.to_string().len();
            if bytes > MAX_SCHEMA_BYTES {
                return Err(Error::validation(
                    "response_format.json_schema.schema",
                    format!("is {bytes} bytes; at most {MAX_SCHEMA_BYTES} are allowed"),
                ));
            }
            Ok(Some(Grammar::JsonSchema(schema)))
        }
        _ => Err(Error::validation(
            "response_format.type",
            format!(
                "{} is not one of `text`, `json_object`, `json_schema`",
                format.get("type").unwrap_or(&Value::Null)
            ),
        )),
    }
}

/// Whether `name` is a legal function (or schema) name: 1 to 64 of `[A-Za-z0-9_-]`, as OpenAI
/// requires.
pub(crate) fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn in_range(
    param: &str,
    value: Option<f32>,
    default: f32,
    range: std::ops::RangeInclusive<f32>,
) -> Result<f32> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(Error::validation(
            param,
            format!("{v} is not in [{}, {}]", range.start(), range.end()),
        ))
    }
}

fn is_set(v: &Option<Value>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_null())
}

fn refuse_unsupported(r: &ChatCompletionRequest) -> Result<()> {
    let unsupported = |param: &str, what: &str| {
        Err(Error::validation(
            param,
            format!("{what} is not supported by this server"),
        ))
    };
    if is_set(&r.audio) {
        return unsupported("audio", "audio output");
    }
    if let Some(m) = r.modalities.as_ref().filter(|m| !m.is_null()) {
        let text_only = m
            .as_array()
            .is_some_and(|a| a.iter().all(|v| v.as_str() == Some("text")));
        if !text_only {
            return unsupported("modalities", "any modality but `text`");
        }
    }
    if is_set(&r.prediction) {
        return unsupported("prediction", "predicted output");
    }
    if is_set(&r.reasoning_effort) {
        return unsupported("reasoning_effort", "reasoning effort");
    }
    if is_set(&r.web_search_options) {
        return unsupported("web_search_options", "web search");
    }
    Ok(())
}

fn messages(messages: &[ChatMessage]) -> Result<Vec<PromptMessage>> {
    if messages.is_empty() {
        return Err(Error::validation(
            "messages",
            "at least one message is required",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let tool_calls = match m.role {
                Role::Assistant => tools::message_calls(i, m.tool_calls.as_ref())?,
                _ if is_set(&m.tool_calls) => {
                    return Err(Error::validation(
                        format!("messages[{i}].tool_calls"),
                        "only assistant messages make tool calls",
                    ));
                }
                _ => Vec::new(),
            };
            bounded(&format!("messages[{i}].name"), m.name.as_deref())?;
            bounded(
                &format!("messages[{i}].tool_call_id"),
                m.tool_call_id.as_deref(),
            )?;
            let content = match &m.content {
                None if matches!(m.role, Role::User | Role::System | Role::Developer) => {
                    return Err(Error::validation(
                        format!("messages[{i}].content"),
                        format!("a `{}` message needs content", m.role.as_str()),
                    ));
                }
                None => String::new(),
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, part) in parts.iter().enumerate() {
                        match part {
                            ContentPart::Text { text } => texts.push(text.as_str()),
                            other => {
                                return Err(Error::validation(
                                    format!("messages[{i}].content[{j}].type"),
                                    format!(
                                        "content of type `{}` is not supported; only `text`",
                                        other.kind()
                                    ),
                                ));
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            let role = match m.role {
                Role::Developer => Role::System,
                r => r,
            };
            Ok(PromptMessage {
                role,
                content,
                tool_calls,
                tool_call_id: m.tool_call_id.clone(),
            })
        })
        .collect()
}

/// Refuses an identifier-like string field longer than [`MAX_ID_LEN`].
fn bounded(param: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(v) if v.len() > MAX_ID_LEN => Err(Error::validation(
            param,
            format!("is {} bytes; at most {MAX_ID_LEN} are allowed", v.len()),
        )),
        _ => Ok(()),
    }
}

fn max_tokens(r: &ChatCompletionRequest) -> Result<Option<u32>> {
    let (param, value) = match (r.max_completion_tokens, r.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", Some(v)),
        (None, v) => ("max_tokens", v),
    };
    match value {
        Some(0) => Err(Error::validation(param, "0 is below the minimum of 1")),
        v => Ok(v),
    }
}

fn stop_strings(r: &ChatCompletionRequest) -> Result<Vec<String>> {
    let stops = r.stop.as_ref().map(|s| s.as_slice()).unwrap_or(&[]);
    if stops.len() > MAX_STOP_STRINGS {
        return Err(Error::validation(
            "stop",
            format!(
                "{} stop strings given; at most {MAX_STOP_STRINGS} are allowed",
                stops.len()
            ),
        ));
    }
    if let Some(i) = stops.iter().position(String::is_empty) {
        return Err(Error::validation(
            format!("stop[{i}]"),
            "stop strings must not be empty",
        ));
    }
    if let Some(i) = stops.iter().position(|s| s.len() > MAX_STOP_LEN) {
        return Err(Error::validation(
            format!("stop[{i}]"),
            format!(
                "is {} bytes; stop strings are at most {MAX_STOP_LEN}",
                stops[i].len()
            ),
        ));
    }
    Ok(stops.to_vec())
}

fn logprobs(r: &ChatCompletionRequest) -> Result<Logprobs> {
    match (r.logprobs.unwrap_or(false), r.top_logprobs) {
        (false, None) => Ok(Logprobs::Off),
        (false, Some(_)) => Err(Error::validation(
            "top_logprobs",
            "requires `logprobs` to be true",
        )),
        (true, top) => {
            let top = top.unwrap_or(0);
            if top > MAX_TOP_LOGPROBS {
                return Err(Error::validation(
                    "top_logprobs",
                    format!("{top} is not in [0, {MAX_TOP_LOGPROBS}]"),
                ));
            }
            Ok(Logprobs::On { top: top.into() })
        }
    }
}

fn logit_bias(r: &ChatCompletionRequest, vocab_size: usize) -> Result<Vec<(u32, f32)>> {
    let Some(map) = &r.logit_bias else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, &bias) in map {
        let param = || format!("logit_bias[{key}]");
        // Only the canonical spelling: `05`, ` 5` or `+5` beside `5` would name one token twice.
        let id: u32 = key
            .parse()
            .ok()
            .filter(|id: &u32| id.to_string() == *key)
            .ok_or_else(|| {
                Error::validation(
                    param(),
                    "keys must be token ids in canonical decimal (no sign, spaces or leading zeros)",
                )
            })?;
        if id as usize >= vocab_size {
            return Err(Error::validation(
                param(),
                format!("token id {id} is outside the vocabulary of {vocab_size} tokens"),
            ));
        }
        if !(-100.0..=100.0).contains(&bias) {
            return Err(Error::validation(
                param(),
                format!("{bias} is not in [-100, 100]"),
            ));
        }
        out.push((id, bias));
    }
    out.sort_by_key(|&(id, _)| id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> ModelLimits {
        ModelLimits {
            model_id: "smollm2".into(),
            vocab_size: 1000,
            defaults: SamplingDefaults::default(),
        }
    }

    fn req(extra: Value) -> ChatCompletionRequest {
        let mut base = json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn param_of(extra: Value) -> String {
        match validate(&req(extra), &limits()) {
            Err(Error::Validation { param, .. }) => param,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_openai_defaults() {
        let g = validate(&req(json!({"seed": 7})), &limits()).unwrap();
        assert_eq!(g.sampling.temperature, 1.0);
        assert_eq!(g.sampling.top_p, 1.0);
        assert_eq!(g.sampling.top_k, 0);
        assert_eq!(g.sampling.seed, 7);
        assert_eq!(g.n, 1);
        assert_eq!(g.max_tokens, None);
        assert_eq!(g.delivery, Delivery::Whole);
        assert_eq!(g.messages[0].content, "hi");
    }

    #[test]
    fn each_range_names_its_field() {
        let cases = [
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"top_p": 0.0}), "top_p"),
            (json!({"top_p": 1.1}), "top_p"),
            (json!({"top_k": -2}), "top_k"),
            (json!({"min_p": 1.5}), "min_p"),
            (json!({"presence_penalty": 2.1}), "presence_penalty"),
            (json!({"frequency_penalty": -3}), "frequency_penalty"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": ["a", ""]}), "stop[1]"),
            (
                json!({"stop": ["a", "x".repeat(MAX_STOP_LEN + 1)]}),
                "stop[1]",
            ),
            (json!({"user": "u".repeat(MAX_ID_LEN + 1)}), "user"),
            (
                json!({"messages": [{"role": "user", "content": "hi", "name": "n".repeat(300)}]}),
                "messages[0].name",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "system", "content": null}, {"role": "user", "content": "hi"}]}),
                "messages[0].content",
            ),
            (
                json!({"stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (json!({"n": 0}), "n"),
            (json!({"n": 9}), "n"),
            (json!({"messages": []}), "messages"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (
                json!({"logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (json!({"logit_bias": {"abc": 1}}), "logit_bias[abc]"),
            (json!({"logit_bias": {"5000": 1}}), "logit_bias[5000]"),
            (json!({"logit_bias": {"5": 101}}), "logit_bias[5]"),
            (json!({"model": "gpt-4"}), "model"),
        ];
        for (extra, param) in cases {
            assert_eq!(param_of(extra.clone()), param, "{extra}");
        }
    }

    #[test]
    fn messages_show_the_limit() {
        let err = validate(&req(json!({"temperature": 3})), &limits()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `temperature`: 3 is not in [0, 2]"
        );
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let img = json!([{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]);
        assert_eq!(
            param_of(json!({"messages": img})),
            "messages[0].content[1].type"
        );
        // Harmless values are accepted.
        let ok = json!({"response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
                        "parallel_tool_calls": true, "modalities": ["text"], "user": "u1",
                        "some_future_field": 1});
        validate(&req(ok), &limits()).unwrap();
    }

    #[test]
    fn tools_and_tool_choice_become_tool_use() {
        let weather = json!({"type": "function", "function": {
            "name": "get_weather", "description": "The weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
        let time = json!({"type": "function", "function": {"name": "get_time"}});
        let tools = |extra: Value| {
            let mut body = json!({"tools": [weather, time]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            validate(&req(body), &limits()).unwrap().tools.unwrap()
        };
        let auto = tools(json!({}));
        assert_eq!(auto.choice, ToolChoice::Auto);
        assert!(auto.parallel);
        assert_eq!(auto.tools[0].name, "get_weather");
        assert_eq!(auto.tools[0].definition, weather);
        assert_eq!(
            auto.tools[1].parameters,
            json!({"type": "object", "properties": {}})
        );
        let named = tools(
            json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}},
                                 "parallel_tool_calls": false}),
        );
        assert_eq!(named.choice, ToolChoice::Function("get_time".into()));
        assert!(!named.parallel);
        assert_eq!(
            tools(json!({"tool_choice": "required"})).choice,
            ToolChoice::Required
        );
        assert_eq!(
            tools(json!({"tool_choice": "none"})).choice,
            ToolChoice::None
        );
        // No tools, no tool use.
        assert_eq!(
            validate(&req(json!({"tool_choice": "none"})), &limits())
                .unwrap()
                .tools,
            None
        );

        let cases = [
            (json!({"tools": {"a": 1}}), "tools"),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (
                json!({"tools": [{"type": "function"}]}),
                "tools[0].function",
            ),
            (
                json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tools": [weather, weather]}),
                "tools[1].function.name",
            ),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
                "tools[0].function.parameters",
            ),
            (
                json!({"tools": [weather], "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (
                json!({"tools": [weather], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice.function.name",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"parallel_tool_calls": "yes"}), "parallel_tool_calls"),
            (json!({"functions": [{"name": "f"}]}), "functions"),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(body.clone()), param, "{body}");
        }
    }

    #[test]
    fn assistant_tool_calls_and_tool_results_reach_the_prompt() {
        let g = validate(
            &req(json!({"messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "22 C"}
            ]})),
            &limits(),
        )
        .unwrap();
        assert_eq!(
            g.messages[1].tool_calls,
            [PromptToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris"}),
            }]
        );
        assert_eq!(g.messages[2].tool_call_id.as_deref(), Some("call_1"));
        let bad = json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c",
            "function": {"name": "f", "arguments": "{oops"}}]}]});
        assert_eq!(
            param_of(bad),
            "messages[0].tool_calls[0].function.arguments"
        );
        let bad = json!({"messages": [{"role": "user", "content": "x", "tool_calls": []}]});
        assert_eq!(param_of(bad), "messages[0].tool_calls");
    }

    #[test]
    fn response_formats_become_grammars() {
        let format = |f: Value| {
            validate(&req(json!({"response_format": f})), &limits())
                .unwrap()
                .format
        };
        assert_eq!(format(json!({"type": "text"})), None);
        assert_eq!(
            format(json!({"type": "json_object"})),
            Some(Grammar::JsonObject)
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            format(json!({"type": "json_schema",
                          "json_schema": {"name": "answer", "schema": schema, "strict": true}})),
            Some(Grammar::JsonSchema(schema))
        );
        assert_eq!(
            format(json!({"type": "json_schema", "json_schema": {"name": "any"}})),
            Some(Grammar::JsonSchema(json!({})))
        );
        let cases = [
            (json!({"type": "xml"}), "response_format.type"),
            (json!({}), "response_format.type"),
            (
                json!({"type": "json_schema"}),
                "response_format.json_schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}),
                "response_format.json_schema.name",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}}),
                "response_format.json_schema.schema",
            ),
        ];
        for (f, param) in cases {
            assert_eq!(param_of(json!({"response_format": f})), param, "{f}");
        }
    }

    #[test]
    fn legal_values_are_carried() {
        let g = validate(
            &req(json!({
                "messages": [{"role": "developer", "content": "be brief"},
                             {"role": "user", "content": [{"type": "text", "text": "a"},
                                                          {"type": "text", "text": "b"}]}],
                "temperature": 0, "top_p": 0.5, "top_k": -1, "min_p": 0.1,
                "max_tokens": 10, "max_completion_tokens": 5, "stop": "END", "n": 2,
                "logprobs": true, "top_logprobs": 3, "logit_bias": {"42": -100},
                "stream": true, "stream_options": {"include_usage": true}, "model": ""
            })),
            &limits(),
        )
        .unwrap();
        assert_eq!(g.messages[0].role, Role::System);
        assert_eq!(g.messages[1].content, "a\nb");
        assert_eq!(g.max_tokens, Some(5));
        assert_eq!(g.stop, vec!["END".to_string()]);
        assert_eq!(g.n, 2);
        assert_eq!(g.sampling.top_k, 0);
        assert_eq!(g.sampling.logprobs, Logprobs::On { top: 3 });
        assert_eq!(g.sampling.logit_bias, vec![(42, -100.0)]);
        assert_eq!(
            g.delivery,
            Delivery::Stream {
                include_usage: true
            }
        );
    }

    #[test]
    fn unseeded_requests_get_different_seeds() {
        let a = validate(&req(json!({})), &limits()).unwrap();
        let b = validate(&req(json!({})), &limits()).unwrap();
        assert_ne!(a.sampling.seed, b.sampling.seed);
    }

    #[test]
    fn the_models_defaults_fill_what_the_request_leaves_out() {
        let defaults = SamplingDefaults::from_generation_config(&json!({
            "do_sample": true, "temperature": 0.6, "top_p": 0.9, "top_k": 20,
            "repetition_penalty": 1.05, "min_p": 7.0
        }));
        assert_eq!(defaults.min_p, None, "an out-of-range default is ignored");
        let model = ModelLimits {
            defaults,
            ..limits()
        };
        let g = validate(&req(json!({})), &model).unwrap();
        assert_eq!(g.sampling.temperature, 0.6);
        assert_eq!(g.sampling.top_p, 0.9);
        assert_eq!(g.sampling.top_k, 20);
        assert_eq!(g.sampling.repetition_penalty, 1.05);
        let g = validate(&req(json!({"temperature": 0.0, "top_k": -1})), &model).unwrap();
        assert_eq!(g.sampling.temperature, 0.0, "the request's own value wins");
        assert_eq!(g.sampling.top_k, 0);
    }

    #[test]
    fn logit_bias_keys_are_canonical_and_parallel_tool_calls_a_boolean() {
        for key in ["05", " 5", "+5", "5 "] {
            assert_eq!(
                param_of(json!({"logit_bias": {key: 1.0}})),
                format!("logit_bias[{key}]")
            );
        }
        assert!(
            validate(
                &req(json!({"logit_bias": {"5": 1.0, "0": -1.0}})),
                &limits()
            )
            .is_ok()
        );
        assert_eq!(
            param_of(json!({"parallel_tool_calls": "yes"})),
            "parallel_tool_calls"
        );
    }
}
