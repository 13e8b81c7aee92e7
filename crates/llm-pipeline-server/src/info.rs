//! The endpoints that describe the server rather than generate: models, health, version,
//! hardware, metrics, and the answers for unknown routes and methods.
//!
//! `/health` always answers 200 with `{"status": "IDLE" | "OK" | "LOADING" | "ERROR"}` (JSON:
//! go-livepeer reads the status only from a JSON body), as Livepeer's runner does, so that the
//! orchestrator reads the status from the body. `/hardware/info` and
//! `/hardware/stats` have Livepeer's shape, with GPU facts from NVML ([`crate::gpu`]) and empty
//! maps on machines without NVIDIA's driver.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use llm_pipeline_core::openai::{ModelCard, ModelList};
use llm_pipeline_core::pipeline::Pipeline;
use serde::Serialize;

use crate::error::ApiError;
use crate::gpu::{self, GpuComputeInfo, GpuUtilization};
use crate::state::{Health, ServerState};

/// Who the model card says owns the model.
const OWNED_BY: &str = "llm-pipeline";

/// The body of `/health`.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct HealthBody {
    status: Health,
}

/// `GET /health` (no authentication).
pub(crate) async fn health<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
) -> Json<HealthBody> {
    Json(HealthBody {
        status: state.health(),
    })
}

/// `GET /v1/models`.
pub(crate) async fn models<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
) -> Result<Json<ModelList>, ApiError> {
    let pipeline = state.pipeline()?;
    let card = ModelCard::new(pipeline.model_id(), state.created(), OWNED_BY)
        .with_backend(pipeline.backend());
    Ok(Json(ModelList::new(vec![card])))
}

/// The body of `/version`, as Livepeer's runner sends it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VersionBody {
    pipeline: String,
    model_id: String,
    version: &'static str,
    /// Extension: the backend and why it was chosen (Livepeer's gateway reads the three
    /// fields above and ignores others).
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
}

/// `GET /version`.
pub(crate) async fn version<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
) -> Json<VersionBody> {
    Json(VersionBody {
        pipeline: state.config().pipeline_name.clone(),
        model_id: state.model_id(),
        version: env!("CARGO_PKG_VERSION"),
        backend: state.pipeline().ok().and_then(|p| p.backend()),
    })
}

/// The body of `/hardware/info`: GPU facts by device index (none without NVML).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HardwareInfo {
    pipeline: String,
    model_id: String,
    gpu_info: BTreeMap<u32, GpuComputeInfo>,
    /// Extension (go-livepeer reads the three fields above): the requests that run at once, in
    /// one batch, once the model is loaded; the `capacity` to declare in `aiModels.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<u32>,
}

/// The body of `/hardware/stats`: GPU utilisation by device index (none without NVML).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HardwareStats {
    pipeline: String,
    model_id: String,
    gpu_stats: BTreeMap<u32, GpuUtilization>,
}

/// Runs an NVML query on the blocking pool; a panicked query reports no GPUs.
async fn blocking<T: Send + 'static>(query: fn() -> BTreeMap<u32, T>) -> BTreeMap<u32, T> {
    tokio::task::spawn_blocking(query)
        .await
        .unwrap_or_else(|e| {
            tracing::error!("GPU query failed: {e}");
            BTreeMap::new()
        })
}

/// `GET /hardware/info`.
pub(crate) async fn hardware_info<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
) -> Json<HardwareInfo> {
    Json(HardwareInfo {
        pipeline: state.config().pipeline_name.clone(),
        model_id: state.model_id(),
        gpu_info: blocking(gpu::compute_info).await,
        capacity: state.capacity(),
    })
}

/// `GET /hardware/stats`.
pub(crate) async fn hardware_stats<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
) -> Json<HardwareStats> {
    Json(HardwareStats {
        pipeline: state.config().pipeline_name.clone(),
        model_id: state.model_id(),
        gpu_stats: blocking(gpu::utilization).await,
    })
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
) -> Response {
    let stats = state.pipeline().ok().and_then(Pipeline::stats);
    let text = state.metrics().render(stats.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Unknown routes: 404 with the OpenAI body.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        method,
        path: uri.path().to_owned(),
    }
}

/// Known routes with another method: 405 with the OpenAI body.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}
