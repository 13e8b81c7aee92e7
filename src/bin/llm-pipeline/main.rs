//! `llm-pipeline`: the program operators run. `serve` is the Livepeer runner and OpenAI server;
//! `chat`, `download` and `bench` are the tools around it.
//!
//! Every flag of a setting has the environment variable of Livepeer's `llm` runner (or one of
//! our own) beside it, so that a container's environment and a command line configure the same
//! things; `llm-pipeline serve --help` lists them with their defaults.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod chat;
mod download;
mod serve;
mod vars;

/// OpenAI-compatible chat completion and the Livepeer `llm` runner, over llama.cpp, candle and
/// ONNX Runtime.
#[derive(Debug, Parser)]
#[command(name = "llm-pipeline", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the model over HTTP: OpenAI's /v1/chat/completions and Livepeer's runner protocol
    /// (/llm, /health, /version, /hardware/info), optionally registered with an orchestrator.
    Serve(serve::ServeArgs),
    /// Ask the model: one answer to a prompt given as an argument, or a conversation read line
    /// by line from the terminal.
    Chat(chat::ChatArgs),
    /// Fetch a model from the Hugging Face Hub into the model folder without loading it, and
    /// print where it is.
    Download(download::DownloadArgs),
    /// Measure decoding speed: tokens per second for one sequence and for a batch.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Chat(_) | Command::Bench(_));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| if quiet { "warn" } else { "info" }.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Download(args) => download::run(&args),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                match command {
                    Command::Serve(args) => serve::run(args).await,
                    Command::Chat(args) => chat::run(args).await,
                    Command::Bench(args) => bench::run(args).await,
                    Command::Download(_) => unreachable!("handled above"),
                }
            }),
    }
}

/// The model flags every command shares: the backend and the pipeline's settings.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ModelArgs {
    /// The backend: `auto` chooses by the model's files (a GGUF goes to llama.cpp, safetensors to
    /// candle, an ONNX export to ONNX Runtime); or one of those this build has
    #[arg(long, env = "LLM_BACKEND", default_value = llm_pipeline::AUTO, value_name = "NAME")]
    backend: String,
    #[command(flatten)]
    pipeline: vars::PipelineFlags,
}

impl ModelArgs {
    /// The pipeline's configuration, with a model named.
    fn config(&self) -> Result<llm_pipeline::core::config::PipelineConfig> {
        let config = self.pipeline.config()?;
        anyhow::ensure!(
            !config.model_id.is_empty(),
            "no model: pass --model ID_OR_PATH or set MODEL_ID"
        );
        Ok(config)
    }
}
