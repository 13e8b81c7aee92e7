//! GPU throughput of one backend: N concurrent greedy chat sequences of fixed length through the
//! engine, as one JSON line per concurrency level.
//!
//! ```text
//! gpu_bench --backend candle|llama-cpp|ort --model PATH [--device cuda|cpu]
//!     [--clients 1,32,128] [--tokens 128] [--prompts prompts.json] [--ban 128001,128009]
//!     [--max-model-len 1024] [--label NAME]
//! ```
//! `cargo xtask gpu-check` builds it with `--features candle,ort,cuda` (and, on request,
//! `llama-cpp,cuda`) and ships it to the GPU machine with the scripts that run it. Each level
//! starts `C` streamed requests at once: client `c` asks `prompts[c % len]` (a JSON list of
//! user messages, the same file the Hugging Face peer reads), greedy, `max_tokens` = `--tokens`,
//! with the end-of-generation ids of `--ban` biased to -100 so that every answer has the same
//! length. Figures: aggregate completion tokens/s (all tokens over the wall time of the level),
//! median and p99 time to first token, median time per output token after the first, and the
//! device's peak memory in use during the level less what was in use before the model loaded
//! (sampled from `nvidia-smi` every 100 ms; `null` where it does not answer). The engine's
//! settings come from the environment (`GPU_MEMORY_UTILIZATION` among them), with
//! `MAX_NUM_SEQS` raised to the largest level so that every client runs at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline::core::pipeline::{EnginePipeline, Pipeline};

/// Command-line settings.
#[derive(Debug, Clone)]
struct Args {
    backend: String,
    model: String,
    device: String,
    clients: Vec<u32>,
    tokens: u32,
    prompts: Vec<String>,
    ban: Vec<u32>,
    max_model_len: u32,
    label: String,
}

fn args() -> Result<Args> {
    let mut a = Args {
        backend: "candle".into(),
        model: String::new(),
        device: "cuda".into(),
        clients: vec![1, 32, 128],
        tokens: 128,
        prompts: vec!["Write a story about a lighthouse keeper.".into()],
        ban: Vec::new(),
        max_model_len: 1024,
        label: String::new(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let val = it.next().with_context(|| format!("{flag} needs a value"))?;
        let list = |v: &str| -> Result<Vec<u32>> {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().with_context(|| format!("{flag}: `{s}`")))
                .collect()
        };
        match flag.as_str() {
            "--backend" => a.backend = val.clone(),
            "--model" => a.model = val.clone(),
            "--device" => a.device = val.clone(),
            "--clients" => a.clients = list(val)?,
            "--tokens" => a.tokens = val.parse().context("--tokens")?,
            "--ban" => a.ban = list(val)?,
            "--max-model-len" => a.max_model_len = val.parse().context("--max-model-len")?,
            "--label" => a.label = val.clone(),
            "--prompts" => {
                let text = std::fs::read_to_string(val).with_context(|| val.clone())?;
                a.prompts = serde_json::from_str(&text).context("--prompts: a JSON list")?;
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if a.model.is_empty() || a.clients.is_empty() || a.prompts.is_empty() {
        bail!("usage: gpu_bench --backend candle|llama-cpp|ort --model PATH [--clients 1,32,128]");
    }
    if a.label.is_empty() {
        a.label = a.backend.clone();
    }
    Ok(a)
}

/// Loads the pipeline of the chosen backend on the chosen device.
#[cfg_attr(
    not(any(feature = "candle", feature = "llama-cpp", feature = "ort")),
    allow(unused_variables)
)]
fn load(a: &Args, config: &PipelineConfig) -> Result<EnginePipeline> {
    let cuda = match a.device.as_str() {
        "cuda" => true,
        "cpu" => false,
        other => bail!("--device {other}: cuda or cpu"),
    };
    match a.backend.as_str() {
        #[cfg(feature = "candle")]
        "candle" => {
            use llm_pipeline::candle::{DeviceChoice, LoadOptions};
            let device = if cuda {
                DeviceChoice::Cuda(0)
            } else {
                DeviceChoice::Cpu
            };
            Ok(llm_pipeline::candle::load_with(
                config,
                LoadOptions::default().with_device(device),
            )?)
        }
        #[cfg(feature = "llama-cpp")]
        "llama-cpp" => {
            if !cuda {
                tracing::warn!(
                    "llama.cpp places layers on every GPU it finds; --device is ignored"
                );
            }
            Ok(llm_pipeline::llama_cpp::load(config)?)
        }
        #[cfg(feature = "ort")]
        "ort" => {
            use llm_pipeline::ort::{Device, OrtOptions};
            let device = if cuda {
                Device::Cuda { device_id: 0 }
            } else {
                Device::Cpu
            };
            let options = OrtOptions::from_env()?.with_device(device);
            Ok(llm_pipeline::ort::load_with(config, &options)?.0)
        }
        other => bail!("backend `{other}` is not built into this binary (see its features)"),
    }
}

/// The device's memory in use in MiB, from `nvidia-smi` (GPU 0).
fn gpu_used_mib() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.used",
            "--format=csv,noheader,nounits",
            "-i",
            "0",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Samples the device's memory in use every 100 ms; keeps the peak since the last reset.
#[derive(Debug)]
struct MemorySampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl MemorySampler {
    fn start() -> Option<Self> {
        let first = gpu_used_mib()?;
        let peak = Arc::new(AtomicU64::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(mib) = gpu_used_mib() {
                    p.fetch_max(mib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Some(Self { peak, stop })
    }

    /// The peak since the last call, then resets to the current use.
    fn take_peak(&self) -> u64 {
        let now = gpu_used_mib().unwrap_or(0);
        self.peak.swap(now, Ordering::Relaxed).max(now)
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request's timings.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ttft: Duration,
    total: Duration,
    tokens: u32,
}

fn request(a: &Args, prompt: &str, max_tokens: u32) -> ChatCompletionRequest {
    let mut request = ChatCompletionRequest::new("", vec![ChatMessage::user(prompt)])
        .with_temperature(0.0)
        .with_max_tokens(max_tokens)
        .streaming_with_usage();
    for &token in &a.ban {
        request = request.with_logit_bias(token, -100.0);
    }
    request
}

async fn one(pipeline: &EnginePipeline, request: ChatCompletionRequest) -> Result<Sample> {
    let start = Instant::now();
    let mut first = None;
    let mut tokens = 0;
    let mut stream = pipeline.chat_stream(request).await?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // Tokens whose text is still incomplete (a split UTF-8 character) send no chunk: the
        // first chunk with text marks the first token.
        let has_text = chunk
            .choices
            .iter()
            .any(|c| c.delta.content.as_deref().is_some_and(|t| !t.is_empty()));
        if first.is_none() && has_text {
            first = Some(start.elapsed());
        }
        if let Some(Some(usage)) = chunk.usage {
            tokens = usage.completion_tokens;
        }
    }
    let total = start.elapsed();
    Ok(Sample {
        ttft: first.unwrap_or(total),
        total,
        tokens,
    })
}

/// The `q` quantile (nearest rank) in milliseconds; 0 for no values.
fn percentile_ms(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

async fn level(a: &Args, pipeline: &EnginePipeline, clients: u32) -> Result<serde_json::Value> {
    let started = Instant::now();
    let runs = (0..clients).map(|c| {
        let prompt = &a.prompts[c as usize % a.prompts.len()];
        one(pipeline, request(a, prompt, a.tokens))
    });
    let samples: Vec<Sample> = futures::future::join_all(runs)
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let wall = started.elapsed().as_secs_f64();
    let tokens: u64 = samples.iter().map(|s| u64::from(s.tokens)).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ttft: Vec<f64> = samples.iter().map(|s| ms(s.ttft)).collect();
    let tpot: Vec<f64> = samples
        .iter()
        .filter(|s| s.tokens > 1)
        .map(|s| ms(s.total - s.ttft) / f64::from(s.tokens - 1))
        .collect();
    Ok(serde_json::json!({
        "clients": clients,
        "tokens": tokens,
        "short_answers": samples.iter().filter(|s| s.tokens != a.tokens).count(),
        "wall_s": wall,
        "tokens_per_s": tokens as f64 / wall,
        "ttft_p50_ms": percentile_ms(ttft.clone(), 0.5),
        "ttft_p99_ms": percentile_ms(ttft, 0.99),
        "tpot_p50_ms": percentile_ms(tpot, 0.5),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = args()?;
    let sampler = MemorySampler::start();
    let baseline = gpu_used_mib();
    let most = a.clients.iter().copied().max().unwrap_or(1);
    let config = PipelineConfig::from_env()?
        .with_model_id(a.model.clone())
        .with_max_model_len(a.max_model_len)
        .with_max_num_seqs(most)
        .with_max_num_batched_tokens(a.max_model_len.max(4096))
        .validated()?;
    let loading = Instant::now();
    let pipeline = load(&a, &config)?;
    let load_s = loading.elapsed().as_secs_f64();
    // Warm-up: kernel loading, cuBLAS handles and allocator pools are not part of any level.
    let warm = Args {
        tokens: 4,
        ..a.clone()
    };
    level(&warm, &pipeline, 2).await?;
    if let Some(s) = &sampler {
        s.take_peak();
    }
    for &clients in &a.clients {
        let mut row = level(&a, &pipeline, clients).await?;
        let peak = sampler.as_ref().map(MemorySampler::take_peak);
        row["system"] = a.label.clone().into();
        row["backend"] = a.backend.clone().into();
        row["load_s"] = load_s.into();
        row["gpu_mem_peak_mib"] = peak.into();
        row["gpu_mem_used_mib"] = peak.zip(baseline).map(|(p, b)| p.saturating_sub(b)).into();
        println!("{row}");
    }
    Ok(())
}
