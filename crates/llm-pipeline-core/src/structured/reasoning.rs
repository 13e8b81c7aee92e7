//! Reasoning models: the text between `<think>` and `</think>` is the model's reasoning,
//! returned as `reasoning_content`, never mixed into `content`.
//!
//! Models that think first (DeepSeek-R1, Qwen3, QwQ, SmolLM3) write `<think>…</think>` before
//! their answer; some templates open the `<think>` in the prompt, so that the answer starts
//! inside it. A model is treated as one that thinks when its chat template mentions `</think>`;
//! [`ReasoningStream`] then splits each answer as its text arrives.

/// The tag that opens the reasoning.
pub const THINK_OPEN: &str = "<think>";
/// The tag that closes the reasoning.
pub const THINK_CLOSE: &str = "</think>";

/// Whether a chat template teaches its model to think first.
pub fn thinks(template: &str) -> bool {
    template.contains(THINK_CLOSE)
}

/// What the stream of one answer releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReasoningItem {
    /// Reasoning text (without its tags).
    Reasoning(String),
    /// Answer text.
    Content(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: the answer may still open with `<think>`.
    Start,
    /// Inside the reasoning.
    Thinking,
    /// After `</think>`, before the answer's first non-blank text (skipped).
    Closed,
    /// The answer.
    Answering,
}

/// Splits a streamed answer into reasoning and content; what it releases depends only on the
/// answer, never on how it was cut into pieces. Reasoning is released as it comes, less what
/// could begin `</think>`; an answer that never closes its reasoning is all reasoning.
#[derive(Debug, Clone)]
pub struct ReasoningStream {
    state: State,
    held: String,
}

impl ReasoningStream {
    /// A stream for an answer whose prompt ended inside `<think>` (`opened`) or not.
    pub fn new(opened: bool) -> Self {
        Self {
            state: if opened {
                State::Thinking
            } else {
                State::Start
            },
            held: String::new(),
        }
    }

    /// Feeds the next piece of text; returns what it releases.
    pub fn push(&mut self, text: &str) -> Vec<ReasoningItem> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let head = self.held.trim_start();
                    if head.starts_with(THINK_OPEN) {
                        let skip = self.held.len() - head.len() + THINK_OPEN.len();
                        self.held.drain(..skip);
                        self.state = State::Thinking;
                    } else if head.is_empty() || THINK_OPEN.starts_with(head) {
                        return out;
                    } else {
                        self.state = State::Answering;
                    }
                }
                State::Thinking => match self.held.find(THINK_CLOSE) {
                    Some(at) => {
                        if at > 0 {
                            out.push(ReasoningItem::Reasoning(self.held[..at].to_owned()));
                        }
                        self.held.drain(..at + THINK_CLOSE.len());
                        self.state = State::Closed;
                    }
                    None => {
                        let keep = super::tools::partial_suffix(&self.held, THINK_CLOSE);
                        let cut = self.held.len() - keep;
                        if cut > 0 {
                            out.push(ReasoningItem::Reasoning(self.held.drain(..cut).collect()));
                        }
                        return out;
                    }
                },
                State::Closed => {
                    let blank = self.held.len() - self.held.trim_start().len();
                    self.held.drain(..blank);
                    if self.held.is_empty() {
                        return out;
                    }
                    self.state = State::Answering;
                }
                State::Answering => {
                    if !self.held.is_empty() {
                        out.push(ReasoningItem::Content(std::mem::take(&mut self.held)));
                    }
                    return out;
                }
            }
        }
    }

    /// Ends the answer: releases what was held.
    pub fn finish(&mut self) -> Vec<ReasoningItem> {
        let held = std::mem::take(&mut self.held);
        match self.state {
            _ if held.is_empty() => Vec::new(),
            State::Thinking => vec![ReasoningItem::Reasoning(held)],
            State::Closed => Vec::new(),
            State::Start | State::Answering => vec![ReasoningItem::Content(held)],
        }
    }

    /// Splits a whole answer: (reasoning, content), exactly as the stream would.
    pub fn split(opened: bool, text: &str) -> (String, String) {
        let mut stream = Self::new(opened);
        let mut items = stream.push(text);
        items.extend(stream.finish());
        let (mut reasoning, mut content) = (String::new(), String::new());
        for item in items {
            match item {
                ReasoningItem::Reasoning(t) => reasoning.push_str(&t),
                ReasoningItem::Content(t) => content.push_str(&t),
            }
        }
        (reasoning, content)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn reasoning_and_content_are_split_at_the_tags() {
        let split = ReasoningStream::split;
        assert_eq!(
            split(false, "<think>\nThe user wants 2+2.\n</think>\n\n4"),
            ("\nThe user wants 2+2.\n".into(), "4".into())
        );
        // The template opened the reasoning in the prompt.
        assert_eq!(
            split(true, "Easy.</think>The answer is 4."),
            ("Easy.".into(), "The answer is 4.".into())
        );
        // No tags: all content; never closed: all reasoning.
        assert_eq!(split(false, "Just 4."), (String::new(), "Just 4.".into()));
        assert_eq!(
            split(true, "still thinking </thi"),
            ("still thinking </thi".into(), String::new())
        );
        // A `<think>` later in an answer is content.
        assert_eq!(
            split(false, "Use <think> tags."),
            (String::new(), "Use <think> tags.".into())
        );
        assert!(thinks("{{ '<think>' }}…{{ '</think>' }}") && !thinks("<|im_start|>"));
    }

    /// Any cut of an answer into pieces releases what the whole answer does.
    #[test]
    fn any_split_streams_the_same_reasoning_and_content() {
        let answers = [
            (
                false,
                "  <think>\nLet me see: 2 < 3 and </b> is HTML.\n</think>\n\nYes, é.",
            ),
            (true, "Hmm </think > not yet </think>Done."),
            (false, "<thi"),
            (false, "Plain answer </think> with a tag."),
            (true, "Never closed </thin"),
        ];
        let mut rng = StdRng::seed_from_u64(9);
        for (opened, answer) in answers {
            let whole = ReasoningStream::split(opened, answer);
            let bounds: Vec<usize> = (0..=answer.len())
                .filter(|&i| answer.is_char_boundary(i))
                .collect();
            for _ in 0..300 {
                let mut cuts: Vec<usize> = (0..rng.random_range(1..6))
                    .map(|_| bounds[rng.random_range(0..bounds.len())])
                    .collect();
                cuts.sort_unstable();
                let mut stream = ReasoningStream::new(opened);
                let (mut reasoning, mut content) = (String::new(), String::new());
                let mut from = 0;
                let mut items = Vec::new();
                for cut in cuts.into_iter().chain([answer.len()]) {
                    items.extend(stream.push(&answer[from..cut]));
                    from = cut;
                }
                items.extend(stream.finish());
                for item in items {
                    match item {
                        ReasoningItem::Reasoning(t) => reasoning.push_str(&t),
                        ReasoningItem::Content(t) => content.push_str(&t),
                    }
                }
                assert_eq!((reasoning, content), whole, "{answer:?}");
            }
        }
    }
}
