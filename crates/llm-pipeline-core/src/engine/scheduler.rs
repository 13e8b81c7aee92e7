//! The step planner: which sequences run in the next step, and how many tokens each.
//!
//! A pure function over small views of the sequences, so that every budget can be unit-tested
//! without a model. Each step carries one decode token for every running sequence that is
//! decoding, then prefill chunks (of running sequences whose prompt is not yet all in the KV
//! cache, then of waiting sequences, oldest first) while the step's token budget
//! (`MAX_NUM_BATCHED_TOKENS`), the sequence cap (`MAX_NUM_SEQS`) and the KV capacity allow.
//! When the KV cache cannot hold one more token for every running sequence, the newest running
//! sequence is preempted: its cache is freed and it goes back to the front of the queue, to be
//! recomputed later (vLLM's recompute preemption).

use crate::backend::SeqId;

/// A sequence as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqView {
    /// The sequence.
    pub id: SeqId,
    /// Tokens already in its KV cache.
    pub computed: u32,
    /// Tokens known but not yet computed (prompt remainder, or the last sampled token).
    pub pending: u32,
}

/// The limits of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Tokens per step.
    pub max_batched_tokens: u32,
    /// Sequences running at once.
    pub max_seqs: u32,
    /// KV cells for all sequences together.
    pub kv_capacity: u32,
}

/// One sequence's share of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// The sequence.
    pub id: SeqId,
    /// How many of its pending tokens to compute.
    pub len: u32,
}

/// The decision for one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Running sequences to preempt (free their KV, requeue at the front), newest first.
    pub preempt: Vec<SeqId>,
    /// How many sequences to admit from the front of the waiting queue.
    pub admit: usize,
    /// The step's work, running sequences first (in their order), then the admitted ones.
    pub chunks: Vec<Chunk>,
}

impl Plan {
    /// Tokens in the step.
    pub fn tokens(&self) -> u32 {
        self.chunks.iter().map(|c| c.len).sum()
    }
}

/// Plans one step. `running` is in admission order (oldest first), `waiting` in queue order.
pub fn plan(running: &[SeqView], waiting: &[SeqView], budget: Budget) -> Plan {
    let mut plan = Plan::default();
    let mut kept = running.len();
    let mut used: u64 = running.iter().map(|s| u64::from(s.computed)).sum();
    // Every running sequence must be able to grow by at least one token, or the newest goes.
    while kept > 0 && used + kept as u64 > u64::from(budget.kv_capacity) {
        kept -= 1;
        let victim = running[kept];
        used -= u64::from(victim.computed);
        plan.preempt.push(victim.id);
    }
    let running = &running[..kept];
    let mut kv_free = u64::from(budget.kv_capacity).saturating_sub(used);
    let mut tokens_left = u64::from(budget.max_batched_tokens);
    let mut take = |s: &SeqView, chunks: &mut Vec<Chunk>| -> bool {
        let len = u64::from(s.pending).min(tokens_left).min(kv_free);
        if len == 0 {
            return false;
        }
        tokens_left -= len;
        kv_free -= len;
        chunks.push(Chunk {
            id: s.id,
            len: len as u32,
        });
        true
    };
    // Decodes first, so that running sequences keep their pace; then unfinished prefills.
    for s in running.iter().filter(|s| s.computed > 0 && s.pending == 1) {
        take(s, &mut plan.chunks);
    }
    for s in running
        .iter()
        .filter(|s| !(s.computed > 0 && s.pending == 1))
    {
        take(s, &mut plan.chunks);
    }
    // Nothing is admitted while something was just preempted: that would only thrash.
    if plan.preempt.is_empty() {
        let room = (budget.max_seqs as usize).saturating_sub(running.len());
        for s in waiting.iter().take(room) {
            if !take(s, &mut plan.chunks) {
                break;
            }
            plan.admit += 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(id: SeqId, computed: u32, pending: u32) -> SeqView {
        SeqView {
            id,
            computed,
            pending,
        }
    }

    fn budget(tokens: u32, seqs: u32, kv: u32) -> Budget {
        Budget {
            max_batched_tokens: tokens,
            max_seqs: seqs,
            kv_capacity: kv,
        }
    }

    fn lens(p: &Plan) -> Vec<(SeqId, u32)> {
        p.chunks.iter().map(|c| (c.id, c.len)).collect()
    }

    #[test]
    fn empty_is_empty() {
        assert_eq!(plan(&[], &[], budget(8, 4, 100)), Plan::default());
    }

    #[test]
    fn decodes_come_before_prefill_and_admission() {
        let running = [seq(1, 10, 1), seq(2, 4, 6), seq(3, 20, 1)];
        let waiting = [seq(4, 0, 5)];
        let p = plan(&running, &waiting, budget(100, 8, 1000));
        assert_eq!(lens(&p), vec![(1, 1), (3, 1), (2, 6), (4, 5)]);
        assert_eq!(p.admit, 1);
        assert!(p.preempt.is_empty());
    }

    #[test]
    fn token_budget_chunks_prefill() {
        let waiting = [seq(1, 0, 10), seq(2, 0, 10)];
        let p = plan(&[], &waiting, budget(16, 8, 1000));
        assert_eq!(lens(&p), vec![(1, 10), (2, 6)]);
        assert_eq!(p.admit, 2);
        assert_eq!(p.tokens(), 16);
        // The next step continues the chunked prefill of sequence 2 first.
        let running = [seq(1, 10, 1), seq(2, 6, 4)];
        let p = plan(&running, &[], budget(16, 8, 1000));
        assert_eq!(lens(&p), vec![(1, 1), (2, 4)]);
    }

    #[test]
    fn sequence_cap_limits_admission() {
        let running = [seq(1, 5, 1)];
        let waiting = [seq(2, 0, 3), seq(3, 0, 3), seq(4, 0, 3)];
        let p = plan(&running, &waiting, budget(100, 3, 1000));
        assert_eq!(p.admit, 2);
        assert_eq!(lens(&p), vec![(1, 1), (2, 3), (3, 3)]);
    }

    #[test]
    fn admission_stops_at_first_that_does_not_fit() {
        // FIFO: a later short request does not overtake an earlier one.
        let waiting = [seq(1, 0, 4), seq(2, 0, 1)];
        let p = plan(&[], &waiting, budget(100, 8, 4));
        assert_eq!(p.admit, 1);
        // Full cache: the running sequence cannot grow, so it is preempted and nothing admitted.
        let p = plan(&[seq(1, 4, 1)], &waiting[1..], budget(100, 8, 4));
        assert_eq!(
            (p.preempt.as_slice(), p.admit, p.chunks.len()),
            (&[1][..], 0, 0)
        );
    }

    #[test]
    fn kv_capacity_bounds_prefill_chunks() {
        let running = [seq(1, 90, 1)];
        let waiting = [seq(2, 0, 50)];
        let p = plan(&running, &waiting, budget(100, 8, 100));
        assert_eq!(lens(&p), vec![(1, 1), (2, 9)]);
    }

    #[test]
    fn kv_exhaustion_preempts_newest() {
        let running = [seq(1, 50, 1), seq(2, 30, 1), seq(3, 20, 1)];
        let p = plan(&running, &[seq(4, 0, 1)], budget(100, 8, 100));
        assert_eq!(p.preempt, vec![3]);
        assert_eq!(lens(&p), vec![(1, 1), (2, 1)]);
        assert_eq!(p.admit, 0, "no admission in a step that preempts");
    }

    #[test]
    fn preemption_repeats_until_it_fits() {
        let running = [seq(1, 60, 1), seq(2, 39, 1), seq(3, 1, 1)];
        let p = plan(&running, &[], budget(100, 8, 100));
        assert_eq!(p.preempt, vec![3, 2]);
        assert_eq!(lens(&p), vec![(1, 1)]);
    }

    #[test]
    fn decode_budget_smaller_than_running_set() {
        let running: Vec<_> = (0..5).map(|i| seq(i, 10, 1)).collect();
        let p = plan(&running, &[], budget(3, 8, 1000));
        assert_eq!(p.tokens(), 3);
        assert_eq!(lens(&p), vec![(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn recomputed_sequence_prefills_prompt_and_output() {
        // A preempted sequence comes back with computed = 0 and pending = its whole length.
        let p = plan(&[], &[seq(7, 0, 42)], budget(32, 8, 100));
        assert_eq!(lens(&p), vec![(7, 32)]);
        assert_eq!(p.admit, 1);
    }
}
