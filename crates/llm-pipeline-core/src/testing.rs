//! Test support, behind the `testing` feature: the fixture locator and a deterministic model.
//!
//! Every crate's tests find the real fixture models the same way ([`fixture`], [`smollm2`]):
//! an environment variable naming the file, else the xtask's cache (`$LLM_PIPELINE_CACHE`,
//! by default `~/.cache/llm-pipeline`). A missing fixture fails the test with the command that
//! fetches it; it is never skipped.
//!
//! [`TestBackend`] is a [`Backend`] whose "model" makes each next token a function of the
//! sequence's whole history, over a word-level vocabulary `t0 … t63` ([`word_tokenizer`]). It
//! checks that every batch entry starts where that sequence's cache ends and that each step
//! keeps within the limits it declared, so wrong positions, lost tokens, mixed-up sequences or
//! oversized batches change the output or fail the step. Engines, pipelines and servers run
//! over it exactly as over a real model; only the network's arithmetic is replaced.

mod faults;
mod synthetic;

pub use faults::{Fault, FaultSwitch, Faulty};
pub use synthetic::SyntheticBackend;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::backend::{Backend, BackendInfo, BatchEntry, Logits, SeqId, StepFailure, common_prefix};
use crate::tokenizer::Tokenizer;

/// The xtask's cache: `$LLM_PIPELINE_CACHE`, else `~/.cache/llm-pipeline`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LLM_PIPELINE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
            home.join(".cache/llm-pipeline")
        })
}

/// A fixture: the path in `$var` if set, else `name` in the cache's `models/`.
///
/// # Panics
/// When the fixture is missing, naming it and the command that makes it.
pub fn fixture(var: &str, name: &str) -> PathBuf {
    let path =
        std::env::var_os(var).map_or_else(|| cache_dir().join("models").join(name), PathBuf::from);
    assert!(
        path.exists(),
        "test fixture {} is missing: run `cargo xtask models` (or `cargo xtask test`), \
         or set {var}",
        path.display()
    );
    path
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF: `$LLM_PIPELINE_SMOLLM2`, or the xtask's cache.
///
/// # Panics
/// As [`fixture`].
pub fn smollm2() -> PathBuf {
    fixture("LLM_PIPELINE_SMOLLM2", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma 3 270M, a base model without a chat template (Q4_K_M GGUF):
/// `$LLM_PIPELINE_GEMMA3`, or the xtask's cache.
///
/// # Panics
/// When the file is missing.
pub fn gemma3() -> PathBuf {
    fixture("LLM_PIPELINE_GEMMA3", "gemma-3-270m-q4_k_m.gguf")
}

/// A fresh, empty directory for one test in this process: `llmp-{name}-{pid}` in the
/// temporary directory, emptied first.
///
/// # Panics
/// When it cannot be made.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// Size of the test model's vocabulary (`t0 … t63`).
pub const VOCAB: u32 = 64;
/// The end-of-sequence token, `t0`.
pub const EOS: u32 = 0;
/// After this token the model always says EOS.
pub const STOPPER: u32 = 7;
/// The ChatML words of [`word_tokenizer`]`(true)` and their ids (they replace `t2` … `t6`).
pub const CHATML: [(&str, u32); 5] = [
    ("<|im_start|>", 2),
    ("<|im_end|>", 3),
    ("system", 4),
    ("user", 5),
    ("assistant", 6),
];
/// A ChatML chat template over [`CHATML`]'s words.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + \
    message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}\
    {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The test model's rule for ending answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stops {
    /// Only after [`STOPPER`] in the prompt: answers end at `max_tokens`, so tests control
    /// every length.
    #[default]
    Never,
    /// The model may say [`STOPPER`] itself (then EOS), as a real model ends an answer.
    Naturally,
}

/// The test model: the next token after `history`. Never a ChatML word or a token below
/// [`STOPPER`]; [`EOS`] right after [`STOPPER`].
pub fn next_token(history: &[u32], stops: Stops) -> u32 {
    if history.last() == Some(&STOPPER) {
        return EOS;
    }
    let h = history
        .iter()
        .fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(u64::from(t)));
    let first = match stops {
        Stops::Never => STOPPER + 1,
        Stops::Naturally => STOPPER,
    };
    (h % u64::from(VOCAB - first)) as u32 + first
}

/// The copying test model ([`TestBackend::copying`]): the token `period` back, except at every
/// fifth position (and before `period` tokens exist), where it is [`next_token`]'s. A model
/// whose output prompt lookup guesses often but not always.
pub fn copy_token(history: &[u32], period: usize, stops: Stops) -> u32 {
    let len = history.len();
    if len >= period && !len.is_multiple_of(5) {
        history[len - period]
    } else {
        next_token(history, stops)
    }
}

/// What a [`TestBackend`] saw, shared with the test.
#[derive(Debug, Default)]
pub struct Observed {
    /// Sequences holding a cache now.
    pub live: AtomicUsize,
    /// The most tokens in one step.
    pub max_batch_tokens: AtomicUsize,
    /// The most sequences in one step.
    pub max_batch_seqs: AtomicUsize,
    /// Tokens of every step, in order.
    pub steps: Mutex<Vec<usize>>,
}

/// The error of a [`TestBackend`] step.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TestError(pub String);

/// The deterministic backend (see the module's documentation).
#[derive(Debug)]
pub struct TestBackend {
    info: BackendInfo,
    stops: Stops,
    kv: HashMap<SeqId, Vec<u32>>,
    /// Caches of released sequences, kept for reuse when prefix caching is on.
    kept: Vec<Vec<u32>>,
    prefix_cache: bool,
    seen: Arc<Observed>,
    step_delay: Duration,
    steps: usize,
    /// Steps (counting from 1) that fail with an error.
    fail_steps: Vec<usize>,
    /// Every step from this one on fails (a persistent fault).
    fail_from: Option<usize>,
    /// Steps that panic.
    panic_steps: Vec<usize>,
    /// Steps that fail, costing only the batch's first sequence its cache.
    lose_steps: Vec<usize>,
    /// A token that makes every step fail, costing the sequences holding it their caches.
    poison: Option<u32>,
    /// Every step from this one on fails, costing nothing ([`StepFailure::Lost`] of none).
    retry_from: Option<usize>,
    /// What the last failed step cost, when it was not the whole batch, for
    /// [`Backend::failure`].
    failed: Option<StepFailure>,
    /// The logit of the model's token (every other token has 0).
    peak: f32,
    /// The copying model's period ([`copy_token`]), if it replaces [`next_token`].
    copy_period: Option<usize>,
    /// Whether [`Backend::truncate`] fails.
    uncuttable: bool,
}

impl TestBackend {
    /// A backend with `info`'s limits and a [`VOCAB`]-token vocabulary.
    pub fn new(info: BackendInfo, stops: Stops) -> Self {
        Self {
            info,
            stops,
            kv: HashMap::new(),
            kept: Vec::new(),
            prefix_cache: false,
            seen: Arc::default(),
            step_delay: Duration::ZERO,
            steps: 0,
            fail_steps: Vec::new(),
            fail_from: None,
            panic_steps: Vec::new(),
            lose_steps: Vec::new(),
            poison: None,
            retry_from: None,
            failed: None,
            peak: 30.0,
            copy_period: None,
            uncuttable: false,
        }
    }

    /// Sleeps `delay` in every step (a slower model).
    pub fn with_step_delay(mut self, delay: Duration) -> Self {
        self.step_delay = delay;
        self
    }

    /// Keeps released caches for [`Backend::reuse_prefix`].
    pub fn with_prefix_cache(mut self, on: bool) -> Self {
        self.prefix_cache = on;
        self
    }

    /// Fails the `step`-th step (counting from 1) with a device-fault-like error.
    pub fn failing_at_step(mut self, step: Option<usize>) -> Self {
        self.fail_steps.extend(step);
        self
    }

    /// Fails every step from the `step`-th on (a fault that persists).
    pub fn failing_from_step(mut self, step: Option<usize>) -> Self {
        self.fail_from = step;
        self
    }

    /// Panics in the given steps (counting from 1).
    pub fn panicking_at_steps(mut self, steps: &[usize]) -> Self {
        self.panic_steps = steps.to_vec();
        self
    }

    /// Fails the given steps (counting from 1) in a way the backend pins on one sequence: the
    /// batch's first loses its cache and [`Backend::failure`] names it; the others are untouched.
    pub fn losing_at_steps(mut self, steps: &[usize]) -> Self {
        self.lose_steps = steps.to_vec();
        self
    }

    /// Fails every step from the `step`-th on, saying that nothing was lost (a fault the backend
    /// believes transient, which persists).
    pub fn retrying_from_step(mut self, step: Option<usize>) -> Self {
        self.retry_from = step;
        self
    }

    /// Fails every step whose batch holds a sequence with `token` (input the model cannot take),
    /// pinned on those sequences as [`losing_at_steps`](Self::losing_at_steps) does.
    pub fn poisoned_by(mut self, token: Option<u32>) -> Self {
        self.poison = token;
        self
    }

    /// Drops the caches of `seqs` and fails the step, naming them.
    fn lose(&mut self, seqs: Vec<SeqId>) -> Result<(), TestError> {
        for seq in &seqs {
            self.kv.remove(seq);
        }
        self.seen.live.store(self.kv.len(), Ordering::SeqCst);
        let message = format!("simulated fault in sequences {seqs:?}");
        self.failed = Some(StepFailure::Lost(seqs));
        Err(TestError(message))
    }

    /// The logit of the model's token; lower values let sampling pick others.
    pub fn with_peak_logit(mut self, peak: f32) -> Self {
        self.peak = peak;
        self
    }

    /// Makes the model the copying one ([`copy_token`]) with `period`.
    pub fn copying(mut self, period: usize) -> Self {
        self.copy_period = Some(period);
        self
    }

    /// Makes [`Backend::truncate`] fail (a backend that cannot cut a sequence's cache).
    pub fn uncuttable(mut self) -> Self {
        self.uncuttable = true;
        self
    }

    /// Reports what the backend sees into `observed`.
    pub fn observed_by(mut self, observed: Arc<Observed>) -> Self {
        self.seen = observed;
        self
    }
}

/// [`BackendInfo`] for a [`TestBackend`] with these limits.
pub fn test_info(kv_capacity: u32, max_batch_tokens: u32, max_seqs: u32) -> BackendInfo {
    BackendInfo {
        name: "test",
        vocab_size: VOCAB as usize,
        trained_context: 4096,
        kv_capacity,
        max_batch_tokens,
        max_seqs,
        description: "test backend".into(),
    }
}

impl Backend for TestBackend {
    type Error = TestError;

    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn forward(&mut self, batch: &[BatchEntry<'_>], logits: &mut Logits) -> Result<(), TestError> {
        std::thread::sleep(self.step_delay);
        self.steps += 1;
        if self.panic_steps.contains(&self.steps) {
            panic!("simulated backend panic in step {}", self.steps);
        }
        if self.fail_steps.contains(&self.steps) || self.fail_from.is_some_and(|f| self.steps >= f)
        {
            return Err(TestError("simulated device fault at 0xdeadbeef".into()));
        }
        if self.lose_steps.contains(&self.steps)
            && let Some(first) = batch.first()
        {
            return self.lose(vec![first.seq]);
        }
        if self.retry_from.is_some_and(|f| self.steps >= f) {
            self.failed = Some(StepFailure::Lost(Vec::new()));
            return Err(TestError("simulated transient fault".into()));
        }
        if let Some(poison) = self.poison {
            let poisoned: Vec<SeqId> = batch
                .iter()
                .filter(|e| {
                    e.tokens.contains(&poison)
                        || self.kv.get(&e.seq).is_some_and(|c| c.contains(&poison))
                })
                .map(|e| e.seq)
                .collect();
            if !poisoned.is_empty() {
                return self.lose(poisoned);
            }
        }
        let tokens: usize = batch.iter().map(|e| e.tokens.len()).sum();
        self.seen
            .max_batch_tokens
            .fetch_max(tokens, Ordering::SeqCst);
        self.seen
            .max_batch_seqs
            .fetch_max(batch.len(), Ordering::SeqCst);
        self.seen
            .steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tokens);
        if tokens > self.info.max_batch_tokens as usize || batch.len() > self.info.max_seqs as usize
        {
            return Err(TestError(format!(
                "batch of {tokens} tokens / {} seqs",
                batch.len()
            )));
        }
        let used: usize = self.kv.values().map(Vec::len).sum();
        if used + tokens > self.info.kv_capacity as usize {
            return Err(TestError("out of KV cells".into()));
        }
        for e in batch {
            let cache = self.kv.entry(e.seq).or_default();
            if cache.len() != e.start as usize {
                return Err(TestError(format!(
                    "seq {} starts at {} but its cache holds {}",
                    e.seq,
                    e.start,
                    cache.len()
                )));
            }
            cache.extend_from_slice(e.tokens);
            let end = cache.len();
            for upto in end + e.first_logits() - e.tokens.len()..end {
                let mut row = vec![0.0; VOCAB as usize];
                let history = &cache[..=upto];
                let token = match self.copy_period {
                    Some(period) => copy_token(history, period, self.stops),
                    None => next_token(history, self.stops),
                };
                row[token as usize] = self.peak;
                logits.push_row(&row);
            }
        }
        self.seen.live.store(self.kv.len(), Ordering::SeqCst);
        Ok(())
    }

    fn failure(&mut self, _: &TestError) -> StepFailure {
        self.failed.take().unwrap_or(StepFailure::Batch)
    }

    fn release(&mut self, seq: SeqId) {
        if let Some(cache) = self.kv.remove(&seq)
            && self.prefix_cache
        {
            self.kept.push(cache);
        }
        self.seen.live.store(self.kv.len(), Ordering::SeqCst);
    }

    fn truncate(&mut self, seq: SeqId, len: u32) -> Result<(), TestError> {
        if self.uncuttable {
            return Err(TestError("this backend cannot cut a cache".into()));
        }
        if let Some(cache) = self.kv.get_mut(&seq) {
            cache.truncate(len as usize);
        }
        Ok(())
    }

    fn reuse_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> u32 {
        let Some((i, n)) = self
            .kept
            .iter()
            .map(|kept| common_prefix(kept, tokens))
            .enumerate()
            .max_by_key(|&(_, n)| n)
        else {
            return 0;
        };
        let mut cache = self.kept.swap_remove(i);
        cache.truncate(n);
        self.kv.insert(seq, cache);
        n as u32
    }
}

/// The word-level tokenizer over `t0 … t63` (whitespace-separated, `t0` the EOS, `t1` the
/// unknown word); with `chatml`, [`CHATML`]'s words replace their ids' `t` words and the
/// ChatML markers are special tokens. Built once per process.
pub fn word_tokenizer(chatml: bool) -> Arc<Tokenizer> {
    static PLAIN: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    static CHAT: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    let cell = if chatml { &CHAT } else { &PLAIN };
    Arc::clone(cell.get_or_init(|| write_tokenizer(chatml, VOCAB)))
}

/// The plain word-level tokenizer over `t0 … t{vocab - 1}` (`t0` the EOS, `t1` the unknown
/// word): a vocabulary as wide as a real model's, for [`SyntheticBackend`].
pub fn wide_word_tokenizer(vocab: u32) -> Arc<Tokenizer> {
    write_tokenizer(false, vocab)
}

fn write_tokenizer(chatml: bool, size: u32) -> Arc<Tokenizer> {
    use serde_json::{Value, json};
    let dir = std::env::temp_dir().join(format!(
        "llmp-test-tok-{}-{size}-{}",
        if chatml { "chatml" } else { "plain" },
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut vocab: serde_json::Map<String, Value> =
        (0..size).map(|i| (format!("t{i}"), i.into())).collect();
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let mut added_tokens = vec![added(EOS, "t0")];
    if chatml {
        for (word, id) in CHATML {
            vocab.remove(&format!("t{id}"));
            vocab.insert(word.to_owned(), id.into());
        }
        added_tokens.push(added(2, "<|im_start|>"));
        added_tokens.push(added(3, "<|im_end|>"));
    }
    let json = json!({
        "version": "1.0",
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t1"}
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).expect("writing tokenizer.json");
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "t0"}"#)
        .expect("writing tokenizer_config.json");
    Arc::new(Tokenizer::from_dir(&dir).expect("the test tokenizer loads"))
}
