//! The contract between the engine and an inference backend.
//!
//! A backend runs one forward step over a batch that mixes sequences at different positions: a
//! prefill chunk for some, one decode token for others. It owns the KV cache of every sequence
//! and frees it on [`Backend::release`]. It knows nothing of requests, sampling, text or HTTP, so
//! that one engine serves every backend and each backend stays small. The trait is synchronous:
//! the engine calls it from its own OS thread, never from the async runtime.

use crate::error::BoxError;

/// The engine's name for a sequence; unique for the life of the engine.
pub type SeqId = u64;

/// One sequence's share of a step: `tokens` placed at positions `start..start + tokens.len()`.
#[derive(Debug, Clone, Copy)]
pub struct BatchEntry<'a> {
    /// The sequence.
    pub seq: SeqId,
    /// Its position of `tokens[0]`; equal to the number of its tokens already in the KV cache.
    pub start: u32,
    /// The new tokens: a prefill chunk, or the one token sampled last step, possibly followed
    /// by draft tokens to verify (speculative decoding).
    pub tokens: &'a [u32],
    /// How many logits rows the engine needs: one after each of the last `logits` of `tokens`,
    /// in position order. 0 for a prefill chunk that does not end the prompt, 1 after a prompt
    /// or a decode token, `1 + drafts` when the entry carries draft tokens to verify.
    pub logits: u32,
}

impl BatchEntry<'_> {
    /// The index in `tokens` of the first token whose logits the engine needs.
    pub fn first_logits(&self) -> usize {
        self.tokens.len().saturating_sub(self.logits as usize)
    }
}

/// Logits produced by a step: the rows each entry asked for ([`BatchEntry::logits`]), in batch
/// order and, within an entry, in position order; each row `vocab_size` floats.
#[derive(Debug, Clone, Default)]
pub struct Logits {
    vocab_size: usize,
    data: Vec<f32>,
}

impl Logits {
    /// An empty buffer for rows of `vocab_size`.
    pub fn new(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            data: Vec::new(),
        }
    }

    /// Removes all rows, keeping the allocation.
    pub fn clear(&mut self) {
        self.data.clear();
    }

    /// Appends one row.
    ///
    /// # Panics
    /// If `row.len()` is not the vocabulary size (a backend bug).
    pub fn push_row(&mut self, row: &[f32]) {
        assert_eq!(row.len(), self.vocab_size, "logits row of the wrong width");
        self.data.extend_from_slice(row);
    }

    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.vocab_size).unwrap_or(0)
    }

    /// Row `i`, mutable (sampling works in place).
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }

    /// Every row, mutable, in order (disjoint, so that they can be sampled in parallel).
    pub fn rows_mut(&mut self) -> std::slice::ChunksExactMut<'_, f32> {
        self.data.chunks_exact_mut(self.vocab_size.max(1))
    }

    /// Consecutive groups of rows, `counts[i]` rows in group `i`, mutable and disjoint: each
    /// entry's rows together. Rows beyond the counts are left out.
    pub fn groups_mut(&mut self, counts: &[usize]) -> Vec<&mut [f32]> {
        let mut rest = self.data.as_mut_slice();
        let mut groups = Vec::with_capacity(counts.len());
        for &n in counts {
            let (group, tail) = rest.split_at_mut((n * self.vocab_size).min(rest.len()));
            groups.push(group);
            rest = tail;
        }
        groups
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }
}

/// What a backend tells the engine about the loaded model and its memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// The backend's name as `--backend` takes it (`llama-cpp`, `candle`, `ort`).
    pub name: &'static str,
    /// Logits row width.
    pub vocab_size: usize,
    /// The context length the model was trained for.
    pub trained_context: u32,
    /// KV cache cells available to all sequences together, under the memory budget.
    pub kv_capacity: u32,
    /// The most tokens one step may carry.
    pub max_batch_tokens: u32,
    /// The most sequences one step may carry.
    pub max_seqs: u32,
    /// A short description for logs and `/hardware/info` (backend, device, kernels).
    pub description: String,
}

/// What a failed [`Backend::forward`] cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepFailure {
    /// Any sequence of the batch may be damaged: the engine fails them all.
    Batch,
    /// These sequences lost their KV cache (as if released); every other sequence, in the batch
    /// or not, is as it was before the step. The engine computes the lost ones again from their
    /// first token, as after a preemption, and runs the others on; a sequence lost again and
    /// again is failed, since it is likely the cause. None lost means the step may simply run
    /// again, which the engine does until the faults persist, then fails the batch.
    Lost(Vec<SeqId>),
}

/// A batched inference backend.
pub trait Backend: Send {
    /// The backend's error type.
    type Error: Into<BoxError> + std::fmt::Display;

    /// Facts about the model and the KV budget.
    fn info(&self) -> &BackendInfo;

    /// Runs one step over `batch`, appending to `logits` the rows each entry asks for
    /// ([`BatchEntry::logits`]), in batch order. Each sequence appears at most once per batch.
    ///
    /// # Errors
    /// The backend's error when the step cannot run (out of KV cells, device failure). The
    /// engine then fails the step's requests.
    fn forward(&mut self, batch: &[BatchEntry<'_>], logits: &mut Logits)
    -> Result<(), Self::Error>;

    /// After [`forward`](Backend::forward) failed with `error`: what the failure cost. The
    /// default, [`StepFailure::Batch`], is right for every backend; one that knows which
    /// sequences it damaged lets the engine retry the rest instead of failing their requests.
    fn failure(&mut self, error: &Self::Error) -> StepFailure {
        let _ = error;
        StepFailure::Batch
    }

    /// Frees the KV cache of `seq`; a no-op for unknown sequences. A backend that offers
    /// [`reuse_prefix`](Backend::reuse_prefix) may keep the released cells' contents for a later
    /// sequence, as long as they stop counting against the others' capacity.
    fn release(&mut self, seq: SeqId);

    /// Speculative decoding: forgets `seq`'s cached tokens from position `len` on (the draft
    /// tokens the engine rejected), so that its next entry starts at `len`. Cells freed count
    /// as free again.
    ///
    /// # Errors
    /// The backend's error when it cannot; the engine then computes the sequence again from
    /// its first token, as after a preemption, and stops drafting on this backend.
    fn truncate(&mut self, seq: SeqId, len: u32) -> Result<(), Self::Error>;

    /// Prefix caching: offers `seq`, about to be computed from its first token (a new sequence,
    /// or one back after preemption), KV cache contents kept from sequences released earlier.
    /// `tokens` are `seq`'s known tokens but the last (which is always computed, to give
    /// logits). Returns how many of them, from the first, are now in `seq`'s cache at their
    /// positions; the engine starts `seq` there.
    ///
    /// The engine counts reused cells like computed ones: from now on they are `seq`'s, and
    /// cells still kept for other released sequences must give way whenever running sequences
    /// need them.
    /// The default keeps nothing.
    fn reuse_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> u32 {
        let _ = (seq, tokens);
        0
    }
}

/// How many tokens `a` and `b` share from the first: the length of a cached prefix that a
/// [`Backend::reuse_prefix`] can offer.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
