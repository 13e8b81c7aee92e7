//! Which tokens end generation, found the way llama.cpp finds them.
//!
//! Model files name one EOS token, but chat models end a turn with another (`<|im_end|>`,
//! `<|eot_id|>`, `<end_of_turn>`), and fill-in-the-middle vocabularies add more. llama.cpp keeps
//! a list of such token texts and treats every one present in the vocabulary as
//! end-of-generation (`special_eog_ids` in `llama-vocab.cpp`); the same rule applies here to both
//! GGUF and Hugging Face tokenizers, so that a model stops at the same tokens whichever way it is
//! loaded and whichever backend runs it.

use std::collections::BTreeSet;

/// End-of-turn texts, when `tokenizer.ggml.eot_token_id` is absent.
pub(super) const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
/// End-of-message texts, when `tokenizer.ggml.eom_token_id` is absent.
pub(super) const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
/// Fill-in-the-middle prefix texts.
pub(super) const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
/// Fill-in-the-middle suffix texts.
pub(super) const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
/// Fill-in-the-middle middle texts.
pub(super) const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
/// Fill-in-the-middle padding texts (end generation).
pub(super) const FIM_PAD_TEXTS: &[&str] =
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
/// Fill-in-the-middle repository texts (end generation).
pub(super) const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
/// Fill-in-the-middle file separator texts (end generation).
pub(super) const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Texts that end generation wherever they are in the vocabulary.
pub(super) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Tokens that gpt-oss needs rendered even when special tokens are skipped.
pub(super) const ALWAYS_RENDERED: &[&str] =
    &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// The first of `texts` present in the vocabulary.
pub(super) fn find_first(texts: &[&str], lookup: &dyn Fn(&str) -> Option<u32>) -> Option<u32> {
    texts.iter().find_map(|t| lookup(t))
}

/// Special ids named by the model (or found by text) that take part in the EOG rule.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct EogSeeds {
    pub(super) eos: Option<u32>,
    pub(super) eot: Option<u32>,
    pub(super) eom: Option<u32>,
    pub(super) fim_pad: Option<u32>,
    pub(super) fim_rep: Option<u32>,
    pub(super) fim_sep: Option<u32>,
}

impl EogSeeds {
    /// Fills every seed still unset by looking its texts up in the vocabulary.
    pub(super) fn detect_missing(&mut self, lookup: &dyn Fn(&str) -> Option<u32>) {
        let fill = |slot: &mut Option<u32>, texts: &[&str]| {
            if slot.is_none() {
                *slot = find_first(texts, lookup);
            }
        };
        fill(&mut self.eot, EOT_TEXTS);
        fill(&mut self.eom, EOM_TEXTS);
        fill(&mut self.fim_pad, FIM_PAD_TEXTS);
        fill(&mut self.fim_rep, FIM_REP_TEXTS);
        fill(&mut self.fim_sep, FIM_SEP_TEXTS);
    }
}

/// The end-of-generation set and the tokens llama.cpp demotes while building it.
#[derive(Debug, Clone, Default)]
pub(super) struct Eog {
    /// Ascending ids that end generation.
    pub(super) ids: Vec<u32>,
    /// `<|end|>` when the vocabulary also has `<|return|>`/`<|call|>` (gpt-oss) or
    /// `<|calls|>`/`<|flush|>` (solar-open): a turn separator, not an end; rendered as text.
    pub(super) demoted_end: Option<u32>,
    /// `</s>` in vocabularies where it is an ordinary token (Gemma 4, PLaMo).
    pub(super) demoted_eos: Option<u32>,
}

/// Applies llama.cpp's end-of-generation rule to a vocabulary.
pub(super) fn end_of_generation(
    seeds: &EogSeeds,
    lookup: &dyn Fn(&str) -> Option<u32>,
    text_of: &dyn Fn(u32) -> Option<String>,
) -> Eog {
    let mut ids: BTreeSet<u32> = [seeds.fim_pad, seeds.fim_rep, seeds.fim_sep]
        .into_iter()
        .flatten()
        .collect();
    ids.extend(EOG_TEXTS.iter().filter_map(|t| lookup(t)));
    ids.extend([seeds.eos, seeds.eot, seeds.eom].into_iter().flatten());

    let has = |ids: &BTreeSet<u32>, text: &str| {
        ids.iter().any(|&id| text_of(id).as_deref() == Some(text))
    };
    let find = |ids: &BTreeSet<u32>, text: &str| {
        ids.iter()
            .copied()
            .find(|&id| text_of(id).as_deref() == Some(text))
    };

    let mut eog = Eog::default();
    let has_call = has(&ids, "<|call|>") || has(&ids, "<|calls|>");
    if has_call
        && (has(&ids, "<|return|>") || has(&ids, "<|flush|>"))
        && let Some(end) = find(&ids, "<|end|>")
    {
        ids.remove(&end);
        eog.demoted_end = Some(end);
    }
    if (has(&ids, "<|tool_response>") || has(&ids, "<|plamo:eos|>"))
        && let Some(s) = find(&ids, "</s>")
    {
        ids.remove(&s);
        eog.demoted_eos = Some(s);
    }
    eog.ids = ids.into_iter().collect();
    eog
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vocab(texts: &[&str]) -> HashMap<String, u32> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), i as u32))
            .collect()
    }

    fn eog_of(texts: &[&str], eos: Option<u32>) -> Eog {
        let v = vocab(texts);
        let lookup = |t: &str| v.get(t).copied();
        let text_of = |id: u32| texts.get(id as usize).map(|t| (*t).to_owned());
        let mut seeds = EogSeeds {
            eos,
            ..EogSeeds::default()
        };
        seeds.detect_missing(&lookup);
        end_of_generation(&seeds, &lookup, &text_of)
    }

    #[test]
    fn chat_end_tokens_join_eos() {
        let eog = eog_of(
            &[
                "<s>",
                "</s>",
                "hi",
                "<|im_end|>",
                "<|fim_pad|>",
                "<|endoftext|>",
            ],
            Some(1),
        );
        assert_eq!(eog.ids, [1, 3, 4, 5]);
    }

    #[test]
    fn gpt_oss_end_is_not_an_end() {
        let eog = eog_of(&["<|return|>", "<|call|>", "<|end|>", "<|start|>"], Some(0));
        assert_eq!(eog.ids, [0, 1]);
        assert_eq!(eog.demoted_end, Some(2));
    }
}
