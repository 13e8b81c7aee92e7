//! Pre-tokenizer splits for byte-level BPE vocabularies, keyed by `tokenizer.ggml.pre`.
//!
//! A GGUF file does not store its pre-tokenizer; it names it, and llama.cpp maps the name to a
//! list of regular expressions (`llm_tokenizer_bpe` in `llama-vocab.cpp`). Each expression splits
//! every piece left by the previous one, keeping matches and the text between them as pieces:
//! that is exactly a `tokenizers` `Split` with the `Isolated` behaviour, so the table below
//! reproduces llama.cpp's expressions one for one. Where llama.cpp rewrote an expression for its
//! own regex engine (`(?i:...)` spelled out, upper/lower-case classes approximated with
//! lookaheads), the rewritten form is used, since it is the behaviour we must match; Oniguruma,
//! the engine behind `tokenizers`, accepts both. llama.cpp's hand-written GPT-2 splitter also
//! ends with `\s+`, which its regex string omits, so the GPT-2 entry carries it.

/// GPT-2's expression, as in the Hugging Face `ByteLevel` pre-tokenizer.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's expression (cl100k), case-insensitive contractions spelled out.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's expression: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 3.5's expression: Qwen 2's with combining marks kept in words.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Tekken (Mistral Nemo): upper/lower-case runs through lookaheads, as llama.cpp adapted it.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o / Llama 4 (o200k), as llama.cpp adapted it.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// DeepSeek V3 (and Hunyuan dense): digits, CJK, then words and punctuation.
const DEEPSEEK3: [&str; 3] = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
/// DeepSeek LLM: newlines, Latin/Greek/Cyrillic-like letters, punctuation, trailing spaces, CJK,
/// numbers. llama.cpp's `\s+$` means the end of the piece, which Oniguruma spells `\z`; and
/// llama.cpp replaces non-ASCII whitespace before matching these expressions, so the character
/// ranges that span some (U+3000 in `　-。` and `ࠀ-一`) must not match it (`&&[^\s]`).
const DEEPSEEK_LLM: [&str; 6] = [
    r"[\r\n]",
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。&&[^\s]]+",
    r"\s+\z",
    r"[一-龥ࠀ-一가-퟿&&[^\s]]+",
    r"\p{N}+",
];
/// Seed-Coder: Qwen 2's expression with no newlines after punctuation.
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Bloom / Poro: everything but spaces and sentence punctuation.
const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// How llama.cpp pre-tokenizes and configures one named BPE vocabulary.
#[derive(Debug, Clone, Copy)]
pub(super) struct PreSpec {
    /// The split expressions, applied in order.
    pub(super) regexes: &'static [&'static str],
    /// A word found whole in the vocabulary is one token, whatever the merges say.
    pub(super) ignore_merges: bool,
    /// Whether BOS is added when `tokenizer.ggml.add_bos_token` is absent.
    pub(super) add_bos: bool,
    /// The vocabulary has no BOS token, whatever the metadata says.
    pub(super) no_bos: bool,
}

const fn spec(regexes: &'static [&'static str]) -> PreSpec {
    PreSpec {
        regexes,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    }
}

/// The spec for the pre-tokenizer `name` (`tokenizer.ggml.pre`; `None` when the key is absent,
/// which llama.cpp treats as `default`), or `None` if llama.cpp's name is not supported here.
pub(super) fn pre_spec(name: Option<&str>) -> Option<PreSpec> {
    const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];
    const FALCON: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"];
    let Some(name) = name else {
        return Some(spec(DEFAULT));
    };
    Some(match name {
        "default" => spec(DEFAULT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreSpec {
            ignore_merges: true,
            add_bos: true,
            ..spec(&[LLAMA3])
        },
        "dbrx" | "smaug-bpe" => spec(&[LLAMA3]),
        "chatglm-bpe" => PreSpec {
            no_bos: true,
            ..spec(&[LLAMA3])
        },
        "glm4" | "glm5" => PreSpec {
            no_bos: true,
            ignore_merges: true,
            ..spec(&[LLAMA3])
        },
        "deepseek-v3" | "hunyuan-dense" | "hy_v4" | "joyai-llm" => spec(&DEEPSEEK3),
        "deepseek-llm" => spec(&DEEPSEEK_LLM),
        "deepseek-coder" => spec(&[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            r"[一-龥ࠀ-一가-퟿&&[^\s]]+",
            r"\p{N}",
        ]),
        "falcon" => spec(FALCON),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => spec(&[r"\p{N}", GPT2]),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
        | "mpt" | "olmo" | "jais" | "exaone4" | "trillion" | "granite-docling" => spec(&[GPT2]),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "megrez" | "hunyuan"
        | "solar-open" => spec(&[QWEN2]),
        "qwen35" => spec(&[QWEN35]),
        "poro-chat" | "bloom" | "gpt3-finnish" => spec(&[BLOOM]),
        "viking" => spec(&[BLOOM, r"\p{N}"]),
        "tekken" => PreSpec {
            ignore_merges: true,
            add_bos: true,
            ..spec(&[TEKKEN])
        },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => spec(&[GPT4O]),
        "seed-coder" => spec(&[SEED_CODER]),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn pieces(regexes: &[&str], text: &str) -> Vec<String> {
        let mut pre = PreTokenizedString::from(text);
        for r in regexes {
            let split = Split::new(
                SplitPattern::Regex((*r).to_owned()),
                tokenizers::SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap();
            split.pre_tokenize(&mut pre).unwrap();
        }
        pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_owned())
            .collect()
    }

    #[test]
    fn every_expression_compiles() {
        for name in [
            "default",
            "llama3",
            "dbrx",
            "chatglm-bpe",
            "deepseek-v3",
            "deepseek-coder",
            "deepseek-llm",
            "falcon",
            "smollm",
            "gpt-2",
            "qwen2",
            "qwen35",
            "bloom",
            "viking",
            "tekken",
            "gpt-4o",
            "seed-coder",
        ] {
            let spec = pre_spec(Some(name)).unwrap();
            pieces(spec.regexes, "Hello, World! 1234 'll  x\n\n café 日本");
        }
        assert!(pre_spec(Some("no-such-pre")).is_none());
    }

    #[test]
    fn smollm_isolates_digits_then_splits_like_gpt2() {
        let spec = pre_spec(Some("smollm")).unwrap();
        assert_eq!(
            pieces(spec.regexes, "I'll pay 1234  now\n"),
            [
                "I", "'ll", " pay", " ", "1", "2", "3", "4", " ", " now", "\n"
            ]
        );
    }

    #[test]
    fn llama3_groups_three_digits() {
        let spec = pre_spec(Some("llama-bpe")).unwrap();
        assert!(spec.ignore_merges && spec.add_bos);
        assert_eq!(
            pieces(spec.regexes, "1234567 ok"),
            ["123", "456", "7", " ok"]
        );
    }
}
