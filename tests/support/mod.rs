//! The SmolLM2 model and small configurations over it, shared by the end-to-end and HTTP tests.

use llm_pipeline::core::config::PipelineConfig;
pub(crate) use llm_pipeline::core::testing::smollm2;

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
