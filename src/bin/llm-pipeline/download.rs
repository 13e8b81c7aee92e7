//! `llm-pipeline download`: fetch a model into `MODEL_DIR` without loading it.
//!
//! The files are those a backend reads (safetensors with `config.json`,
//! `generation_config.json` and the tokenizer files; or one ONNX export; or one GGUF), in the
//! hub cache layout (`models--org--name/snapshots/<commit>/`). `HF_TOKEN`, `HF_ENDPOINT` and
//! `HF_HUB_OFFLINE` are honoured; an interrupted download resumes.

use anyhow::Result;
use llm_pipeline::core::model::ModelSource;

use crate::vars::PipelineFlags;

/// `download`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DownloadArgs {
    #[command(flatten)]
    pipeline: PipelineFlags,
}

pub(crate) fn run(args: &DownloadArgs) -> Result<()> {
    let config = args.pipeline.config()?;
    anyhow::ensure!(
        !config.model_id.is_empty(),
        "no model: pass --model ORG/NAME or set MODEL_ID"
    );
    let path = ModelSource::parse(&config.model_id).fetch(&config)?;
    println!("{}", path.display());
    Ok(())
}
