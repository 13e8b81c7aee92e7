//! Registration with a Livepeer orchestrator through go-livepeer's Live Runner protocol, so that
//! runners on many machines serve one orchestrator without any cluster code of ours.
//!
//! The protocol (go-livepeer `doc/live-runner.md`, "Dynamic runner protocol"; the registry in
//! `ai/runner/live_runner.go`, the routes in `server/ai_http.go`):
//! 1. `POST {orchestrator}/runners/heartbeat` with `Authorization: <orchSecret>` (the raw secret,
//!    no scheme) and a `LiveRunnerHeartbeatRequest`; the first answer carries a
//!    `heartbeat_secret` (and the interval and TTL, `"5s"` and `"20s"` by default);
//! 2. a heartbeat every interval with `Authorization: <heartbeat_secret>`; each one replaces
//!    the whole record, so every one carries every field; a runner not heard from within the
//!    TTL is hidden, then removed;
//! 3. a heartbeat answered 404 (the runner expired) or 401 (the orchestrator restarted and no
//!    longer knows the runner's id, so it expects its own secret) means the orchestrator forgot
//!    the runner: register again with the orchestrator's secret, under the same id;
//! 4. on shutdown, `POST {orchestrator}/runners/{runner_id}/unregister` with the heartbeat
//!    secret (204).
//!
//! The runner registers in `single-shot` mode: the orchestrator proxies each request
//! (`/apps/{runner_id}/app/{path}` to `{runner_url}/{path}`, any path: `/v1/chat/completions`
//! with tools and JSON schemas, `/llm`) and holds one of the runner's `capacity` slots while it
//! runs, refusing with 503 beyond it (`ReserveSession`). The capacity sent is what the engine
//! runs at once ([`ServerState::capacity`]) less the requests that reached it by other ways
//! (direct clients, other orchestrators), so that it stays true as that load changes; the
//! requests the orchestrator proxied are told apart by the `Livepeer-Runner-Route` header its
//! proxy sets. `status` is `ready` when the runner can serve (go-livepeer routes only to `ready`
//! runners and keeps the others registered), `busy` while requests from elsewhere fill every
//! slot, `loading` before and `error` after a fault that needs a restart. The GPU is reported
//! from NVML, the version is this crate's.
//!
//! Orchestrators serve HTTPS with self-signed certificates; as go-livepeer's own clients do, the
//! certificate is not checked against a root (the channel is still encrypted).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_pipeline_core::pipeline::Pipeline;
use serde::{Deserialize, Serialize};

use crate::state::{Health, ServerState};

/// go-livepeer's default heartbeat interval (`defaultLiveRunnerHeartbeatInterval`), used until
/// the orchestrator says its own.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// How long one call to the orchestrator may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How this runner registers: set by the operator.
#[derive(Clone)]
pub struct Registration {
    /// The orchestrator's base URL (`https://orchestrator:8935`).
    pub orchestrator: String,
    /// The orchestrator's `-orchSecret`.
    pub secret: String,
    /// Where the orchestrator reaches this runner (`http://10.0.0.5:8000`).
    pub runner_url: String,
    /// This runner's id at the orchestrator; unique per running process, so that a restarted
    /// runner never collides with its former self while that one's TTL runs out.
    pub runner_id: String,
    /// The app the runner serves, by convention `pipeline/model` (`llm/SmolLM2-135M-Instruct`).
    pub app: String,
    /// A human label shown in the orchestrator's discovery.
    pub label: Option<String>,
    /// Capacity to declare instead of the engine's.
    pub capacity: Option<u32>,
    /// The price in USD per `price_unit` (`hour`, `720p` or `fixed`), for orchestrators on
    /// chain; none off chain.
    pub price: Option<f64>,
    /// The unit of `price`.
    pub price_unit: String,
}

impl std::fmt::Debug for Registration {
    // The secret is a credential: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("orchestrator", &self.orchestrator)
            .field("runner_url", &self.runner_url)
            .field("runner_id", &self.runner_id)
            .field("app", &self.app)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// go-livepeer's `LiveRunnerHeartbeatRequest` (`ai/runner/live_runner.go`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// This runner's id.
    pub runner_id: String,
    /// A label for discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Where the orchestrator proxies requests to.
    pub runner_url: String,
    /// The runner's version.
    pub version: String,
    /// Free text for discovery (at most 1024 bytes): the model, backend and load, as JSON.
    pub metadata: String,
    /// `ready` (routable), `busy` (requests from elsewhere fill it), `loading` or `error`.
    pub status: String,
    /// `single-shot`: one capacity slot per proxied request.
    pub mode: String,
    /// The GPU, where NVML sees one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<HeartbeatGpu>,
    /// `pipeline/model`.
    pub app: String,
    /// Requests the orchestrator may have in flight here.
    pub capacity: u32,
    /// The price (zero off chain, where go-livepeer ignores it).
    pub price_info: PriceInfo,
}

/// go-livepeer's `LiveRunnerGPU`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatGpu {
    /// The device UUID.
    pub id: String,
    /// The device's name.
    pub name: String,
    /// Its memory in MiB.
    pub vram_mb: u64,
}

/// go-livepeer's `LiveRunnerPriceInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceInfo {
    /// The price, a JSON number.
    pub price: serde_json::Number,
    /// `usd`.
    pub currency: String,
    /// `hour`, `720p` or `fixed`.
    pub unit: String,
}

/// go-livepeer's `LiveRunnerHeartbeatResponse`, the fields a runner uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// The id the orchestrator knows the runner by.
    pub runner_id: String,
    /// The interval as a Go duration (`"5s"`).
    #[serde(default)]
    pub heartbeat_interval: String,
    /// The TTL as a Go duration (`"20s"`).
    #[serde(default)]
    pub heartbeat_ttl: String,
    /// The secret of later heartbeats: only in the answer to a registration.
    #[serde(default)]
    pub heartbeat_secret: String,
}

/// A running registration: heartbeats go out until [`unregister`](Self::unregister).
#[derive(Debug)]
pub struct Registrar {
    task: tokio::task::JoinHandle<()>,
    client: Client,
    session: Arc<Mutex<Session>>,
}

#[derive(Debug, Default)]
struct Session {
    /// The heartbeat secret, once registered.
    secret: Option<String>,
}

impl Registration {
    /// Starts heartbeating for `state`'s server: the first one at once (the runner shows as
    /// `loading` until the model is up), then every interval. Call it within a tokio runtime.
    pub fn start<P>(self, state: ServerState<P>) -> Registrar
    where
        P: Pipeline + Clone + Send + Sync + 'static,
    {
        let client = Client::new(self.clone());
        let session = Arc::new(Mutex::new(Session::default()));
        let task = tokio::spawn(heartbeats(client.clone(), Arc::clone(&session), state));
        Registrar {
            task,
            client,
            session,
        }
    }

    /// The heartbeat describing `state` now.
    pub fn heartbeat<P: Pipeline>(&self, state: &ServerState<P>) -> Heartbeat {
        let in_flight = state.in_flight();
        let routed = state.routed_in_flight();
        let engine = self.capacity.or_else(|| state.capacity()).unwrap_or(1);
        let elsewhere = u32::try_from(in_flight.saturating_sub(routed)).unwrap_or(u32::MAX);
        let status = match state.health() {
            // Requests from elsewhere fill every slot: not routable until they end.
            Health::Idle | Health::Ok if elsewhere >= engine => "busy",
            Health::Idle | Health::Ok => "ready",
            Health::Loading => "loading",
            Health::Error => "error",
        };
        let metadata = serde_json::json!({
            "model": state.model_id(),
            "backend": state.pipeline().ok().and_then(Pipeline::backend),
            "capacity": engine,
            "in_flight": in_flight,
        });
        Heartbeat {
            runner_id: self.runner_id.clone(),
            label: self.label.clone(),
            runner_url: self.runner_url.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            metadata: metadata.to_string(),
            status: status.to_owned(),
            mode: "single-shot".to_owned(),
            gpu: crate::gpu::compute_info()
                .into_values()
                .next()
                .map(|g| HeartbeatGpu {
                    id: g.id,
                    name: g.name,
                    vram_mb: g.memory_total >> 20,
                }),
            app: self.app.clone(),
            // go-livepeer reads 0 as 1; `busy` says when nothing is left.
            capacity: engine.saturating_sub(elsewhere).max(1),
            price_info: PriceInfo {
                price: self
                    .price
                    .and_then(serde_json::Number::from_f64)
                    .unwrap_or_else(|| 0.into()),
                currency: "usd".to_owned(),
                unit: self.price_unit.clone(),
            },
        }
    }
}

impl Registrar {
    /// Stops heartbeating and unregisters, so that the orchestrator stops routing here at once
    /// rather than after the TTL. Failures are logged: the TTL then removes the runner.
    pub async fn unregister(self) {
        self.task.abort();
        let secret = self.session.lock().map(|s| s.secret.clone()).ok().flatten();
        let Some(secret) = secret else {
            return;
        };
        let client = self.client;
        let id = client.registration.runner_id.clone();
        match tokio::task::spawn_blocking(move || client.unregister(&secret)).await {
            Ok(Ok(())) => tracing::info!(runner_id = %id, "unregistered from the orchestrator"),
            Ok(Err(e)) => tracing::warn!(runner_id = %id, error = %e, "cannot unregister"),
            Err(e) => tracing::warn!(error = %e, "cannot unregister"),
        }
    }
}

async fn heartbeats<P>(client: Client, session: Arc<Mutex<Session>>, state: ServerState<P>)
where
    P: Pipeline + Clone + Send + Sync + 'static,
{
    let mut interval = DEFAULT_INTERVAL;
    loop {
        let secret = session.lock().ok().and_then(|s| s.secret.clone());
        let (call, now) = (client.clone(), state.clone());
        // Off the runtime: the GPU facts come from NVML, the call is blocking.
        let sent = tokio::task::spawn_blocking(move || {
            let beat = call.registration.heartbeat(&now);
            call.heartbeat(&beat, secret.as_deref())
        });
        match sent.await {
            Ok(Ok(Beat::Accepted(answer))) => {
                if !answer.heartbeat_secret.is_empty() {
                    tracing::info!(
                        orchestrator = %client.registration.orchestrator,
                        runner_id = %answer.runner_id,
                        interval = %answer.heartbeat_interval,
                        ttl = %answer.heartbeat_ttl,
                        "registered with the orchestrator"
                    );
                    if let Ok(mut s) = session.lock() {
                        s.secret = Some(answer.heartbeat_secret);
                    }
                }
                if let Some(every) = go_duration(&answer.heartbeat_interval) {
                    interval = every.clamp(Duration::from_millis(100), Duration::from_secs(60));
                }
            }
            Ok(Ok(Beat::Forgotten)) => {
                tracing::warn!(
                    orchestrator = %client.registration.orchestrator,
                    "the orchestrator no longer knows this runner; registering again"
                );
                if let Ok(mut s) = session.lock() {
                    s.secret = None;
                }
                // Register again at once rather than an interval later.
                continue;
            }
            Ok(Err(e)) => tracing::warn!(
                orchestrator = %client.registration.orchestrator,
                error = %e,
                "heartbeat failed; retrying"
            ),
            Err(e) => tracing::warn!(error = %e, "heartbeat task failed"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// A Go `time.Duration` string of one unit (`"5s"`, `"500ms"`, `"1m"`), as go-livepeer sends
/// its interval.
fn go_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// What a heartbeat came to.
#[derive(Debug)]
enum Beat {
    Accepted(HeartbeatAnswer),
    /// 401 or 404 to a heartbeat: the orchestrator does not know the runner (any more).
    Forgotten,
}

/// The blocking HTTP client of the orchestrator's runner endpoints.
#[derive(Debug, Clone)]
struct Client {
    agent: ureq::Agent,
    registration: Arc<Registration>,
}

impl Client {
    fn new(registration: Registration) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(CALL_TIMEOUT)
            .tls_config(Arc::new(tls::self_signed_accepting()))
            .build();
        Self {
            agent,
            registration: Arc::new(registration),
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{path}",
            self.registration.orchestrator.trim_end_matches('/')
        )
    }

    fn heartbeat(&self, beat: &Heartbeat, secret: Option<&str>) -> Result<Beat, String> {
        let registering = secret.is_none();
        let auth = secret.unwrap_or(&self.registration.secret);
        let body = serde_json::to_value(beat).map_err(|e| e.to_string())?;
        match self
            .agent
            .post(&self.url("runners/heartbeat"))
            .set("Authorization", auth)
            .send_json(body)
        {
            Ok(response) => response
                .into_json::<HeartbeatAnswer>()
                .map(Beat::Accepted)
                .map_err(|e| format!("unreadable answer: {e}")),
            // An orchestrator that forgot the runner answers its heartbeat secret with 404 (the
            // runner expired) or 401 (it restarted: an unknown id must bring the orchestrator's
            // secret); either way the runner registers again.
            Err(ureq::Error::Status(401 | 404, response)) if !registering => {
                drop(response);
                Ok(Beat::Forgotten)
            }
            Err(ureq::Error::Status(code, response)) => Err(format!(
                "{code}: {}",
                response.into_string().unwrap_or_default().trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    fn unregister(&self, secret: &str) -> Result<(), String> {
        let path = format!("runners/{}/unregister", self.registration.runner_id);
        self.agent
            .post(&self.url(&path))
            .set("Authorization", secret)
            .call()
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

mod tls {
    //! TLS to an orchestrator, whose certificate is self-signed.
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

    /// Checks the handshake's signatures but not the certificate's issuer.
    #[derive(Debug)]
    struct SelfSigned(WebPkiSupportedAlgorithms);

    impl ServerCertVerifier for SelfSigned {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            signature: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, signature, &self.0)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            signature: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, signature, &self.0)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_schemes()
        }
    }

    pub(super) fn self_signed_accepting() -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = SelfSigned(provider.signature_verification_algorithms);
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_durations() {
        assert_eq!(go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(go_duration(""), None);
        assert_eq!(go_duration("5"), None);
        assert_eq!(go_duration("1h"), None);
    }
}
