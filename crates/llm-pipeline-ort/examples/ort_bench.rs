//! Decode throughput of the ONNX Runtime backend through the engine, and its KV copy cost.
//!
//! ```text
//! ORT_DYLIB_PATH=... cargo run --release -p llm-pipeline-ort --example ort_bench \
//!     [-- --threads 2 --tokens 64 --batches 1,8,32 --rounds 3 --model DIR --int8]
//! ```
//! The same measurement as the llama.cpp throughput bench (`benches/throughput.rs`): the
//! SmolLM2 export (`cargo xtask models`), a 17-token prompt, greedy decoding with
//! end-of-generation tokens suppressed so every sequence makes the same number of tokens, all
//! sequences submitted at once. tok/s is decode throughput summed over sequences after every
//! sequence has its first token. The KV copy figures are the backend's own counters over the
//! decode phase: gather/scatter time and bytes per engine step, and the share of graph runs
//! that fed the previous outputs back without any copy. `--int8` loads `model_quantized.onnx`
//! (`USE_8BIT`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use llm_pipeline_core::config::{PipelineConfig, Quantization};
use llm_pipeline_core::engine::{Event, SeqRequest};
use llm_pipeline_core::sampling::SamplingParams;
use llm_pipeline_ort::{KvCopyStats, OrtOptions};

const PROMPT: &str =
    "<|im_start|>user\nWrite a story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n";

struct Args {
    threads: u32,
    tokens: u32,
    batches: Vec<u32>,
    rounds: u32,
    model: PathBuf,
    quantization: Quantization,
}

fn args() -> Args {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let mut a = Args {
        threads: 2,
        tokens: 64,
        batches: vec![1, 8, 32],
        rounds: 3,
        model: std::env::var_os("LLM_PIPELINE_ONNX_SMOLLM2").map_or_else(
            || home.join(".cache/llm-pipeline/models/onnx/smollm2-135m-instruct"),
            PathBuf::from,
        ),
        quantization: Quantization::AsStored,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--threads" => a.threads = val().parse().expect("--threads N"),
            "--tokens" => a.tokens = val().parse().expect("--tokens N"),
            "--rounds" => a.rounds = val().parse().expect("--rounds N"),
            "--model" => a.model = PathBuf::from(val()),
            "--int8" => a.quantization = Quantization::Int8,
            "--batches" => {
                a.batches = val()
                    .split(',')
                    .map(|b| b.parse().expect("--batches 1,8,32"))
                    .collect();
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// One round's figures.
struct Round {
    tokens_per_s: f64,
    ttft_ms: f64,
    decode: KvCopyStats,
}

fn delta(after: KvCopyStats, before: KvCopyStats) -> KvCopyStats {
    KvCopyStats {
        steps: after.steps - before.steps,
        calls: after.calls - before.calls,
        zero_copy_calls: after.zero_copy_calls - before.zero_copy_calls,
        copy_nanos: after.copy_nanos - before.copy_nanos,
        copy_bytes: after.copy_bytes - before.copy_bytes,
        run_nanos: after.run_nanos - before.run_nanos,
        max_step_copy_nanos: after.max_step_copy_nanos,
    }
}

fn round(a: &Args, batch: u32) -> anyhow::Result<Round> {
    let config = PipelineConfig::default()
        .with_model_id(a.model.to_string_lossy())
        .with_max_model_len(512)
        .with_max_num_seqs(batch)
        .with_max_num_batched_tokens(512 * batch)
        .with_threads(a.threads)
        .with_cpu_kv_cache_bytes(4 << 30)
        .with_quantization(a.quantization)
        .validated()?;
    let (pipeline, meter) = llm_pipeline_ort::load_with(&config, &OrtOptions::default())?;
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
    let start = Instant::now();
    let mut receivers = (0..batch)
        .map(|_| {
            engine.submit(SeqRequest {
                prompt: prompt.clone(),
                max_tokens: a.tokens,
                sampling: sampling.clone(),
                stop: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut first = Duration::ZERO;
    for rx in &mut receivers {
        match rx.blocking_recv() {
            Some(Event::Token(_)) => first = first.max(start.elapsed()),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    let before = meter.snapshot();
    let mut generated = 0u32;
    for rx in &mut receivers {
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Token(_) => generated += 1,
                Event::Finished(_) => {}
                Event::Failed { message } => anyhow::bail!("{message}"),
            }
        }
    }
    let decode_time = start.elapsed() - first;
    anyhow::ensure!(generated == batch * (a.tokens - 1), "generated {generated}");
    Ok(Round {
        tokens_per_s: f64::from(generated) / decode_time.as_secs_f64(),
        ttft_ms: first.as_secs_f64() * 1e3,
        decode: delta(meter.snapshot(), before),
    })
}

fn main() -> anyhow::Result<()> {
    let a = args();
    println!(
        "model {} ({:?}), {} intra-op threads, {} tokens per sequence, median of {} rounds",
        a.model.display(),
        a.quantization,
        a.threads,
        a.tokens,
        a.rounds
    );
    println!(
        "| sequences | tok/s | TTFT ms | KV copy µs/step | KV copy MiB/step | copy share | zero-copy runs | largest step copy ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &batch in &a.batches {
        let mut rounds = (0..a.rounds)
            .map(|_| round(&a, batch))
            .collect::<anyhow::Result<Vec<_>>>()?;
        rounds.sort_by(|x, y| x.tokens_per_s.total_cmp(&y.tokens_per_s));
        let r = &rounds[rounds.len() / 2];
        let d = &r.decode;
        println!(
            "| {batch} | {:.1} | {:.0} | {:.0} | {:.2} | {:.2}% | {}/{} | {:.2} |",
            r.tokens_per_s,
            r.ttft_ms,
            d.copy_micros_per_step(),
            d.copy_bytes_per_step() / (1024.0 * 1024.0),
            d.copy_fraction() * 100.0,
            d.zero_copy_calls,
            d.calls,
            d.max_step_copy_nanos as f64 / 1e6
        );
    }
    Ok(())
}
