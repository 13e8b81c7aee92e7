//! Streams one chat answer to stdout, then usage, speed and price to stderr.
//!
//! ```text
//! cargo run --release --example chat -- [--model PATH_OR_HF_ID] [--backend auto|llama-cpp|candle|ort]
//!     [--max-tokens N] [--temperature T] [--seed S] [--system TEXT] "PROMPT"
//! ```
//! Greedy by default (temperature 0), so the same prompt gives the same answer. Livepeer's
//! environment variables (`MODEL_ID`, `MAX_MODEL_LEN`, `MAX_NUM_SEQS`, …) are read too; flags win.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline::core::pipeline::Pipeline;
use llm_pipeline::core::pricing::Price;

#[derive(Debug)]
struct Args {
    prompt: String,
    model: Option<String>,
    backend: String,
    max_tokens: u32,
    temperature: f32,
    seed: i64,
    system: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        prompt: "What is the capital of France?".into(),
        model: None,
        backend: llm_pipeline::AUTO.into(),
        max_tokens: 256,
        temperature: 0.0,
        seed: 0,
        system: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--model" => args.model = Some(value("--model")?),
            "--backend" => args.backend = value("--backend")?,
            "--max-tokens" => args.max_tokens = value("--max-tokens")?.parse()?,
            "--temperature" => args.temperature = value("--temperature")?.parse()?,
            "--seed" => args.seed = value("--seed")?.parse()?,
            "--system" => args.system = Some(value("--system")?),
            "-h" | "--help" => {
                println!(
                    "usage: chat [--model PATH_OR_HF_ID] [--backend auto|NAME] [--max-tokens N] \
                     [--temperature T] [--seed S] [--system TEXT] PROMPT"
                );
                std::process::exit(0);
            }
            flag if flag.starts_with("--") => bail!("unknown flag {flag}"),
            prompt => args.prompt = prompt.to_owned(),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    let mut config = PipelineConfig::from_env()?;
    if let Some(model) = &args.model {
        config = config.with_model_id(model);
    }
    if config.model_id.is_empty() {
        bail!("no model: pass --model PATH_OR_HF_ID or set MODEL_ID");
    }
    if std::env::var_os("CPU_KV_CACHE_SPACE").is_none() {
        // One answer needs one sequence's cache, not the server's default pool.
        let seqs = config.max_num_seqs.min(4);
        let bytes = u64::from(seqs) * u64::from(config.max_model_len) * 64 * 1024;
        config = config
            .with_max_num_seqs(seqs)
            .with_cpu_kv_cache_bytes(bytes);
    }
    let loading = Instant::now();
    let model_id = config.model_id.clone();
    let pipeline = llm_pipeline::load_async(&args.backend, config).await?;
    eprintln!(
        "loaded {model_id} in {:.2?} with {} on {}",
        loading.elapsed(),
        pipeline.backend().unwrap_or_default(),
        pipeline.engine().backend_info().description
    );
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::system(system.clone()));
    }
    messages.push(ChatMessage::user(args.prompt.clone()));
    let request = ChatCompletionRequest::new("", messages)
        .with_max_tokens(args.max_tokens)
        .with_temperature(args.temperature)
        .with_seed(args.seed)
        .streaming_with_usage();
    let start = Instant::now();
    let mut first_token = None;
    let mut stream = pipeline.chat_stream(request).await?;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        for choice in &chunk.choices {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                first_token.get_or_insert_with(|| start.elapsed());
                write!(stdout, "{text}")?;
                stdout.flush()?;
            }
        }
        if let Some(usage) = chunk.usage() {
            let elapsed = start.elapsed();
            let ttft = first_token.unwrap_or(elapsed);
            let decode = elapsed.saturating_sub(ttft).as_secs_f64();
            let decode_tps =
                f64::from(usage.completion_tokens.saturating_sub(1)) / decode.max(1e-9);
            println!();
            eprintln!(
                "usage: {} prompt + {} completion = {} tokens; time to first token {:.0} ms; \
                 {:.1} tokens/s decode; total {:.2?}",
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
                ttft.as_secs_f64() * 1e3,
                decode_tps,
                elapsed
            );
            if let Some(m) = &chunk.metadata {
                let show = |p: Option<Price>| p.map_or_else(|| "-".to_owned(), |p| p.to_string());
                eprintln!(
                    "price: quote {} (max_tokens {}), charged {}",
                    show(m.price_quote),
                    args.max_tokens,
                    show(m.price_charged)
                );
            }
        }
    }
    Ok(())
}
