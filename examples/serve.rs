//! The HTTP server as a library: load a pipeline, mount the router, serve it.
//!
//! ```text
//! MODEL_ID=/models/model.gguf cargo run --release --features server --example serve
//! ```
//! Operators run the `llm-pipeline` program (`llm-pipeline serve`), which adds flags for every
//! setting, `/health` while the model loads, and registration with an orchestrator; this shows
//! what a service that embeds the server needs: the router is an axum `Router` over any
//! `Pipeline`, to mount beside its own routes.

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::server::{
    ServeOptions, ServerConfig, ServerState, router, serve, shutdown_signal,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pipeline =
        llm_pipeline::load_async(llm_pipeline::AUTO, PipelineConfig::from_env()?).await?;
    let config = ServerConfig::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.addr()).await?;
    println!("serving on http://{}", listener.local_addr()?);
    let options = ServeOptions::from(&config);
    let app = router(ServerState::new(pipeline, config));
    serve(listener, app, shutdown_signal(), options).await?;
    Ok(())
}
