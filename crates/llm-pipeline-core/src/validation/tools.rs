//! Validation of tool use: `tools`, `tool_choice` and `parallel_tool_calls` become a
//! [`ToolUse`]; an assistant message's `tool_calls` become [`PromptToolCall`]s for the template.

use serde_json::{Value, json};

use super::{is_function_name, is_set};
use crate::openai::ChatCompletionRequest;
use crate::structured::tools::{Tool, ToolChoice, ToolUse};
use crate::{Error, Result};

/// The most tools per request (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// One call an earlier assistant message made, as the chat template receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptToolCall {
    /// The call's id, which the `tool` message answering it names.
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments as a JSON value (templates write them with `tojson`; vLLM hands them over
    /// parsed too).
    pub arguments: Value,
}

impl PromptToolCall {
    /// The call in OpenAI's shape, arguments parsed, for the template.
    pub fn to_template(&self) -> Value {
        json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

/// The tool use a request asks for; `None` without tools.
pub(super) fn tool_use(r: &ChatCompletionRequest) -> Result<Option<ToolUse>> {
    if is_set(&r.functions) {
        return Err(Error::validation(
            "functions",
            "the deprecated `functions` is not supported; declare them in `tools`",
        ));
    }
    if is_set(&r.function_call) {
        return Err(Error::validation(
            "function_call",
            "the deprecated `function_call` is not supported; use `tool_choice`",
        ));
    }
    let parallel = match &r.parallel_tool_calls {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(Error::validation(
                "parallel_tool_calls",
                format!("must be a boolean, not {v}"),
            ));
        }
    };
    let tools = match &r.tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<Vec<_>>>()?,
        Some(other) => {
            return Err(Error::validation(
                "tools",
                format!("must be an array of tools, not {other}"),
            ));
        }
    };
    if tools.len() > MAX_TOOLS {
        return Err(Error::validation(
            "tools",
            format!(
                "{} tools given; at most {MAX_TOOLS} are allowed",
                tools.len()
            ),
        ));
    }
    for (i, t) in tools.iter().enumerate() {
        if tools[..i].iter().any(|u| u.name == t.name) {
            return Err(Error::validation(
                format!("tools[{i}].function.name"),
                format!("`{}` is declared twice", t.name),
            ));
        }
    }
    let choice = match &r.tool_choice {
        None | Some(Value::Null) if tools.is_empty() => ToolChoice::None,
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(Error::validation(
                    "tool_choice",
                    format!("`{other}` is not one of `none`, `auto`, `required` or a function"),
                ));
            }
        },
        Some(named) => {
            let name = named
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| named.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    Error::validation(
                        "tool_choice",
                        "must be `none`, `auto`, `required` or \
                         {\"type\": \"function\", \"function\": {\"name\": …}}",
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(Error::validation(
                    "tool_choice.function.name",
                    format!("`{name}` is not among the declared tools"),
                ));
            }
            ToolChoice::Function(name.to_owned())
        }
    };
    if tools.is_empty() {
        if choice != ToolChoice::None {
            return Err(Error::validation(
                "tool_choice",
                "needs `tools` to choose from",
            ));
        }
        return Ok(None);
    }
    Ok(Some(ToolUse {
        tools,
        choice,
        parallel,
    }))
}

fn tool(i: usize, t: &Value) -> Result<Tool> {
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(Error::validation(
            format!("tools[{i}].type"),
            "only `function` tools are supported",
        ));
    }
    let function = t.get("function").filter(|f| f.is_object()).ok_or_else(|| {
        Error::validation(format!("tools[{i}].function"), "is required (an object)")
    })?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| is_function_name(n))
        .ok_or_else(|| {
            Error::validation(
                format!("tools[{i}].function.name"),
                "must be 1 to 64 letters, digits, `_` or `-`",
            )
        })?;
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(other) => {
            return Err(Error::validation(
                format!("tools[{i}].function.parameters"),
                format!("must be a JSON Schema object, not {other}"),
            ));
        }
    };
    let bytes = parameters.to_string().len();
    if bytes > super::MAX_SCHEMA_BYTES {
        return Err(Error::validation(
            format!("tools[{i}].function.parameters"),
            format!(
                "is {bytes} bytes; at most {} are allowed",
                super::MAX_SCHEMA_BYTES
            ),
        ));
    }
    Ok(Tool {
        name: name.to_owned(),
        parameters,
        definition: t.clone(),
    })
}

/// The calls of message `i` (an assistant message's `tool_calls`).
pub(super) fn message_calls(i: usize, calls: Option<&Value>) -> Result<Vec<PromptToolCall>> {
    let calls = match calls {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(calls)) => calls,
        Some(other) => {
            return Err(Error::validation(
                format!("messages[{i}].tool_calls"),
                format!("must be an array, not {other}"),
            ));
        }
    };
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let param = |field: &str| format!("messages[{i}].tool_calls[{j}]{field}");
            let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
            super::bounded(&param(".id"), Some(id))?;
            let function = call
                .get("function")
                .ok_or_else(|| Error::validation(param(".function"), "is required"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::validation(param(".function.name"), "is required"))?;
            let arguments = match function.get("arguments") {
                None | Some(Value::Null) => json!({}),
                Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                    Error::validation(param(".function.arguments"), format!("is not JSON: {e}"))
                })?,
                Some(other) => other.clone(),
            };
            Ok(PromptToolCall {
                id: id.to_owned(),
                name: name.to_owned(),
                arguments,
            })
        })
        .collect()
}
