//! A backend that produces logits rows as wide as a large model's, with realistic shapes, at a
//! fixed cost per step: what the engine's own work per step (scheduling, sampling, detokenizing,
//! events) is measured against without a model or a GPU.
//!
//! A GPU runs the forward step of an 8B model over 128 sequences in tens of milliseconds; what
//! the engine does around it must stay small beside that. This backend stands in for the GPU:
//! `forward` waits out the configured step cost and hands the engine one row per sequence that
//! asked, so `EngineStats::step_nanos - backend_nanos` is the engine's own time.
//!
//! Rows come from a bank generated once: Gaussian logits (σ 2.5, as a language model's are over
//! most of its vocabulary) with a head of a few dozen likely tokens whose height varies from row
//! to row, from a near-certain next token to a flat head, so that nucleus (top-p) sampling keeps
//! from one to hundreds of tokens as it does on real text. Which bank row a sequence gets is a
//! function of its history (its length and last token), as a model's output is, so a sequence
//! gets the same rows whatever else shares its steps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::backend::{Backend, BackendInfo, BatchEntry, Logits, SeqId};

/// Bank rows: enough that neighbouring sequences see different distributions.
const BANK: usize = 16;

/// The synthetic backend.
#[derive(Debug)]
pub struct SyntheticBackend {
    info: BackendInfo,
    bank: Vec<Vec<f32>>,
    step_cost: Duration,
    kv: HashMap<SeqId, u32>,
}

impl SyntheticBackend {
    /// A backend of `vocab` ids running up to `max_seqs` sequences of `max_model_len` tokens,
    /// whose every step takes `step_cost` (at least the time to copy its rows).
    pub fn new(vocab: usize, max_seqs: u32, max_model_len: u32, step_cost: Duration) -> Self {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let bank = (0..BANK)
            .map(|i| {
                let mut row: Vec<f32> = (0..vocab).map(|_| gaussian(&mut rng) * 2.5).collect();
                // The head: from a dominant token (row 0: +14 over the rest) to a flat one.
                let lead = 14.0 - 12.0 * i as f32 / (BANK - 1) as f32;
                for rank in 0..48 {
                    let id = rng.random_range(0..vocab);
                    row[id] = 8.0 + lead / (1.0 + rank as f32 * 0.35);
                }
                row
            })
            .collect();
        Self {
            info: BackendInfo {
                name: "synthetic",
                vocab_size: vocab,
                trained_context: max_model_len,
                kv_capacity: max_seqs.saturating_mul(max_model_len),
                max_batch_tokens: max_seqs.saturating_mul(max_model_len),
                max_seqs,
                description: format!("synthetic backend ({vocab} ids, {step_cost:?} per step)"),
            },
            bank,
            step_cost,
            kv: HashMap::new(),
        }
    }
}

/// A standard normal draw (Box-Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u: f32 = rng.random_range(f32::EPSILON..1.0);
    let v: f32 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

impl Backend for SyntheticBackend {
    type Error = std::convert::Infallible;

    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn forward(
        &mut self,
        batch: &[BatchEntry<'_>],
        logits: &mut Logits,
    ) -> Result<(), Self::Error> {
        let started = Instant::now();
        for entry in batch {
            *self.kv.entry(entry.seq).or_default() += entry.tokens.len() as u32;
            for t in entry.first_logits()..entry.tokens.len() {
                let len = entry.start as usize + t + 1;
                logits.push_row(&self.bank[(len + entry.tokens[t] as usize) % BANK]);
            }
        }
        if let Some(rest) = self.step_cost.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        Ok(())
    }

    fn release(&mut self, seq: SeqId) {
        self.kv.remove(&seq);
    }

    fn truncate(&mut self, seq: SeqId, len: u32) -> Result<(), Self::Error> {
        if let Some(cached) = self.kv.get_mut(&seq) {
            *cached = (*cached).min(len);
        }
        Ok(())
    }
}
