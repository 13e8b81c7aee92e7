//! One sequence's state inside the engine: its tokens, how many are in the KV cache, and the
//! per-request sampler, grammar constraint, incremental decoder and stop matcher.

use tokio::sync::mpsc::UnboundedSender;

use super::scheduler::SeqView;
use super::{Event, Finished, SeqRequest, TokenEvent};
use crate::backend::{BatchEntry, SeqId};
use crate::detokenize::IncrementalDecoder;
use crate::openai::FinishReason;
use crate::sampling::Sampler;
use crate::stop::{StopMatcher, StopOutcome};
use crate::structured::Constraint;
use crate::tokenizer::Tokenizer;

/// Whether a sequence goes on after a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepOutcome {
    Continue,
    Finished,
}

/// What sampling a step's rows of one sequence gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) outcome: StepOutcome,
    /// Tokens emitted: the draft tokens kept, then one sampled.
    pub(super) emitted: u32,
    /// Draft tokens the step carried.
    pub(super) drafted: u32,
    /// Draft tokens kept.
    pub(super) accepted: u32,
}

impl Verdict {
    /// Whether the backend holds rejected draft tokens of a sequence that goes on.
    pub(super) fn rejected(&self) -> bool {
        self.outcome == StepOutcome::Continue && self.accepted < self.drafted
    }
}

#[derive(Debug)]
pub(super) struct Sequence {
    pub(super) id: SeqId,
    /// Prompt followed by the generated tokens.
    tokens: Vec<u32>,
    pub(super) prompt_len: usize,
    /// Tokens of `tokens` in the backend's KV cache.
    pub(super) computed: u32,
    /// Prompt tokens the backend had cached when the sequence was first admitted.
    cached_prompt: Option<u32>,
    /// Failed steps that cost this sequence its KV cache.
    pub(super) losses: u8,
    max_tokens: u32,
    sampler: Sampler,
    /// The grammar the output follows, if the request asked for one.
    pub(super) constraint: Option<Box<Constraint>>,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    events: UnboundedSender<Event>,
    /// This step's draft tokens, guessed to follow the pending ones (speculative decoding).
    draft: Vec<u32>,
    /// The pending tokens followed by `draft`: the batch entry's tokens while there is a draft.
    window: Vec<u32>,
    /// The most draft tokens the next step carries, from how the last drafts fared.
    draft_limit: u32,
}

impl Sequence {
    pub(super) fn new(id: SeqId, request: SeqRequest, events: UnboundedSender<Event>) -> Self {
        let sampler = Sampler::new(request.sampling, &request.prompt);
        let prompt_len = request.prompt.len();
        Self {
            id,
            tokens: request.prompt,
            prompt_len,
            computed: 0,
            cached_prompt: None,
            losses: 0,
            max_tokens: request.max_tokens.max(1),
            sampler,
            constraint: request.constraint.map(Box::new),
            decoder: IncrementalDecoder::new(),
            stop: StopMatcher::new(&request.stop),
            events,
            draft: Vec::new(),
            window: Vec::new(),
            draft_limit: u32::MAX,
        }
    }

    /// All known tokens: the prompt, then what was generated.
    pub(super) fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Starts (or restarts, after preemption) with `cached` leading tokens already in the
    /// backend's KV cache (all but the last at most; more is a backend bug, clamped).
    pub(super) fn start_at(&mut self, cached: u32) {
        self.computed = cached.min(self.tokens.len() as u32 - 1);
        self.cached_prompt
            .get_or_insert(self.computed.min(self.prompt_len as u32));
    }

    /// Undoes [`Sequence::start_at`] when the step that admitted the sequence had no room for
    /// it after all: nothing is computed, and a `first` admission is forgotten.
    pub(super) fn unstart(&mut self, first: bool) {
        self.computed = 0;
        if first {
            self.cached_prompt = None;
        }
    }

    /// Prompt tokens the backend had cached at the first admission, once admitted.
    pub(super) fn cached_prompt(&self) -> Option<u32> {
        self.cached_prompt
    }

    pub(super) fn view(&self) -> SeqView {
        SeqView {
            id: self.id,
            computed: self.computed,
            pending: self.tokens.len() as u32 - self.computed,
        }
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// The batch entry for the next `len` pending tokens, and this step's draft tokens when
    /// they complete the pending ones.
    pub(super) fn entry(&self, len: u32) -> BatchEntry<'_> {
        let start = self.computed as usize;
        let completes = self.completes_pending(len);
        if completes && !self.draft.is_empty() {
            return BatchEntry {
                seq: self.id,
                start: self.computed,
                tokens: &self.window,
                logits: 1 + self.draft.len() as u32,
            };
        }
        BatchEntry {
            seq: self.id,
            start: self.computed,
            tokens: &self.tokens[start..start + len as usize],
            logits: u32::from(completes),
        }
    }

    /// Sets this step's draft: up to `max` tokens guessed to follow the known ones (none when
    /// `max` is 0), fewer after drafts that were rejected, to be verified after the pending
    /// tokens.
    pub(super) fn draft(&mut self, max: u32) {
        let max = max.min(self.draft_limit);
        self.draft = super::speculate::lookup(&self.tokens, max as usize);
        self.window.clear();
        if !self.draft.is_empty() {
            self.window
                .extend_from_slice(&self.tokens[self.computed as usize..]);
            self.window.extend_from_slice(&self.draft);
        }
    }

    /// Draft tokens this step carries.
    pub(super) fn draft_len(&self) -> usize {
        self.draft.len()
    }

    /// Drops this step's draft.
    pub(super) fn drop_draft(&mut self) {
        self.draft.clear();
        self.window.clear();
    }

    /// Draft tokens this sequence may carry in a step: none once its next token could be its
    /// last (every draft kept still leaves one token to sample, within `max_tokens` and
    /// `max_model_len`).
    pub(super) fn draft_room(&self, max_model_len: u32) -> u32 {
        let by_tokens = self.max_tokens.saturating_sub(self.generated() + 1);
        let by_context = max_model_len.saturating_sub(self.tokens.len() as u32 + 1);
        by_tokens.min(by_context)
    }

    /// Whether computing `len` more tokens reaches the end of the known tokens.
    pub(super) fn completes_pending(&self, len: u32) -> bool {
        (self.computed + len) as usize == self.tokens.len()
    }

    fn generated(&self) -> u32 {
        (self.tokens.len() - self.prompt_len) as u32
    }

    /// Samples this step's rows (`1 + draft` rows of `vocab` logits): the next token from the
    /// first row, then, while the token sampled is the draft token that the next row was
    /// computed after, the next token from that row. The draft tokens kept are in the KV cache,
    /// and count as computed.
    pub(super) fn sample_rows(
        &mut self,
        rows: &mut [f32],
        vocab: usize,
        tokenizer: &Tokenizer,
        max_model_len: u32,
    ) -> Verdict {
        let draft = std::mem::take(&mut self.draft);
        self.window.clear();
        let mut verdict = Verdict {
            outcome: StepOutcome::Continue,
            emitted: 0,
            drafted: draft.len() as u32,
            accepted: 0,
        };
        for (row, guess) in rows
            .chunks_exact_mut(vocab)
            .zip(draft.iter().map(Some).chain([None]))
        {
            verdict.outcome = self.sample_next(row, tokenizer, max_model_len);
            verdict.emitted += 1;
            let kept = verdict.outcome == StepOutcome::Continue
                && guess.is_some_and(|g| self.tokens.last() == Some(g));
            if !kept {
                break;
            }
            verdict.accepted += 1;
            self.computed += 1;
        }
        if verdict.drafted > 0 {
            self.draft_limit = super::speculate::next_limit(verdict.accepted, verdict.drafted);
        }
        verdict
    }

    /// How many passes over its row this sequence's sampling makes, roughly: one for a greedy
    /// pick without logprobs (an argmax), eight for a draw (softmax, nucleus, draw, logprobs).
    pub(super) fn sampling_passes(&self) -> usize {
        let params = self.sampler.params();
        if params.is_greedy() && params.logprobs == crate::sampling::Logprobs::Off {
            1
        } else {
            8
        }
    }

    /// Samples the next token from `logits`, sends its event, and says whether the sequence ended.
    fn sample_next(
        &mut self,
        logits: &mut [f32],
        tokenizer: &Tokenizer,
        max_model_len: u32,
    ) -> StepOutcome {
        let allowed = match self.constraint.as_mut().map(|c| c.allowed()).transpose() {
            Ok(allowed) => allowed.flatten(),
            Err(e) => {
                tracing::error!(seq = self.id, error = %e, "cannot constrain the output");
                self.fail(&e.to_string());
                return StepOutcome::Finished;
            }
        };
        let sampled = self.sampler.sample_within(logits, allowed);
        let token = sampled.token;
        self.tokens.push(token);
        let mut text = String::new();
        let mut reason = None;
        if tokenizer.special().end_of_generation.contains(&token) {
            reason = Some(FinishReason::Stop);
        } else {
            let piece = match self.decoder.step(tokenizer, token) {
                Ok(piece) => piece,
                Err(e) => {
                    tracing::warn!(seq = self.id, token, error = %e, "cannot decode token");
                    None
                }
            };
            if let Some(constraint) = &mut self.constraint {
                // A special token decodes to nothing, but may be the trigger of an armed
                // grammar (Mistral's `[TOOL_CALLS]`): the constraint sees its text.
                let special = piece
                    .as_deref()
                    .is_none_or(str::is_empty)
                    .then(|| tokenizer.added_token_text(token))
                    .flatten();
                let seen = special.as_deref().or(piece.as_deref()).unwrap_or("");
                if let Err(e) = constraint.commit(token, seen) {
                    tracing::error!(seq = self.id, error = %e, "cannot constrain the output");
                    self.fail(&e.to_string());
                    return StepOutcome::Finished;
                }
                if constraint.is_complete() {
                    reason = Some(FinishReason::Stop);
                }
            }
            if let Some(piece) = piece {
                match self.stop.push(&piece) {
                    StopOutcome::Continue { emit } => text = emit,
                    StopOutcome::Stopped { emit } => {
                        text = emit;
                        reason = Some(FinishReason::Stop);
                    }
                }
            }
        }
        if reason.is_none()
            && (self.generated() >= self.max_tokens || self.tokens.len() >= max_model_len as usize)
        {
            reason = Some(FinishReason::Length);
        }
        if reason.is_some() {
            text.push_str(&self.stop.finish());
        }
        let _ = self.events.send(Event::Token(TokenEvent {
            token,
            text,
            logprobs: sampled.logprobs,
        }));
        match reason {
            None => StepOutcome::Continue,
            Some(reason) => {
                let _ = self.events.send(Event::Finished(Finished {
                    reason,
                    prompt_tokens: self.prompt_len as u32,
                    completion_tokens: self.generated(),
                    cached_tokens: self.cached_prompt.unwrap_or(0),
                }));
                StepOutcome::Finished
            }
        }
    }

    pub(super) fn fail(&self, message: &str) {
        let _ = self.events.send(Event::Failed {
            message: message.to_owned(),
        });
    }
}
