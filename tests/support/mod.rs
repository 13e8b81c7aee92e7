//! The SmolLM2 model and small configurations over it, shared by the end-to-end and HTTP tests.

use std::path::PathBuf;

use llm_pipeline::core::config::PipelineConfig;

/// The SmolLM2 GGUF: `$LLM_PIPELINE_SMOLLM2`, or the xtask cache.
pub(crate) fn smollm2() -> PathBuf {
    let path = std::env::var_os("LLM_PIPELINE_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache/llm-pipeline/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask models` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// A small configuration: 2 threads, `seqs` sequences of `max_model_len` tokens.
pub(crate) fn config(max_model_len: u32, seqs: u32) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(smollm2().to_string_lossy())
        .with_max_model_len(max_model_len)
        .with_max_num_seqs(seqs)
        .with_max_num_batched_tokens(max_model_len.max(512))
        .with_threads(2)
        .with_cpu_kv_cache_bytes(
            u64::from(max_model_len.div_ceil(256) * 256) * u64::from(seqs) * 24 * 1024,
        )
        .validated()
        .expect("a valid test configuration")
}
