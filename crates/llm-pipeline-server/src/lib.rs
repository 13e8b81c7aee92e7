//! The HTTP edge of llm-pipeline: an axum [`Router`] serving the OpenAI chat API and the
//! Livepeer AI runner protocol over any [`Pipeline`].
//!
//! A Rust service mounts [`router`] in its own axum app; the `serve` example of the facade
//! crate is the server operators run. The router is generic over the pipeline because
//! [`Pipeline`] has `async` methods and so is not object-safe; any `Pipeline + Clone`
//! (such as the core's `EnginePipeline`) works.
//!
//! | Route | |
//! |---|---|
//! | `POST /v1/chat/completions` | OpenAI chat completions, whole or SSE (`data: [DONE]` last) |
//! | `POST /llm` | Livepeer's `LLMRequest` → `LLMResponse`, whole or SSE |
//! | `GET /v1/models` | the served model |
//! | `GET /health` | `{"status": "OK" \| "LOADING" \| "ERROR"}`, never authenticated |
//! | `GET /version` | `pipeline`, `model_id`, `version` |
//! | `GET /hardware/info`, `/hardware/stats` | Livepeer's shapes, GPU facts from NVML (empty maps without a GPU) |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors everywhere are the OpenAI error body with the right status, made in one place
//! ([`ApiError`]). Generation runs on the engine's thread; a client that goes away drops its
//! handler future or response stream, which cancels its sequences at the engine's next step.

mod auth;
mod chat;
mod config;
mod error;
mod extract;
mod gpu;
mod info;
mod livepeer;
mod metrics;
mod state;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use llm_pipeline_core::pipeline::Pipeline;
use tokio::net::TcpListener;

pub use config::{DEFAULT_MAX_REQUEST_BYTES, ServerConfig};
pub use error::ApiError;
pub use livepeer::{LlmChoice, LlmMessage, LlmRequest, LlmResponse};
pub use metrics::{Metrics, Outcome};
pub use state::{Health, ServerState};

/// The router over `state`'s pipeline, with authentication (when configured), the body limit,
/// the OpenAI error body for unknown routes and methods, and per-route status metrics.
pub fn router<P>(state: ServerState<P>) -> Router
where
    P: Pipeline + Clone + 'static,
{
    let config = state.config().clone();
    let mut app = Router::new()
        .route("/v1/chat/completions", post(chat::completions::<P>))
        .route("/llm", post(livepeer::llm::<P>))
        .route("/v1/models", get(info::models::<P>))
        .route(auth::EXEMPT_PATH, get(info::health::<P>))
        .route("/version", get(info::version::<P>))
        .route("/hardware/info", get(info::hardware_info::<P>))
        .route("/hardware/stats", get(info::hardware_stats::<P>))
        .route("/metrics", get(info::metrics::<P>))
        .fallback(info::not_found)
        .method_not_allowed_fallback(info::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_request_bytes))
        .layer(axum::Extension(extract::BodyLimit(
            config.max_request_bytes,
        )))
        .with_state(state.clone());
    if let Some(token) = config.auth_token {
        let token: Arc<str> = token.into();
        app = app.layer(middleware::from_fn_with_state(token, auth::require_bearer));
    }
    app.layer(middleware::from_fn_with_state(state, count_responses::<P>))
}

/// Counts every response by route template and status.
async fn count_responses<P: Pipeline + Clone + 'static>(
    State(state): State<ServerState<P>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    state
        .metrics()
        .record_response(&route, response.status().as_u16());
    response
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish for at most `grace` before returning.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    shutdown: F,
    grace: Duration,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs_f64(),
            "shutting down: no new connections; finishing in-flight requests"
        );
        let _ = signalled_tx.send(());
    };
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .into_future();
    let deadline = async move {
        match signalled_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!("grace period over; dropping the requests still in flight");
            Ok(())
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM: the signals an operator or an orchestrator
/// stops a server with.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
