//! The one tokenizer type for every backend.
//!
//! Every backend is fed token ids that this module produces, so a prompt tokenizes the same way
//! whichever backend serves it. The work is done by a `tokenizers::Tokenizer`, loaded from a
//! Hugging Face `tokenizer.json` ([`Tokenizer::from_dir`]) or built from GGUF vocabulary metadata
//! to match llama.cpp id for id ([`Tokenizer::from_gguf`], see `gguf_vocab`). Beside it sit the
//! model's [`SpecialTokens`]: BOS and whether to add it, EOS, and every token that ends
//! generation (see `special`).
//!
//! Prompts arrive as rendered chat templates, which write special tokens as text
//! (`<|im_start|>`), so encoding always parses special tokens, and adds BOS only when the
//! template did not write it already. [`Tokenizer`] is an `Arc` inside: cloning it is cheap and it
//! is `Send + Sync`, so the pipeline and the engine thread share one.

mod gguf_vocab;
mod pre;
mod special;

use std::path::Path;
use std::sync::Arc;

use tokenizers::Decoder;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::pre_tokenizers::metaspace::PrependScheme;

use crate::gguf::GgufMetadata;
use crate::{Error, Result};

use special::EogSeeds;

/// The model's special tokens and how prompts use them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// Every token that ends generation, ascending: EOS plus end-of-turn tokens (`<|im_end|>`,
    /// `<|eot_id|>`, `<end_of_turn>`, ...) found in the vocabulary the way llama.cpp finds them.
    pub end_of_generation: Vec<u32>,
    /// Whether prompts start with BOS.
    pub add_bos: bool,
    /// The text of BOS, as chat templates write it (`bos_token`).
    pub bos_text: Option<String>,
    /// The text of EOS, as chat templates write it (`eos_token`).
    pub eos_text: Option<String>,
}

impl SpecialTokens {
    /// Whether `id` ends generation.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }
}

/// Whether decoding drops special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipSpecial {
    /// Drop control tokens (`<|im_end|>`, BOS, EOS) from the text.
    Yes,
    /// Render them as their text.
    No,
}

struct Shared {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    /// The decoder without the steps that only apply at the start of a text (stripping the
    /// SentencePiece prefix space), for the text of single tokens.
    piece_decoder: Option<DecoderWrapper>,
    vocab_size: usize,
    /// The longest token spelling in bytes: no token stands for more bytes of text, so a text
    /// of `n` bytes is at least `n / max_token_bytes` tokens.
    max_token_bytes: usize,
    /// The tokenizer that reads special tokens' spellings as plain text, and those spellings;
    /// built on first use (see [`Tokenizer::encode_chat`]).
    literal: std::sync::OnceLock<(tokenizers::Tokenizer, Vec<String>)>,
}

/// A tokenizer with the model's special tokens; cheap to clone.
#[derive(Clone)]
pub struct Tokenizer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.shared.vocab_size)
            .field("special", &self.shared.special)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    fn new(inner: tokenizers::Tokenizer, special: SpecialTokens, vocab_size: usize) -> Self {
        let piece_decoder = inner.get_decoder().map(piece_decoder);
        // Spellings are at least as long as the text they stand for: byte-level BPE spells a
        // byte with one character of one or two bytes, SentencePiece a space with `▁` (three)
        // and a fallback byte as `<0x0A>` (six).
        let max_token_bytes = inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Self {
            shared: Arc::new(Shared {
                inner,
                special,
                piece_decoder,
                max_token_bytes,
                vocab_size,
                literal: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Builds the tokenizer a GGUF file describes, tokenizing as llama.cpp does.
    ///
    /// Supports the `gpt2` (byte-level BPE) and `llama` (SentencePiece) tokenizer models and
    /// llama.cpp's common pre-tokenizers (`default`, `gpt-2`, `llama-bpe`, `qwen2`, `smollm`,
    /// `deepseek-v3`, `tekken`, `gpt-4o`, ...).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] naming the tokenizer model or pre-tokenizer when it is not
    /// supported; [`Error::Gguf`] when the vocabulary metadata is missing or malformed.
    pub fn from_gguf(meta: &GgufMetadata) -> Result<Self> {
        let (inner, special) = gguf_vocab::build(meta)?;
        let vocab_size = inner.get_vocab_size(false);
        Ok(Self::new(inner, special, vocab_size))
    }

    /// Loads `tokenizer.json` from a Hugging Face model directory, with BOS/EOS and
    /// `add_bos_token` from `tokenizer_config.json` and the EOS list of `generation_config.json`
    /// when present.
    ///
    /// When `tokenizer_config.json` does not say `add_bos_token`, BOS is added if the
    /// tokenizer's own post-processor adds it (as Llama 3's does).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if `tokenizer.json` cannot be loaded; [`Error::Io`] if a config
    /// file exists but cannot be read; [`Error::Tokenizer`] if one is not valid JSON.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::tokenizer(format!("cannot load {}", path.display()), e))?;
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let generation = read_json(&dir.join("generation_config.json"))?;

        let token_id = |key: &str| -> Option<u32> {
            let value = config.as_ref()?.get(key)?;
            let text = value.as_str().or_else(|| value.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let generation_ids = |key: &str| -> Vec<u32> {
            let Some(value) = generation.as_ref().and_then(|g| g.get(key)) else {
                return Vec::new();
            };
            let ids = match value {
                serde_json::Value::Array(a) => {
                    a.iter().filter_map(serde_json::Value::as_u64).collect()
                }
                v => v.as_u64().into_iter().collect::<Vec<_>>(),
            };
            ids.into_iter()
                .filter_map(|id| u32::try_from(id).ok())
                .collect()
        };
        let bos = token_id("bos_token").or_else(|| generation_ids("bos_token_id").first().copied());
        let generation_eos = generation_ids("eos_token_id");
        let eos = token_id("eos_token").or_else(|| generation_eos.first().copied());
        let add_bos = match config
            .as_ref()
            .and_then(|c| c.get("add_bos_token")?.as_bool())
        {
            Some(add) => add,
            None => bos.is_some_and(|bos| {
                inner
                    .encode_fast("", true)
                    .is_ok_and(|e| e.get_ids().first() == Some(&bos))
            }),
        };

        let lookup = |t: &str| inner.token_to_id(t);
        let text_of = |id: u32| inner.id_to_token(id);
        let mut seeds = EogSeeds {
            eos,
            ..EogSeeds::default()
        };
        seeds.detect_missing(&lookup);
        let mut end_of_generation = special::end_of_generation(&seeds, &lookup, &text_of).ids;
        end_of_generation.extend(generation_eos);
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&max| max as usize + 1);
        let special = SpecialTokens {
            bos,
            eos,
            end_of_generation,
            add_bos: add_bos && bos.is_some(),
            bos_text: bos.and_then(text_of),
            eos_text: eos.and_then(text_of),
        };
        Ok(Self::new(inner, special, vocab_size))
    }

    /// Encodes a rendered chat prompt: special tokens written in the text are parsed as special
    /// tokens, and BOS is prepended when the model wants it and the text does not already start
    /// with it.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the tokenizer fails.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .shared
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::tokenizer("cannot encode the prompt", e))?;
        Ok(self.with_bos(encoding.get_ids().to_vec()))
    }

    /// Prepends BOS when the model wants it and the prompt does not already start with it.
    fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        let special = &self.shared.special;
        if let Some(bos) = special.bos
            && special.add_bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        ids
    }

    /// Encodes a rendered chat prompt whose byte ranges `data` hold message contents: there,
    /// the spelling of a special token (`<|im_start|>`, `<|eot_id|>`) is encoded as the plain
    /// text it is, so that a user cannot inject control tokens; the template's own markup
    /// outside `data` is parsed as [`Tokenizer::encode_prompt`] does. A prompt whose contents
    /// hold no such spelling is encoded exactly as by `encode_prompt`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the tokenizer fails.
    pub fn encode_chat(&self, text: &str, data: &[std::ops::Range<usize>]) -> Result<Vec<u32>> {
        let (literal, spellings) = self.shared.literal.get_or_init(|| {
            let mut literal = self.shared.inner.clone();
            literal.set_encode_special_tokens(true);
            let spellings = self
                .shared
                .inner
                .get_added_tokens_decoder()
                .into_values()
                .filter(|t| t.special && !t.content.is_empty())
                .map(|t| t.content)
                .collect();
            (literal, spellings)
        });
        // The spans of special-token spellings inside the contents, merged and in order.
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for range in data {
            let Some(content) = text.get(range.clone()) else {
                continue;
            };
            for spelling in spellings {
                spans.extend(
                    content
                        .match_indices(spelling.as_str())
                        .map(|(at, m)| (range.start + at, range.start + at + m.len())),
                );
            }
        }
        if spans.is_empty() {
            return self.encode_prompt(text);
        }
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let encode = |tokenizer: &tokenizers::Tokenizer, piece: &str, ids: &mut Vec<u32>| {
            if piece.is_empty() {
                return Ok(());
            }
            let encoding = tokenizer
                .encode_fast(piece, false)
                .map_err(|e| Error::tokenizer("cannot encode the prompt", e))?;
            ids.extend_from_slice(encoding.get_ids());
            Ok::<(), Error>(())
        };
        let mut ids = Vec::new();
        let mut at = 0;
        for (start, end) in merged {
            encode(&self.shared.inner, &text[at..start], &mut ids)?;
            encode(literal, &text[start..end], &mut ids)?;
            at = end;
        }
        encode(&self.shared.inner, &text[at..], &mut ids)?;
        Ok(self.with_bos(ids))
    }

    /// The most bytes of text one token can stand for (an upper bound, from the longest
    /// spelling in the vocabulary): a text of `n` bytes is at least `n / max_token_bytes()`
    /// tokens, which lets admission refuse an oversized prompt before tokenizing it.
    pub fn max_token_bytes(&self) -> usize {
        self.shared.max_token_bytes
    }

    /// Decodes `ids` to text.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the decoder fails.
    pub fn decode(&self, ids: &[u32], skip: SkipSpecial) -> Result<String> {
        self.shared
            .inner
            .decode(ids, skip == SkipSpecial::Yes)
            .map_err(|e| Error::tokenizer("cannot decode tokens", e))
    }

    /// The text one token stands for, as shown in logprobs: added tokens (special and
    /// user-defined) as written, as llama.cpp renders them; others decoded alone (bytes that are
    /// not a whole character become U+FFFD), with a leading space kept. `None` for ids outside
    /// the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        if let Some(added) = self.added_token_text(id) {
            return Some(added);
        }
        let inner = &self.shared.inner;
        let token = inner.id_to_token(id)?;
        match &self.shared.piece_decoder {
            Some(decoder) => decoder.decode(vec![token]).ok(),
            None => Some(token),
        }
    }

    /// The text of `id` if it is an added token (special or user-defined), as written.
    pub fn added_token_text(&self, id: u32) -> Option<String> {
        self.shared
            .inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
    }

    /// The number of token ids (the highest id plus one).
    pub fn vocab_size(&self) -> usize {
        self.shared.vocab_size
    }

    /// The special tokens.
    pub fn special(&self) -> &SpecialTokens {
        &self.shared.special
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.shared.inner
    }
}

/// `decoder` without the steps that drop the space a text starts with.
fn piece_decoder(decoder: &DecoderWrapper) -> DecoderWrapper {
    match decoder {
        DecoderWrapper::Sequence(seq) => DecoderWrapper::Sequence(DecoderSequence::new(
            seq.get_decoders()
                .iter()
                .filter(|d| !matches!(d, DecoderWrapper::Strip(_)))
                .map(piece_decoder)
                .collect(),
        )),
        DecoderWrapper::Metaspace(m) => {
            let mut m = m.clone();
            m.set_prepend_scheme(PrependScheme::Never);
            DecoderWrapper::Metaspace(m)
        }
        other => other.clone(),
    }
}

/// Parses the JSON file at `path`; `None` if it does not exist. The model directory's JSON files
/// (`tokenizer_config.json`, `generation_config.json`, `config.json`) are all read through it.
pub(crate) fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::tokenizer(format!("{} is not valid JSON", path.display()), e))
}

#[cfg(test)]
mod tests;
