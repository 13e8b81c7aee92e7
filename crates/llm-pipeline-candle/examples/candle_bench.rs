//! Decode throughput of the engine over the candle backend on SmolLM2 GGUF.
//!
//! ```text
//! cargo run --release -p llm-pipeline-candle --example candle_bench -- \
//!     [--threads 2] [--tokens 64] [--batches 1,8,32] [--kernels auto|q8_0|candle] [--model PATH]
//! ```
//! Same method as the root `throughput` bench's engine side: a 17-token prompt, `batch` requests
//! submitted at once, greedy with end-of-generation tokens suppressed so every sequence makes
//! `tokens` tokens; tok/s is decode throughput summed over sequences, after every sequence has
//! its first token. Threads are set through `NUM_THREADS` semantics (`with_threads`), which the
//! backend applies to candle's pools, so run one configuration per process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_pipeline_candle::{CandleBackend, GgufKernels, LoadOptions};
use llm_pipeline_core::config::PipelineConfig;
use llm_pipeline_core::engine::{Engine, EngineLimits, Event, SeqRequest};
use llm_pipeline_core::gguf::GgufMetadata;
use llm_pipeline_core::sampling::SamplingParams;
use llm_pipeline_core::tokenizer::Tokenizer;

const PROMPT: &str =
    "<|im_start|>user\nWrite a story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n";

struct Args {
    threads: u32,
    tokens: u32,
    batches: Vec<u32>,
    kernels: GgufKernels,
    model: String,
}

fn args() -> Args {
    let mut a = Args {
        threads: 2,
        tokens: 64,
        batches: vec![1, 8, 32],
        kernels: GgufKernels::default(),
        model: std::env::var("LLM_PIPELINE_SMOLLM2").unwrap_or_else(|_| {
            format!(
                "{}/.cache/llm-pipeline/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                std::env::var("HOME").unwrap_or_default()
            )
        }),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let val = it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--threads" => a.threads = val.parse().expect("--threads N"),
            "--tokens" => a.tokens = val.parse().expect("--tokens N"),
            "--model" => a.model = val,
            "--kernels" => {
                a.kernels = match val.as_str() {
                    "auto" => GgufKernels::Auto,
                    "q8_0" => GgufKernels::RequantizeToQ8_0,
                    "candle" => GgufKernels::Candle,
                    other => panic!("--kernels auto|q8_0|candle, not {other}"),
                }
            }
            "--batches" => {
                a.batches = val
                    .split(',')
                    .map(|b| b.parse().expect("--batches 1,8,32"))
                    .collect();
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Decode tokens/s and time to every first token (ms) for `batch` sequences.
fn run(a: &Args, batch: u32, prompt: &[u32], tokenizer: &Arc<Tokenizer>) -> (f64, f64) {
    let cfg = PipelineConfig::default()
        .with_model_id(a.model.clone())
        .with_max_model_len(512)
        .with_max_num_seqs(batch)
        .with_max_num_batched_tokens(512 * batch)
        .with_threads(a.threads)
        .with_cpu_kv_cache_bytes(u64::from(512 * batch) * 64 * 1024)
        .validated()
        .expect("bench config");
    let options = LoadOptions::default().with_kernels(a.kernels);
    let path = a.model.clone();
    let backend_cfg = cfg.clone();
    let engine = Engine::start(
        move || CandleBackend::load_with(path.as_ref(), &backend_cfg, options).map_err(Into::into),
        Arc::clone(tokenizer),
        EngineLimits {
            max_model_len: cfg.max_model_len,
            max_num_seqs: cfg.max_num_seqs,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_queue: 0,
        },
    )
    .expect("engine starts");
    let sampling = SamplingParams {
        temperature: 0.0,
        logit_bias: tokenizer
            .special()
            .end_of_generation
            .iter()
            .map(|&t| (t, -100.0))
            .collect(),
        ..SamplingParams::default()
    };
    let start = Instant::now();
    let mut receivers: Vec<_> = (0..batch)
        .map(|_| {
            engine
                .submit(SeqRequest {
                    prompt: prompt.to_vec(),
                    max_tokens: a.tokens,
                    sampling: sampling.clone(),
                    stop: Vec::new(),
                })
                .expect("submit")
        })
        .collect();
    let mut first = Duration::ZERO;
    for rx in &mut receivers {
        match rx.blocking_recv() {
            Some(Event::Token(_)) => first = first.max(start.elapsed()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut generated = 0;
    for rx in &mut receivers {
        while let Some(e) = rx.blocking_recv() {
            match e {
                Event::Token(_) => generated += 1,
                Event::Finished(f) => assert_eq!(f.completion_tokens, a.tokens),
                Event::Failed { message } => panic!("{message}"),
            }
        }
    }
    let decode = start.elapsed() - first;
    assert_eq!(generated, batch * (a.tokens - 1));
    (
        f64::from(generated) / decode.as_secs_f64(),
        first.as_secs_f64() * 1e3,
    )
}

fn main() {
    let a = args();
    let meta = GgufMetadata::from_path(&a.model).expect("SmolLM2 GGUF (run `cargo xtask models`)");
    let tokenizer = Arc::new(Tokenizer::from_gguf(&meta).expect("tokenizer"));
    let prompt = tokenizer.encode_prompt(PROMPT).expect("prompt encodes");
    println!(
        "candle backend, {}, threads {}, {} tokens per sequence, prompt {} tokens, {:?}",
        a.model,
        a.threads,
        a.tokens,
        prompt.len(),
        a.kernels
    );
    println!("| sequences | candle engine tok/s | TTFT ms |");
    println!("|---:|---:|---:|");
    for &batch in &a.batches {
        let (tps, ttft) = run(&a, batch, &prompt, &tokenizer);
        println!("| {batch} | {tps:.1} | {ttft:.0} |");
    }
}
