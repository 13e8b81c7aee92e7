//! Incremental detokenization.
//!
//! Decoding one token at a time can cut a UTF-8 character in half (byte-level BPE splits emoji and
//! CJK characters over several tokens) and loses the spaces that some decoders only add between
//! tokens. [`IncrementalDecoder`] keeps a short window of ids, decodes it with the model's own
//! decoder and releases only text that is complete, the way `tokenizers::DecodeStream` does, but
//! owning its state so that the engine can keep one per sequence without borrowing the tokenizer.

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

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
        tokenizers::tokenizer::step_decode_stream(
            tokenizer.inner(),
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| Error::tokenizer(format!("cannot decode token {id}"), e))
    }
}
