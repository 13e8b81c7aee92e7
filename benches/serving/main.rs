//! Serving figures: the server through HTTP, beside the same engine driven without HTTP, in one
//! run, with the same prompts, clients and settings.
//!
//! ```text
//! cargo bench --features server --bench serving [-- --threads 2 --tokens 64 --clients 1,8,32
//!     --rounds 2]
//! ```
//! `C` clients each send `rounds` streamed chat requests one after another (greedy,
//! `max_tokens` = `--tokens`, end-of-generation tokens banned through `logit_bias` so that every
//! answer has the same length). Figures per system and concurrency: aggregate output tokens/s
//! (all completion tokens over the wall time from the first request to the last answer), median
//! and p99 time to first token, median time per output token after the first, and the serving
//! process's peak resident memory.
//!
//! Each system runs in a child process of its own (see `benches/throughput.rs` for why two
//! llama.cpp engines must not share a process): `--child engine` drives the pipeline in-process
//! and prints its figures; `--child serve PORT` runs the HTTP server, which this process drives
//! over a local socket with the same load.

mod load;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::pipeline::Pipeline;
use llm_pipeline::server::{ServerConfig, ServerState, router, serve};

use load::{Load, Report, Target};

struct Args {
    threads: u32,
    tokens: u32,
    clients: Vec<u32>,
    rounds: u32,
    child: Option<Vec<String>>,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let mut a = Args {
        threads: 2,
        tokens: 64,
        clients: vec![1, 8, 32],
        rounds: 2,
        child: None,
    };
    if !argv.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs this without `--bench`: a quick smoke run.
        a.tokens = 4;
        a.clients = vec![1, 2];
        a.rounds = 1;
    }
    let mut it = argv.iter().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--threads" => a.threads = val().parse().expect("--threads N"),
            "--tokens" => a.tokens = val().parse().expect("--tokens N"),
            "--rounds" => a.rounds = val().parse().expect("--rounds N"),
            "--clients" => {
                a.clients = val()
                    .split(',')
                    .map(|c| c.parse().expect("--clients 1,8,32"))
                    .collect();
            }
            "--child" => a.child = Some(it.by_ref().cloned().collect()),
            _ => {}
        }
    }
    a
}

fn model_path() -> String {
    std::env::var("LLM_PIPELINE_SMOLLM2").unwrap_or_else(|_| {
        format!(
            "{}/.cache/llm-pipeline/models/SmolLM2-135M-Instruct.Q4_1.gguf",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

/// The same configuration for every system: all clients fit in the running set.
fn config(a: &Args) -> PipelineConfig {
    let seqs = a.clients.iter().copied().max().unwrap_or(1);
    PipelineConfig::default()
        .with_model_id(model_path())
        .with_max_model_len(512)
        .with_max_num_seqs(seqs)
        .with_max_num_batched_tokens(2048)
        .with_threads(a.threads)
        .validated()
        .expect("a valid bench configuration")
}

fn load_spec(a: &Args, clients: u32) -> Load {
    Load {
        clients,
        rounds: a.rounds,
        max_tokens: a.tokens,
    }
}

/// Child: the pipeline without HTTP, one report line per concurrency.
fn child_engine(a: &Args) {
    let pipeline = llm_pipeline::llama_cpp::load(&config(a)).expect("SmolLM2 loads");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for &clients in &a.clients {
        let mut report = runtime.block_on(load::run(
            &Target::Pipeline(&pipeline),
            &load_spec(a, clients),
        ));
        report.peak_rss_mib = load::peak_rss_mib(std::process::id());
        println!("REPORT {}", report.to_line());
    }
}

/// Child: the HTTP server on `127.0.0.1:port` until killed.
fn child_serve(a: &Args, port: u16) {
    let pipeline = llm_pipeline::llama_cpp::load(&config(a)).expect("SmolLM2 loads");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the bench port is free");
        let server = ServerConfig::default().with_model_id(pipeline.model_id().to_owned());
        println!("LISTENING");
        serve(
            listener,
            router(ServerState::new(pipeline, server)),
            std::future::pending::<()>(),
            Duration::from_secs(1),
        )
        .await
        .expect("the server runs");
    });
}

fn spawn_child(a: &Args, mode: &[&str]) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--threads",
            &a.threads.to_string(),
            "--tokens",
            &a.tokens.to_string(),
            "--rounds",
            &a.rounds.to_string(),
            "--clients",
            &a.clients
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            "--child",
        ])
        .args(mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the bench child starts")
}

fn engine_reports(a: &Args) -> Vec<Report> {
    let mut child = spawn_child(a, &["engine"]);
    let out = BufReader::new(child.stdout.take().expect("piped"));
    let reports = out
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("REPORT ").map(Report::from_line))
        .collect();
    assert!(child.wait().expect("the child ends").success());
    reports
}

fn http_reports(a: &Args) -> Vec<Report> {
    let port = free_port();
    let mut child = spawn_child(a, &["serve", &port.to_string()]);
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)
        .expect("the server says it listens");
    assert_eq!(line.trim(), "LISTENING", "the server child failed to start");
    let base = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let reports = a
        .clients
        .iter()
        .map(|&clients| {
            let mut report =
                runtime.block_on(load::run(&Target::Http(&base), &load_spec(a, clients)));
            report.peak_rss_mib = load::peak_rss_mib(child.id());
            report
        })
        .collect();
    child.kill().expect("the server child stops");
    child.wait().expect("the server child is reaped");
    reports
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn main() {
    let a = args();
    if let Some(mode) = &a.child {
        match mode.first().map(String::as_str) {
            Some("engine") => child_engine(&a),
            Some("serve") => child_serve(&a, mode[1].parse().expect("--child serve PORT")),
            other => panic!("unknown child mode {other:?}"),
        }
        return;
    }
    let started = Instant::now();
    println!(
        "serving: SmolLM2-135M Q4_1, {} threads, {} tokens per answer, {} rounds per client",
        a.threads, a.tokens, a.rounds
    );
    let engine = engine_reports(&a);
    let http = http_reports(&a);
    println!("{}", Report::header());
    for (e, h) in engine.iter().zip(&http) {
        println!("{}", e.row("engine (no HTTP)", None));
        println!("{}", h.row("server (HTTP)", Some(e)));
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
