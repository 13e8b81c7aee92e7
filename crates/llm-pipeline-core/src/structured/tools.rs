//! Tool calling: the tools a request declares, the model family's tool-call format, the grammar
//! of a valid call in that format, and the parser of an answer into calls.
//!
//! Models are trained to call tools in their family's own text format, which their chat template
//! describes to them; the server's job is to make that text a valid call (a grammar) and to turn
//! it into OpenAI's `tool_calls` (a parser). The formats:
//!
//! - [`ToolFormat::Hermes`] (Hermes, Qwen 2.5/3, SmolLM3 and most ChatML models):
//!   `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one block per call.
//! - [`ToolFormat::Llama3Json`] (Llama 3.1 and later): `{"name": …, "parameters": {…}}`, calls
//!   separated by `; `, optionally after `<|python_tag|>`.
//! - [`ToolFormat::Mistral`]: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`.
//! - [`ToolFormat::Json`], the fallback for templates without a known format: a JSON array of
//!   `{"name": …, "arguments": {…}}`.
//!
//! The format is chosen from the chat template ([`ToolFormat::detect`]) unless the operator names
//! one (`TOOL_CALL_PARSER`). With `tool_choice: required` or a named function the whole answer
//! is constrained to calls of the declared tools with arguments valid against their `parameters`
//! schema; with `auto` the Hermes and Mistral formats are constrained from their marker on
//! (`<tool_call>`, `[TOOL_CALLS]`), and the others are parsed when the answer starts like a call.

use std::fmt;

use serde_json::{Value, json};

use super::{Grammar, json_schema_of};

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// The function's name: 1 to 64 of `[A-Za-z0-9_-]`.
    pub name: String,
    /// The JSON Schema of its arguments (`{"type": "object", "properties": {}}` when absent).
    pub parameters: Value,
    /// The tool as the client declared it (`{"type": "function", "function": {…}}`), which the
    /// chat template receives in `tools`.
    pub definition: Value,
}

/// Which calls the answer may or must make (`tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No call: the tools are shown to the template, the answer is text.
    None,
    /// The model chooses between text and calls (the default when tools are given).
    Auto,
    /// At least one call.
    Required,
    /// One call of this function.
    Function(String),
}

/// The tools of a request and how they may be used.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    /// The declared tools, in order.
    pub tools: Vec<Tool>,
    /// `tool_choice`.
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): whether one answer may make several calls.
    pub parallel: bool,
}

/// One call parsed from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    /// The function called.
    pub name: String,
    /// Its arguments, a JSON object written compactly (OpenAI sends them as a string).
    pub arguments: String,
}

/// A model family's tool-call format; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolFormat {
    /// `<tool_call>{"name", "arguments"}</tool_call>`.
    Hermes,
    /// `{"name", "parameters"}`, `; `-separated.
    Llama3Json,
    /// `[TOOL_CALLS][{"name", "arguments"}, …]`.
    Mistral,
    /// A JSON array of `{"name", "arguments"}`.
    Json,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_MARKER: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";

impl ToolFormat {
    /// Every format with its `TOOL_CALL_PARSER` name.
    pub const ALL: [(&'static str, Self); 4] = [
        ("hermes", Self::Hermes),
        ("llama3_json", Self::Llama3Json),
        ("mistral", Self::Mistral),
        ("json", Self::Json),
    ];

    /// The format named `name` (`hermes`, `llama3_json`, `mistral`, `json`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, f)| f)
    }

    /// The format's `TOOL_CALL_PARSER` name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("json", |(n, _)| n)
    }

    /// The format a chat template teaches its model: by the markers it writes.
    pub fn detect(template: &str) -> Self {
        if template.contains(HERMES_OPEN) {
            Self::Hermes
        } else if template.contains(MISTRAL_MARKER) {
            Self::Mistral
        } else if template.contains(PYTHON_TAG)
            || (template.contains("<|eot_id|>") && template.contains("parameters"))
        {
            Self::Llama3Json
        } else {
            Self::Json
        }
    }

    /// The key holding a call's arguments.
    fn arguments_key(self) -> &'static str {
        match self {
            Self::Llama3Json => "parameters",
            _ => "arguments",
        }
    }

    /// The grammar an answer must follow for `tools`, and the text after which it applies
    /// (`None`: from the first token); `None` when nothing is enforced (`tool_choice: none`,
    /// or `auto` in a format without a marker in the text).
    pub fn grammar(self, tools: &ToolUse) -> Option<(Grammar, Option<&'static str>)> {
        let callable: Vec<&Tool> = match &tools.choice {
            ToolChoice::None => return None,
            ToolChoice::Function(name) => tools.tools.iter().filter(|t| &t.name == name).collect(),
            ToolChoice::Auto | ToolChoice::Required => tools.tools.iter().collect(),
        };
        let call = self.call_schema(&callable);
        let call = serde_json::to_string(&json_schema_of(&call)).expect("JSON");
        let parallel = tools.parallel && !matches!(tools.choice, ToolChoice::Function(_));
        let auto = tools.choice == ToolChoice::Auto;
        let lark = match self {
            Self::Hermes if auto => format!(
                "start: WS? body \"\\n{HERMES_CLOSE}\" more\n\
                 more: {}\n\
                 body: %json {call}\n\
                 WS: /[ \\t\\n]+/\n",
                if parallel {
                    format!("(\"\\n{HERMES_OPEN}\\n\" body \"\\n{HERMES_CLOSE}\")*")
                } else {
                    String::new()
                }
            ),
            Self::Hermes => format!(
                "start: call{}\n\
                 call: \"{HERMES_OPEN}\\n\" %json {call} \"\\n{HERMES_CLOSE}\"\n",
                if parallel { " (\"\\n\" call)*" } else { "" }
            ),
            Self::Llama3Json | Self::Json if auto => return None,
            Self::Llama3Json => format!(
                "start: call{}\ncall: %json {call}\n",
                if parallel { " (\"; \" call)*" } else { "" }
            ),
            Self::Mistral | Self::Json => {
                let mut array = json!({"type": "array", "items": {}, "minItems": 1});
                if !parallel {
                    array["maxItems"] = json!(1);
                }
                let array = serde_json::to_string(&json_schema_of(&array))
                    .expect("JSON")
                    .replacen("{}", &call, 1);
                if auto {
                    // After the marker, which the model writes as one special token.
                    format!("start: WS? calls\ncalls: %json {array}\nWS: /[ \\t\\n]+/\n")
                } else {
                    format!("start: %json {array}\n")
                }
            }
        };
        let trigger = match self {
            _ if !auto => None,
            Self::Hermes => Some(HERMES_OPEN),
            _ => Some(MISTRAL_MARKER),
        };
        Some((Grammar::Lark(lark), trigger))
    }

    /// The schema of one call of any of `tools`: the name as a constant, the arguments as the
    /// tool's parameters.
    fn call_schema(self, tools: &[&Tool]) -> Value {
        let calls: Vec<Value> = tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": tool.name},
                        self.arguments_key(): tool.parameters,
                    },
                    "required": ["name", self.arguments_key()],
                    "additionalProperties": false,
                })
            })
            .collect();
        match <[Value; 1]>::try_from(calls) {
            Ok([one]) => one,
            Err(calls) => json!({"anyOf": calls}),
        }
    }

    /// Splits a whole answer into its text and its calls, exactly as a [`ToolCallStream`]
    /// splits it piece by piece. Text that does not parse as calls stays text: a model answering
    /// in prose is never turned into an error.
    pub fn parse(self, text: &str) -> (String, Vec<ParsedCall>) {
        let mut stream = ToolCallStream::new(self);
        let mut items = stream.push(text);
        items.extend(stream.finish());
        let (mut content, mut calls) = (String::new(), Vec::new());
        for item in items {
            match item {
                ToolStreamItem::Text(text) => content.push_str(&text),
                ToolStreamItem::Call { call, .. } => calls.push(call),
            }
        }
        (content, calls)
    }

    /// Whether an answer starting with `head` (trimmed, not empty) may be calls in a format
    /// written without a marker in the text: the stream then holds the text back until the end.
    fn may_open_calls(self, head: &str) -> bool {
        match self {
            Self::Hermes => false,
            Self::Llama3Json => head.starts_with('{') || head.starts_with(PYTHON_TAG),
            Self::Mistral => head.starts_with('[') || head.starts_with(MISTRAL_MARKER),
            Self::Json => head.starts_with('[') || head.starts_with('{'),
        }
    }

    /// The calls in `text` (a Hermes block's body, or a whole answer in the other formats);
    /// `None` unless it is nothing but calls.
    fn calls_in(self, text: &str) -> Option<Vec<ParsedCall>> {
        let text = text.trim();
        let text = text
            .strip_prefix(PYTHON_TAG)
            .or_else(|| text.strip_prefix(MISTRAL_MARKER))
            .unwrap_or(text)
            .trim_start();
        let mut values = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            let value = stream.next()?.ok()?;
            rest = rest[stream.byte_offset()..].trim_start();
            rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
            match value {
                Value::Array(items) => values.extend(items),
                other => values.push(other),
            }
        }
        let calls = values
            .into_iter()
            .map(|value| {
                let name = value.get("name")?.as_str()?.to_owned();
                let arguments = ["arguments", "parameters"]
                    .iter()
                    .find_map(|key| value.get(*key))
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                // Some models write the arguments as a JSON string.
                let arguments = match arguments {
                    Value::String(s) => serde_json::from_str::<Value>(&s).ok()?,
                    other => other,
                };
                arguments.is_object().then(|| ParsedCall {
                    name,
                    arguments: arguments.to_string(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        (!calls.is_empty()).then_some(calls)
    }
}

impl fmt::Display for ToolFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the stream of one answer releases, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolStreamItem {
    /// Answer text.
    Text(String),
    /// A complete call, the `index`-th of the answer.
    Call {
        /// Its position among the answer's calls.
        index: u32,
        /// The call.
        call: ParsedCall,
    },
}

/// Splits a streamed answer into text and calls as its text arrives. What it releases depends
/// only on the answer, never on how the answer was cut into pieces:
///
/// - Hermes: text outside `<tool_call>` blocks is released as it comes, less what could begin
///   a marker and the whitespace before one; each block is released as a call when it closes
///   (as its text, marker included, if it is not a call).
/// - The formats without a marker in the text: an answer whose first non-blank text could open
///   calls (`{`, `[`, `<|python_tag|>`) is held to the end and released as calls if it is
///   nothing else; any other answer is text from the start.
#[derive(Debug, Clone)]
pub struct ToolCallStream {
    format: ToolFormat,
    /// Text not yet released.
    held: String,
    /// Whether the answer has shown anything but whitespace.
    started: bool,
    /// Inside a Hermes block, or (other formats) an answer held to the end.
    in_calls: bool,
    /// Calls released so far.
    calls: u32,
}

impl ToolCallStream {
    /// A stream in `format`.
    pub fn new(format: ToolFormat) -> Self {
        Self {
            format,
            held: String::new(),
            started: false,
            in_calls: false,
            calls: 0,
        }
    }

    /// Whether it has released a call.
    pub fn has_called(&self) -> bool {
        self.calls > 0
    }

    /// Feeds the next piece of text; returns what it releases.
    pub fn push(&mut self, text: &str) -> Vec<ToolStreamItem> {
        self.held.push_str(text);
        let mut out = Vec::new();
        if self.format != ToolFormat::Hermes {
            if !self.started {
                let head = self.held.trim_start();
                if head.is_empty() {
                    return out;
                }
                self.started = true;
                self.in_calls = self.format.may_open_calls(head);
            }
            if !self.in_calls {
                out.push(ToolStreamItem::Text(std::mem::take(&mut self.held)));
            }
            return out;
        }
        loop {
            if self.in_calls {
                let Some(end) = self.held.find(HERMES_CLOSE) else {
                    return out;
                };
                let body: String = self.held.drain(..end + HERMES_CLOSE.len()).collect();
                self.in_calls = false;
                self.block(&body[..end], true, &mut out);
                continue;
            }
            match self.held.find(HERMES_OPEN) {
                Some(at) => {
                    let text = self.held[..at].trim_end();
                    if !text.is_empty() {
                        out.push(ToolStreamItem::Text(text.to_owned()));
                    }
                    self.held.drain(..at + HERMES_OPEN.len());
                    self.in_calls = true;
                }
                None => {
                    let keep = partial_suffix(&self.held, HERMES_OPEN);
                    let cut = self.held[..self.held.len() - keep].trim_end().len();
                    if cut > 0 {
                        out.push(ToolStreamItem::Text(self.held.drain(..cut).collect()));
                    }
                    return out;
                }
            }
        }
    }

    /// Ends the answer: releases what was held.
    pub fn finish(&mut self) -> Vec<ToolStreamItem> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        if self.format == ToolFormat::Hermes {
            if self.in_calls {
                // An unclosed block (the answer hit its length limit).
                self.block(&held, false, &mut out);
            } else if !held.is_empty() && (self.calls == 0 || !held.trim().is_empty()) {
                out.push(ToolStreamItem::Text(held));
            }
            return out;
        }
        if self.in_calls
            && let Some(calls) = self.format.calls_in(&held)
        {
            self.number(calls, &mut out);
        } else if !held.is_empty() {
            out.push(ToolStreamItem::Text(held));
        }
        out
    }

    /// Releases a Hermes block's `body`: its calls, or its text as written.
    fn block(&mut self, body: &str, closed: bool, out: &mut Vec<ToolStreamItem>) {
        match self.format.calls_in(body) {
            Some(calls) => self.number(calls, out),
            None => out.push(ToolStreamItem::Text(format!(
                "{HERMES_OPEN}{body}{}",
                if closed { HERMES_CLOSE } else { "" }
            ))),
        }
    }

    fn number(&mut self, calls: Vec<ParsedCall>, out: &mut Vec<ToolStreamItem>) {
        for call in calls {
            out.push(ToolStreamItem::Call {
                index: self.calls,
                call,
            });
            self.calls += 1;
        }
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker`.
pub(super) fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
