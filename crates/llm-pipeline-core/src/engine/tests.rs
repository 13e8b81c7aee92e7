//! Engine tests over a deterministic test backend.
//!
//! The backend's "model" makes each next token a function of the sequence's whole history, and
//! it checks that every batch entry starts where that sequence's cache ends; so wrong
//! positions, lost tokens or mixed-up sequences change the output or fail the step.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::openai::FinishReason;
use crate::sampling::SamplingParams;
use crate::testing::{self, EOS, Observed, STOPPER, Stops, TestBackend, VOCAB};
use crate::tokenizer::Tokenizer;

/// The test model, which never ends an answer on its own.
fn next_token(history: &[u32]) -> u32 {
    testing::next_token(history, Stops::Never)
}

fn tokenizer() -> Arc<Tokenizer> {
    testing::word_tokenizer(false)
}

struct Setup {
    /// Backend steps (from 1) that panic, fail, and from which all fail.
    panic_steps: Vec<usize>,
    fail_steps: Vec<usize>,
    fail_from: Option<usize>,
    /// Backend steps that fail pinned on their first sequence; a token that poisons.
    lose_steps: Vec<usize>,
    poison: Option<u32>,
    /// Every step from this one on fails, the backend saying nothing was lost.
    retry_from: Option<usize>,
    kv_capacity: u32,
    max_batch_tokens: u32,
    max_seqs: u32,
    max_queue: u32,
    max_model_len: u32,
    step_delay: Duration,
    prefix_cache: bool,
    /// Draft tokens per step (0: no speculative decoding).
    speculative_tokens: u32,
    /// The copying model's period ([`TestBackend::copying`]) instead of the hashing one.
    copy_period: Option<usize>,
    /// The logit of the model's token.
    peak: f32,
    /// Whether the backend fails to cut caches.
    uncuttable: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            panic_steps: Vec::new(),
            fail_steps: Vec::new(),
            fail_from: None,
            lose_steps: Vec::new(),
            poison: None,
            retry_from: None,
            kv_capacity: 4096,
            max_batch_tokens: 256,
            max_seqs: 8,
            max_queue: 64,
            max_model_len: 512,
            step_delay: Duration::ZERO,
            prefix_cache: false,
            speculative_tokens: 0,
            copy_period: None,
            peak: 10.0,
            uncuttable: false,
        }
    }
}

fn start(setup: Setup) -> (Engine, Arc<Observed>) {
    let seen = Arc::new(Observed::default());
    let observed = Arc::clone(&seen);
    let info = testing::test_info(setup.kv_capacity, setup.max_batch_tokens, setup.max_seqs);
    let engine = Engine::start(
        move || {
            let mut backend = TestBackend::new(info, Stops::Never)
                .panicking_at_steps(&setup.panic_steps)
                .failing_from_step(setup.fail_from)
                .losing_at_steps(&setup.lose_steps)
                .poisoned_by(setup.poison)
                .retrying_from_step(setup.retry_from);
            for step in setup.fail_steps {
                backend = backend.failing_at_step(Some(step));
            }
            if let Some(period) = setup.copy_period {
                backend = backend.copying(period);
            }
            if setup.uncuttable {
                backend = backend.uncuttable();
            }
            Ok(backend
                .with_prefix_cache(setup.prefix_cache)
                .with_step_delay(setup.step_delay)
                .with_peak_logit(setup.peak)
                .observed_by(observed))
        },
        tokenizer(),
        EngineLimits {
            max_model_len: setup.max_model_len,
            max_num_seqs: setup.max_seqs,
            max_num_batched_tokens: setup.max_batch_tokens,
            max_queue: setup.max_queue,
            sampling_threads: 0,
            speculative_tokens: setup.speculative_tokens,
        },
    )
    .unwrap();
    (engine, seen)
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

fn request(prompt: Vec<u32>, max_tokens: u32) -> SeqRequest {
    SeqRequest {
        prompt,
        max_tokens,
        sampling: greedy(),
        stop: Vec::new(),
        constraint: None,
    }
}

/// What the model generates alone: tokens and finish reason.
fn expected(prompt: &[u32], max_tokens: u32, max_model_len: u32) -> (Vec<u32>, FinishReason) {
    let mut history = prompt.to_vec();
    let mut out = Vec::new();
    loop {
        let t = next_token(&history);
        history.push(t);
        out.push(t);
        if t == EOS {
            return (out, FinishReason::Stop);
        }
        if out.len() as u32 >= max_tokens || history.len() as u32 >= max_model_len {
            return (out, FinishReason::Length);
        }
    }
}

fn collect(mut rx: EventReceiver) -> (Vec<u32>, Finished) {
    let mut tokens = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token(t) => tokens.push(t.token),
            Event::Finished(f) => return (tokens, f),
            Event::Failed { message } => panic!("sequence failed: {message}"),
        }
    }
    panic!("the channel closed without Finished");
}

fn settle(engine: &Engine) -> EngineStats {
    let start = Instant::now();
    loop {
        let s = engine.stats();
        if s.running == 0 && s.waiting == 0 && s.in_flight == 0 {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "engine busy: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn prompt(seed: u32, len: u32) -> Vec<u32> {
    (0..len)
        .map(|i| (seed * 13 + i * 5) % (VOCAB - 8) + 8)
        .collect()
}

#[test]
fn one_sequence_generates_the_model_output_with_exact_usage() {
    let (engine, seen) = start(Setup::default());
    let p = prompt(1, 12);
    let (tokens, f) = collect(engine.submit(request(p.clone(), 20)).unwrap());
    let (want, reason) = expected(&p, 20, 512);
    assert_eq!(tokens, want);
    assert_eq!(f.reason, reason);
    assert_eq!(
        (f.prompt_tokens, f.completion_tokens),
        (12, want.len() as u32)
    );
    settle(&engine);
    assert_eq!(seen.live.load(Ordering::SeqCst), 0, "KV released");
}

/// Rows sampled on several threads give each seeded sequence the tokens it gets on one. The
/// rows are a 128k vocabulary's (the synthetic backend's): 24 of them are 3M logits, which
/// [`LOGITS_PER_THREAD`] spreads over 3 threads.
#[test]
fn seeded_sampling_is_the_same_on_one_thread_and_many() {
    const WIDE: usize = 1 << 17;
    const { assert!(24 * WIDE >= 3 * LOGITS_PER_THREAD) };
    let tokenizer = testing::wide_word_tokenizer(WIDE as u32);
    let run = |threads: u32| {
        let engine = Engine::start(
            || {
                Ok(testing::SyntheticBackend::new(
                    WIDE,
                    24,
                    512,
                    Duration::ZERO,
                ))
            },
            Arc::clone(&tokenizer),
            EngineLimits {
                max_model_len: 512,
                max_num_seqs: 24,
                max_num_batched_tokens: 512,
                max_queue: 24,
                sampling_threads: threads,
                speculative_tokens: 0,
            },
        )
        .unwrap();
        let receivers: Vec<_> = (0..24u32)
            .map(|i| {
                let mut r = request(prompt(i, 6), 16);
                r.sampling = SamplingParams {
                    temperature: 1.0,
                    top_p: 0.95,
                    seed: u64::from(i),
                    ..SamplingParams::default()
                };
                engine.submit(r).unwrap()
            })
            .collect();
        let answers: Vec<Vec<u32>> = receivers.into_iter().map(|rx| collect(rx).0).collect();
        settle(&engine);
        answers
    };
    let one = run(1);
    assert_eq!(one, run(4));
    // Sampling happened: sequences shown the same rows drew different tokens.
    let firsts: std::collections::HashSet<u32> = one.iter().map(|a| a[0]).collect();
    assert!(firsts.len() > 4, "{one:?}");
}

#[test]
fn eos_stops_with_stop_and_counts_the_eos_token() {
    let (engine, _) = start(Setup::default());
    let p = vec![9, 10, STOPPER];
    let (tokens, f) = collect(engine.submit(request(p, 50)).unwrap());
    assert_eq!(tokens, vec![EOS]);
    assert_eq!((f.reason, f.completion_tokens), (FinishReason::Stop, 1));
}

#[test]
fn concurrent_sequences_equal_each_alone() {
    let (engine, seen) = start(Setup::default());
    let prompts: Vec<Vec<u32>> = (0..20).map(|i| prompt(i, 5 + i % 7)).collect();
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(request(p.clone(), 30)).unwrap())
        .collect();
    for (p, rx) in prompts.iter().zip(receivers) {
        let (tokens, f) = collect(rx);
        let (want, reason) = expected(p, 30, 512);
        assert_eq!(tokens, want);
        assert_eq!(f.reason, reason);
    }
    assert!(
        seen.max_batch_seqs.load(Ordering::SeqCst) > 1,
        "sequences were batched"
    );
    assert!(
        seen.max_batch_seqs.load(Ordering::SeqCst) <= 8,
        "MAX_NUM_SEQS held"
    );
    settle(&engine);
}

#[test]
fn long_prompts_are_prefilled_in_chunks_under_the_token_budget() {
    let (engine, seen) = start(Setup {
        max_batch_tokens: 16,
        ..Setup::default()
    });
    let p = prompt(3, 100);
    let (tokens, _) = collect(engine.submit(request(p.clone(), 10)).unwrap());
    assert_eq!(tokens, expected(&p, 10, 512).0);
    assert_eq!(seen.max_batch_tokens.load(Ordering::SeqCst), 16);
    let steps = seen.steps.lock().unwrap().clone();
    // 100 prompt tokens in chunks of at most 16: 7 prefill steps, then 9 decodes.
    assert_eq!(&steps[..7], &[16, 16, 16, 16, 16, 16, 4]);
}

/// Five sequences each growing to 70 tokens in room for about two at a time: every output as
/// without preemption; returns the engine's counters.
fn five_sequences_in_150_cells(prefix_cache: bool) -> EngineStats {
    let (engine, _) = start(Setup {
        kv_capacity: 150,
        max_model_len: 128,
        prefix_cache,
        ..Setup::default()
    });
    let prompts: Vec<Vec<u32>> = (0..5).map(|i| prompt(i + 40, 30)).collect();
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(request(p.clone(), 40)).unwrap())
        .collect();
    for (p, rx) in prompts.iter().zip(receivers) {
        let (tokens, f) = collect(rx);
        assert_eq!((tokens, f.reason), expected(p, 40, 128));
    }
    let stats = settle(&engine);
    assert_eq!(stats.faults, 0, "{stats:?}");
    assert!(stats.preemptions > 0, "{stats:?}");
    stats
}

#[test]
fn kv_exhaustion_preempts_and_recomputes_without_changing_outputs() {
    five_sequences_in_150_cells(false);
}

#[test]
fn reused_prefixes_never_overrun_a_full_cache() {
    // With prefix caching, a preempted sequence comes back holding its cached prefix, more
    // cells than the prefill chunk the plan made room for. It waits instead of overrunning the
    // cache, which this backend refuses as a fault.
    let stats = five_sequences_in_150_cells(true);
    assert!(stats.cached_tokens > 0, "{stats:?}");
}

#[test]
fn context_end_finishes_with_length() {
    let (engine, _) = start(Setup {
        max_model_len: 16,
        ..Setup::default()
    });
    let p = prompt(5, 10);
    let (tokens, f) = collect(engine.submit(request(p, 100)).unwrap());
    assert_eq!((f.reason, tokens.len()), (FinishReason::Length, 6));
    // A prompt that leaves no room is refused up front.
    let err = engine.submit(request(prompt(5, 16), 1)).unwrap_err();
    assert!(
        matches!(err, Error::Validation { ref param, .. } if param == "messages"),
        "{err}"
    );
}

#[test]
fn dropped_receivers_cancel_and_free_their_cache() {
    // Slow steps, so that the sequence is still running when its receiver goes.
    let (engine, seen) = start(Setup {
        step_delay: Duration::from_millis(1),
        ..Setup::default()
    });
    let mut rx = engine.submit(request(prompt(7, 8), 100_000)).unwrap();
    let _ = rx.blocking_recv();
    drop(rx);
    let stats = settle(&engine);
    assert_eq!(stats.cancelled, 1);
    assert_eq!(seen.live.load(Ordering::SeqCst), 0);
}

#[test]
fn full_queue_refuses_at_once() {
    let (engine, _) = start(Setup {
        max_seqs: 1,
        max_queue: 1,
        step_delay: Duration::from_millis(1),
        ..Setup::default()
    });
    let a = engine.submit(request(prompt(1, 4), 100_000)).unwrap();
    let b = engine.submit(request(prompt(2, 4), 100_000)).unwrap();
    match engine.submit(request(prompt(3, 4), 1)) {
        Err(Error::QueueFull { waiting }) => assert_eq!(waiting, 1),
        other => panic!("expected QueueFull, got {other:?}"),
    }
    drop((a, b));
    settle(&engine);
    // Capacity comes back once they are gone.
    let (tokens, _) = collect(engine.submit(request(prompt(3, 4), 3)).unwrap());
    assert_eq!(tokens.len(), 3);
}

#[test]
fn stop_strings_end_generation_and_are_not_emitted() {
    let (engine, _) = start(Setup::default());
    let p = prompt(9, 6);
    let (want, _) = expected(&p, 12, 512);
    // The word-level decoder joins tokens with spaces: stop at the fourth token's text.
    let stop = format!("t{}", want[3]);
    let mut rx = engine
        .submit(SeqRequest {
            stop: vec![stop.clone()],
            ..request(p, 12)
        })
        .unwrap();
    let mut text = String::new();
    let finished = loop {
        match rx.blocking_recv().unwrap() {
            Event::Token(t) => text.push_str(&t.text),
            Event::Finished(f) => break f,
            Event::Failed { message } => panic!("{message}"),
        }
    };
    assert_eq!(finished.reason, FinishReason::Stop);
    assert!(!text.contains(&stop), "{text:?}");
    assert_eq!(
        finished.completion_tokens as usize,
        want.iter().position(|&t| t == want[3]).unwrap() + 1
    );
}

#[test]
fn a_cached_prefix_is_not_recomputed_and_changes_nothing_else() {
    let (engine, seen) = start(Setup {
        prefix_cache: true,
        ..Setup::default()
    });
    let first = prompt(3, 40);
    let (out, f) = collect(engine.submit(request(first.clone(), 6)).unwrap());
    assert_eq!((out.clone(), f.reason), expected(&first, 6, 512));
    assert_eq!(f.cached_tokens, 0);
    settle(&engine);

    // The same prompt again: all but its last token come from the cache (the last is always
    // computed, to give logits).
    let prefilled = |seen: &Observed| seen.steps.lock().unwrap().clone();
    let before = prefilled(&seen).len();
    let (again, f) = collect(engine.submit(request(first.clone(), 6)).unwrap());
    assert_eq!(again, out);
    assert_eq!((f.cached_tokens, f.prompt_tokens), (39, 40));
    assert_eq!(
        prefilled(&seen)[before],
        1,
        "one token computed for the prompt"
    );
    settle(&engine);

    // The next turn of that chat: its history is cached, up to the last generated token,
    // whose KV was never computed.
    let mut turn = first.clone();
    turn.extend(&out);
    turn.extend(prompt(4, 5));
    let (next, f) = collect(engine.submit(request(turn.clone(), 6)).unwrap());
    assert_eq!((next, f.reason), expected(&turn, 6, 512));
    assert_eq!(f.cached_tokens, 40 + 6 - 1);

    // An unrelated prompt shares nothing.
    let (_, f) = collect(engine.submit(request(prompt(9, 20), 3)).unwrap());
    assert_eq!(f.cached_tokens, 0);
    let stats = settle(&engine);
    assert_eq!(stats.cached_tokens, 39 + 45);
}

#[test]
fn max_model_len_beyond_the_trained_context_is_clamped_to_it() {
    // The test model is trained for 4096 positions.
    let (engine, _) = start(Setup {
        kv_capacity: 16_384,
        max_model_len: 8192,
        max_batch_tokens: 8192,
        ..Setup::default()
    });
    assert_eq!(engine.limits().max_model_len, 4096);
    let (engine, _) = start(Setup {
        kv_capacity: 16_384,
        max_model_len: 1024,
        ..Setup::default()
    });
    assert_eq!(engine.limits().max_model_len, 1024);
}

/// How a sequence ended: its tokens and finish, or the failure message.
fn outcome(mut rx: EventReceiver) -> Result<Vec<u32>, String> {
    let mut tokens = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token(t) => tokens.push(t.token),
            Event::Finished(_) => return Ok(tokens),
            Event::Failed { message } => return Err(message),
        }
    }
    Err("the channel closed without an end".into())
}

#[test]
fn a_panicking_step_fails_only_its_sequences_and_the_engine_goes_on() {
    let (engine, seen) = start(Setup {
        panic_steps: vec![2],
        ..Setup::default()
    });
    let failed = outcome(engine.submit(request(prompt(1, 5), 4)).unwrap()).unwrap_err();
    assert!(
        failed.contains("simulated backend panic in step 2"),
        "{failed}"
    );
    // The engine serves the next request exactly, and says it is healthy.
    let (tokens, _) = collect(engine.submit(request(prompt(2, 5), 4)).unwrap());
    assert_eq!(tokens, expected(&prompt(2, 5), 4, 512).0);
    let stats = settle(&engine);
    assert!(!stats.failed && !stats.broken, "{stats:?}");
    assert_eq!((stats.faults, stats.panics), (1, 1));
    assert_eq!(
        seen.live.load(Ordering::SeqCst),
        0,
        "the failed sequence's KV is freed"
    );
}

#[test]
fn a_second_panic_within_the_window_breaks_the_engine_and_it_refuses_at_once() {
    let (engine, _) = start(Setup {
        panic_steps: vec![2, 4],
        ..Setup::default()
    });
    assert!(outcome(engine.submit(request(prompt(1, 5), 4)).unwrap()).is_err());
    // Step 3 prefills this one, step 4 panics: broken.
    let failed = outcome(engine.submit(request(prompt(2, 5), 4)).unwrap()).unwrap_err();
    assert!(failed.contains("panicked"), "{failed}");
    let stats = settle(&engine);
    assert!(stats.failed && stats.broken, "{stats:?}");
    assert_eq!(stats.in_flight, 0, "counters stay exact");
    assert!(matches!(
        engine.submit(request(prompt(3, 5), 4)),
        Err(Error::EngineStopped)
    ));
}

#[test]
fn health_turns_error_only_while_faults_persist() {
    // One failed step: that request fails, the engine stays healthy.
    let (engine, _) = start(Setup {
        fail_steps: vec![2],
        ..Setup::default()
    });
    assert!(outcome(engine.submit(request(prompt(1, 5), 4)).unwrap()).is_err());
    assert!(!settle(&engine).failed);
    // Every step failing: unhealthy after FAULTS_BEFORE_ERROR of them.
    let (engine, _) = start(Setup {
        fail_from: Some(1),
        ..Setup::default()
    });
    for i in 0..FAULTS_BEFORE_ERROR {
        assert!(outcome(engine.submit(request(prompt(i, 5), 4)).unwrap()).is_err());
    }
    let stats = settle(&engine);
    assert!(stats.failed && !stats.broken, "{stats:?}");
    assert_eq!(stats.faults, u64::from(FAULTS_BEFORE_ERROR));
}

#[test]
fn a_failure_the_backend_pins_on_one_sequence_costs_no_request() {
    // Steps 3 and 5 fail, each costing the batch's first sequence its cache: that sequence is
    // computed again, the others run on, and every answer is what it is alone.
    let (engine, seen) = start(Setup {
        lose_steps: vec![3, 5],
        ..Setup::default()
    });
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| prompt(i, 6 + i)).collect();
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(request(p.clone(), 12)).unwrap())
        .collect();
    for (p, rx) in prompts.iter().zip(receivers) {
        let (tokens, _) = collect(rx);
        assert_eq!(tokens, expected(p, 12, 512).0);
    }
    let stats = settle(&engine);
    assert_eq!(stats.faults, 2, "{stats:?}");
    assert!(!stats.failed && !stats.broken, "{stats:?}");
    assert_eq!(seen.live.load(Ordering::SeqCst), 0);
}

#[test]
fn a_sequence_that_fails_every_step_is_failed_and_the_others_complete() {
    // A token the "model" cannot take: every step holding it fails, pinned on its sequence.
    let good: Vec<Vec<u32>> = (0..3).map(|i| prompt(i, 5)).collect();
    let answers: Vec<Vec<u32>> = good.iter().map(|p| expected(p, 12, 512).0).collect();
    let poison = (8..VOCAB)
        .find(|t| !good.iter().chain(&answers).any(|s| s.contains(t)))
        .expect("a token no good sequence holds");
    let (engine, _) = start(Setup {
        poison: Some(poison),
        ..Setup::default()
    });
    let bad = engine.submit(request(vec![poison, 8, 9], 12)).unwrap();
    let receivers: Vec<_> = good
        .iter()
        .map(|p| engine.submit(request(p.clone(), 12)).unwrap())
        .collect();
    let failed = outcome(bad).unwrap_err();
    assert!(failed.contains("simulated fault"), "{failed}");
    for (answer, rx) in answers.iter().zip(receivers) {
        assert_eq!(&outcome(rx).expect("the others complete"), answer);
    }
    let stats = settle(&engine);
    assert_eq!(stats.faults, u64::from(MAX_LOSSES) + 1, "{stats:?}");
    assert_eq!(stats.in_flight, 0);
}

#[test]
fn a_fault_that_costs_nothing_is_retried_until_it_persists_then_fails_the_batch() {
    // Step 1 succeeds (the prefill); from step 2 every step fails and the backend says nothing
    // was lost: the engine retries, and once FAULTS_BEFORE_ERROR steps in a row have failed it
    // fails the request instead of retrying for ever.
    let (engine, _) = start(Setup {
        retry_from: Some(2),
        ..Setup::default()
    });
    let failed = outcome(engine.submit(request(prompt(1, 5), 8)).unwrap()).unwrap_err();
    assert!(failed.contains("transient"), "{failed}");
    let stats = settle(&engine);
    assert_eq!(stats.faults, u64::from(FAULTS_BEFORE_ERROR), "{stats:?}");
    assert!(stats.failed && !stats.broken, "{stats:?}");
}

/// Runs `requests` to the end on an engine of `setup`; returns each answer and the counters.
fn answers(setup: Setup, requests: &[SeqRequest]) -> (Vec<Vec<u32>>, EngineStats, Arc<Observed>) {
    let (engine, seen) = start(setup);
    let receivers: Vec<_> = requests
        .iter()
        .map(|r| engine.submit(r.clone()).unwrap())
        .collect();
    let out = receivers.into_iter().map(|rx| collect(rx).0).collect();
    (out, settle(&engine), seen)
}

/// A copying model, where prompt lookup's drafts are often right and sometimes wrong.
fn copying(speculative_tokens: u32) -> Setup {
    Setup {
        speculative_tokens,
        copy_period: Some(6),
        ..Setup::default()
    }
}

#[test]
fn drafts_leave_greedy_answers_unchanged_in_fewer_steps() {
    let requests: Vec<SeqRequest> = (0..3).map(|i| request(prompt(i, 9 + i), 60)).collect();
    let (plain, plain_stats, _) = answers(copying(0), &requests);
    let (drafted, stats, seen) = answers(copying(4), &requests);
    assert_eq!(drafted, plain);
    assert!(plain.iter().all(|a| a.len() == 60));
    assert_eq!(plain_stats.draft_tokens, 0);
    // Drafts were made, most kept, some rejected (every fifth position breaks the copy).
    assert!(
        stats.accepted_tokens > stats.draft_tokens / 2
            && stats.accepted_tokens < stats.draft_tokens,
        "{stats:?}"
    );
    assert_eq!(stats.generated_tokens, 180);
    assert!(stats.steps < plain_stats.steps * 5 / 6, "{stats:?}");
    // The prompts (30 tokens) with at most 4 drafts each.
    assert!(seen.max_batch_tokens.load(Ordering::SeqCst) <= 30 + 3 * 4);
    // Alone, a sequence saves exactly one step per draft token kept.
    let (_, plain_stats, _) = answers(copying(0), &requests[..1]);
    let (_, stats, _) = answers(copying(4), &requests[..1]);
    assert_eq!(stats.steps + stats.accepted_tokens, plain_stats.steps);
}

#[test]
fn drafts_keep_within_the_step_and_kv_budgets_and_through_preemption() {
    // A step of 8 tokens and room for about two sequences of 70 among five: drafts fill what
    // the decode tokens leave, preemption still recomputes, and answers are unchanged.
    let setup = |speculative_tokens| Setup {
        max_batch_tokens: 8,
        kv_capacity: 150,
        max_model_len: 128,
        ..copying(speculative_tokens)
    };
    let requests: Vec<SeqRequest> = (0..5).map(|i| request(prompt(i, 10), 60)).collect();
    let (plain, _, _) = answers(setup(0), &requests);
    let (drafted, stats, seen) = answers(setup(4), &requests);
    assert_eq!(drafted, plain);
    assert!(
        stats.accepted_tokens > 0 && stats.preemptions > 0,
        "{stats:?}"
    );
    assert!(seen.max_batch_tokens.load(Ordering::SeqCst) <= 8);
}

#[test]
fn drafts_stop_beyond_a_few_sequences() {
    let requests: Vec<SeqRequest> = (0..8).map(|i| request(prompt(i, 9), 30)).collect();
    let (_, stats, seen) = answers(
        Setup {
            step_delay: Duration::from_millis(2),
            ..copying(4)
        },
        &requests,
    );
    // Eight sequences decode together without drafts; drafts come back as they finish (they
    // all end together here, so at most a step's worth).
    assert!(stats.draft_tokens <= 8 * 4, "{stats:?}");
    assert!(seen.max_batch_seqs.load(Ordering::SeqCst) == 8);
}

#[test]
fn seeded_sampling_is_the_same_with_drafts_and_keeps_its_distribution() {
    // The model's token has logit 4.2 among 63 zeros: drawn with probability
    // e^4.2 / (e^4.2 + 63) = 0.514, so drafts (copies of what the model favours) are often
    // rejected.
    let p_model = 4.2f64.exp() / (4.2f64.exp() + 63.0);
    let setup = |speculative_tokens| Setup {
        peak: 4.2,
        max_seqs: 4,
        ..copying(speculative_tokens)
    };
    let requests: Vec<SeqRequest> = (0..32u32)
        .map(|i| {
            let mut r = request(prompt(i, 12), 40);
            r.sampling = SamplingParams {
                temperature: 1.0,
                seed: u64::from(i),
                ..SamplingParams::default()
            };
            r
        })
        .collect();
    let (plain, _, _) = answers(setup(0), &requests);
    let (drafted, stats, _) = answers(setup(4), &requests);
    assert_eq!(drafted, plain);
    assert!(stats.accepted_tokens > 10, "{stats:?}");
    // How often the model's own token was drawn, against its probability (within 4 sigma).
    let mut hits = 0;
    let mut n = 0;
    for (r, answer) in requests.iter().zip(&drafted) {
        let mut history = r.prompt.clone();
        for &t in answer {
            hits += usize::from(t == testing::copy_token(&history, 6, Stops::Never));
            n += 1;
            history.push(t);
        }
    }
    let freq = hits as f64 / n as f64;
    let sigma = (p_model * (1.0 - p_model) / n as f64).sqrt();
    assert!(
        (freq - p_model).abs() < 4.0 * sigma,
        "the model's token drawn {freq:.3} of the time, expected {p_model:.3}"
    );
}

#[test]
fn a_backend_that_cannot_cut_drafts_recomputes_and_stops_drafting() {
    let requests: Vec<SeqRequest> = (0..2).map(|i| request(prompt(i, 9), 40)).collect();
    let (plain, _, _) = answers(copying(0), &requests);
    let (drafted, stats, _) = answers(
        Setup {
            uncuttable: true,
            ..copying(4)
        },
        &requests,
    );
    assert_eq!(drafted, plain);
    // The first rejection turned drafting off; whatever was drafted before stays counted.
    assert!(stats.draft_tokens > 0, "{stats:?}");
    assert!(stats.draft_tokens < 2 * 40, "{stats:?}");
}
