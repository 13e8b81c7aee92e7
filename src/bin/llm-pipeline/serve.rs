//! `llm-pipeline serve`: the HTTP server, and the runner an orchestrator uses.
//!
//! The socket is bound before the model loads, so that `/health` says `LOADING` meanwhile and
//! `ERROR` if the load fails. The capacity an orchestrator may rely on (sequences that run at
//! once) is printed once the model is up and reported in `/hardware/info`. SIGTERM or Ctrl-C
//! stops accepting connections and lets in-flight requests finish for up to 30 s; a registered
//! runner unregisters first, so that the orchestrator stops routing to it.

use std::time::Instant;

use anyhow::{Context, Result};
use llm_pipeline::core::pipeline::Pipeline;
use llm_pipeline::server::register::Registration;
use llm_pipeline::server::{
    ServeOptions, ServerConfig, ServerState, router, serve, shutdown_signal,
};

use crate::ModelArgs;
use crate::vars::ServerFlags;

/// `serve`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    server: ServerFlags,
    #[command(
        flatten,
        next_help_heading = "Registration with a Livepeer orchestrator"
    )]
    orchestrator: RegisterArgs,
}

/// Registration with an orchestrator through go-livepeer's Live Runner heartbeat.
#[derive(Debug, clap::Args)]
struct RegisterArgs {
    /// The orchestrator to register with (`https://orchestrator:8935`); none: serve without
    /// registering (an orchestrator may still use this server as an external container)
    #[arg(long, env = "ORCHESTRATOR_URL", value_name = "URL")]
    orchestrator: Option<String>,
    /// The orchestrator's `-orchSecret`, or a file holding it
    #[arg(
        long,
        env = "ORCHESTRATOR_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        requires = "orchestrator"
    )]
    orchestrator_secret: Option<String>,
    /// Where the orchestrator reaches this runner [default: http://HOST:PORT when HOST is a
    /// specific address]
    #[arg(long, env = "RUNNER_URL", value_name = "URL")]
    runner_url: Option<String>,
    /// A label the orchestrator shows in its discovery
    #[arg(long, env = "RUNNER_LABEL", value_name = "TEXT")]
    runner_label: Option<String>,
    /// Requests the orchestrator may run here at once [default: what the engine runs in one
    /// batch, printed at start and in /hardware/info]
    #[arg(long, env = "RUNNER_CAPACITY", value_name = "N")]
    runner_capacity: Option<u32>,
    /// The price in USD per unit, for orchestrators on chain
    #[arg(long, env = "RUNNER_PRICE", value_name = "USD")]
    runner_price: Option<f64>,
    /// The unit of the price: hour, 720p or fixed
    #[arg(
        long,
        env = "RUNNER_PRICE_UNIT",
        value_name = "UNIT",
        default_value = "hour"
    )]
    runner_price_unit: String,
}

impl RegisterArgs {
    /// The registration to run, if an orchestrator is named.
    fn registration(&self, server: &ServerConfig) -> Result<Option<Registration>> {
        let Some(orchestrator) = self.orchestrator.clone() else {
            return Ok(None);
        };
        anyhow::ensure!(
            orchestrator.starts_with("http://") || orchestrator.starts_with("https://"),
            "--orchestrator (ORCHESTRATOR_URL) must be an http:// or https:// URL, not \
             `{orchestrator}`"
        );
        let secret = match &self.orchestrator_secret {
            Some(s) if std::path::Path::new(s).is_file() => std::fs::read_to_string(s)
                .with_context(|| format!("cannot read the orchestrator secret from {s}"))?
                .trim()
                .to_owned(),
            Some(s) => s.trim().to_owned(),
            None => anyhow::bail!(
                "--orchestrator needs --orchestrator-secret (ORCHESTRATOR_SECRET): the \
                 orchestrator's -orchSecret"
            ),
        };
        let runner_url = match &self.runner_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if !server.host.is_unspecified() => {
                format!("http://{}", server.addr())
            }
            None => anyhow::bail!(
                "--runner-url (RUNNER_URL) is needed when listening on {}: the address the \
                 orchestrator reaches this runner at",
                server.host
            ),
        };
        anyhow::ensure!(
            ["hour", "720p", "fixed"].contains(&self.runner_price_unit.as_str()),
            "--runner-price-unit (RUNNER_PRICE_UNIT) must be hour, 720p or fixed, not `{}`",
            self.runner_price_unit
        );
        anyhow::ensure!(
            self.runner_capacity != Some(0),
            "--runner-capacity (RUNNER_CAPACITY) must be at least 1"
        );
        Ok(Some(Registration {
            orchestrator,
            secret,
            runner_url,
            runner_id: runner_id(),
            app: format!(
                "{}/{}",
                server.pipeline_name,
                llm_pipeline::core::model::served_name(&server.model_id)
            ),
            label: self.runner_label.clone(),
            capacity: self.runner_capacity,
            price: self.runner_price,
            price_unit: self.runner_price_unit.clone(),
        }))
    }
}

/// A runner id of its own for this process: a restarted runner must not reuse the id of its
/// former self, which the orchestrator refuses until that one's TTL has run out.
fn runner_id() -> String {
    use std::hash::BuildHasher;
    let seed = (std::process::id(), std::time::SystemTime::now());
    let hash = std::collections::hash_map::RandomState::new().hash_one(seed);
    format!("llm-pipeline-{:012x}", hash & 0xffff_ffff_ffff)
}

pub(crate) async fn run(args: ServeArgs) -> Result<()> {
    let pipeline_config = args.model.config()?;
    // An unknown backend is refused before the socket is bound.
    let load = llm_pipeline::loader(&args.model.backend)?;
    let server_config = args
        .server
        .config()?
        .with_model_id(pipeline_config.model_id.clone());
    let registration = args.orchestrator.registration(&server_config)?;

    let addr = server_config.addr();
    if server_config.auth_token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "AUTH_TOKEN is empty and the server listens beyond this machine: anyone who can reach \
             it can use the model; set AUTH_TOKEN (or --api-key), or bind HOST=127.0.0.1"
        );
    }
    let options = ServeOptions::from(&server_config);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        addr = %listener.local_addr().unwrap_or(addr),
        model = %pipeline_config.model_id,
        auth = server_config.auth_token.is_some(),
        max_num_seqs = pipeline_config.max_num_seqs,
        max_queue = pipeline_config.max_queue,
        "listening; loading the model"
    );
    let state = ServerState::loading(server_config);

    // Load on a blocking thread while the server already answers `/health` with LOADING; a
    // failed or panicking load turns it to ERROR.
    state.load_in_background(move || {
        let started = Instant::now();
        let pipeline = load(&pipeline_config)?;
        let capacity = pipeline.engine().capacity();
        tracing::info!(
            model = %pipeline_config.model_id,
            backend = %pipeline.backend().unwrap_or_default(),
            device = %pipeline.engine().backend_info().description,
            seconds = started.elapsed().as_secs_f64(),
            capacity,
            "model loaded; serving: `capacity` requests run at once, in one batch (the capacity \
             to declare to an orchestrator)"
        );
        anyhow::Ok(pipeline)
    });

    let registrar = registration.map(|r| r.start(state.clone()));
    let shutdown = async move {
        shutdown_signal().await;
        if let Some(registrar) = registrar {
            registrar.unregister().await;
        }
    };
    serve(listener, router(state), shutdown, options).await?;
    tracing::info!("stopped");
    // A load (or download) still running must not hold the process: the runtime would wait
    // for its blocking thread on the way out.
    std::process::exit(0)
}
