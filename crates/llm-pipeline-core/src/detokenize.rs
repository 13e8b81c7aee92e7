//! Incremental detokenization.
//!
//! Decoding one token at a time can cut a UTF-8 character in half (byte-level BPE splits emoji and
//! CJK characters over several tokens) and loses the spaces that some decoders only add between
//! tokens. [`IncrementalDecoder`] keeps a short window of ids, decodes it with the model's own
//! decoder and releases only text that is complete, the way `tokenizers::DecodeStream` does, but
//! owning its state so that the engine can keep one per sequence without borrowing the tokenizer.

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Ids held back waiting for a character to complete, beyond which they are released as they
/// decode (U+FFFD for the broken bytes). A UTF-8 character spans at most four bytes, so only a
/// model emitting stray continuation bytes gets here, and without the bound it would grow the
/// window, and the cost of decoding it at every token, without end.
pub const MAX_PENDING_IDS: usize = 16;

/// Per-sequence state of the incremental decoder.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl IncrementalDecoder {
    /// A decoder with no tokens seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one token; returns the text it completes, or `None` while a character is still
    /// incomplete. Special tokens decode to nothing.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the id is outside the vocabulary.
    pub fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        let text = tokenizers::tokenizer::step_decode_stream(
            tokenizer.inner(),
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| Error::tokenizer(format!("cannot decode token {id}"), e))?;
        if text.is_some() || self.ids.len() <= MAX_PENDING_IDS {
            return Ok(text);
        }
        let window = tokenizer
            .inner()
            .decode(&self.ids, true)
            .map_err(|e| Error::tokenizer(format!("cannot decode token {id}"), e))?;
        let pending = window
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(&window)
            .to_owned();
        *self = Self::default();
        Ok(Some(pending))
    }

    /// Ids decoded but not yet released as text (at most [`MAX_PENDING_IDS`] + 1 between steps).
    pub fn pending(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stray_continuation_bytes_are_released_not_hoarded() {
        let meta = crate::gguf::GgufMetadata::from_path(crate::testing::smollm2()).unwrap();
        let tokenizer = Tokenizer::from_gguf(&meta).unwrap();
        // Byte 0x80 alone (GPT-2's byte alphabet spells it `Ģ`): never a whole character.
        let stray = tokenizer.inner().token_to_id("Ģ").expect("a byte token");
        let mut decoder = IncrementalDecoder::new();
        let mut released = String::new();
        for _ in 0..100 {
            if let Some(text) = decoder.step(&tokenizer, stray).unwrap() {
                released.push_str(&text);
            }
            assert!(decoder.pending() <= MAX_PENDING_IDS + 1);
        }
        assert!(released.contains('\u{FFFD}'), "{released:?}");
        // Whole characters still come out whole.
        let mut decoder = IncrementalDecoder::new();
        let ids = tokenizer.encode_prompt("héllo 🌊").unwrap();
        let text: String = ids
            .iter()
            .filter_map(|&id| decoder.step(&tokenizer, id).unwrap())
            .collect();
        assert_eq!(text, "héllo 🌊");
    }
}
