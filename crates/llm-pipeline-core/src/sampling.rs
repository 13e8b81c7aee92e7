//! Turning one row of logits into the next token.
//!
//! Sampling is a small closed set of strategies over `&mut [f32]` with a seeded RNG per request:
//! a [`Sampler`] lives as long as its sequence and owns that sequence's RNG (so the same seed and
//! the same logits give the same tokens, whatever else the engine is running) and the counts of
//! the tokens it has produced (for the penalties). The engine calls [`Sampler::sample`] once per
//! sequence per step; the logits row it passes is the step's scratch space, so the sampler needs
//! no vocabulary-sized buffer of its own and a step allocates nothing unless logprobs are asked for.
//!
//! # Order and semantics (vLLM's)
//! 1. **Logit bias**: `logit[t] += bias`.
//! 2. **Penalties**, in vLLM's order: repetition over the prompt *and* the output
//!    (`logit > 0 ? logit / r : logit * r`, as Hugging Face and vLLM), then frequency
//!    (`logit -= f * count`) and presence (`logit -= p * (count > 0)`) over the *output* only, as
//!    OpenAI defines them.
//! 3. **Temperature**: `logit / T`; below `1e-5` (vLLM's epsilon) the sampler is greedy: the
//!    argmax, ties going to the lowest token id.
//! 4. **Top-k**, then 5. **top-p** (the fewest most likely tokens whose probability reaches
//!    `top_p`; ties in probability are ordered by token id), then 6. **min-p** (keep
//!    `p >= min_p * p_max`), each on the distribution left by the step before; 7. a **draw**.
//!
//! Logprobs describe that final distribution (after penalties, temperature and filters); a token
//! that the filters removed has probability zero and is reported as `-9999.0`, as vLLM's OpenAI
//! server clamps `-inf`. A greedy request's logprobs use the same pipeline at temperature 1.
//!
//! # Where others differ
//! - vLLM V1 applies min-p right after temperature, *before* top-k and top-p (V0, followed here,
//!   applied it last). The two differ only when `top_p` and `min_p` are both set: here the
//!   nucleus is taken over the distribution before min-p, there over the one after it.
//! - vLLM V1 reports *raw* logprobs (before any processing) by default; we report the processed
//!   ones, like V0 and V1's `logprobs_mode = "processed_logprobs"`.
//! - llama.cpp's default chain is bias → penalties → DRY → top-k → typical → top-p → min-p → XTC
//!   → temperature → draw: temperature comes *last*, so its top-p and min-p see the distribution
//!   at temperature 1. Its three penalties all count the last `penalty_last_n` (64) tokens the
//!   sampler accepted (its server feeds the prompt in too), not the whole output. Its defaults
//!   are on (`top_k` 40, `top_p` 0.95, `min_p` 0.05, temperature 0.8); OpenAI's, used here, are off.
//!
//! # Speed
//! Nothing sorts the vocabulary. Greedy is one vectorized argmax pass. Top-k keeps a k-sized heap
//! while scanning, skipping blocks that cannot enter it. Otherwise the row is turned into
//! unnormalized probabilities in place with a vectorizable `exp` (min-p alone skips the blocks
//! wholly under its cut); top-p then builds a histogram of probability mass over the float
//! exponent (8 bins per octave), walks it from the top to find the one bin where the nucleus
//! ends and orders only that bin's tokens. Every filter keeps the
//! tokens above a cut, so the draw is a scan for the first token where the running mass of the
//! kept tokens passes a uniform number: no candidate list is built.

mod kernels;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use kernels::{
    Cand, argmax, argmax_value, draw_cut, exp_above, exp_in_place, exp_neg, masked_sum,
    nucleus_cut, nucleus_len, rank, top_n_scan,
};

/// Below this temperature the sampler is greedy (vLLM's `_SAMPLING_EPS`).
const GREEDY_TEMPERATURE: f32 = 1e-5;
/// What a filtered-out token's logprob (`-inf`) is reported as.
const MIN_LOGPROB: f32 = -9999.0;
/// Up to this `top_k` the top-k candidates are kept in a heap while scanning; above it the whole
/// vocabulary is partitioned with `select_nth_unstable_by` (and the sampler's candidate buffer
/// grows to the vocabulary's size).
const HEAP_TOP_K: usize = 1024;

/// Whether and how many log-probabilities to return with each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logprobs {
    /// No logprobs (OpenAI `logprobs: false`).
    #[default]
    Off,
    /// The chosen token's logprob and the `top` most likely alternatives.
    On {
        /// How many alternatives (`top_logprobs`), in `0..=20`.
        top: usize,
    },
}

/// A request's sampling settings, already validated: every field holds a legal value.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// In `[0, 2]`; below `1e-5` sampling is greedy (argmax, ties to the lowest token id).
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`; `1` turns it off.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; `0` turns it off.
    pub top_k: usize,
    /// In `[0, 1]`: keep tokens with `p >= min_p * p_max`; `0` turns it off.
    pub min_p: f32,
    /// In `[-2, 2]`: subtracted once from the logit of every token already in the output.
    pub presence_penalty: f32,
    /// In `[-2, 2]`: subtracted from a token's logit once per time it is in the output.
    pub frequency_penalty: f32,
    /// Greater than `0`, `1` turns it off: divides positive and multiplies negative logits of
    /// tokens in the prompt or the output.
    pub repetition_penalty: f32,
    /// `(token id, bias)` pairs, bias in `[-100, 100]`, added to the logits before anything else.
    /// Ids outside the vocabulary are ignored.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seeds the request's random number generator.
    pub seed: u64,
    /// Whether to return logprobs.
    pub logprobs: Logprobs,
}

impl Default for SamplingParams {
    /// OpenAI's defaults: temperature 1, every filter and penalty off, seed 0, no logprobs.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            seed: 0,
            logprobs: Logprobs::Off,
        }
    }
}

impl SamplingParams {
    /// Whether these settings pick the argmax rather than draw.
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE
    }

    fn has_count_penalties(&self) -> bool {
        self.frequency_penalty != 0.0 || self.presence_penalty != 0.0
    }

    fn has_repetition_penalty(&self) -> bool {
        self.repetition_penalty != 1.0
    }
}

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// Its logprob and the top alternatives, when [`SamplingParams::logprobs`] asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

/// Log-probabilities of one step, from the final distribution the token was drawn from.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's natural-log probability.
    pub logprob: f32,
    /// The most likely tokens, most likely first, as `(token id, logprob)`; tokens the filters
    /// removed are reported as `-9999.0`.
    pub top: Vec<(u32, f32)>,
}

/// Which tokens survived the filters.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kept {
    /// The row now holds weights; the tokens whose weight is at least this survived.
    Cut(f32),
    /// The tokens in `Sampler::cands`, in no particular order; the row still holds logits.
    Cands,
}

/// The final distribution of one step: `p[t] = exp((logit[t] - max) * inv_t) / z` for kept `t`.
#[derive(Debug, Clone, Copy)]
struct Dist {
    kept: Kept,
    max: f32,
    inv_t: f32,
    z: f32,
}

/// The sampler of one sequence: its settings, seeded RNG, output history and small buffers.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Prompt token ids, sorted and deduplicated; empty unless the repetition penalty is on.
    prompt: Vec<u32>,
    /// How often each token has been sampled; empty unless a penalty is on.
    counts: HashMap<u32, u32>,
    /// Candidates of the current step: the top-k, or the tokens of top-p's boundary bin.
    cands: Vec<Cand>,
    /// The most likely tokens of the current step, with their logits, for the logprobs.
    top: Vec<Cand>,
}

impl Sampler {
    /// A sampler for one sequence whose prompt is `prompt` (used by the repetition penalty).
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let mut prompt_set = Vec::new();
        if params.has_repetition_penalty() {
            prompt_set.extend_from_slice(prompt);
            prompt_set.sort_unstable();
            prompt_set.dedup();
        }
        Self {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            prompt: prompt_set,
            counts: HashMap::new(),
            cands: Vec::new(),
            top: Vec::new(),
        }
    }

    /// The settings this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from one row of `logits` and records it for the penalties.
    ///
    /// The row is the step's scratch space: its contents afterwards are unspecified.
    ///
    /// # Panics
    /// If `logits` is empty or longer than `u32::MAX`.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        self.sample_within(logits, None)
    }

    /// As [`Sampler::sample`], drawing only among the token ids set in `allowed` (a bitset: bit
    /// `i % 32` of word `i / 32`; ids past its end are not allowed), as a grammar asks. The
    /// mask is applied after the logit bias and the penalties, so nothing can bring a masked
    /// token back; logprobs describe the masked distribution.
    ///
    /// # Panics
    /// If `logits` is empty or longer than `u32::MAX`. `allowed` must allow some id of the
    /// row (the caller checks).
    pub fn sample_within(&mut self, logits: &mut [f32], allowed: Option<&[u32]>) -> Sampled {
        assert!(!logits.is_empty(), "cannot sample from an empty vocabulary");
        assert!(u32::try_from(logits.len()).is_ok(), "vocabulary too large");
        self.apply_logit_bias(logits);
        self.apply_penalties(logits);
        if let Some(allowed) = allowed {
            mask(logits, allowed);
        }
        let greedy = self.params.is_greedy();
        let sampled = match (greedy, self.params.logprobs) {
            (true, Logprobs::Off) => Sampled {
                token: argmax(logits),
                logprobs: None,
            },
            (_, logprobs) => {
                if let Logprobs::On { top } = logprobs {
                    // Before the row turns into weights.
                    top_n_scan(logits, top, &mut self.top);
                }
                let (greedy_token, inv_t) = if greedy {
                    (Some(argmax(logits)), 1.0)
                } else {
                    (None, 1.0 / self.params.temperature)
                };
                let dist = self.filter(logits, inv_t);
                let token = greedy_token.unwrap_or_else(|| self.draw(logits, dist));
                let logprobs = match logprobs {
                    Logprobs::Off => None,
                    Logprobs::On { .. } => Some(self.logprobs(logits, dist, token)),
                };
                Sampled { token, logprobs }
            }
        };
        if self.params.has_count_penalties() || self.params.has_repetition_penalty() {
            *self.counts.entry(sampled.token).or_default() += 1;
        }
        sampled
    }

    fn apply_logit_bias(&self, logits: &mut [f32]) {
        for &(token, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(token as usize) {
                *l += bias;
            }
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.has_repetition_penalty() {
            let r = p.repetition_penalty;
            let penalize = |l: &mut f32| *l = if *l > 0.0 { *l / r } else { *l * r };
            let outputs = self
                .counts
                .keys()
                .filter(|t| self.prompt.binary_search(t).is_err());
            for &t in self.prompt.iter().chain(outputs) {
                if let Some(l) = logits.get_mut(t as usize) {
                    penalize(l);
                }
            }
        }
        if p.has_count_penalties() {
            for (&t, &count) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * count as f32 + p.presence_penalty;
                }
            }
        }
    }

    /// Applies temperature, top-k, top-p and min-p.
    fn filter(&mut self, logits: &mut [f32], inv_t: f32) -> Dist {
        let n = logits.len();
        let p = &self.params;
        let (top_p, min_p) = (p.top_p, p.min_p);
        let max = argmax_value(logits).1;
        self.cands.clear();
        if max == f32::NEG_INFINITY || max.is_nan() {
            // Every token is banned (or the row is broken): fall back to the argmax.
            let id = argmax(logits);
            self.cands.push(Cand { s: 0.0, w: 1.0, id });
            let max = logits[id as usize];
            return Dist {
                kept: Kept::Cands,
                max,
                inv_t,
                z: 1.0,
            };
        }
        if p.top_k > 0 && p.top_k < n {
            return self.filter_top_k(logits, max, inv_t);
        }
        let z_all = if top_p >= 1.0 && min_p > 0.0 {
            // Min-p alone: no softmax over the whole vocabulary is needed.
            exp_above(logits, max, inv_t, min_p.ln())
        } else {
            exp_in_place(logits, max, inv_t)
        };
        let (mut cut, mut z) = (0.0, z_all);
        if top_p < 1.0
            && let Some(nucleus) = nucleus_cut(logits, top_p * z_all, &mut self.cands)
        {
            (cut, z) = nucleus;
        }
        // The most likely token has weight 1 and always survives, so min-p is a cut at `min_p`.
        if min_p > cut {
            cut = min_p;
            z = masked_sum(logits, cut);
        }
        Dist {
            kept: Kept::Cut(cut),
            max,
            inv_t,
            z,
        }
    }

    /// Top-k, then top-p and min-p over the `k` candidates.
    fn filter_top_k(&mut self, logits: &[f32], max: f32, inv_t: f32) -> Dist {
        let k = self.params.top_k;
        if k <= HEAP_TOP_K {
            top_n_scan(logits, k, &mut self.cands);
        } else {
            self.cands
                .extend((0u32..).zip(logits).map(|(id, &s)| Cand { s, w: 0.0, id }));
            self.cands.select_nth_unstable_by(k - 1, rank);
            self.cands.truncate(k);
        }
        let mut total = 0.0;
        for c in &mut self.cands {
            c.s = (c.s - max) * inv_t;
            c.w = exp_neg(c.s);
            total += c.w;
        }
        if self.params.top_p < 1.0 {
            let len = nucleus_len(&mut self.cands, self.params.top_p * total);
            self.cands.truncate(len);
        }
        let min_p = self.params.min_p;
        if min_p > 0.0 {
            self.cands.retain(|c| c.w >= min_p);
        }
        let z = self.cands.iter().map(|c| c.w).sum();
        Dist {
            kept: Kept::Cands,
            max,
            inv_t,
            z,
        }
    }

    /// Draws a token from the final distribution.
    fn draw(&mut self, row: &[f32], dist: Dist) -> u32 {
        let u = self.rng.random::<f32>() * dist.z;
        match dist.kept {
            Kept::Cut(cut) => draw_cut(row, cut, u),
            Kept::Cands => {
                let mut acc = 0.0;
                for c in &self.cands {
                    acc += c.w;
                    if acc > u {
                        return c.id;
                    }
                }
                // Rounding left `u` past the sum: take the heaviest kept token.
                self.cands.iter().copied().min_by(rank).map_or(0, |c| c.id)
            }
        }
    }

    /// The chosen token's logprob and those of the top tokens already in `self.top` (with raw
    /// logits in `s`).
    fn logprobs(&self, row: &[f32], dist: Dist, token: u32) -> TokenLogprobs {
        let ln_z = dist.z.ln();
        let scaled = |l: f32| (l - dist.max) * dist.inv_t;
        let clamp = |lp: f32| lp.max(MIN_LOGPROB);
        match dist.kept {
            Kept::Cut(cut) => {
                let kept = |id: u32| row[id as usize] >= cut;
                TokenLogprobs {
                    logprob: clamp(row[token as usize].ln() - ln_z),
                    top: (self.top.iter())
                        .map(|c| {
                            let lp = if kept(c.id) {
                                scaled(c.s) - ln_z
                            } else {
                                MIN_LOGPROB
                            };
                            (c.id, clamp(lp))
                        })
                        .collect(),
                }
            }
            Kept::Cands => {
                // Every filter keeps a prefix of the tokens ranked by logit: compare with the
                // last one kept.
                let last = self.cands.iter().copied().max_by(rank);
                let kept = |c: &Cand| last.is_some_and(|last| rank(c, &last).is_le());
                let logprob = match self.cands.iter().find(|c| c.id == token) {
                    Some(c) => c.s - ln_z,
                    None => MIN_LOGPROB,
                };
                TokenLogprobs {
                    logprob: clamp(logprob),
                    top: (self.top.iter())
                        .map(|c| {
                            let c = Cand {
                                s: scaled(c.s),
                                ..*c
                            };
                            (
                                c.id,
                                if kept(&c) {
                                    clamp(c.s - ln_z)
                                } else {
                                    MIN_LOGPROB
                                },
                            )
                        })
                        .collect(),
                }
            }
        }
    }
}

/// Gives every id not set in the bitset `allowed` a logit of `-inf`, a word (32 ids) at a time.
fn mask(logits: &mut [f32], allowed: &[u32]) {
    for (i, chunk) in logits.chunks_mut(32).enumerate() {
        match allowed.get(i).copied().unwrap_or(0) {
            u32::MAX => {}
            0 => chunk.fill(f32::NEG_INFINITY),
            word => {
                for (bit, logit) in chunk.iter_mut().enumerate() {
                    if word >> bit & 1 == 0 {
                        *logit = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..params()
        }
    }

    fn softmax(logits: &[f32]) -> Vec<f32> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let z: f32 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    /// Pseudo-random logits, roughly normal with standard deviation `scale`.
    fn random_logits(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * scale * 1.7)
            .collect()
    }

    fn sample_once(params: SamplingParams, logits: &[f32]) -> Sampled {
        Sampler::new(params, &[]).sample(&mut logits.to_vec())
    }

    /// Draw frequencies of `draws` samples, one sampler (so one RNG stream).
    fn frequencies(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<f32> {
        let mut sampler = Sampler::new(params, &[]);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sampler.sample(&mut logits.to_vec()).token as usize] += 1;
        }
        counts.iter().map(|&c| c as f32 / draws as f32).collect()
    }

    fn ln_probs(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn a_mask_keeps_every_draw_inside_the_allowed_ids() {
        let logits = random_logits(100, 7, 3.0);
        // Ids 3, 40 and 70: the words of a 100-id bitset, the last one partial.
        let mut allowed = [0u32; 4];
        for id in [3u32, 40, 70] {
            allowed[id as usize / 32] |= 1 << (id % 32);
        }
        let settings = [
            params(),
            greedy(),
            SamplingParams {
                top_k: 5,
                top_p: 0.5,
                logprobs: Logprobs::On { top: 2 },
                ..params()
            },
            // A bias cannot bring a masked id back.
            SamplingParams {
                logit_bias: vec![(50, 100.0)],
                ..params()
            },
        ];
        for p in settings {
            let mut sampler = Sampler::new(p.clone(), &[]);
            for _ in 0..300 {
                let token = sampler
                    .sample_within(&mut logits.clone(), Some(&allowed))
                    .token;
                assert!([3, 40, 70].contains(&token), "{token} drawn with {p:?}");
            }
        }
    }

    #[test]
    fn greedy_picks_argmax_and_lowest_id_on_ties() {
        assert_eq!(sample_once(greedy(), &[0.1, 3.0, -2.0, 2.9]).token, 1);
        assert_eq!(sample_once(greedy(), &[0.1, 3.0, -2.0, 3.0]).token, 1);
        let logits = random_logits(128_256, 7, 3.0);
        let expected =
            (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)));
        assert_eq!(
            sample_once(greedy(), &logits).token as usize,
            expected.unwrap()
        );
    }

    #[test]
    fn logit_bias_forces_and_bans_tokens() {
        let logits = [5.0, 1.0, 0.0, 2.0];
        let forced = SamplingParams {
            logit_bias: vec![(2, 100.0)],
            ..params()
        };
        for seed in 0..20 {
            assert_eq!(
                sample_once(
                    SamplingParams {
                        seed,
                        ..forced.clone()
                    },
                    &logits
                )
                .token,
                2
            );
        }
        let banned = SamplingParams {
            logit_bias: vec![(0, -100.0), (99, 5.0)],
            ..greedy()
        };
        assert_eq!(sample_once(banned, &logits).token, 3);
    }

    #[test]
    fn presence_penalty_applies_once_per_seen_token() {
        let logits = [3.0, 2.0, 0.0];
        let mut sampler = Sampler::new(
            SamplingParams {
                presence_penalty: 0.4,
                ..greedy()
            },
            &[],
        );
        let tokens: Vec<u32> = (0..4)
            .map(|_| sampler.sample(&mut logits.to_vec()).token)
            .collect();
        assert_eq!(tokens, [0, 0, 0, 0]);
        let mut sampler = Sampler::new(
            SamplingParams {
                presence_penalty: 1.5,
                ..greedy()
            },
            &[],
        );
        let tokens: Vec<u32> = (0..3)
            .map(|_| sampler.sample(&mut logits.to_vec()).token)
            .collect();
        // 3 - 1.5 < 2, then both are penalized and 0 leads again.
        assert_eq!(tokens, [0, 1, 0]);
    }

    #[test]
    fn frequency_penalty_grows_with_count() {
        let logits = [3.0, 2.0, 0.0];
        let mut sampler = Sampler::new(
            SamplingParams {
                frequency_penalty: 0.4,
                ..greedy()
            },
            &[],
        );
        let tokens: Vec<u32> = (0..4)
            .map(|_| sampler.sample(&mut logits.to_vec()).token)
            .collect();
        // 3.0, 2.6, 2.2 beat 2.0; 1.8 does not.
        assert_eq!(tokens, [0, 0, 0, 1]);
    }

    #[test]
    fn penalties_ignore_the_prompt_except_repetition() {
        let logits = [2.0, 1.5];
        let counted = SamplingParams {
            presence_penalty: 2.0,
            frequency_penalty: 2.0,
            ..greedy()
        };
        assert_eq!(
            Sampler::new(counted, &[0, 0])
                .sample(&mut logits.to_vec())
                .token,
            0
        );
        let repetition = SamplingParams {
            repetition_penalty: 2.0,
            ..greedy()
        };
        // 2.0 / 2 = 1.0 < 1.5.
        assert_eq!(
            Sampler::new(repetition.clone(), &[0, 7])
                .sample(&mut logits.to_vec())
                .token,
            1
        );
        // Negative logits are multiplied: -1.0 * 2 = -2.0 < -1.5.
        assert_eq!(
            Sampler::new(repetition.clone(), &[0])
                .sample(&mut [-1.0, -1.5])
                .token,
            1
        );
        // Output tokens count too, once each however often they repeat.
        let mut sampler = Sampler::new(repetition, &[]);
        let tokens: Vec<u32> = (0..3)
            .map(|_| sampler.sample(&mut [2.0, 1.5, 0.9]).token)
            .collect();
        assert_eq!(tokens, [0, 1, 0]);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_equal_greedy() {
        for seed in 0..10 {
            let logits = random_logits(32_000, seed, 2.0);
            let argmax = sample_once(greedy(), &logits).token;
            let k1 = SamplingParams {
                top_k: 1,
                seed,
                ..params()
            };
            let p0 = SamplingParams {
                top_p: 1e-6,
                temperature: 1.3,
                seed,
                ..params()
            };
            assert_eq!(sample_once(k1, &logits).token, argmax);
            assert_eq!(sample_once(p0, &logits).token, argmax);
        }
    }

    #[test]
    fn top_k_keeps_the_k_most_likely() {
        let logits = [0.0, 3.0, 1.0, 2.0, -1.0];
        let f = frequencies(
            SamplingParams {
                top_k: 2,
                ..params()
            },
            &logits,
            4000,
        );
        assert_eq!(f[0] + f[2] + f[4], 0.0);
        let expected = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((f[1] - expected).abs() < 0.03, "{f:?}");
        // Both the heap and the partition must agree with a sort.
        let logits = random_logits(10_000, 3, 2.0);
        let mut order: Vec<u32> = (0..10_000).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        for k in [HEAP_TOP_K, HEAP_TOP_K + 1, 5000] {
            let mut sampler = Sampler::new(
                SamplingParams {
                    top_k: k,
                    ..params()
                },
                &[],
            );
            let max = argmax_value(&logits).1;
            let dist = sampler.filter_top_k(&logits, max, 1.0);
            assert_eq!(dist.kept, Kept::Cands);
            let mut got: Vec<u32> = sampler.cands.iter().map(|c| c.id).collect();
            got.sort_unstable();
            let mut want = order[..k].to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "k={k}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        let logits = ln_probs(&[0.5, 0.3, 0.15, 0.05]);
        let f = frequencies(
            SamplingParams {
                top_p: 0.7,
                ..params()
            },
            &logits,
            4000,
        );
        assert!(
            f[0] > 0.0 && f[1] > 0.0 && f[2] == 0.0 && f[3] == 0.0,
            "{f:?}"
        );
        let f = frequencies(
            SamplingParams {
                top_p: 0.85,
                ..params()
            },
            &logits,
            4000,
        );
        assert!(f[2] > 0.0 && f[3] == 0.0, "{f:?}");
        assert!((f[0] - 0.5 / 0.95).abs() < 0.03, "{f:?}");
    }

    #[test]
    fn top_p_ties_go_to_the_lowest_ids() {
        let f = frequencies(
            SamplingParams {
                top_p: 0.5,
                ..params()
            },
            &[1.0; 4],
            2000,
        );
        assert!(
            f[0] > 0.4 && f[1] > 0.4 && f[2] == 0.0 && f[3] == 0.0,
            "{f:?}"
        );
        let f = frequencies(
            SamplingParams {
                top_p: 0.3,
                ..params()
            },
            &[0.0, 2.0, 2.0, 2.0],
            500,
        );
        assert_eq!(f, [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_best() {
        let logits = ln_probs(&[0.5, 0.3, 0.15, 0.05]);
        // Keep p >= 0.5 * 0.5.
        let f = frequencies(
            SamplingParams {
                min_p: 0.5,
                ..params()
            },
            &logits,
            4000,
        );
        assert!(f[2] == 0.0 && f[3] == 0.0, "{f:?}");
        assert!((f[0] - 0.625).abs() < 0.03, "{f:?}");
        // With top-p too (0.99 alone would keep all four).
        let f = frequencies(
            SamplingParams {
                min_p: 0.2,
                top_p: 0.99,
                ..params()
            },
            &logits,
            4000,
        );
        assert!(f[2] > 0.0 && f[3] == 0.0, "{f:?}");
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let run = |seed| {
            let p = SamplingParams {
                temperature: 0.9,
                top_p: 0.95,
                seed,
                ..params()
            };
            let mut sampler = Sampler::new(p, &[]);
            (0..100u64)
                .map(|step| sampler.sample(&mut random_logits(1000, step, 2.0)).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn draws_follow_the_softmax() {
        let logits = [1.0, 0.5, 0.0, -1.0];
        let want = softmax(&logits);
        let cases = [
            SamplingParams {
                seed: 5,
                ..params()
            },
            SamplingParams {
                seed: 6,
                top_k: 4,
                ..params()
            },
            SamplingParams {
                seed: 7,
                top_p: 0.999_99,
                ..params()
            },
            SamplingParams {
                seed: 8,
                min_p: 1e-3,
                ..params()
            },
        ];
        for p in cases {
            let got = frequencies(p.clone(), &logits, 10_000);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 0.015, "{p:?}: {got:?} vs {want:?}");
            }
        }
        let hot = frequencies(
            SamplingParams {
                temperature: 2.0,
                ..params()
            },
            &logits,
            10_000,
        );
        let want = softmax(&logits.map(|l| l / 2.0));
        for (g, w) in hot.iter().zip(&want) {
            assert!((g - w).abs() < 0.015, "{hot:?} vs {want:?}");
        }
    }

    #[test]
    fn logprobs_describe_the_final_distribution() {
        let logits = random_logits(1000, 9, 2.0);
        let p = SamplingParams {
            logprobs: Logprobs::On { top: 5 },
            temperature: 0.7,
            ..params()
        };
        let sampled = sample_once(p, &logits);
        let lp = sampled.logprobs.expect("logprobs were asked for");
        let want = softmax(&logits.iter().map(|l| l / 0.7).collect::<Vec<_>>());
        assert!((lp.logprob - want[sampled.token as usize].ln()).abs() < 1e-4);
        assert_eq!(lp.top.len(), 5);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(lp.top.iter().map(|(_, l)| l.exp()).sum::<f32>() <= 1.0 + 1e-5);
        for &(id, l) in &lp.top {
            assert!((l - want[id as usize].ln()).abs() < 1e-4);
        }

        // Filtered tokens are reported at the floor; the kept ones renormalized.
        let logits = [2.0, 1.0, 0.0, -1.0];
        let p = SamplingParams {
            top_k: 2,
            logprobs: Logprobs::On { top: 4 },
            ..params()
        };
        let lp = sample_once(p, &logits).logprobs.unwrap();
        let kept = softmax(&logits[..2]);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!((lp.top[0].1 - kept[0].ln()).abs() < 1e-5);
        assert_eq!((lp.top[2].1, lp.top[3].1), (MIN_LOGPROB, MIN_LOGPROB));

        // The same over the whole vocabulary: softmax [0.64, 0.24, 0.09, 0.03], nucleus {0}.
        let p = SamplingParams {
            top_p: 0.6,
            logprobs: Logprobs::On { top: 3 },
            ..params()
        };
        let s = sample_once(p, &logits);
        assert_eq!(s.token, 0);
        let lp = s.logprobs.unwrap();
        assert!(lp.logprob.abs() < 1e-6);
        assert_eq!(
            lp.top,
            [(0, lp.logprob), (1, MIN_LOGPROB), (2, MIN_LOGPROB)]
        );

        // Greedy reports the distribution at temperature 1.
        let p = SamplingParams {
            logprobs: Logprobs::On { top: 0 },
            ..greedy()
        };
        let s = sample_once(p, &logits);
        assert_eq!(s.token, 0);
        let lp = s.logprobs.unwrap();
        assert!(lp.top.is_empty());
        assert!((lp.logprob - softmax(&logits)[0].ln()).abs() < 1e-5);
    }

    #[test]
    fn all_banned_falls_back_to_token_zero() {
        let logits = [f32::NEG_INFINITY; 3];
        assert_eq!(sample_once(params(), &logits).token, 0);
        assert_eq!(
            sample_once(
                SamplingParams {
                    top_p: 0.5,
                    ..params()
                },
                &logits
            )
            .token,
            0
        );
    }
}
