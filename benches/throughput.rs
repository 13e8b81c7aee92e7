//! Decode throughput of the engine over each backend built, against a bare `llama-cpp-2` loop,
//! in the same run.
//!
//! ```text
//! cargo bench --features candle,ort --bench throughput [-- --threads 2 --tokens 64
//!     --batches 1,8,32 --rounds 3 --sides bare,llama-cpp,candle,ort,ort-int8]
//! ```
//! Every side decodes the same 17-token chat prompt on SmolLM2-135M with the same threads,
//! context and batch size, greedily with end-of-generation tokens suppressed, so every sequence
//! makes the same number of tokens. Sides:
//! - `bare`: one `llama_decode` per step and an argmax per sequence, the floor of what any
//!   llama.cpp server can do;
//! - `llama-cpp`, `candle`: the engine (scheduling, sampling, detokenization, channels) over
//!   that backend, on the Q4_1 GGUF (on request also `candle-q8_0`, Q4_1 re-quantized to Q8_0
//!   at load, and `candle-scalar`, candle 0.11's own Q4_1 kernel);
//! - `ort`, `ort-int8` (feature `ort`): the engine over ONNX Runtime, on the f32 export of the
//!   same GGUF and its per-channel int8 variant (`cargo xtask models`; `ORT_DYLIB_PATH`), with
//!   the backend's KV copy counters over the decode phase.
//!
//! Figures are decode tokens/s (after every sequence has its first token), summed over
//! sequences, the median of `--rounds` runs with the sides alternating so that drift in machine
//! speed hits all alike; for the engine also its own share of its loop time (everything outside
//! the backend's forward step). A side that fails to load (say, no ONNX export) is reported and
//! left out.
//!
//! Each measurement runs in a child process of its own. In one process, the OpenMP thread team
//! left by one side makes libgomp count more threads than cores and switch every later team to
//! its throttled (sleeping) barriers: measured here, the engine dropped from 0.98× to 0.3× of
//! the bare loop at 2 threads when both ran in the same process. candle sets its pools' thread
//! count once per process, too.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::engine::{Event, SeqRequest};
use llm_pipeline::core::gguf::GgufMetadata;
use llm_pipeline::core::pipeline::EnginePipeline;
use llm_pipeline::core::sampling::SamplingParams;
use llm_pipeline::core::tokenizer::Tokenizer;
use llm_pipeline::llama_cpp::llama_cpp_2::context::params::LlamaContextParams;
use llm_pipeline::llama_cpp::llama_cpp_2::llama_batch::LlamaBatch;
use llm_pipeline::llama_cpp::llama_cpp_2::model::LlamaModel;
use llm_pipeline::llama_cpp::llama_cpp_2::model::params::LlamaModelParams;
use llm_pipeline::llama_cpp::llama_cpp_2::token::LlamaToken;
use llm_pipeline::llama_cpp::runtime;

const PROMPT: &str =
    "<|im_start|>user\nWrite a story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n";

struct Args {
    threads: u32,
    tokens: u32,
    batches: Vec<u32>,
    rounds: u32,
    sides: Vec<String>,
    /// Child mode: run one side once at this batch size and print its figures.
    only: Option<(String, u32)>,
    argv: Vec<String>,
}

/// The sides this bench was built with, and those it runs unless told otherwise.
fn built_sides() -> (Vec<String>, Vec<String>) {
    let mut default = vec!["bare".to_owned()];
    default.extend(
        llm_pipeline::BACKENDS
            .iter()
            .map(|(name, _)| (*name).to_owned()),
    );
    let mut built = default.clone();
    if default.iter().any(|s| s == "ort") {
        default.push("ort-int8".to_owned());
        built.push("ort-int8".to_owned());
    }
    if default.iter().any(|s| s == "candle") {
        // candle's other GGUF kernel choices, for comparison on request.
        built.extend(["candle-q8_0".to_owned(), "candle-scalar".to_owned()]);
    }
    (built, default)
}

fn args() -> Args {
    let mut a = Args {
        threads: 2,
        tokens: 64,
        batches: vec![1, 8, 32],
        rounds: 3,
        sides: built_sides().1,
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
            "--sides" => {
                let (built, _) = built_sides();
                a.sides = val().split(',').map(str::to_owned).collect();
                for side in &a.sides {
                    assert!(
                        built.contains(side),
                        "--sides: {side} is not built into this bench (built: {})",
                        built.join(",")
                    );
                }
            }
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
    llm_pipeline::core::testing::smollm2()
        .to_string_lossy()
        .into_owned()
}

/// The same limits for every side; the default KV budget (4 GiB) holds every batch here, and
/// each backend allocates only what its sequences use.
fn config(a: &Args, batch: u32, model: String) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(model)
        .with_max_model_len(512)
        .with_max_num_seqs(batch)
        .with_max_num_batched_tokens(512 * batch)
        .with_threads(a.threads)
        .with_sampling_threads(sampling_threads(a.threads))
        .validated()
        .expect("bench config")
}

/// `SAMPLING_THREADS` from the environment (1 measures the engine sampling on its own thread),
/// else the compute threads, as the server does.
fn sampling_threads(threads: u32) -> u32 {
    std::env::var("SAMPLING_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(threads)
}

/// Decode tokens/s of the bare loop: `batch` copies of the prompt, `tokens` greedy tokens each.
fn bare(a: &Args, batch: u32, prompt: &[u32], eog: &[u32]) -> f64 {
    let rt = runtime::runtime().expect("llama.cpp runtime");
    let model =
        LlamaModel::load_from_file(rt.backend(), model_path(), &LlamaModelParams::default())
            .expect("model loads");
    let cfg = config(a, batch, model_path());
    let layout = llm_pipeline::llama_cpp::kv_layout(&cfg, cfg.cpu_kv_cache_bytes, 23040).unwrap();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(layout.cells()))
        .with_n_batch(cfg.max_num_batched_tokens)
        .with_n_ubatch(cfg.max_num_batched_tokens.min(512))
        .with_n_seq_max(batch)
        .with_kv_unified(layout.unified())
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

/// One engine run's figures.
struct Figures {
    tokens_per_s: f64,
    ttft_ms: f64,
    /// The engine's own share of its loop time.
    own_share: f64,
    /// Side-specific figures for the table's last column.
    note: String,
}

/// Loads `side`'s pipeline for `batch` sequences; ONNX Runtime also hands back its KV copy
/// counters.
fn load(a: &Args, side: &str, batch: u32) -> llm_pipeline::core::Result<(EnginePipeline, Meter)> {
    #[cfg(feature = "ort")]
    if let Some(rest) = side.strip_prefix("ort") {
        use llm_pipeline::core::config::Quantization;
        let dir = llm_pipeline::core::testing::fixture(
            "LLM_PIPELINE_ONNX_SMOLLM2",
            "onnx/smollm2-135m-instruct",
        )
        .to_string_lossy()
        .into_owned();
        let mut cfg = config(a, batch, dir);
        if rest == "-int8" {
            cfg = cfg.with_quantization(Quantization::Int8);
        }
        let options = llm_pipeline::ort::OrtOptions::default();
        let (pipeline, meter) = llm_pipeline::ort::load_with(&cfg, &options)?;
        return Ok((pipeline, Some(meter)));
    }
    #[cfg(feature = "candle")]
    if let Some(kernels) = side.strip_prefix("candle-") {
        use llm_pipeline::candle::{GgufKernels, LoadOptions};
        let kernels = match kernels {
            "q8_0" => GgufKernels::RequantizeToQ8_0,
            _ => GgufKernels::Candle,
        };
        let options = LoadOptions::default().with_kernels(kernels);
        let pipeline = llm_pipeline::candle::load_with(&config(a, batch, model_path()), options)?;
        return Ok((pipeline, None));
    }
    Ok((
        llm_pipeline::load(side, &config(a, batch, model_path()))?,
        None,
    ))
}

#[cfg(feature = "ort")]
type Meter = Option<llm_pipeline::ort::KvCopyMeter>;
#[cfg(not(feature = "ort"))]
type Meter = Option<std::convert::Infallible>;

/// What the meter counted between two snapshots, as the table's note.
#[cfg(feature = "ort")]
fn kv_note(meter: &Meter) -> impl FnOnce() -> String + use<> {
    let meter = meter.clone();
    let before = meter.as_ref().map(|m| m.snapshot());
    move || {
        let (Some(m), Some(b)) = (meter, before) else {
            return String::new();
        };
        let after = m.snapshot();
        let steps = (after.steps - b.steps).max(1);
        let calls = after.calls - b.calls;
        format!(
            "KV copy {:.0} µs/step, {:.2} MiB/step; {}/{} runs zero-copy",
            (after.copy_nanos - b.copy_nanos) as f64 / 1e3 / steps as f64,
            (after.copy_bytes - b.copy_bytes) as f64 / steps as f64 / (1024.0 * 1024.0),
            after.zero_copy_calls - b.zero_copy_calls,
            calls
        )
    }
}

#[cfg(not(feature = "ort"))]
fn kv_note(_meter: &Meter) -> impl FnOnce() -> String + use<> {
    String::new
}

/// Decode tokens/s through the engine over `side`: `batch` requests at once, greedy, EOS
/// suppressed.
fn engine(a: &Args, side: &str, batch: u32) -> llm_pipeline::core::Result<Figures> {
    let (pipeline, meter) = load(a, side, batch)?;
    let tokenizer = pipeline.tokenizer();
    let prompt = tokenizer.encode_prompt(PROMPT)?;
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
    let engine = pipeline.engine();
    let before = engine.stats();
    let start = Instant::now();
    let mut receivers = (0..batch)
        .map(|_| {
            engine.submit(SeqRequest {
                prompt: prompt.clone(),
                max_tokens: a.tokens,
                sampling: sampling.clone(),
                stop: Vec::new(),
                constraint: None,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Wait for every first token, then time the rest.
    let mut first = Duration::ZERO;
    for rx in &mut receivers {
        match rx.blocking_recv() {
            Some(Event::Token(_)) => first = first.max(start.elapsed()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let note = kv_note(&meter);
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
    Ok(Figures {
        tokens_per_s: f64::from(generated) / decode.as_secs_f64(),
        ttft_ms: first.as_secs_f64() * 1e3,
        own_share: own as f64 / step.max(1) as f64,
        note: note(),
    })
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

/// One child's figures: tokens/s, TTFT in ms, peak RSS in MiB, the engine's own share of its
/// loop time, and the side's note.
struct Child {
    tokens_per_s: f64,
    ttft_ms: f64,
    rss_mib: f64,
    own_share: f64,
    note: String,
}

/// Runs one side in a child process; `Err` carries why it failed.
fn child(a: &Args, side: &str, batch: u32) -> Result<Child, String> {
    let out = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(&a.argv[1..])
        .args(["--only", side, &batch.to_string()])
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().take(3).collect::<Vec<_>>();
        return Err(last.into_iter().rev().collect::<Vec<_>>().join(" / "));
    };
    let (numbers, note) = line.split_once(" NOTE ").unwrap_or((line, ""));
    let mut parts = numbers
        .split_whitespace()
        .map(|v| v.parse::<f64>().expect("number"));
    let mut next = || parts.next().unwrap_or(0.0);
    Ok(Child {
        tokens_per_s: next(),
        ttft_ms: next(),
        rss_mib: next(),
        own_share: next(),
        note: note.to_owned(),
    })
}

fn main() {
    let a = args();
    let rt = runtime::runtime().expect("runtime");
    if let Some((side, batch)) = &a.only {
        let figures = if side == "bare" {
            let meta = GgufMetadata::from_path(model_path())
                .expect("SmolLM2 GGUF (run `cargo xtask models`)");
            let tokenizer = Tokenizer::from_gguf(&meta).expect("tokenizer");
            let prompt = tokenizer.encode_prompt(PROMPT).expect("prompt encodes");
            let eog = tokenizer.special().end_of_generation.clone();
            Figures {
                tokens_per_s: bare(&a, *batch, &prompt, &eog),
                ttft_ms: 0.0,
                own_share: 0.0,
                note: String::new(),
            }
        } else {
            match engine(&a, side, *batch) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("{side}: {e}");
                    std::process::exit(1);
                }
            }
        };
        println!(
            "RESULT {} {} {} {} NOTE {}",
            figures.tokens_per_s,
            figures.ttft_ms,
            peak_rss_mib(),
            figures.own_share,
            figures.note
        );
        return;
    }
    println!(
        "SmolLM2-135M-Instruct (Q4_1 GGUF; ONNX f32/int8 exports of it), threads {}, {} tokens \
         per sequence, llama.cpp cpu variant {}, median of {} rounds, sides {}",
        a.threads,
        a.tokens,
        rt.cpu_variant.as_deref().unwrap_or("?"),
        a.rounds,
        a.sides.join(",")
    );
    println!(
        "| sequences | side | tok/s | / bare llama-cpp-2 | TTFT ms | peak RSS MiB | engine's own time per step | notes |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|");
    let mut failed: Vec<String> = Vec::new();
    for &batch in &a.batches {
        let mut runs: Vec<Vec<Child>> = a.sides.iter().map(|_| Vec::new()).collect();
        for _ in 0..a.rounds {
            for (side, runs) in a.sides.iter().zip(&mut runs) {
                if failed.contains(side) {
                    continue;
                }
                match child(&a, side, batch) {
                    Ok(c) => runs.push(c),
                    Err(why) => {
                        eprintln!("warning: {side} is left out: {why}");
                        failed.push(side.clone());
                    }
                }
            }
        }
        let median = |runs: &mut Vec<Child>| -> Option<Child> {
            if runs.is_empty() {
                return None;
            }
            runs.sort_by(|x, y| x.tokens_per_s.total_cmp(&y.tokens_per_s));
            let rss = runs.iter().map(|c| c.rss_mib).fold(0.0, f64::max);
            let mut m = runs.swap_remove(runs.len() / 2);
            m.rss_mib = rss;
            Some(m)
        };
        let medians: Vec<Option<Child>> = runs.iter_mut().map(median).collect();
        let bare = a
            .sides
            .iter()
            .zip(&medians)
            .find(|(side, _)| *side == "bare")
            .and_then(|(_, m)| m.as_ref().map(|m| m.tokens_per_s));
        for (side, m) in a.sides.iter().zip(&medians) {
            let Some(m) = m else { continue };
            let ratio =
                bare.map_or_else(|| "–".to_owned(), |b| format!("{:.3}", m.tokens_per_s / b));
            let (ttft, share) = if side == "bare" {
                ("–".to_owned(), "–".to_owned())
            } else {
                (
                    format!("{:.0}", m.ttft_ms),
                    format!("{:.2}%", m.own_share * 100.0),
                )
            };
            println!(
                "| {batch} | {side} | {:.1} | {ratio} | {ttft} | {:.0} | {share} | {} |",
                m.tokens_per_s, m.rss_mib, m.note
            );
        }
    }
}
