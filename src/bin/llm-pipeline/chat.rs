//! `llm-pipeline chat`: one streamed answer to a prompt, or a conversation on the terminal.
//!
//! Greedy by default (temperature 0), so the same prompt gives the same answer. Usage, speed
//! and price go to stderr after each answer; the answer alone goes to stdout.

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::Result;
use futures::StreamExt;
use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline::core::pipeline::{EnginePipeline, Pipeline};

use crate::ModelArgs;

/// `chat`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct ChatArgs {
    /// The question; without one, a conversation is read line by line from stdin (an empty
    /// line or end of input ends it)
    prompt: Option<String>,
    /// A system message opening the conversation
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// The most tokens per answer
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_tokens: u32,
    /// Sampling temperature (0: greedy)
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    temperature: f32,
    /// Seed of the sampler
    #[arg(long, default_value_t = 0, value_name = "N")]
    seed: i64,
    #[command(flatten)]
    model: ModelArgs,
}

/// A configuration for one conversation: one sequence needs one sequence's KV cache, not a
/// server's pool, unless the operator set the budget.
pub(crate) fn for_few_sequences(mut config: PipelineConfig, seqs: u32) -> PipelineConfig {
    if std::env::var_os("CPU_KV_CACHE_SPACE").is_none() {
        let seqs = config.max_num_seqs.min(seqs);
        let bytes = u64::from(seqs) * u64::from(config.max_model_len) * 64 * 1024;
        config = config
            .with_max_num_seqs(seqs)
            .with_cpu_kv_cache_bytes(bytes);
    }
    config
}

pub(crate) async fn run(args: ChatArgs) -> Result<()> {
    let config = for_few_sequences(args.model.config()?, 4);
    let loading = Instant::now();
    let model_id = config.model_id.clone();
    let pipeline = llm_pipeline::load_async(&args.model.backend, config).await?;
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
    if let Some(prompt) = &args.prompt {
        messages.push(ChatMessage::user(prompt.clone()));
        answer(&pipeline, &args, messages).await?;
        return Ok(());
    }
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        messages.push(ChatMessage::user(line.trim().to_owned()));
        let text = answer(&pipeline, &args, messages.clone()).await?;
        messages.push(ChatMessage::assistant(text));
    }
}

/// Streams one answer to stdout and returns its text.
async fn answer(
    pipeline: &EnginePipeline,
    args: &ChatArgs,
    messages: Vec<ChatMessage>,
) -> Result<String> {
    let request = ChatCompletionRequest::new("", messages)
        .with_max_tokens(args.max_tokens)
        .with_temperature(args.temperature)
        .with_seed(args.seed)
        .streaming_with_usage();
    let start = Instant::now();
    let mut first_token = None;
    let mut text = String::new();
    let mut stream = pipeline.chat_stream(request).await?;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        for choice in &chunk.choices {
            if let Some(piece) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                first_token.get_or_insert_with(|| start.elapsed());
                write!(stdout, "{piece}")?;
                stdout.flush()?;
                text.push_str(piece);
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
                let show = |p: Option<_>| {
                    p.map_or_else(
                        || "-".to_owned(),
                        |p: llm_pipeline::core::pricing::Price| p.to_string(),
                    )
                };
                eprintln!(
                    "price: quote {} (max_tokens {}), charged {}",
                    show(m.price_quote),
                    args.max_tokens,
                    show(m.price_charged)
                );
            }
        }
    }
    Ok(text)
}
