//! One message of a chat: its author ([`Role`]) and its content, a string or typed parts.
//!
//! Kept apart from the request because messages are what the chat template renders: the
//! template module reads these types, the rest of the request is for validation. Content parts
//! that are not text (images, audio, files) are captured as raw JSON so that validation can
//! refuse them by name; [`MessageContent::to_text`] is the one place that flattens content.

use std::fmt;

use serde::de::value::SeqAccessDeserializer;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The author of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model.
    System,
    /// OpenAI's newer name for system instructions; treated as [`Role::System`].
    Developer,
    /// The human.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

impl Role {
    /// The role as OpenAI spells it (`"system"`, `"developer"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Developer => "developer",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says; may be absent or `null` (an assistant message that only calls tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// An optional name of the author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For an `assistant` message: the tool calls it made. Captured, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
}

impl ChatMessage {
    /// A message of `role` with text `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(MessageContent::Text(content.into())),
            name: None,
            tool_call_id: None,
            tool_calls: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// The message's text (see [`MessageContent::to_text`]); `Some("")` when it has no content,
    /// `None` when it has a part that is not text.
    pub fn text(&self) -> Option<String> {
        match &self.content {
            None => Some(String::new()),
            Some(content) => content.to_text(),
        }
    }
}

/// The content of a message: a plain string or a list of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// `"content": "Hello"`.
    Text(String),
    /// `"content": [{"type": "text", "text": "Hello"}, …]`.
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// The text of the content: the string, or the text parts joined by `"\n"` (as vLLM
    /// does). `None` if any part is not text (an image, audio, a file).
    pub fn to_text(&self) -> Option<String> {
        match self {
            Self::Text(text) => Some(text.clone()),
            Self::Parts(parts) => {
                let texts = parts
                    .iter()
                    .map(|part| match part {
                        ContentPart::Text { text } => Some(text.as_str()),
                        _ => None,
                    })
                    .collect::<Option<Vec<&str>>>()?;
                Some(texts.join("\n"))
            }
        }
    }
}

impl From<String> for MessageContent {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for MessageContent {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

// Hand-written rather than `#[serde(untagged)]` so that a bad part reports the real cause
// ("unknown variant `video_url`") instead of "data did not match any variant".
impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MessageContentVisitor)
    }
}

struct MessageContentVisitor;

impl<'de> Visitor<'de> for MessageContentVisitor {
    type Value = MessageContent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of content parts")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<MessageContent, E> {
        Ok(MessageContent::Text(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<MessageContent, E> {
        Ok(MessageContent::Text(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MessageContent, A::Error> {
        Vec::<ContentPart>::deserialize(SeqAccessDeserializer::new(seq)).map(MessageContent::Parts)
    }
}

/// One part of a message's content, tagged by `"type"`. Only text is supported; the other
/// kinds are captured as raw JSON so that validation can refuse them by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// `{"type": "text", "text": "…"}`.
    Text {
        /// The text.
        text: String,
    },
    /// `{"type": "image_url", "image_url": {"url": "…"}}`. Not supported.
    ImageUrl {
        /// The image reference, as sent.
        image_url: Value,
    },
    /// `{"type": "input_audio", "input_audio": {"data": "…", "format": "wav"}}`. Not supported.
    InputAudio {
        /// The audio, as sent.
        input_audio: Value,
    },
    /// `{"type": "file", "file": {…}}`. Not supported.
    File {
        /// The file, as sent.
        file: Value,
    },
    /// `{"type": "refusal", "refusal": "…"}`, found in earlier assistant messages. Not supported.
    Refusal {
        /// The refusal text.
        refusal: String,
    },
}

impl ContentPart {
    /// The part's `"type"` as OpenAI spells it, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::ImageUrl { .. } => "image_url",
            Self::InputAudio { .. } => "input_audio",
            Self::File { .. } => "file",
            Self::Refusal { .. } => "refusal",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::openai::ChatCompletionRequest;

    fn parse(value: Value) -> ChatCompletionRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn parses_content_parts_and_joins_text_parts() {
        let request = parse(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "first"},
                {"type": "text", "text": "second"}
            ]}]
        }));
        let content = request.messages[0].content.as_ref().unwrap();
        assert_eq!(
            content,
            &MessageContent::Parts(vec![
                ContentPart::Text {
                    text: "first".into()
                },
                ContentPart::Text {
                    text: "second".into()
                },
            ])
        );
        assert_eq!(content.to_text().as_deref(), Some("first\nsecond"));
    }

    #[test]
    fn captures_non_text_parts_by_kind() {
        let request = parse(json!({
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-1"}}
            ]}]
        }));
        let message = &request.messages[0];
        let Some(MessageContent::Parts(parts)) = &message.content else {
            panic!("expected parts, got {:?}", message.content);
        };
        let kinds: Vec<&str> = parts.iter().map(ContentPart::kind).collect();
        assert_eq!(kinds, ["text", "image_url", "input_audio", "file"]);
        assert_eq!(
            parts[1],
            ContentPart::ImageUrl {
                image_url: json!({"url": "https://example.com/a.png", "detail": "low"})
            }
        );
        assert_eq!(message.text(), None);
        // Parts serialize back to OpenAI's shape.
        assert_eq!(
            serde_json::to_value(&parts[1]).unwrap(),
            json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}})
        );
    }

    #[test]
    fn an_unknown_part_type_is_named_in_the_error() {
        let error = serde_json::from_value::<ChatCompletionRequest>(json!({
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}]
        }))
        .unwrap_err()
        .to_string();
        assert!(error.contains("video_url"), "{error}");
    }

    #[test]
    fn content_may_be_null_or_absent() {
        let request = parse(json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function"}]},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            {"role": "assistant"}
        ]}));
        assert_eq!(request.messages[0].content, None);
        assert_eq!(
            request.messages[0].tool_calls,
            Some(json!([{"id": "call_1", "type": "function"}]))
        );
        assert_eq!(request.messages[1].role, Role::Tool);
        assert_eq!(request.messages[1].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(request.messages[2].text().as_deref(), Some(""));
    }

    #[test]
    fn parses_every_role_including_developer() {
        let roles = ["system", "developer", "user", "assistant", "tool"];
        for role in roles {
            let message: ChatMessage =
                serde_json::from_value(json!({"role": role, "content": "x"})).unwrap();
            assert_eq!(message.role.as_str(), role);
            assert_eq!(serde_json::to_value(message.role).unwrap(), json!(role));
        }
        assert!(serde_json::from_value::<ChatMessage>(json!({"role": "wizard"})).is_err());
    }
}
