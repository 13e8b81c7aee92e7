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
//! | `POST /llm` | Livepeer's `LLMRequest` → `LLMResponse`, whole or SSE; errors `{"detail": {"msg"}}` |
//! | `GET /v1/models` | the served model |
//! | `GET /health` | `{"status": "IDLE" \| "OK" \| "LOADING" \| "ERROR"}`, never authenticated |
//! | `GET /version` | `pipeline`, `model_id`, `version` (semver) |
//! | `GET /hardware/info`, `/hardware/stats` | Livepeer's shapes, GPU facts from NVML (empty maps without a GPU); `capacity` |
//!
//! Livepeer's routes also answer with a trailing slash, as ai-runner's do.
//! | `GET /metrics` | Prometheus text |
//!
//! Errors everywhere are the OpenAI error body with the right status, made in one place
//! ([`ApiError`]). Generation runs on the engine's thread; a client that goes away drops its
//! handler future or response stream, which cancels its sequences at the engine's next step.

mod auth;
mod chat;
mod config;
mod conn;
mod error;
mod extract;
mod gpu;
mod info;
mod livepeer;
mod metrics;
pub mod register;
mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use llm_pipeline_core::pipeline::Pipeline;
use tokio::net::TcpListener;

pub use config::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_BYTES,
    ServerConfig,
};
pub use error::ApiError;
pub use livepeer::{LlmChoice, LlmError, LlmMessage, LlmRequest, LlmResponse};
pub use metrics::{Metrics, Outcome};
pub use state::{Health, ROUTE_HEADER, ServerState};

/// The router over `state`'s pipeline, with authentication (when configured), the body limit,
/// the OpenAI error body for unknown routes and methods, and per-route status metrics.
pub fn router<P>(state: ServerState<P>) -> Router
where
    P: Pipeline + Clone + 'static,
{
    let config = state.config().clone();
    let mut app = Router::new()
        .route("/v1/chat/completions", post(chat::completions::<P>))
        .route("/v1/models", get(info::models::<P>))
        .route("/metrics", get(info::metrics::<P>));
    for path in livepeer::ROUTES {
        app = app.route(path, post(livepeer::llm::<P>));
    }
    // ai-runner's routes, each with its trailing-slash twin.
    for (path, route) in [
        ("/health", get(info::health::<P>)),
        ("/version", get(info::version::<P>)),
        ("/hardware/info", get(info::hardware_info::<P>)),
        ("/hardware/stats", get(info::hardware_stats::<P>)),
    ] {
        app = app
            .route(path, route.clone())
            .route(&format!("{path}/"), route);
    }
    let mut app = app
        .fallback(info::not_found)
        .method_not_allowed_fallback(info::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_request_bytes))
        .layer(axum::Extension(extract::BodyLimit(
            config.max_request_bytes,
        )))
        .layer(axum::Extension(extract::BodyTimeout(config.body_timeout)))
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

/// How [`serve`] treats connections: the edge's limits and the shutdown grace, as
/// [`ServerConfig`] sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long in-flight requests may run after the shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a request's headers may take to arrive, from a new connection or the
    /// request's first byte.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl From<&ServerConfig> for ServeOptions {
    fn from(config: &ServerConfig) -> Self {
        Self {
            shutdown_grace: config.shutdown_grace,
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections.max(1),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish for at most `options.shutdown_grace` before returning.
///
/// The edge's limits come from `options`: at most `max_connections` open at once (the next
/// waits in the listen backlog), each closed when a request's headers take longer than
/// `header_timeout` to arrive or when it waits longer than `idle_timeout` for its next request;
/// request bodies are bounded in time by the router (`body_timeout`). Slow or idle clients thus
/// hold a connection slot for a bounded time and never a worker: `/health` stays answerable
/// beside them.
///
/// # Errors
/// None today: errors accepting a connection (too many open files, say) are logged and retried
/// after a pause, as a server must.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    shutdown: F,
    options: ServeOptions,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header and idle clocks are `conn::TimedIo`'s: hyper's own runs both as one.
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let clocks = conn::Clocks {
        idle: options.idle_timeout,
        header: options.header_timeout,
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let io = conn::TimedIo::new(stream, clocks);
        let watch = io.watch();
        let router = router.clone();
        let service = hyper::service::service_fn(move |request| {
            let finished = watch.request();
            let response = tower::ServiceExt::oneshot(router.clone(), request);
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| conn::Tracked::new(body, finished)),
                )
            }
        });
        let connection =
            graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let grace = options.shutdown_grace;
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: no new connections; finishing in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; dropping the requests still in flight");
        }
    }
    Ok(())
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
