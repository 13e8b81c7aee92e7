//! One answer's text split into what the client gets apart: reasoning, content and tool
//! calls, piece by piece as it streams or at once, with the same result either way.

use super::reasoning::{ReasoningItem, ReasoningStream};
use super::tools::{ParsedCall, ToolCallStream, ToolFormat, ToolStreamItem};

/// A part of an answer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerPart {
    /// The model's reasoning (`reasoning_content`).
    Reasoning(String),
    /// Answer text (`content`).
    Content(String),
    /// A complete tool call, the `index`-th of the answer.
    Call {
        /// Its position among the answer's calls.
        index: u32,
        /// The call.
        call: ParsedCall,
    },
}

/// A whole answer, split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitAnswer {
    /// The reasoning, empty when there is none.
    pub reasoning: String,
    /// The answer text.
    pub content: String,
    /// The tool calls, in order.
    pub calls: Vec<ParsedCall>,
}

/// Splits one answer: reasoning first (for a model that thinks), then tool calls out of what
/// follows (for a request that may call tools).
#[derive(Debug, Clone)]
pub struct AnswerStream {
    reasoning: Option<ReasoningStream>,
    tools: Option<ToolCallStream>,
}

impl AnswerStream {
    /// A splitter for a model that thinks (`Some(opened)`: whether the prompt opened the
    /// reasoning) or not (`None`), and a request whose calls are written in `tools`' format.
    pub fn new(reasoning: Option<bool>, tools: Option<ToolFormat>) -> Self {
        Self {
            reasoning: reasoning.map(ReasoningStream::new),
            tools: tools.map(ToolCallStream::new),
        }
    }

    /// Whether it splits anything at all (else text passes through as content).
    pub fn is_plain(&self) -> bool {
        self.reasoning.is_none() && self.tools.is_none()
    }

    /// Whether the answer has released a tool call.
    pub fn has_called(&self) -> bool {
        self.tools.as_ref().is_some_and(ToolCallStream::has_called)
    }

    /// Feeds the next piece of text; returns what it releases.
    pub fn push(&mut self, text: &str) -> Vec<AnswerPart> {
        let items = match &mut self.reasoning {
            Some(reasoning) => reasoning.push(text),
            None => vec![ReasoningItem::Content(text.to_owned())],
        };
        self.route(items, false)
    }

    /// Ends the answer: releases what was held.
    pub fn finish(&mut self) -> Vec<AnswerPart> {
        let items = match &mut self.reasoning {
            Some(reasoning) => reasoning.finish(),
            None => Vec::new(),
        };
        self.route(items, true)
    }

    /// Splits a whole answer exactly as pushing it and finishing would.
    pub fn split(mut self, text: &str) -> SplitAnswer {
        let mut parts = self.push(text);
        parts.extend(self.finish());
        let mut answer = SplitAnswer::default();
        for part in parts {
            match part {
                AnswerPart::Reasoning(t) => answer.reasoning.push_str(&t),
                AnswerPart::Content(t) => answer.content.push_str(&t),
                AnswerPart::Call { call, .. } => answer.calls.push(call),
            }
        }
        answer
    }

    fn route(&mut self, items: Vec<ReasoningItem>, last: bool) -> Vec<AnswerPart> {
        let mut out = Vec::new();
        for item in items {
            match item {
                ReasoningItem::Reasoning(t) => out.push(AnswerPart::Reasoning(t)),
                ReasoningItem::Content(t) => match &mut self.tools {
                    Some(tools) => out.extend(tools.push(&t).into_iter().map(from_tool)),
                    None if t.is_empty() => {}
                    None => out.push(AnswerPart::Content(t)),
                },
            }
        }
        if last && let Some(tools) = &mut self.tools {
            out.extend(tools.finish().into_iter().map(from_tool));
        }
        out
    }
}

fn from_tool(item: ToolStreamItem) -> AnswerPart {
    match item {
        ToolStreamItem::Text(t) => AnswerPart::Content(t),
        ToolStreamItem::Call { index, call } => AnswerPart::Call { index, call },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_comes_out_before_the_calls_it_leads_to() {
        let text = "<think>I need the weather.</think>\n<tool_call>\n{\"name\": \"get_weather\", \
                    \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let whole = AnswerStream::new(Some(false), Some(ToolFormat::Hermes)).split(text);
        assert_eq!(whole.reasoning, "I need the weather.");
        assert_eq!(whole.content, "");
        assert_eq!(whole.calls.len(), 1);
        assert_eq!(whole.calls[0].arguments, r#"{"city":"Paris"}"#);
        // Piece by piece, the same.
        let mut stream = AnswerStream::new(Some(false), Some(ToolFormat::Hermes));
        let mut parts: Vec<AnswerPart> = text
            .as_bytes()
            .chunks(3)
            .flat_map(|c| stream.push(std::str::from_utf8(c).unwrap()))
            .collect();
        parts.extend(stream.finish());
        assert!(matches!(
            parts.last(),
            Some(AnswerPart::Call { index: 0, .. })
        ));
        let plain = AnswerStream::new(None, None);
        assert!(plain.is_plain());
        assert_eq!(plain.split("hi").content, "hi");
    }
}
