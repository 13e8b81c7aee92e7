//! The engine's own time per step at GPU scale: 32, 128 and 256 sequences over a 128k
//! vocabulary, on the synthetic backend (`llm_pipeline::core::testing::SyntheticBackend`), which
//! stands in for a GPU's forward step: it hands the engine one realistic logits row per
//! sequence and a fixed step cost, so nothing but the engine's own work is measured.
//!
//! ```text
//! cargo bench --bench engine_step [-- --vocab 128000 --seqs 32,128,256 --steps 24
//!     --step-ms 20 --threads 1,2]
//! ```
//! For each batch, sampling mode (greedy; temperature 0.8 with top-p 0.9, seeded) and number of
//! sampling threads (1 is the engine before rows were sampled in parallel), every sequence
//! decodes `--steps` tokens after an 8-token prompt, and the figure is the engine's time per
//! step outside the backend's forward (`EngineStats::step_nanos - backend_nanos`, over all
//! steps): scheduling, sampling, detokenizing, stop strings and events. The rows of a step are
//! what a GPU backend would copy to the host (128 × 128k floats = 64 MB at 128 sequences).
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it makes a smoke run: 16 sequences
//! of an 8k vocabulary for 3 steps.

use std::sync::Arc;
use std::time::Duration;

use llm_pipeline::core::engine::{Engine, EngineLimits, Event, SeqRequest};
use llm_pipeline::core::sampling::SamplingParams;
use llm_pipeline::core::testing::{SyntheticBackend, wide_word_tokenizer};
use llm_pipeline::core::tokenizer::Tokenizer;

struct Args {
    vocab: usize,
    seqs: Vec<u32>,
    steps: u32,
    step_cost: Duration,
    threads: Vec<u32>,
}

fn list(text: &str) -> Vec<u32> {
    text.split(',')
        .map(|n| n.trim().parse().expect("a list of numbers"))
        .collect()
}

fn args() -> Args {
    let mut a = Args {
        vocab: 128_000,
        seqs: vec![32, 128, 256],
        steps: 24,
        step_cost: Duration::from_millis(20),
        threads: vec![
            1,
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        ],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if !argv.iter().any(|a| a == "--bench") {
        a.vocab = 8192;
        a.seqs = vec![16];
        a.steps = 3;
        a.step_cost = Duration::from_millis(1);
    }
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--vocab" => a.vocab = value().parse().expect("--vocab N"),
            "--seqs" => a.seqs = list(&value()),
            "--steps" => a.steps = value().parse().expect("--steps N"),
            "--step-ms" => {
                a.step_cost = Duration::from_millis(value().parse().expect("--step-ms N"));
            }
            "--threads" => a.threads = list(&value()),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    a.threads.dedup();
    a
}

/// The engine's own milliseconds per step for one configuration.
fn measure(a: &Args, tokenizer: &Arc<Tokenizer>, seqs: u32, top_p: bool, threads: u32) -> f64 {
    let (vocab, cost, len) = (a.vocab, a.step_cost, 1024);
    let engine = Engine::start(
        move || Ok(SyntheticBackend::new(vocab, seqs, len, cost)),
        Arc::clone(tokenizer),
        EngineLimits {
            max_model_len: len,
            max_num_seqs: seqs,
            max_num_batched_tokens: seqs * 16,
            max_queue: seqs,
            sampling_threads: threads,
            speculative_tokens: 0,
        },
    )
    .expect("the engine starts");
    let receivers: Vec<_> = (0..seqs)
        .map(|i| {
            let sampling = if top_p {
                SamplingParams {
                    temperature: 0.8,
                    top_p: 0.9,
                    seed: u64::from(i),
                    ..SamplingParams::default()
                }
            } else {
                SamplingParams {
                    temperature: 0.0,
                    ..SamplingParams::default()
                }
            };
            engine
                .submit(SeqRequest {
                    prompt: (2..10).map(|t| t + i % 64).collect(),
                    max_tokens: a.steps,
                    sampling,
                    stop: Vec::new(),
                    constraint: None,
                })
                .expect("submitted")
        })
        .collect();
    for mut rx in receivers {
        while let Some(event) = rx.blocking_recv() {
            if matches!(event, Event::Finished(_) | Event::Failed { .. }) {
                break;
            }
        }
    }
    let stats = engine.stats();
    let own = stats.step_nanos.saturating_sub(stats.backend_nanos);
    own as f64 / 1e6 / stats.steps.max(1) as f64
}

fn main() {
    let a = args();
    let tokenizer = wide_word_tokenizer(a.vocab as u32);
    println!(
        "engine time per step (ms, outside the backend), {} ids, {} decode steps, {:?} per \
         forward step, {} cores",
        a.vocab,
        a.steps,
        a.step_cost,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    print!("{:>6} {:>8}", "seqs", "mode");
    for t in &a.threads {
        print!(" {:>12}", format!("{t} thread(s)"));
    }
    println!();
    for &seqs in &a.seqs {
        for (mode, top_p) in [("greedy", false), ("top-p", true)] {
            print!("{seqs:>6} {mode:>8}");
            for &threads in &a.threads {
                print!(" {:>12.2}", measure(&a, &tokenizer, seqs, top_p, threads));
            }
            println!();
        }
    }
}
