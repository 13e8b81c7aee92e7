//! Chat templates of the families whose models may come without one: base models, and GGUF
//! files converted without `tokenizer.chat_template`. The family is chosen as llama.cpp
//! chooses it, by the architecture and, where one architecture spans several chat formats
//! (`llama` is Llama 2, Llama 3, Mistral or SmolLM), by the special tokens in the vocabulary;
//! a template is chosen only when the vocabulary has its markup as tokens, so a prompt never
//! spells control tokens as plain text.
//!
//! The texts are the families' own templates (Llama 3, Mistral v0.1, Phi-3.5, Gemma 3) and
//! ChatML (Qwen, SmolLM), reduced to the text-message path.

/// A family's chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownTemplate {
    /// Llama 3: `<|start_header_id|>role<|end_header_id|>`.
    Llama3,
    /// Mistral: `[INST] … [/INST]`.
    Mistral,
    /// ChatML: `<|im_start|>role … <|im_end|>` (Qwen, SmolLM).
    ChatMl,
    /// Phi-3: `<|user|> … <|end|>`.
    Phi3,
    /// Gemma: `<start_of_turn>user … <end_of_turn>`, the system message folded into the
    /// first user turn.
    Gemma,
}

impl KnownTemplate {
    /// Every known template.
    pub const ALL: [Self; 5] = [
        Self::Llama3,
        Self::Mistral,
        Self::ChatMl,
        Self::Phi3,
        Self::Gemma,
    ];

    /// The Jinja source.
    pub fn source(self) -> &'static str {
        match self {
            Self::Llama3 => include_str!("known/llama3.jinja"),
            Self::Mistral => include_str!("known/mistral.jinja"),
            Self::ChatMl => include_str!("known/chatml.jinja"),
            Self::Phi3 => include_str!("known/phi3.jinja"),
            Self::Gemma => include_str!("known/gemma.jinja"),
        }
    }

    /// The family's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama3 => "llama3",
            Self::Mistral => "mistral",
            Self::ChatMl => "chatml",
            Self::Phi3 => "phi3",
            Self::Gemma => "gemma",
        }
    }

    /// The token whose presence in the vocabulary shows the model was trained on this format.
    fn marker(self) -> &'static str {
        match self {
            Self::Llama3 => "<|start_header_id|>",
            Self::Mistral => "[INST]",
            Self::ChatMl => "<|im_start|>",
            Self::Phi3 => "<|user|>",
            Self::Gemma => "<start_of_turn>",
        }
    }

    /// The template of a model of `architecture` (a GGUF `general.architecture` or a
    /// `config.json` `model_type`) whose vocabulary has the tokens `has_token` accepts; `None`
    /// when no family's markup is in the vocabulary.
    pub fn detect(architecture: &str, has_token: impl Fn(&str) -> bool) -> Option<Self> {
        let preferred: &[Self] = match architecture {
            a if a.starts_with("gemma") => &[Self::Gemma],
            "phi3" => &[Self::Phi3],
            "qwen2" | "qwen3" => &[Self::ChatMl],
            _ => &[Self::Llama3, Self::Mistral, Self::ChatMl],
        };
        preferred.iter().copied().find(|t| has_token(t.marker()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{ChatMessage, ChatTemplate, SpecialTokenText};

    #[test]
    fn families_are_told_apart_by_architecture_and_vocabulary() {
        let vocab = |tokens: &'static [&'static str]| move |t: &str| tokens.contains(&t);
        let gemma = vocab(&["<start_of_turn>", "<end_of_turn>"]);
        assert_eq!(
            KnownTemplate::detect("gemma3", gemma),
            Some(KnownTemplate::Gemma)
        );
        let llama3 = vocab(&["<|start_header_id|>", "<|eot_id|>"]);
        assert_eq!(
            KnownTemplate::detect("llama", llama3),
            Some(KnownTemplate::Llama3)
        );
        assert_eq!(
            KnownTemplate::detect("llama", vocab(&["[INST]"])),
            Some(KnownTemplate::Mistral)
        );
        assert_eq!(KnownTemplate::detect("llama", vocab(&["<s>"])), None);
        assert_eq!(
            KnownTemplate::detect("gemma2", vocab(&["<|im_start|>"])),
            None,
            "a family's template is never used on a vocabulary without its markup"
        );
    }

    #[test]
    fn every_known_template_renders_a_conversation() {
        let special = SpecialTokenText {
            bos: "<s>".into(),
            eos: "</s>".into(),
        };
        for known in KnownTemplate::ALL {
            let t = ChatTemplate::new(known.source(), special.clone()).unwrap();
            let messages = [ChatMessage {
                role: "user",
                content: "Hi there",
            }];
            let text = t.render(&messages).unwrap();
            assert!(text.contains("Hi there"), "{}: {text:?}", known.name());
            assert!(text.contains(known.marker()), "{}: {text:?}", known.name());
        }
    }
}
