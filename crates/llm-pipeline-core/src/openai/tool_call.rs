//! The tool calls of an answer: whole (`message.tool_calls`) and streamed
//! (`delta.tool_calls`), in the shape OpenAI's clients reassemble.
//!
//! A streamed call arrives as deltas sharing its `index`: the first carries the `id`, the
//! `type` and the function's `name` (with empty `arguments`), the following ones fragments of
//! `arguments` that the client concatenates.

use serde::{Deserialize, Serialize};

/// One call the model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, which the `tool` message answering it names (`call_…`).
    pub id: String,
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function and its arguments.
    pub function: FunctionCall,
}

impl ToolCall {
    /// A call of `name` with `arguments` (a JSON object, as a string) under a fresh id.
    pub fn new(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self {
            id: new_call_id(),
            kind: "function".into(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        }
    }
}

/// A function call: the name and the arguments as a JSON string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object written as a string.
    pub arguments: String,
}

/// A piece of a streamed call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Which call of the answer this piece belongs to.
    pub index: u32,
    /// The call's id, on its first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `"function"`, on its first piece.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The name (first piece) or a fragment of the arguments.
    pub function: FunctionCallDelta,
}

/// The function part of a [`ToolCallDelta`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    /// The function's name, on the call's first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A fragment of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ToolCallDelta {
    /// The pieces of `call`, the `index`-th of its answer: the head (id, type, name, empty
    /// arguments), then the arguments.
    pub fn pieces(index: u32, call: &ToolCall) -> [Self; 2] {
        [
            Self {
                index,
                id: Some(call.id.clone()),
                kind: Some(call.kind.clone()),
                function: FunctionCallDelta {
                    name: Some(call.function.name.clone()),
                    arguments: Some(String::new()),
                },
            },
            Self {
                index,
                id: None,
                kind: None,
                function: FunctionCallDelta {
                    name: None,
                    arguments: Some(call.function.arguments.clone()),
                },
            },
        ]
    }
}

/// A fresh call id: `call_` and 24 random hex digits.
fn new_call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn calls_serialize_in_openai_shape() {
        let call = ToolCall::new("get_weather", r#"{"city":"Paris"}"#);
        assert!(
            call.id.starts_with("call_") && call.id.len() == 29,
            "{}",
            call.id
        );
        let value = serde_json::to_value(&call).unwrap();
        assert_eq!(
            value,
            json!({"id": call.id, "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}})
        );
        let [head, body] = ToolCallDelta::pieces(1, &call);
        assert_eq!(
            serde_json::to_value(&head).unwrap(),
            json!({"index": 1, "id": call.id, "type": "function",
                   "function": {"name": "get_weather", "arguments": ""}})
        );
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"index": 1, "function": {"arguments": "{\"city\":\"Paris\"}"}})
        );
    }
}
