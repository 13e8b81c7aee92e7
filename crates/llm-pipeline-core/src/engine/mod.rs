//! The continuous-batching engine: an actor on its own OS thread that owns the backend.
//!
//! [`Engine`] is a cloneable handle; [`Engine::submit`] hands a tokenized request to the actor
//! through a channel and returns the request's own event channel. The actor keeps a waiting
//! queue and a running set; each step it asks [`scheduler::plan`] for a batch, runs it on the
//! [`Backend`], samples the next token of every sequence whose logits came back, detokenizes,
//! matches stop strings and sends typed [`Event`]s. A sequence whose receiver was dropped is
//! cancelled before the next step and its KV cache freed. Nothing here runs on an async runtime,
//! and the backend is built on the actor's thread, so it need not be `Send`.
//!
//! Faults stay with the step that caused them. A step whose backend call fails or panics fails
//! only that step's sequences, or, where the backend says which sequences the failure cost
//! ([`Backend::failure`]), computes those again and runs the others on; the engine goes on.
//! `/health` (through [`EngineStats::failed`]) turns ERROR when faults persist
//! ([`FAULTS_BEFORE_ERROR`] steps in a row) and back when a step succeeds; a second panic within [`PANIC_WINDOW`], or a panic while releasing a sequence,
//! leaves the backend untrusted: the engine is then broken for good, fails everything waiting
//! and refuses new requests at once ([`Error::EngineStopped`], a 503), so that the orchestrator
//! restarts the runner. Panics are logged with their backtrace; the counters stay exact.
//!
//! The [`Pipeline`](crate::pipeline::Pipeline) implementation (chat templates, validation,
//! OpenAI shapes) lives in [`crate::pipeline`] on top of this handle.

pub mod scheduler;
mod sequence;
mod speculate;

pub use speculate::{DEFAULT_SPECULATIVE_TOKENS, SPECULATION_MAX_SEQS};

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tokio_mpsc;

/// Failed steps in a row after which the engine reports itself unhealthy.
pub const FAULTS_BEFORE_ERROR: u32 = 3;
/// A sequence whose KV cache a failed step cost more often than this is failed (it is likely
/// the cause) instead of being computed again.
pub const MAX_LOSSES: u8 = 2;
/// A second backend panic within this time breaks the engine for good.
pub const PANIC_WINDOW: Duration = Duration::from_secs(60);
/// The fewest grammar masks in one step that are computed beside the backend's forward step
/// rather than before it.
const MASKS_BESIDE: usize = 4;
/// The engine thread's name (panics on it are logged by the engine, with their backtrace).
const THREAD_NAME: &str = "llm-engine";

use crate::backend::{Backend, BackendInfo, BatchEntry, Logits, SeqId, StepFailure};
use crate::openai::FinishReason;
use crate::sampling::{SamplingParams, TokenLogprobs};
use crate::structured::Constraint;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use scheduler::{Budget, Chunk, SeqView};
use sequence::{Sequence, StepOutcome, Verdict};

/// A tokenized request for one sequence.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    /// The prompt's token ids (non-empty, shorter than the engine's `max_model_len`).
    pub prompt: Vec<u32>,
    /// The most tokens to generate; generation also ends at `max_model_len`.
    pub max_tokens: u32,
    /// How to pick each token.
    pub sampling: SamplingParams,
    /// Stop strings; the matched string is not part of the output.
    pub stop: Vec<String>,
    /// The grammar the output must follow (structured output, tool calls), if any.
    pub constraint: Option<Constraint>,
}

/// What the engine reports about one sequence, in order: zero or more `Token`, then one of
/// `Finished` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    /// One generated token and the text it released (possibly empty while a UTF-8 character or
    /// a possible stop string is incomplete).
    Token(TokenEvent),
    /// Generation ended normally.
    Finished(Finished),
    /// The backend failed; the sequence is gone.
    Failed {
        /// What went wrong (for logs; not meant for clients).
        message: String,
    },
}

/// One generated token.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    /// The token id.
    pub token: u32,
    /// Text released by this token.
    pub text: String,
    /// Log-probabilities, when the request asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

/// The end of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// `stop` (end-of-generation token or stop string) or `length` (`max_tokens` or context).
    pub reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated, including an end-of-generation token.
    pub completion_tokens: u32,
    /// Prompt tokens whose KV came from the backend's prefix cache instead of being computed.
    pub cached_tokens: u32,
}

/// The receiving end of one sequence's events; dropping it cancels the sequence.
#[derive(Debug)]
pub struct EventReceiver {
    rx: tokio_mpsc::UnboundedReceiver<Event>,
}

impl EventReceiver {
    /// The next event, or `None` after the last one.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event, blocking the thread (for synchronous callers; not on an async runtime).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}

impl futures::Stream for EventReceiver {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Sequences in the running set.
    pub running: usize,
    /// Sequences waiting (including preempted ones).
    pub waiting: usize,
    /// Sequences submitted and not yet finished or cancelled.
    pub in_flight: usize,
    /// Steps run.
    pub steps: u64,
    /// Prompt tokens of all finished sequences.
    pub prompt_tokens: u64,
    /// Generated tokens, all sequences.
    pub generated_tokens: u64,
    /// Tokens taken from the backend's prefix cache instead of computed (prompts, and the
    /// tokens of preempted sequences when they come back).
    pub cached_tokens: u64,
    /// Preemptions so far.
    pub preemptions: u64,
    /// Sequences cancelled because their receiver was dropped.
    pub cancelled: u64,
    /// Whether the engine is unhealthy now: the last [`FAULTS_BEFORE_ERROR`] steps failed, or
    /// the engine is broken.
    pub failed: bool,
    /// Whether the engine is broken for good (a repeated backend panic): it refuses requests.
    pub broken: bool,
    /// Backend steps that failed or panicked.
    pub faults: u64,
    /// Backend steps that panicked.
    pub panics: u64,
    /// Draft tokens sent to the backend for verification (speculative decoding).
    pub draft_tokens: u64,
    /// Draft tokens kept: each one a token generated without a step of its own.
    pub accepted_tokens: u64,
    /// Wall time of all engine loop iterations that did work, in nanoseconds: scheduling,
    /// the backend step, sampling, detokenizing and sending events.
    pub step_nanos: u64,
    /// The part of `step_nanos` spent inside [`Backend::forward`]; the rest is the engine's own.
    pub backend_nanos: u64,
    /// Sequences that run at once even when every one grows to `max_model_len`: the batch
    /// limit, or fewer when the KV budget holds fewer whole sequences (see
    /// [`Engine::capacity`]). What a runner declares to an orchestrator.
    pub capacity: u32,
}

#[derive(Debug, Default)]
struct Counters {
    running: AtomicUsize,
    waiting: AtomicUsize,
    in_flight: AtomicUsize,
    steps: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    preemptions: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicBool,
    broken: AtomicBool,
    faults: AtomicU64,
    panics: AtomicU64,
    draft_tokens: AtomicU64,
    accepted_tokens: AtomicU64,
    step_nanos: AtomicU64,
    backend_nanos: AtomicU64,
}

/// Limits the engine enforces, fixed at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// The longest sequence (prompt plus completion), at most the backend's KV capacity.
    pub max_model_len: u32,
    /// Sequences running at once.
    pub max_num_seqs: u32,
    /// Tokens per step.
    pub max_num_batched_tokens: u32,
    /// Requests in flight beyond `max_num_seqs` before new ones are refused.
    pub max_queue: u32,
    /// Threads that sample a step's rows (0: the available cores); see [`LOGITS_PER_THREAD`].
    pub sampling_threads: u32,
    /// Draft tokens per sequence and step (speculative decoding by prompt lookup; 0: none),
    /// made while at most [`SPECULATION_MAX_SEQS`] sequences run.
    pub speculative_tokens: u32,
}

/// Work a sampling thread takes at the least, in logits passed over (a draw passes over its row
/// about 8 times, a greedy argmax once): 1 row drawn from a 128k vocabulary, 3 from a 49k one,
/// 8 greedy rows of 128k. A step with less than twice this samples on the engine thread alone,
/// since a thread costs tens of microseconds to start, its rows are in another core's cache,
/// and on a CPU backend's machine the cores are the forward step's too. Measured on 2 cores:
/// 32 greedy rows of 128k took 0.3 ms on one thread and 1.5 ms on two; 128 top-p rows of 128k
/// went from 36 to 20 ms.
pub const LOGITS_PER_THREAD: usize = 1 << 20;

#[derive(Debug)]
struct Shared {
    counters: Counters,
    info: BackendInfo,
    limits: EngineLimits,
    tokenizer: Arc<Tokenizer>,
    next_id: AtomicU64,
}

enum Command {
    Submit(Box<Sequence>),
}

/// A cloneable handle to the engine thread. The thread exits when the last handle is dropped
/// and no work is left.
#[derive(Debug, Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl Engine {
    /// Starts the engine thread, building the backend on it with `load`.
    ///
    /// `limits` are clamped to what the backend reports: `max_model_len` to its KV capacity
    /// (a single sequence must always fit, or preemption could not make progress),
    /// `max_num_seqs` and `max_num_batched_tokens` to its batch limits.
    ///
    /// # Errors
    /// The error of `load`, or [`Error::Backend`] if the thread cannot be spawned.
    pub fn start<B, F>(load: F, tokenizer: Arc<Tokenizer>, limits: EngineLimits) -> Result<Self>
    where
        B: Backend + 'static,
        F: FnOnce() -> Result<B> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let tok = Arc::clone(&tokenizer);
        install_panic_hook();
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let backend = match load() {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let info = backend.info().clone();
                if limits.max_model_len > info.trained_context && info.trained_context > 0 {
                    // As vLLM derives max_model_len from the model: positions beyond the
                    // trained context give garbage, so the limit is the model's.
                    tracing::warn!(
                        "MAX_MODEL_LEN={} exceeds the model's trained context of {} tokens; \
                         serving {} tokens per sequence",
                        limits.max_model_len,
                        info.trained_context,
                        info.trained_context
                    );
                }
                let limits = EngineLimits {
                    max_model_len: limits.max_model_len.min(info.kv_capacity).min(
                        match info.trained_context {
                            0 => u32::MAX,
                            trained => trained,
                        },
                    ),
                    max_num_seqs: limits.max_num_seqs.min(info.max_seqs),
                    max_num_batched_tokens: limits
                        .max_num_batched_tokens
                        .min(info.max_batch_tokens),
                    max_queue: limits.max_queue,
                    sampling_threads: match limits.sampling_threads {
                        0 => std::thread::available_parallelism()
                            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
                        n => n,
                    },
                    speculative_tokens: limits.speculative_tokens,
                };
                let shared = Arc::new(Shared {
                    counters: Counters::default(),
                    info,
                    limits,
                    tokenizer: tok,
                    next_id: AtomicU64::new(1),
                });
                if ready_tx.send(Ok(Arc::clone(&shared))).is_err() {
                    return;
                }
                Actor::new(backend, rx, shared).run();
            })
            .map_err(|e| Error::backend("cannot spawn the engine thread", e))?;
        let shared = ready_rx.recv().map_err(|_| Error::EngineStopped)??;
        Ok(Self { tx, shared })
    }

    /// Queues a request; its events arrive on the returned receiver.
    ///
    /// # Errors
    /// [`Error::QueueFull`] when `max_num_seqs + max_queue` requests are in flight,
    /// [`Error::Validation`] when the prompt is empty or does not leave room for one token,
    /// [`Error::EngineStopped`] when the engine thread is gone or broken.
    pub fn submit(&self, request: SeqRequest) -> Result<EventReceiver> {
        if self.shared.counters.broken.load(Ordering::SeqCst) {
            return Err(Error::EngineStopped);
        }
        let limits = self.shared.limits;
        let len = request.prompt.len();
        if len == 0 {
            return Err(Error::validation("messages", "the prompt is empty"));
        }
        if len >= limits.max_model_len as usize {
            return Err(Error::validation(
                "messages",
                format!(
                    "the prompt is {len} tokens; the model's context (MAX_MODEL_LEN) is {} tokens, \
                     so the prompt must be at most {} tokens",
                    limits.max_model_len,
                    limits.max_model_len - 1
                ),
            ));
        }
        let c = &self.shared.counters;
        let before = c.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(full) = self.room_beside(before) {
            c.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(full);
        }
        let (tx, rx) = tokio_mpsc::unbounded_channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let seq = Sequence::new(id, request, tx);
        if self.tx.send(Command::Submit(Box::new(seq))).is_err() {
            c.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::EngineStopped);
        }
        Ok(EventReceiver { rx })
    }

    /// The engine's counters now.
    pub fn stats(&self) -> EngineStats {
        let c = &self.shared.counters;
        EngineStats {
            running: c.running.load(Ordering::SeqCst),
            waiting: c.waiting.load(Ordering::SeqCst),
            in_flight: c.in_flight.load(Ordering::SeqCst),
            steps: c.steps.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            generated_tokens: c.generated_tokens.load(Ordering::Relaxed),
            cached_tokens: c.cached_tokens.load(Ordering::Relaxed),
            preemptions: c.preemptions.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::SeqCst),
            broken: c.broken.load(Ordering::SeqCst),
            faults: c.faults.load(Ordering::Relaxed),
            panics: c.panics.load(Ordering::Relaxed),
            draft_tokens: c.draft_tokens.load(Ordering::Relaxed),
            accepted_tokens: c.accepted_tokens.load(Ordering::Relaxed),
            step_nanos: c.step_nanos.load(Ordering::Relaxed),
            backend_nanos: c.backend_nanos.load(Ordering::Relaxed),
            capacity: self.capacity(),
        }
    }

    /// Sequences that run at once, in one batch, even when every one grows to `max_model_len`:
    /// `max_num_seqs` as the backend clamped it, or fewer when the KV budget holds fewer whole
    /// sequences (never less than one, since one sequence always fits). Shorter requests leave
    /// room for more; the scheduler admits them while KV cells are free.
    pub fn capacity(&self) -> u32 {
        let limits = &self.shared.limits;
        let whole = self.shared.info.kv_capacity / limits.max_model_len.max(1);
        limits.max_num_seqs.min(whole).max(1)
    }

    /// What the backend reported at start.
    pub fn backend_info(&self) -> &BackendInfo {
        &self.shared.info
    }

    /// The limits in force (after clamping to the backend).
    pub fn limits(&self) -> EngineLimits {
        self.shared.limits
    }

    /// Whether a request would be admitted now, checked before any work on it (rendering,
    /// tokenizing): [`Error::EngineStopped`] when the engine is broken, [`Error::QueueFull`]
    /// when `max_num_seqs + max_queue` requests are in flight. [`Engine::submit`] checks again,
    /// exactly; this is the cheap early refusal.
    ///
    /// # Errors
    /// As described.
    pub fn check_room(&self) -> Result<()> {
        let c = &self.shared.counters;
        if c.broken.load(Ordering::SeqCst) {
            return Err(Error::EngineStopped);
        }
        self.room_beside(c.in_flight.load(Ordering::SeqCst))
    }

    /// [`Error::QueueFull`] when `in_flight` requests fill `max_num_seqs + max_queue`.
    fn room_beside(&self, in_flight: usize) -> Result<()> {
        let limits = self.shared.limits;
        let cap = (limits.max_num_seqs as usize).saturating_add(limits.max_queue as usize);
        if in_flight >= cap {
            return Err(Error::QueueFull {
                waiting: in_flight.saturating_sub(limits.max_num_seqs as usize),
            });
        }
        Ok(())
    }

    /// The tokenizer the engine decodes with.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.shared.tokenizer
    }
}

struct Actor<B: Backend> {
    backend: B,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    logits: Logits,
    /// Failed steps in a row.
    consecutive_faults: u32,
    /// When the backend last panicked.
    last_panic: Option<Instant>,
    /// Whether steps may carry draft tokens: `speculative_tokens` is set, and the backend has
    /// not failed to cut rejected ones.
    speculating: bool,
}

impl<B: Backend> Actor<B> {
    fn new(backend: B, rx: mpsc::Receiver<Command>, shared: Arc<Shared>) -> Self {
        let logits = Logits::new(shared.info.vocab_size);
        let speculating = shared.limits.speculative_tokens > 0;
        Self {
            backend,
            rx,
            shared,
            waiting: VecDeque::new(),
            running: Vec::new(),
            logits,
            consecutive_faults: 0,
            last_panic: None,
            speculating,
        }
    }

    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(cmd) => self.accept(cmd),
                    Err(_) => return,
                }
            }
            let started = Instant::now();
            let iteration = std::panic::catch_unwind(AssertUnwindSafe(|| {
                while let Ok(cmd) = self.rx.try_recv() {
                    self.accept(cmd);
                }
                self.reap_cancelled();
                self.step();
            }));
            if let Err(payload) = iteration {
                self.caught_panic("the engine", payload.as_ref());
                self.break_down("a panic in the engine");
            }
            self.publish_counts();
            self.shared
                .counters
                .step_nanos
                .fetch_add(nanos(started.elapsed()), Ordering::Relaxed);
        }
    }

    fn accept(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(seq) if self.shared.counters.broken.load(Ordering::SeqCst) => {
                // Submitted before the engine broke: fail it at once.
                seq.fail(BROKEN);
                self.retire(&seq, Cache::Empty);
            }
            Command::Submit(seq) => self.waiting.push_back(*seq),
        }
    }

    fn publish_counts(&self) {
        let c = &self.shared.counters;
        c.running.store(self.running.len(), Ordering::SeqCst);
        c.waiting.store(self.waiting.len(), Ordering::SeqCst);
    }

    fn retire(&mut self, seq: &Sequence, cache: Cache) {
        // Counted out first, so that a breakdown inside the release does not count it twice.
        self.count_out(seq);
        if cache == Cache::Held {
            self.release(seq.id);
        }
    }

    /// Frees a sequence's KV cells; a panic there leaves the backend untrusted.
    fn release(&mut self, id: SeqId) {
        if self.shared.counters.broken.load(Ordering::SeqCst) {
            return;
        }
        let backend = &mut self.backend;
        if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| backend.release(id))) {
            self.caught_panic("releasing a sequence", payload.as_ref());
            self.break_down("a panic while releasing a sequence");
        }
    }

    /// Logs a panic caught on the engine thread, with the backtrace the hook kept, and counts
    /// it; returns its message.
    fn caught_panic(&self, what: &str, payload: &(dyn std::any::Any + Send)) -> String {
        let message = panic_message(payload);
        let backtrace = PANIC_BACKTRACE
            .with(|b| b.borrow_mut().take())
            .unwrap_or_default();
        tracing::error!(panic = %message, "{what} panicked\n{backtrace}");
        self.shared.counters.panics.fetch_add(1, Ordering::Relaxed);
        message
    }

    fn count_out(&self, seq: &Sequence) {
        let c = &self.shared.counters;
        c.in_flight.fetch_sub(1, Ordering::SeqCst);
        c.prompt_tokens
            .fetch_add(seq.prompt_len as u64, Ordering::Relaxed);
    }

    fn reap_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].is_cancelled() {
                let seq = self.running.remove(i);
                self.retire(&seq, Cache::Held);
                self.shared
                    .counters
                    .cancelled
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                i += 1;
            }
        }
        let before = self.waiting.len();
        let (gone, kept): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|s| s.is_cancelled());
        self.waiting = kept.into();
        for seq in &gone {
            // A preempted sequence has no KV left; one never admitted had none.
            self.retire(seq, Cache::Empty);
        }
        let n = (before - self.waiting.len()) as u64;
        self.shared
            .counters
            .cancelled
            .fetch_add(n, Ordering::Relaxed);
    }

    fn step(&mut self) {
        let limits = self.shared.limits;
        let budget = Budget {
            max_batched_tokens: limits.max_num_batched_tokens,
            max_seqs: limits.max_num_seqs,
            kv_capacity: self.shared.info.kv_capacity,
        };
        let running: Vec<SeqView> = self.running.iter().map(|s| s.view()).collect();
        let waiting: Vec<SeqView> = self.waiting.iter().map(|s| s.view()).collect();
        let plan = scheduler::plan(&running, &waiting, budget);
        for id in &plan.preempt {
            if let Some(i) = self.running.iter().position(|s| s.id == *id) {
                let mut seq = self.running.remove(i);
                self.release(seq.id);
                seq.computed = 0;
                self.waiting.push_front(seq);
                self.shared
                    .counters
                    .preemptions
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let admitted_from = self.running.len();
        let mut first_admission = Vec::with_capacity(plan.admit);
        for _ in 0..plan.admit {
            if let Some(mut seq) = self.waiting.pop_front() {
                first_admission.push(seq.cached_prompt().is_none());
                let known = seq.tokens();
                let reused = self.backend.reuse_prefix(seq.id, &known[..known.len() - 1]);
                seq.start_at(reused);
                self.running.push(seq);
            }
        }
        // The plan counted each admitted sequence as computing from its first token, but the
        // cells it reuses are its own as well, and a long cached prefix may not fit where the
        // plan gave room for a prefill chunk: the newest admissions wait, their cells kept in
        // the backend's prefix cache, until the step fits.
        let mut chunks = plan.chunks;
        while self.running.len() > admitted_from
            && self.kv_after(&chunks) > u64::from(budget.kv_capacity)
        {
            let mut seq = self.running.pop().expect("an admitted sequence");
            self.release(seq.id);
            seq.unstart(first_admission.pop().unwrap_or(false));
            chunks.retain(|c| c.id != seq.id);
            self.waiting.push_front(seq);
        }
        let reused: u64 = self.running[admitted_from..]
            .iter()
            .map(|s| u64::from(s.computed))
            .sum();
        self.shared
            .counters
            .cached_tokens
            .fetch_add(reused, Ordering::Relaxed);
        if chunks.is_empty() {
            return;
        }
        self.draft(&chunks, budget);
        let order = self.locate(&chunks);
        self.logits.clear();
        // The grammar masks of the tokens this step samples depend only on the tokens so far:
        // with several of them, they are computed on another thread while the backend computes
        // the logits; a few (about 10 µs each) are cheaper here than a thread started beside a
        // backend that keeps every core busy.
        let mut masking: Vec<(usize, Box<Constraint>)> = order
            .iter()
            .filter_map(|&(i, len)| {
                let seq = &mut self.running[i];
                let active = seq.constraint.as_ref().is_some_and(|c| c.is_active());
                if !(active && seq.completes_pending(len)) {
                    return None;
                }
                Some((i, seq.constraint.take()?))
            })
            .collect();
        let result = std::thread::scope(|scope| {
            let masks = if masking.len() >= MASKS_BESIDE {
                Some(scope.spawn(|| masking.iter_mut().for_each(|(_, c)| c.prepare())))
            } else {
                masking.iter_mut().for_each(|(_, c)| c.prepare());
                None
            };
            let batch: Vec<BatchEntry<'_>> = order
                .iter()
                .map(|&(i, len)| self.running[i].entry(len))
                .collect();
            let started = Instant::now();
            let backend = &mut self.backend;
            let logits = &mut self.logits;
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                backend
                    .forward(&batch, logits)
                    .map_err(|e| (e.to_string(), backend.failure(&e)))
            }));
            self.shared
                .counters
                .backend_nanos
                .fetch_add(nanos(started.elapsed()), Ordering::Relaxed);
            // A mask the thread could not finish is computed again when it is needed.
            let _ = masks.map(|m| m.join());
            result
        });
        for (i, constraint) in masking {
            self.running[i].constraint = Some(constraint);
        }
        self.shared.counters.steps.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(Ok(())) => {
                self.consecutive_faults = 0;
                if !self.shared.counters.broken.load(Ordering::SeqCst) {
                    self.shared.counters.failed.store(false, Ordering::SeqCst);
                }
                self.advance(&order);
            }
            Ok(Err((message, failure))) => {
                tracing::error!(error = %message, ?failure, "backend step failed");
                self.fault();
                match failure {
                    // Named sequences are failed after MAX_LOSSES, so retries end; a step that
                    // names none is retried only until the faults count as persistent.
                    StepFailure::Lost(ids)
                        if !ids.is_empty() || self.consecutive_faults < FAULTS_BEFORE_ERROR =>
                    {
                        self.restart_lost(&ids, &message);
                    }
                    _ => self.fail_batch(&order, &message),
                }
            }
            Err(payload) => {
                let message = self.caught_panic("a backend step", payload.as_ref());
                self.fault();
                let repeated = self
                    .last_panic
                    .is_some_and(|at| at.elapsed() < PANIC_WINDOW);
                self.last_panic = Some(Instant::now());
                self.fail_batch(&order, &format!("the backend panicked: {message}"));
                if repeated {
                    self.break_down("a second backend panic within a minute");
                }
            }
        }
    }

    /// Counts a failed step; persistent faults make the engine report itself unhealthy.
    fn fault(&mut self) {
        self.shared.counters.faults.fetch_add(1, Ordering::Relaxed);
        self.consecutive_faults += 1;
        if self.consecutive_faults >= FAULTS_BEFORE_ERROR {
            self.shared.counters.failed.store(true, Ordering::SeqCst);
        }
    }

    /// Stops trusting the backend: fails every sequence, and every later request at once.
    fn break_down(&mut self, why: &str) {
        if self.shared.counters.broken.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::error!("the engine is broken ({why}); it refuses requests until restarted");
        self.shared.counters.failed.store(true, Ordering::SeqCst);
        for seq in std::mem::take(&mut self.running) {
            seq.fail(BROKEN);
            self.retire(&seq, Cache::Held);
        }
        for seq in std::mem::take(&mut self.waiting) {
            seq.fail(BROKEN);
            self.retire(&seq, Cache::Empty);
        }
    }

    /// Gives each sequence whose chunk ends its pending tokens this step's draft tokens, while
    /// at most [`SPECULATION_MAX_SEQS`] sequences run and the step's token and KV budgets have
    /// room for them; every other sequence of the step carries none.
    fn draft(&mut self, chunks: &[Chunk], budget: Budget) {
        let limits = self.shared.limits;
        let max = if self.speculating && self.running.len() <= SPECULATION_MAX_SEQS {
            limits.speculative_tokens
        } else {
            0
        };
        let step: u32 = chunks.iter().map(|c| c.len).sum();
        let mut tokens_left = budget.max_batched_tokens.saturating_sub(step);
        let kv_left = u64::from(budget.kv_capacity).saturating_sub(self.kv_after(chunks));
        let mut kv_left = u32::try_from(kv_left).unwrap_or(u32::MAX);
        for (i, len) in self.locate(chunks) {
            let seq = &mut self.running[i];
            if !seq.completes_pending(len) {
                seq.drop_draft();
                continue;
            }
            let room = max
                .min(seq.draft_room(limits.max_model_len))
                .min(tokens_left)
                .min(kv_left);
            seq.draft(room);
            let drafted = seq.draft_len() as u32;
            tokens_left -= drafted;
            kv_left -= drafted;
        }
    }

    /// The KV cells the running sequences hold once `chunks` are computed.
    fn kv_after(&self, chunks: &[Chunk]) -> u64 {
        let held: u64 = self.running.iter().map(|s| u64::from(s.computed)).sum();
        let step: u64 = self
            .locate(chunks)
            .iter()
            .map(|&(_, len)| u64::from(len))
            .sum();
        held + step
    }

    /// Maps the plan's chunks to indices in `running`, in plan order. A chunk planned before
    /// its sequence reused a cached prefix is cut to what is still pending.
    fn locate(&self, chunks: &[Chunk]) -> Vec<(usize, u32)> {
        chunks
            .iter()
            .filter_map(|c| {
                self.running
                    .iter()
                    .position(|s| s.id == c.id)
                    .map(|i| (i, c.len.min(self.running[i].view().pending)))
            })
            .collect()
    }

    /// Samples the next token of every sequence whose step asked for logits (and the draft
    /// tokens it keeps, see [`speculate`]), detokenizes them and sends their events, cuts the
    /// rejected drafts from the backend's cache, then retires the finished sequences. Sequences
    /// are sampled in parallel across [`EngineLimits::sampling_threads`] when the step has
    /// enough rows: each sequence owns its sampler (and its seeded random state), its rows and
    /// its channel, so the outcome is the same whatever thread samples it.
    fn advance(&mut self, order: &[(usize, u32)]) {
        let tokenizer = Arc::clone(&self.shared.tokenizer);
        let max_model_len = self.shared.limits.max_model_len;
        let vocab = self.shared.info.vocab_size;
        // Which sequences sample, each with its group of rows (groups are in batch order).
        let mut group_of: Vec<Option<usize>> = vec![None; self.running.len()];
        let mut counts = Vec::new();
        for &(i, len) in order {
            let seq = &mut self.running[i];
            let wants_logits = seq.completes_pending(len);
            seq.computed += len;
            if wants_logits {
                group_of[i] = Some(counts.len());
                counts.push(1 + seq.draft_len());
            }
        }
        let mut groups: Vec<Option<&mut [f32]>> = self
            .logits
            .groups_mut(&counts)
            .into_iter()
            .map(Some)
            .collect();
        let mut jobs: Vec<(usize, &mut Sequence, &mut [f32])> = self
            .running
            .iter_mut()
            .enumerate()
            .filter_map(|(i, seq)| {
                let rows = groups[group_of[i]?].take()?;
                Some((i, seq, rows))
            })
            .collect();
        let passes: usize = jobs
            .iter()
            .map(|(_, seq, rows)| seq.sampling_passes() * rows.len() / vocab.max(1))
            .sum();
        let threads = (self.shared.limits.sampling_threads as usize)
            .min(passes * vocab / (8 * LOGITS_PER_THREAD))
            .max(1);
        let sample = |jobs: &mut [(usize, &mut Sequence, &mut [f32])]| -> Vec<(usize, Verdict)> {
            jobs.iter_mut()
                .map(|(i, seq, rows)| (*i, seq.sample_rows(rows, vocab, &tokenizer, max_model_len)))
                .collect()
        };
        let verdicts: Vec<(usize, Verdict)> = if threads == 1 {
            sample(&mut jobs)
        } else {
            let per = jobs.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let mut parts = jobs.chunks_mut(per);
                let first = parts.next();
                let others: Vec<_> = parts.map(|part| scope.spawn(|| sample(part))).collect();
                let mut verdicts = first.map(sample).unwrap_or_default();
                for other in others {
                    match other.join() {
                        Ok(more) => verdicts.extend(more),
                        // Re-raised on the engine thread, whose panic handling applies.
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                verdicts
            })
        };
        drop(jobs);
        let c = &self.shared.counters;
        let sum = |f: fn(&Verdict) -> u32| verdicts.iter().map(|(_, v)| u64::from(f(v))).sum();
        c.generated_tokens
            .fetch_add(sum(|v| v.emitted), Ordering::Relaxed);
        c.draft_tokens
            .fetch_add(sum(|v| v.drafted), Ordering::Relaxed);
        c.accepted_tokens
            .fetch_add(sum(|v| v.accepted), Ordering::Relaxed);
        // Sequences that leave the running set: finished, or (`false`) with a cache that could
        // not be cut, to be computed again from their first token.
        let mut leaving: Vec<(usize, bool)> = Vec::new();
        for (i, verdict) in verdicts {
            if i >= self.running.len() {
                break; // The engine broke down meanwhile and failed them all.
            }
            if verdict.outcome == StepOutcome::Finished {
                leaving.push((i, true));
            } else if verdict.rejected() && !self.cut(i) {
                leaving.push((i, false));
            }
        }
        leaving.sort_unstable();
        for (i, finished) in leaving.into_iter().rev() {
            if i >= self.running.len() {
                break;
            }
            let mut seq = self.running.remove(i);
            if finished {
                self.retire(&seq, Cache::Held);
            } else {
                seq.computed = 0;
                self.waiting.push_front(seq);
            }
        }
    }

    /// Cuts the rejected draft tokens of running sequence `i` from the backend's cache; says
    /// whether it could. A backend that cannot gets no more drafts, and the sequence loses its
    /// cache.
    fn cut(&mut self, i: usize) -> bool {
        let (id, len) = (self.running[i].id, self.running[i].computed);
        let backend = &mut self.backend;
        match std::panic::catch_unwind(AssertUnwindSafe(|| backend.truncate(id, len))) {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(
                    seq = id,
                    error = %e,
                    "the backend cannot cut rejected draft tokens; speculative decoding is off"
                );
                self.speculating = false;
                self.release(id);
                false
            }
            Err(payload) => {
                self.caught_panic("cutting a sequence's cache", payload.as_ref());
                self.break_down("a panic while cutting a sequence's cache");
                false
            }
        }
    }

    /// Sequences whose KV cache a failed step cost go back to the front of the queue, to be
    /// computed again from their first token; one lost more than [`MAX_LOSSES`] times fails.
    fn restart_lost(&mut self, ids: &[SeqId], message: &str) {
        for &id in ids.iter().rev() {
            let Some(i) = self.running.iter().position(|s| s.id == id) else {
                continue;
            };
            let mut seq = self.running.remove(i);
            seq.losses += 1;
            if seq.losses > MAX_LOSSES {
                seq.fail(message);
                self.retire(&seq, Cache::Empty);
            } else {
                seq.computed = 0;
                self.waiting.push_front(seq);
            }
        }
    }

    fn fail_batch(&mut self, order: &[(usize, u32)], message: &str) {
        let mut idx: Vec<usize> = order.iter().map(|&(i, _)| i).collect();
        idx.sort_unstable();
        idx.dedup();
        for i in idx.into_iter().rev() {
            if i >= self.running.len() {
                break; // The engine broke down meanwhile and failed them all.
            }
            let seq = self.running.remove(i);
            seq.fail(message);
            self.retire(&seq, Cache::Held);
        }
    }
}

/// What a request is told when the engine is broken.
const BROKEN: &str = "the engine is broken after repeated backend panics and must be restarted";

thread_local! {
    /// The backtrace of the last panic on the engine thread, taken by the panic hook.
    static PANIC_BACKTRACE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Chains a panic hook that, on the engine thread only, keeps the backtrace for the engine's
/// log line instead of printing it; other threads keep the previous hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(THREAD_NAME) {
                let trace = format!("{info}\n{}", std::backtrace::Backtrace::force_capture());
                PANIC_BACKTRACE.with(|b| *b.borrow_mut() = Some(trace));
            } else {
                previous(info);
            }
        }));
    });
}

/// A panic's message, when it is a string.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Whether a sequence that leaves the engine holds KV cells in the backend to release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cache {
    /// It ran: the backend holds its cells.
    Held,
    /// Never admitted, or preempted: nothing to release.
    Empty,
}

/// `d` in whole nanoseconds, saturating (584 years of steps fit).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
