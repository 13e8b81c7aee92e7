//! The HTTP server operators run: the OpenAI chat API and the Livepeer runner protocol.
//!
//! ```text
//! cargo run --release --features server --example serve -- [--model PATH_OR_HF_ID]
//!     [--backend auto|llama-cpp|candle|ort] [--host 0.0.0.0] [--port 8000] [--api-key TOKEN] [--max-queue N]
//!     [--max-request-bytes N]
//! ```
//! Flags override the environment: `HOST`, `PORT`, `AUTH_TOKEN`, `MAX_REQUEST_BYTES`, and all of
//! Livepeer's pipeline variables (`MODEL_ID`, `MODEL_DIR`, `MAX_NUM_SEQS`, `MAX_MODEL_LEN`,
//! `MAX_QUEUE`, `PRICE_PER_UNIT`, …). The socket is bound before the model loads, so `/health`
//! says `LOADING` meanwhile and `ERROR` if the load fails. SIGTERM or Ctrl-C stops accepting
//! connections and lets in-flight requests finish for up to 30 s. Logs go to stderr through
//! `tracing` (`RUST_LOG`, default `info`), one line per request with tokens, latency and price.

use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::pipeline::Pipeline;
use llm_pipeline::server::{
    ServeOptions, ServerConfig, ServerState, router, serve, shutdown_signal,
};

const USAGE: &str = "usage: serve [--model PATH_OR_HF_ID] [--backend auto|llama-cpp|candle|ort] [--host ADDR] \
                     [--port N] [--api-key TOKEN] [--max-queue N] [--max-request-bytes N]";

#[derive(Debug)]
struct Args {
    model: Option<String>,
    backend: String,
    host: Option<IpAddr>,
    port: Option<u16>,
    api_key: Option<String>,
    max_queue: Option<u32>,
    max_request_bytes: Option<usize>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        model: None,
        backend: llm_pipeline::AUTO.into(),
        host: None,
        port: None,
        api_key: None,
        max_queue: None,
        max_request_bytes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--model" => args.model = Some(value()?),
            "--backend" => args.backend = value()?,
            "--host" => args.host = Some(value()?.parse().context("--host")?),
            "--port" => args.port = Some(value()?.parse().context("--port")?),
            "--api-key" => args.api_key = Some(value()?),
            "--max-queue" => args.max_queue = Some(value()?.parse().context("--max-queue")?),
            "--max-request-bytes" => {
                args.max_request_bytes = Some(value()?.parse().context("--max-request-bytes")?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;

    let mut pipeline_config = PipelineConfig::from_env()?;
    if let Some(model) = &args.model {
        pipeline_config = pipeline_config.with_model_id(model);
    }
    if let Some(n) = args.max_queue {
        pipeline_config = pipeline_config.with_max_queue(n);
    }
    if pipeline_config.model_id.is_empty() {
        bail!("no model: pass --model PATH_OR_HF_ID or set MODEL_ID\n{USAGE}");
    }
    // An unknown backend is refused before the socket is bound.
    let load = llm_pipeline::loader(&args.backend)?;

    let mut server_config =
        ServerConfig::from_env()?.with_model_id(pipeline_config.model_id.clone());
    if let Some(host) = args.host {
        server_config = server_config.with_host(host);
    }
    if let Some(port) = args.port {
        server_config = server_config.with_port(port);
    }
    if let Some(key) = args.api_key {
        server_config = server_config.with_auth_token(key);
    }
    if let Some(bytes) = args.max_request_bytes {
        server_config = server_config.with_max_request_bytes(bytes);
    }

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
        %addr,
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
        tracing::info!(
            model = %pipeline_config.model_id,
            backend = %pipeline.backend().unwrap_or_default(),
            device = %pipeline.engine().backend_info().description,
            seconds = started.elapsed().as_secs_f64(),
            "model loaded; serving"
        );
        anyhow::Ok(pipeline)
    });

    serve(listener, router(state), shutdown_signal(), options).await?;
    tracing::info!("stopped");
    // A load (or download) still running must not hold the process: the runtime would wait
    // for its blocking thread on the way out.
    std::process::exit(0)
}
