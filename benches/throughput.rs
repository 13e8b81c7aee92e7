//! Decode throughput of the engine against a bare `llama-cpp-2` loop, in the same run.
//!
//! ```text
//! cargo bench --bench throughput [-- --threads 2 --tokens 64 --batches 1,8,32]
//! ```
//! Both sides use the same model, threads, context and batch size; both decode greedily with
//! end-of-generation tokens suppressed, so every sequence makes the same number of tokens. The
//! bare loop is the floor of what any llama.cpp server can do: one `llama_decode` per step and
//! an argmax per sequence. The engine adds scheduling, sampling, detokenization and channels.
//! Figures are decode tokens/s (after the prompt is in the cache), summed over sequences.
//!
//! Each measurement runs in a child process of its own. In one process, the OpenMP thread team
//! left by one side makes libgomp count more threads than cores and switch every later team to
//! its throttled (sleeping) barriers: measured here, the engine dropped from 0.98× to 0.3× of
//! the bare loop at 2 threads when both ran in the same process.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::engine::{Engine, EngineLimits, Event, SeqRequest};
use llm_pipeline::core::gguf::GgufMetadata;
use llm_pipeline::core::sampling::SamplingParams;
use llm_pipeline::core::tokenizer::Tokenizer;
use llm_pipeline::llama_cpp::llama_cpp_2::context::params::LlamaContextParams;
use llm_pipeline::llama_cpp::llama_cpp_2::llama_batch::LlamaBatch;
use llm_pipeline::llama_cpp::llama_cpp_2::model::LlamaModel;
use llm_pipeline::llama_cpp::llama_cpp_2::model::params::LlamaModelParams;
use llm_pipeline::llama_cpp::llama_cpp_2::token::LlamaToken;
use llm_pipeline::llama_cpp::{LlamaCppBackend, runtime};

const PROMPT: &str =
    "<|im_start|>user\nWrite a story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n";

struct Args {
    threads: u32,
    tokens: u32,
    batches: Vec<u32>,
    rounds: u32,
    /// Child mode: run one side once at this batch size and print its figures.
    only: Option<(String, u32)>,
    argv: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        threads: 2,
        tokens: 64,
        batches: vec![1, 8, 32],
        rounds: 3,
        only: None,
        argv: Vec::new(),
    };
    let argv: Vec<String> = std::env::args().collect();
    a.argv = argv.clone();
    if !argv.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs this without `--bench`: a quick smoke run.
        a.tokens = 4;
        a.batches = vec![1, 2];
        a.rounds = 1;
    }
    let mut it = argv.iter().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--threads" => a.threads = val().parse().expect("--threads N"),
            "--tokens" => a.tokens = val().parse().expect("--tokens N"),
            "--rounds" => a.rounds = val().parse().expect("--rounds N"),
            "--only" => {
                let side = val();
                let batch = it
                    .next()
                    .and_then(|b| b.parse().ok())
                    .expect("--only SIDE BATCH");
                a.only = Some((side, batch));
            }
            "--batches" => {
                a.batches = val()
                    .split(',')
                    .map(|b| b.parse().expect("--batches 1,8,32"))
                    .collect();
            }
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn model_path() -> String {
    std::env::var("LLM_PIPELINE_SMOLLM2").unwrap_or_else(|_| {
        format!(
            "{}/.cache/llm-pipeline/models/SmolLM2-135M-Instruct.Q4_1.gguf",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

fn config(a: &Args, batch: u32) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(model_path())
        .with_max_model_len(512)
        .with_max_num_seqs(batch)
        .with_max_num_batched_tokens(512 * batch)
        .with_threads(a.threads)
        .with_cpu_kv_cache_bytes(u64::from(512 * batch) * 24 * 1024)
        .validated()
        .expect("bench config")
}

/// Decode tokens/s of the bare loop: `batch` copies of the prompt, `tokens` greedy tokens each.
fn bare(a: &Args, batch: u32, prompt: &[u32], eog: &[u32]) -> f64 {
    let rt = runtime::runtime().expect("llama.cpp runtime");
    let model =
        LlamaModel::load_from_file(rt.backend(), model_path(), &LlamaModelParams::default())
            .expect("model loads");
    let cfg = config(a, batch);
    let layout = llm_pipeline::llama_cpp::kv_layout(&cfg, cfg.cpu_kv_cache_bytes, 23040).unwrap();
    let n_ctx = layout.cells_per_seq * layout.seqs;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(cfg.max_num_batched_tokens)
        .with_n_ubatch(cfg.max_num_batched_tokens.min(512))
        .with_n_seq_max(batch)
        .with_kv_unified(false)
        .with_n_threads(a.threads as i32)
        .with_n_threads_batch(a.threads as i32);
    let mut ctx = model.new_context(rt.backend(), params).expect("context");
    let mut b = LlamaBatch::new(cfg.max_num_batched_tokens as usize, 1);
    let argmax = |row: &[f32]| {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > row[best] && !eog.contains(&(i as u32)) {
                best = i;
            }
        }
        best as i32
    };
    for s in 0..batch as i32 {
        for (i, &t) in prompt.iter().enumerate() {
            b.add(LlamaToken(t as i32), i as i32, &[s], i == prompt.len() - 1)
                .unwrap();
        }
    }
    ctx.decode(&mut b).expect("prefill");
    let mut last: Vec<i32> = (0..batch as i32)
        .map(|s| argmax(ctx.get_logits_ith((s + 1) * prompt.len() as i32 - 1)))
        .collect();
    let start = Instant::now();
    for step in 1..a.tokens {
        b.clear();
        let pos = (prompt.len() + step as usize - 1) as i32;
        for (s, &token) in last.iter().enumerate() {
            b.add(LlamaToken(token), pos, &[s as i32], true).unwrap();
        }
        ctx.decode(&mut b).expect("decode");
        for (s, l) in last.iter_mut().enumerate() {
            *l = argmax(ctx.get_logits_ith(s as i32));
        }
    }
    f64::from(batch * (a.tokens - 1)) / start.elapsed().as_secs_f64()
}

/// Decode tokens/s through the engine: `batch` requests at once, greedy, EOS suppressed.
/// Returns tokens/s, TTFT in ms, and the engine's own share of its loop time (everything but
/// the backend's forward step: scheduling, sampling, detokenizing, sending events).
fn engine(a: &Args, batch: u32, prompt: &[u32], tokenizer: &Arc<Tokenizer>) -> (f64, f64, f64) {
    let cfg = config(a, batch);
    let path = model_path();
    let backend_cfg = cfg.clone();
    let engine = Engine::start(
        move || LlamaCppBackend::load(path.as_ref(), &backend_cfg).map_err(Into::into),
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
    let before = engine.stats();
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
    // Wait for every first token, then time the rest.
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
    // The counters are published after each loop iteration, after the last events are sent.
    std::thread::sleep(Duration::from_millis(50));
    let after = engine.stats();
    let step = after.step_nanos - before.step_nanos;
    let own = step.saturating_sub(after.backend_nanos - before.backend_nanos);
    (
        f64::from(generated) / decode.as_secs_f64(),
        first.as_secs_f64() * 1e3,
        own as f64 / step.max(1) as f64,
    )
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs one side in a child process; returns its tokens/s, TTFT in ms, peak RSS in MiB and
/// (engine only) the engine's own share of its loop time.
fn child(a: &Args, side: &str, batch: u32) -> (f64, f64, f64, f64) {
    let out = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(&a.argv[1..])
        .args(["--only", side, &batch.to_string()])
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "{side} {batch} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut parts = line
        .split_whitespace()
        .map(|v| v.parse::<f64>().expect("number"));
    let mut next = || parts.next().unwrap_or(0.0);
    (next(), next(), next(), next())
}

fn main() {
    let a = args();
    let meta =
        GgufMetadata::from_path(model_path()).expect("SmolLM2 GGUF (run `cargo xtask models`)");
    let tokenizer = Arc::new(Tokenizer::from_gguf(&meta).expect("tokenizer"));
    let prompt = tokenizer.encode_prompt(PROMPT).expect("prompt encodes");
    let eog = tokenizer.special().end_of_generation.clone();
    let rt = runtime::runtime().expect("runtime");
    if let Some((side, batch)) = &a.only {
        let (tps, ttft, share) = match side.as_str() {
            "bare" => (bare(&a, *batch, &prompt, &eog), 0.0, 0.0),
            _ => engine(&a, *batch, &prompt, &tokenizer),
        };
        println!("RESULT {tps} {ttft} {} {share}", peak_rss_mib());
        return;
    }
    println!(
        "model SmolLM2-135M-Instruct Q4_1, threads {}, {} tokens per sequence, prompt {} tokens, \
         cpu variant {}, median of {} rounds",
        a.threads,
        a.tokens,
        prompt.len(),
        rt.cpu_variant.as_deref().unwrap_or("?"),
        a.rounds
    );
    println!(
        "| sequences | bare llama-cpp-2 tok/s | engine tok/s | engine / bare | engine TTFT ms | peak RSS bare / engine MiB | engine's own time per step |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &batch in &a.batches {
        let mut bares = Vec::new();
        let mut engines = Vec::new();
        let mut ttfts = Vec::new();
        let mut shares = Vec::new();
        let (mut rss_bare, mut rss_engine) = (0.0f64, 0.0f64);
        // Alternate the two so that drift in machine speed hits both alike.
        for _ in 0..a.rounds {
            let (tps, _, rss, _) = child(&a, "bare", batch);
            bares.push(tps);
            rss_bare = rss_bare.max(rss);
            let (tps, ttft, rss, share) = child(&a, "engine", batch);
            engines.push(tps);
            ttfts.push(ttft);
            shares.push(share);
            rss_engine = rss_engine.max(rss);
        }
        let (b, e) = (median(bares), median(engines));
        println!(
            "| {batch} | {b:.1} | {e:.1} | {:.3} | {:.0} | {rss_bare:.0} / {rss_engine:.0} | {:.2}% |",
            e / b,
            median(ttfts),
            median(shares) * 100.0
        );
    }
}
