//! Fetches a model from the Hugging Face Hub into `MODEL_DIR` without loading it, and prints
//! where it is: what an operator runs before starting a server that must not download.
//!
//! ```text
//! cargo run --release --example download -- [--model ORG/NAME[:QUANT]] [--model-dir DIR]
//! ```
//! The files are those a backend reads (safetensors with `config.json`,
//! `generation_config.json` and the tokenizer files; or one ONNX export; or one GGUF), in the
//! hub cache layout (`models--org--name/snapshots/<commit>/`). `HF_TOKEN`, `HF_ENDPOINT` and
//! `HF_HUB_OFFLINE` are honoured; an interrupted download resumes.

use anyhow::{Context, Result, bail};
use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::model::ModelSource;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = PipelineConfig::from_env()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--model" => config = config.with_model_id(value("--model")?),
            "--model-dir" => config = config.with_model_dir(value("--model-dir")?),
            "-h" | "--help" => {
                println!("usage: download [--model ORG/NAME[:QUANT]] [--model-dir DIR]");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if config.model_id.is_empty() {
        bail!("no model: pass --model ORG/NAME or set MODEL_ID");
    }
    let path = ModelSource::parse(&config.model_id).fetch(&config)?;
    println!("{}", path.display());
    Ok(())
}
