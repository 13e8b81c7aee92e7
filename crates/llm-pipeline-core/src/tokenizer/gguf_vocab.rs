//! Building a `tokenizers::Tokenizer` from a GGUF vocabulary, to tokenize exactly as llama.cpp.
//!
//! A GGUF file stores its tokenizer as arrays (`tokenizer.ggml.tokens`, `.token_type`, `.merges`
//! or `.scores`) plus a model kind and a pre-tokenizer name; llama.cpp turns them into a tokenizer
//! at load time (`llama_vocab::impl::load`). This module does the same with the `tokenizers`
//! building blocks, so that the engine has one tokenizer type for every backend:
//!
//! - `gpt2` (byte-level BPE): the named pre-tokenizer's splits (see `pre`), byte-level mapping,
//!   BPE over the file's merges in rank order, a byte-level decoder.
//! - `llama` (SentencePiece): llama.cpp merges, within each piece of text, the adjacent pair whose
//!   concatenation is the highest-scoring token. That is BPE with one merge per way of cutting a
//!   token in two, ranked by the token's score, plus byte fallback to `<0xNN>` tokens; spaces
//!   become `▁` and, with `add_space_prefix`, each piece of text starts with one.
//!
//! Control, user-defined and unknown tokens are what llama.cpp matches in the text before
//! tokenizing (with `parse_special`); they become added tokens, control and unknown ones marked
//! special so that decoding can skip them. Token attributes are first adjusted the way llama.cpp
//! adjusts them (end-of-turn look-alikes become control tokens, gpt-oss channel markers become
//! user-defined).

use std::collections::HashSet;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, SplitDelimiterBehavior};

use super::SpecialTokens;
use super::pre::pre_spec;
use super::special::{self, EogSeeds};
use crate::gguf::GgufMetadata;
use crate::{Error, Result};

/// llama.cpp's token types (`llama_token_type`) as stored in `tokenizer.ggml.token_type`.
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// How a token takes part in matching special text, after llama.cpp's adjustments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Produced only by the model (BPE/SPM) from text.
    Normal,
    /// Matched in text, skipped when decoding with `SkipSpecial::Yes` (control, unknown).
    Special,
    /// Matched in text, always rendered (user-defined).
    UserDefined,
}

/// The vocabulary arrays, with the lookups every step needs.
struct Vocabulary<'m> {
    meta: &'m GgufMetadata,
    tokens: Vec<String>,
    ids: Vocab,
    kinds: Vec<Kind>,
}

impl<'m> Vocabulary<'m> {
    fn read(meta: &'m GgufMetadata) -> Result<Self> {
        let tokens = meta
            .get_string_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| meta.error("missing key `tokenizer.ggml.tokens`"))?;
        // llama.cpp renames empty tokens so that every text maps to one id.
        let tokens: Vec<String> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect();
        let mut ids = Vocab::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let id = u32::try_from(i).map_err(|_| meta.error("vocabulary too large"))?;
            if ids.insert(t.clone(), id).is_some() {
                return Err(meta.error(format!("token {t:?} appears twice in the vocabulary")));
            }
        }
        let types = meta.get_i32_array("tokenizer.ggml.token_type")?;
        if types.is_some_and(|t| t.len() < tokens.len()) {
            return Err(meta.error("`tokenizer.ggml.token_type` is shorter than the vocabulary"));
        }
        let kinds = (0..tokens.len())
            .map(|i| match types.map(|t| t[i]) {
                Some(TYPE_CONTROL | TYPE_UNKNOWN) => Kind::Special,
                Some(TYPE_USER_DEFINED) => Kind::UserDefined,
                _ => Kind::Normal,
            })
            .collect();
        Ok(Self {
            meta,
            tokens,
            ids,
            kinds,
        })
    }

    fn lookup(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    fn text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// A special-token id from `key`, else `default`; ids outside the vocabulary are dropped,
    /// as llama.cpp drops them.
    fn special_id(&self, key: &str, default: Option<u32>) -> Result<Option<u32>> {
        let n = self.tokens.len();
        let default = default.filter(|&id| (id as usize) < n);
        Ok(match self.meta.get_u32(&format!("tokenizer.ggml.{key}"))? {
            Some(id) if (id as usize) < n => Some(id),
            _ => default,
        })
    }

    fn mark(&mut self, id: Option<u32>, kind: Kind) {
        if let Some(id) = id {
            self.kinds[id as usize] = kind;
        }
    }

    fn mark_control(&mut self, id: Option<u32>) {
        if let Some(id) = id
            && self.kinds[id as usize] == Kind::Normal
        {
            self.kinds[id as usize] = Kind::Special;
        }
    }
}

/// The GGUF tokenizer kinds this module builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelKind {
    /// `gpt2`: byte-level BPE.
    Bpe,
    /// `llama`: SentencePiece.
    Spm,
}

/// Builds the tokenizer and its special tokens from GGUF metadata.
pub(super) fn build(meta: &GgufMetadata) -> Result<(tokenizers::Tokenizer, SpecialTokens)> {
    let model_name = meta
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| meta.error("missing key `tokenizer.ggml.model`"))?;
    let kind = match model_name {
        "gpt2" => ModelKind::Bpe,
        "llama" => ModelKind::Spm,
        other => {
            return Err(unsupported(format!(
                "GGUF tokenizer model `{other}` is not supported (supported: `gpt2`, `llama`)"
            )));
        }
    };
    let mut vocab = Vocabulary::read(meta)?;
    let pre_name = meta.get_str("tokenizer.ggml.pre")?;

    let (mut tokenizer, mut add_bos, no_bos) = match kind {
        ModelKind::Bpe => {
            let spec = pre_spec(pre_name).ok_or_else(|| {
                unsupported(format!(
                    "GGUF pre-tokenizer `{}` is not supported",
                    pre_name.unwrap_or_default()
                ))
            })?;
            (
                bpe_tokenizer(&vocab, spec.regexes, spec.ignore_merges)?,
                spec.add_bos,
                spec.no_bos,
            )
        }
        ModelKind::Spm => {
            let prefix = meta
                .get_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            (spm_tokenizer(&vocab, prefix)?, true, false)
        }
    };
    if let Some(b) = meta.get_bool("tokenizer.ggml.add_bos_token")? {
        add_bos = b;
    }
    // Default ids are llama.cpp's, used when the file names none.
    let (bos, eos) = match kind {
        ModelKind::Bpe => (Some(11), Some(11)),
        ModelKind::Spm => (Some(1), Some(2)),
    };
    let bos = if no_bos {
        None
    } else {
        vocab.special_id("bos_token_id", bos)?
    };
    let eos = vocab.special_id("eos_token_id", eos)?;
    let end_of_generation = adjust_kinds(&mut vocab, eos)?;
    add_special_tokens(&mut tokenizer, &vocab)?;

    let text = |id: Option<u32>| id.and_then(|id| vocab.text(id)).map(str::to_owned);
    let special = SpecialTokens {
        bos,
        eos,
        end_of_generation,
        add_bos: add_bos && bos.is_some(),
        bos_text: text(bos),
        eos_text: text(eos),
    };
    Ok((tokenizer, special))
}

/// Adjusts token kinds as llama.cpp does and returns the end-of-generation ids: end-of-turn and
/// FIM look-alikes become control tokens, gpt-oss channel markers user-defined.
fn adjust_kinds(vocab: &mut Vocabulary<'_>, eos: Option<u32>) -> Result<Vec<u32>> {
    let mut seeds = EogSeeds {
        eos,
        eot: vocab.special_id("eot_token_id", None)?,
        eom: vocab.special_id("eom_token_id", None)?,
        fim_pad: vocab.special_id("fim_pad_token_id", None)?,
        fim_rep: vocab.special_id("fim_rep_token_id", None)?,
        fim_sep: vocab.special_id("fim_sep_token_id", None)?,
    };
    seeds.detect_missing(&|t| vocab.lookup(t));
    let mut controls = vec![
        seeds.eot,
        seeds.eom,
        seeds.fim_pad,
        seeds.fim_rep,
        seeds.fim_sep,
    ];
    for (key, texts) in [
        ("fim_pre_token_id", special::FIM_PRE_TEXTS),
        ("fim_suf_token_id", special::FIM_SUF_TEXTS),
        ("fim_mid_token_id", special::FIM_MID_TEXTS),
    ] {
        let id = vocab.special_id(key, None)?;
        controls.push(id.or_else(|| special::find_first(texts, &|t| vocab.lookup(t))));
    }
    controls.extend(special::EOG_TEXTS.iter().map(|t| vocab.lookup(t)));
    for id in controls {
        vocab.mark_control(id);
    }
    for text in special::ALWAYS_RENDERED {
        let id = vocab.lookup(text);
        vocab.mark(id, Kind::UserDefined);
    }
    let eog = special::end_of_generation(&seeds, &|t| vocab.lookup(t), &|id| {
        vocab.text(id).map(str::to_owned)
    });
    vocab.mark(eog.demoted_end, Kind::UserDefined);
    vocab.mark(eog.demoted_eos, Kind::Normal);
    Ok(eog.ids)
}

fn unsupported(message: String) -> Error {
    Error::Tokenizer {
        message,
        source: None,
    }
}

fn build_error(e: tokenizers::Error) -> Error {
    Error::tokenizer("cannot build the tokenizer from GGUF metadata", e)
}

fn bpe_vocab(vocab: &Vocabulary<'_>) -> Vocab {
    vocab.ids.clone()
}

/// Byte-level BPE over the file's merges (`gpt2`).
fn bpe_tokenizer(
    vocab: &Vocabulary<'_>,
    regexes: &[&str],
    ignore_merges: bool,
) -> Result<tokenizers::Tokenizer> {
    let meta = vocab.meta;
    let lines = meta
        .get_string_array("tokenizer.ggml.merges")?
        .ok_or_else(|| meta.error("missing key `tokenizer.ggml.merges`"))?;
    let mut seen = HashSet::with_capacity(lines.len());
    let mut merges: Merges = Vec::with_capacity(lines.len());
    let mut joined = String::new();
    for line in lines {
        // Split at the first space after the first byte, as llama.cpp does.
        let cut = line
            .bytes()
            .skip(1)
            .position(|b| b == b' ')
            .ok_or_else(|| meta.error(format!("malformed merge {line:?}")))?
            + 1;
        let (a, b) = (&line[..cut], &line[cut + 1..]);
        // A merge whose parts or result are not tokens can never apply; llama.cpp keeps the
        // first rank of a repeated pair.
        let (Some(ia), Some(ib)) = (vocab.lookup(a), vocab.lookup(b)) else {
            continue;
        };
        joined.clear();
        joined.push_str(a);
        joined.push_str(b);
        if vocab.lookup(&joined).is_none() || !seen.insert(u64::from(ia) << 32 | u64::from(ib)) {
            continue;
        }
        merges.push((a.to_owned(), b.to_owned()));
    }
    let model = BPE::builder()
        .vocab_and_merges(bpe_vocab(vocab), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(build_error)?;

    let mut steps = Vec::with_capacity(regexes.len() + 1);
    for r in regexes {
        let split = Split::new(
            SplitPattern::Regex((*r).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::tokenizer(format!("bad pre-tokenizer expression {r:?}"), e))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(PreSequence::new(steps)));
    tokenizer.with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok(tokenizer)
}

/// SentencePiece as llama.cpp runs it (`llama`): BPE with merges derived from the scores.
fn spm_tokenizer(vocab: &Vocabulary<'_>, add_space_prefix: bool) -> Result<tokenizers::Tokenizer> {
    let meta = vocab.meta;
    let n = vocab.tokens.len();
    let scores: Vec<f32> = match meta.get_array("tokenizer.ggml.scores")? {
        None => vec![0.0; n],
        Some(tokenizers_scores) => {
            #[allow(clippy::cast_precision_loss)] // llama.cpp casts integer scores the same way
            let s: Vec<f32> = match tokenizers_scores {
                crate::gguf::GgufArray::F32(v) => v.clone(),
                crate::gguf::GgufArray::I32(v) => v.iter().map(|&x| x as f32).collect(),
                other => {
                    return Err(meta.error(format!(
                        "`tokenizer.ggml.scores` is an array of {}, expected float32",
                        other.type_name()
                    )));
                }
            };
            if s.len() < n {
                return Err(meta.error("`tokenizer.ggml.scores` is shorter than the vocabulary"));
            }
            s
        }
    };

    // One merge per way of cutting a token into two tokens, ranked by the token's score
    // (highest first; ties by id, where llama.cpp would go left to right).
    let mut ranked: Vec<(f32, u32, usize)> = Vec::new();
    for (id, text) in vocab.tokens.iter().enumerate() {
        for (cut, _) in text.char_indices().skip(1) {
            if vocab.lookup(&text[..cut]).is_some() && vocab.lookup(&text[cut..]).is_some() {
                ranked.push((scores[id], id as u32, cut));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Merges = ranked
        .into_iter()
        .map(|(_, id, cut)| {
            let text = &vocab.tokens[id as usize];
            (text[..cut].to_owned(), text[cut..].to_owned())
        })
        .collect();

    let mut builder = BPE::builder()
        .vocab_and_merges(bpe_vocab(vocab), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = vocab
        .meta
        .get_u32("tokenizer.ggml.unknown_token_id")?
        .or(Some(0))
        .and_then(|id| vocab.text(id))
    {
        builder = builder.unk_token(unk.to_owned());
    }
    let model = builder.build().map_err(build_error)?;

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::with_capacity(2);
    if add_space_prefix {
        normalizers.push(Prepend::new("▁".to_owned()).into());
    }
    normalizers.push(Replace::new(" ", "▁").map_err(build_error)?.into());
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(build_error)?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(build_error)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Registers control, unknown and user-defined tokens as added tokens, matched before the model.
fn add_special_tokens(tokenizer: &mut tokenizers::Tokenizer, vocab: &Vocabulary<'_>) -> Result<()> {
    // Phi-3 GGUFs strip whitespace after their special tokens (llama.cpp sets RSTRIP by name).
    let name = vocab
        .meta
        .get_str("general.name")?
        .unwrap_or_default()
        .to_lowercase();
    let phi3 = name.contains("phi-3") || name.contains("phi3");
    let mut added = Vec::new();
    for (text, &kind) in vocab.tokens.iter().zip(&vocab.kinds) {
        if kind == Kind::Normal {
            continue;
        }
        let rstrip = phi3 && !matches!(text.as_str(), "<unk>" | "<s>" | "<|endoftext|>");
        added.push(
            AddedToken::from(text.clone(), kind != Kind::UserDefined)
                .normalized(false)
                .rstrip(rstrip),
        );
    }
    tokenizer.add_special_tokens(added).map_err(build_error)?;
    Ok(())
}
