//! The router's shared state: the pipeline (once loaded), the config and the metrics.
//!
//! The server should answer `/health` with `LOADING` while a large model loads, so the pipeline
//! sits in a write-once slot: [`ServerState::loading`] starts empty, and the loader fills it
//! with [`ServerState::set_ready`] or [`ServerState::set_failed`]. Handlers that need the model
//! answer 503 until then. A [`RequestTracker`] follows one generation request to log one line
//! and record its metrics at the end, or to count it as abandoned when it is dropped first
//! (the client went away and axum dropped the handler or the response stream).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use llm_pipeline_core::openai::{ResponseMetadata, Usage};
use llm_pipeline_core::pipeline::Pipeline;
use serde::Serialize;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};

/// What `/health` reports, as go-livepeer's AI worker reads it (`ai/worker/docker.go`,
/// `watchContainer`: `IDLE` returns a borrowed container to the pool, `OK` keeps it, `LOADING`
/// takes it out of the pool, `ERROR` restarts it at once; `container.go`,
/// `runnerWaitUntilReady`: anything but `ERROR` is ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    /// Loaded, and no request is running or waiting.
    Idle,
    /// Serving requests.
    Ok,
    /// The model is still loading.
    Loading,
    /// The model failed to load, the engine is broken for good, or its steps keep failing
    /// ([`EngineStats::failed`]): a fault a restart may cure. A failed step the engine recovers
    /// from is not one; the status returns to `OK` when a step succeeds.
    ///
    /// [`EngineStats::failed`]: llm_pipeline_core::engine::EngineStats::failed
    Error,
}

/// The state every handler shares; cheap to clone.
pub struct ServerState<P> {
    inner: Arc<Inner<P>>,
}

struct Inner<P> {
    config: ServerConfig,
    model: OnceLock<Result<P, String>>,
    metrics: Arc<Metrics>,
    created: u64,
    load: Arc<Load>,
}

/// Generation requests in flight at the HTTP edge, from arrival (before the engine sees them)
/// to their last byte.
#[derive(Debug, Default)]
struct Load {
    active: AtomicUsize,
    /// Those an orchestrator routed here (they carry [`ROUTE_HEADER`]).
    routed: AtomicUsize,
}

/// The header go-livepeer's Live Runner proxy sets on every request it forwards to a runner
/// (`server/ai_http.go`, `proxyLiveRunner`: `Livepeer-Runner-Route`).
pub const ROUTE_HEADER: &str = "livepeer-runner-route";

impl<P> Clone for ServerState<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P> std::fmt::Debug for ServerState<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("config", &self.inner.config)
            .field("health", &self.inner.model.get().map(Result::is_ok))
            .finish_non_exhaustive()
    }
}

impl<P: Pipeline> ServerState<P> {
    /// A state serving `pipeline` now.
    pub fn new(pipeline: P, config: ServerConfig) -> Self {
        let state = Self::loading(config);
        state.set_ready(pipeline);
        state
    }

    /// A state whose model is still loading: `/health` says `LOADING`, model endpoints 503.
    pub fn loading(config: ServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                model: OnceLock::new(),
                metrics: Arc::default(),
                created: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                load: Arc::default(),
            }),
        }
    }

    /// Starts serving `pipeline`. Returns `false` (and drops it) if the slot was already
    /// filled.
    pub fn set_ready(&self, pipeline: P) -> bool {
        self.inner.model.set(Ok(pipeline)).is_ok()
    }

    /// Marks the model as failed to load: `/health` says `ERROR`, model endpoints 503.
    /// Returns `false` if the slot was already filled.
    pub fn set_failed(&self, reason: impl std::fmt::Display) -> bool {
        let reason = reason.to_string();
        tracing::error!(%reason, "the model failed to load");
        self.inner.model.set(Err(reason)).is_ok()
    }

    /// Loads the model with `load` on tokio's blocking pool, then marks the state ready or
    /// failed; a panic in `load` is a failure too (its message is the reason), so `/health`
    /// never stays `LOADING` after the load has ended. Call it from within a tokio runtime.
    pub fn load_in_background<F, E>(&self, load: F)
    where
        P: Send + Sync + 'static,
        F: FnOnce() -> Result<P, E> + Send + 'static,
        E: std::fmt::Display,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)) {
                Ok(Ok(pipeline)) => {
                    state.set_ready(pipeline);
                }
                Ok(Err(e)) => {
                    state.set_failed(e);
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    state.set_failed(format!("the model load panicked: {what}"));
                }
            }
        });
    }

    /// The pipeline, once it is loaded.
    ///
    /// # Errors
    /// [`ApiError::Loading`] while loading, [`ApiError::LoadFailed`] after a failed load.
    pub fn pipeline(&self) -> Result<&P, ApiError> {
        match self.inner.model.get() {
            None => Err(ApiError::Loading),
            Some(Err(_)) => Err(ApiError::LoadFailed),
            Some(Ok(p)) => Ok(p),
        }
    }

    /// What `/health` reports now: `IDLE` when no request is running or waiting (at the edge
    /// or in the engine), `OK` while serving.
    pub fn health(&self) -> Health {
        match self.inner.model.get() {
            None => Health::Loading,
            Some(Err(_)) => Health::Error,
            Some(Ok(p)) => {
                let stats = p.stats();
                if stats.is_some_and(|s| s.failed) {
                    Health::Error
                } else if self.in_flight() == 0 && stats.is_none_or(|s| s.in_flight == 0) {
                    Health::Idle
                } else {
                    Health::Ok
                }
            }
        }
    }

    /// Sequences that run at once in one batch (see
    /// [`Engine::capacity`](llm_pipeline_core::engine::Engine::capacity)), once loaded: what a
    /// runner declares to an orchestrator.
    pub fn capacity(&self) -> Option<u32> {
        self.pipeline().ok()?.stats().map(|s| s.capacity)
    }

    /// The served model's id: the pipeline's, or the name of the configured one while loading
    /// (never a filesystem path; see [`served_name`](llm_pipeline_core::model::served_name)).
    pub fn model_id(&self) -> String {
        match self.inner.model.get() {
            Some(Ok(p)) => p.model_id().to_owned(),
            _ => llm_pipeline_core::model::served_name(&self.inner.config.model_id),
        }
    }
}

impl<P> ServerState<P> {
    /// The server's settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// When the server started, in Unix seconds (the model card's `created`).
    pub fn created(&self) -> u64 {
        self.inner.created
    }

    /// Generation requests in flight at the HTTP edge.
    pub fn in_flight(&self) -> usize {
        self.inner.load.active.load(Ordering::SeqCst)
    }

    /// Those of [`in_flight`](Self::in_flight) that an orchestrator's Live Runner proxy routed
    /// here.
    pub fn routed_in_flight(&self) -> usize {
        self.inner.load.routed.load(Ordering::SeqCst)
    }

    pub(crate) fn track(&self, endpoint: &'static str, headers: &HeaderMap) -> RequestTracker {
        let routed = headers.contains_key(ROUTE_HEADER);
        let load = Arc::clone(&self.inner.load);
        load.active.fetch_add(1, Ordering::SeqCst);
        if routed {
            load.routed.fetch_add(1, Ordering::SeqCst);
        }
        RequestTracker {
            metrics: Arc::clone(&self.inner.metrics),
            load,
            routed,
            endpoint,
            start: Instant::now(),
            first_token: None,
            last_token: None,
            done: false,
        }
    }
}

/// Follows one generation request from arrival to its end.
pub(crate) struct RequestTracker {
    metrics: Arc<Metrics>,
    load: Arc<Load>,
    routed: bool,
    endpoint: &'static str,
    start: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    done: bool,
}

impl RequestTracker {
    /// Notes that generated text went out now (the first call sets the time to first token).
    pub(crate) fn token(&mut self) {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
    }

    /// The request ended normally: record it and log its line.
    pub(crate) fn finish(&mut self, usage: Usage, metadata: Option<&ResponseMetadata>) {
        if self.done {
            return;
        }
        self.done = true;
        let outcome = Outcome {
            usage,
            time_to_first_token: self.first_token.map(|t| t - self.start),
            decode_time: self.first_token.zip(self.last_token).map(|(a, b)| b - a),
            duration: self.start.elapsed(),
            quote: metadata.and_then(|m| m.price_quote),
            charge: metadata.and_then(|m| m.price_charged),
        };
        self.metrics.record_outcome(&outcome);
        tracing::info!(
            endpoint = self.endpoint,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            latency_ms = outcome.duration.as_millis() as u64,
            ttft_ms = outcome.time_to_first_token.map(|t| t.as_millis() as u64),
            price_quote = outcome.quote.map(tracing::field::display),
            price_charged = outcome.charge.map(tracing::field::display),
            "request finished"
        );
    }

    /// The request failed before generating (the error response says why): not abandoned.
    pub(crate) fn refused(mut self) {
        self.done = true;
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        self.load.active.fetch_sub(1, Ordering::SeqCst);
        if self.routed {
            self.load.routed.fetch_sub(1, Ordering::SeqCst);
        }
        if !self.done {
            self.metrics.record_abandoned();
            tracing::info!(
                endpoint = self.endpoint,
                latency_ms = self.start.elapsed().as_millis() as u64,
                "request ended early (client gone or generation failed)"
            );
        }
    }
}
