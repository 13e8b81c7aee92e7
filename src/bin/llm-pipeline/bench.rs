//! `llm-pipeline bench`: a quick decoding-speed probe on the configured model and hardware.
//!
//! One sequence, then `--batch` sequences at once, each generating `--tokens` tokens from the
//! same kind of short prompt (greedy; an answer that ends early counts the tokens it has).
//! Prints tokens per second for both and the threads used. For comparisons against other
//! servers, the repository's serving bench is the tool; this answers "how fast is this machine
//! with this model".

use std::time::Instant;

use anyhow::Result;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline::core::pipeline::{EnginePipeline, Pipeline};

use crate::ModelArgs;

/// `bench`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Tokens each sequence generates
    #[arg(long, default_value_t = 128, value_name = "N")]
    tokens: u32,
    /// Sequences in the batched run
    #[arg(long, default_value_t = 16, value_name = "N")]
    batch: u32,
    #[command(flatten)]
    model: ModelArgs,
}

pub(crate) async fn run(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(args.tokens > 0, "--tokens must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let config = crate::chat::for_few_sequences(args.model.config()?, args.batch);
    let threads = config.effective_threads();
    let model_id = config.model_id.clone();
    let pipeline = llm_pipeline::load_async(&args.model.backend, config).await?;
    println!(
        "{model_id} on {} ({}), {threads} threads",
        pipeline.backend().unwrap_or_default(),
        pipeline.engine().backend_info().description
    );
    // A warm-up answer: first-use costs (allocation, kernel choice) are not decoding speed.
    run_batch(&pipeline, 1, 8).await?;
    for n in [1, args.batch] {
        let (tokens, seconds) = run_batch(&pipeline, n, args.tokens).await?;
        println!(
            "{n:>4} sequence(s): {tokens} tokens in {seconds:.2} s = {:.1} tokens/s",
            f64::from(tokens) / seconds
        );
    }
    Ok(())
}

/// Runs `n` answers of `tokens` tokens at once; returns the tokens generated and the seconds.
async fn run_batch(pipeline: &EnginePipeline, n: u32, tokens: u32) -> Result<(u32, f64)> {
    let start = Instant::now();
    let answers = futures::future::try_join_all((0..n).map(|i| {
        let request = ChatCompletionRequest::new(
            "",
            vec![ChatMessage::user(format!(
                "Write a long story about a lighthouse keeper, number {i}."
            ))],
        )
        .with_max_tokens(tokens)
        .with_temperature(0.0);
        pipeline.chat(request)
    }))
    .await?;
    let generated = answers.iter().map(|a| a.usage.completion_tokens).sum();
    Ok((generated, start.elapsed().as_secs_f64()))
}
