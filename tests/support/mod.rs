//! The SmolLM2 model and small configurations over it, shared by the end-to-end and HTTP tests.

use std::path::PathBuf;

use llm_pipeline::core::config::PipelineConfig;

/// The xtask's model cache: `$LLM_PIPELINE_CACHE/models`, by default under `~/.cache`.
pub(crate) fn models_dir() -> PathBuf {
    std::env::var_os("LLM_PIPELINE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache/llm-pipeline")
        })
        .join("models")
}

/// A fixture: `$var` if set, else `cached` under [`models_dir`]; panics naming the xtask that
/// makes it when it is missing.
pub(crate) fn fixture(var: &str, cached: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| models_dir().join(cached), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask models` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// The SmolLM2 GGUF: `$LLM_PIPELINE_SMOLLM2`, or the xtask cache.
pub(crate) fn smollm2() -> PathBuf {
    fixture("LLM_PIPELINE_SMOLLM2", "SmolLM2-135M-Instruct.Q4_1.gguf")
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
