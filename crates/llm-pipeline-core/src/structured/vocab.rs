//! The bridge from our [`Tokenizer`] to `toktrie`'s byte-level view of a vocabulary.
//!
//! A grammar engine reasons about bytes, so every token id must be spelled as the exact bytes it
//! adds to the text. `tokenizers` stores spellings in the model's own alphabet: byte-level BPE
//! (GPT-2, Llama 3, Qwen, SmolLM) writes each byte as one printable character, SentencePiece
//! (Llama 2, Gemma, Mistral) writes a space as `▁` and a fallback byte as `<0x0A>`. This module
//! undoes either. Special tokens (`<|im_end|>`, `<end_of_turn>`) are not text: they are spelled
//! with `toktrie`'s marker byte first, so no grammar over text can produce them, while added
//! tokens that are ordinary text (`<tool_call>` in Qwen) keep their text.

use std::collections::HashMap;

use llguidance::toktrie::{TokRxInfo, TokTrie};
use tokenizers::DecoderWrapper;

use crate::tokenizer::Tokenizer;

/// The trie of `tokenizer`'s vocabulary, with its end-of-sequence token.
pub(super) fn trie(tokenizer: &Tokenizer) -> TokTrie {
    let inner = tokenizer.inner();
    let byte_level = inner.get_decoder().is_some_and(is_byte_level);
    let unicode_bytes = if byte_level {
        byte_level_alphabet()
    } else {
        HashMap::new()
    };
    let added = inner.get_added_tokens_decoder();
    let size = tokenizer.vocab_size();
    let words: Vec<Vec<u8>> = (0..size as u32)
        .map(|id| {
            if let Some(token) = added.get(&id) {
                return if token.special {
                    let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    word.extend_from_slice(token.content.as_bytes());
                    word
                } else {
                    token.content.as_bytes().to_vec()
                };
            }
            match inner.id_to_token(id) {
                Some(piece) if byte_level => piece
                    .chars()
                    .map(|c| unicode_bytes.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| piece.into_bytes()),
                Some(piece) => sentencepiece_bytes(&piece),
                // A hole in the ids: a word no text reaches.
                None => vec![TokTrie::SPECIAL_TOKEN_MARKER],
            }
        })
        .collect();
    let special = tokenizer.special();
    let eos = special
        .eos
        .or_else(|| special.end_of_generation.first().copied())
        .unwrap_or(0);
    let mut info = TokRxInfo::new(size as u32, eos);
    info.tok_bos = special.bos;
    TokTrie::from(&info, &words)
}

/// Whether `decoder` (or a step of it) is the byte-level decoder.
fn is_byte_level(decoder: &DecoderWrapper) -> bool {
    match decoder {
        DecoderWrapper::ByteLevel(_) => true,
        DecoderWrapper::Sequence(seq) => seq.get_decoders().iter().any(is_byte_level),
        _ => false,
    }
}

/// GPT-2's table from the printable character that stands for a byte back to the byte: the
/// printable bytes stand for themselves, the others for 256, 257, … in order.
fn byte_level_alphabet() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                u32::from(b)
            } else {
                next += 1;
                next - 1
            };
            (char::from_u32(c).expect("below 0x200"), b)
        })
        .collect()
}

/// A SentencePiece piece as bytes: `<0xAB>` is the byte 0xAB, `▁` a space.
fn sentencepiece_bytes(piece: &str) -> Vec<u8> {
    if let Some(hex) = piece
        .strip_prefix("<0x")
        .and_then(|rest| rest.strip_suffix('>'))
        && hex.len() == 2
        && let Ok(byte) = u8::from_str_radix(hex, 16)
    {
        return vec![byte];
    }
    piece.replace('\u{2581}', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_level_alphabet_covers_every_byte_once() {
        let table = byte_level_alphabet();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'Ċ'], b'\n');
        assert_eq!(table[&'a'], b'a');
    }

    #[test]
    fn sentencepiece_pieces_become_their_bytes() {
        assert_eq!(sentencepiece_bytes("▁hello"), b" hello");
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_bytes("<0xZZ>"), b"<0xZZ>");
    }
}
