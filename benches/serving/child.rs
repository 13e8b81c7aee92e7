//! What runs inside our child processes: the pipeline driven in-process (`--child engine`) and
//! the HTTP server (`--child serve PORT BACKEND`).

use std::time::Duration;

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::pipeline::{EnginePipeline, Pipeline};
use llm_pipeline::server::{ServeOptions, ServerConfig, ServerState, router, serve};

use crate::load::{self, Target};
use crate::{Args, KV_BYTES_PER_CELL, model_path};

/// The backends served over HTTP: every one built in. llama.cpp and candle load the GGUF;
/// ONNX Runtime loads the export `cargo xtask models` makes of it (`LLM_PIPELINE_ONNX_SMOLLM2`)
/// with its weights in per-channel int8 (`USE_8BIT`), its fastest form on a CPU.
pub(crate) fn backends() -> impl Iterator<Item = &'static str> {
    llm_pipeline::BACKENDS.iter().map(|(name, _)| *name)
}

/// The same configuration for every system: all clients may run at once, with `--kv-cells` as
/// the KV memory where it is given (in SmolLM2's f16 cells; ONNX Runtime keeps f32 keys and
/// values, counted twice, so the same bytes hold a quarter of the cells). The rest comes
/// from the environment as in a server (`ENABLE_PREFIX_CACHING=false` turns prefix caching off).
fn config(a: &Args, backend: &str) -> PipelineConfig {
    let model = if backend == "ort" {
        llm_pipeline::core::testing::fixture(
            "LLM_PIPELINE_ONNX_SMOLLM2",
            "onnx/smollm2-135m-instruct",
        )
        .to_string_lossy()
        .into_owned()
    } else {
        model_path()
    };
    let config = PipelineConfig::from_env()
        .expect("the environment's settings parse")
        .with_model_id(model)
        .with_max_model_len(a.max_model_len)
        .with_max_num_seqs(a.max_clients())
        .with_max_num_batched_tokens(2048)
        .with_threads(a.threads);
    let config = match a.kv_cells {
        Some(cells) => config.with_cpu_kv_cache_bytes(u64::from(cells) * KV_BYTES_PER_CELL),
        None => config,
    };
    let config = if backend == "ort" {
        config.with_quantization(llm_pipeline::core::config::Quantization::Int8)
    } else {
        config
    };
    config.validated().expect("a valid bench configuration")
}

fn load_backend(a: &Args, backend: &str) -> EnginePipeline {
    llm_pipeline::load(backend, &config(a, backend)).expect("SmolLM2 loads")
}

/// The pipeline without HTTP: one `REPORT {json}` line per workload, with the engine's own
/// share of its loop time (outside the backend) during that workload.
pub(crate) fn engine(a: &Args) {
    let pipeline = load_backend(a, "llama-cpp");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(load::run(&Target::Pipeline(&pipeline), &load::WARM_UP));
    for w in a.workloads() {
        let before = pipeline.stats().expect("the engine's counters");
        let mut report = runtime.block_on(load::run(&Target::Pipeline(&pipeline), &w));
        // The counters of a loop iteration are added after it has sent its events.
        std::thread::sleep(Duration::from_millis(50));
        let after = pipeline.stats().expect("the engine's counters");
        let step = after.step_nanos - before.step_nanos;
        let backend = after.backend_nanos - before.backend_nanos;
        report.engine_share = Some(step.saturating_sub(backend) as f64 / step.max(1) as f64);
        report.peak_rss_mib = load::peak_rss_mib(std::process::id());
        println!("REPORT {}", report.to_json());
    }
}

/// The HTTP server with `backend` on `127.0.0.1:port` until killed.
pub(crate) fn serve_http(a: &Args, port: u16, backend: &str) {
    let pipeline = load_backend(a, backend);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the bench port is free");
        let server = ServerConfig::default()
            .with_model_id(pipeline.model_id().to_owned())
            .with_shutdown_grace(Duration::from_secs(1));
        let options = ServeOptions::from(&server);
        serve(
            listener,
            router(ServerState::new(pipeline, server)),
            std::future::pending::<()>(),
            options,
        )
        .await
        .expect("the server runs");
    });
}
