//! Fixtures: the ONNX exports `cargo xtask` produces, and configurations over them.

use std::path::PathBuf;

use llm_pipeline_core::config::PipelineConfig;

/// An export directory: `$var`, or `onnx/{name}` in the xtask cache.
fn fixture(var: &str, name: &str) -> PathBuf {
    let dir = llm_pipeline_core::testing::fixture(var, &format!("onnx/{name}"));
    assert!(
        dir.join("model.onnx").is_file(),
        "{} holds no model.onnx: run `cargo xtask models` (or `cargo xtask test`)",
        dir.display()
    );
    dir
}

/// The tiny random-weight Llama export.
pub(crate) fn tiny() -> PathBuf {
    fixture("LLM_PIPELINE_ONNX_TINY", "tiny-llama")
}

/// SmolLM2-135M-Instruct exported from the GGUF.
pub(crate) fn smollm2() -> PathBuf {
    fixture("LLM_PIPELINE_ONNX_SMOLLM2", "smollm2-135m-instruct")
}

/// A small configuration: 2 threads, `seqs` sequences of up to `max_model_len` tokens.
pub(crate) fn config(model: &std::path::Path, max_model_len: u32, seqs: u32) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(model.to_string_lossy())
        .with_max_model_len(max_model_len)
        .with_max_num_seqs(seqs)
        .with_max_num_batched_tokens(max_model_len.max(512))
        .with_threads(2)
        .with_cpu_kv_cache_bytes(1 << 30)
        .validated()
        .expect("a valid test configuration")
}
