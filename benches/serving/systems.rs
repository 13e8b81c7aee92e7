//! The systems under load, each in a child process: ours (the in-process engine and the HTTP
//! server, per backend built) and the peers users would run instead (llama.cpp's
//! `llama-server`, mistral.rs).
//!
//! Every HTTP system gets the same threads, parallel sequences and per-sequence context and one
//! warm-up request. All of them are started first and then take turns: each workload runs on
//! every system before the next workload starts, `passes` times with the order rotated, and the
//! best pass counts. The host's speed drifts (it is a VM with neighbours: 2-thread decode moved
//! by 30% within an hour here), so systems measured back to back, best of a few, give ratios
//! that one system-after-another sweep does not. Peak resident memory is the child's `VmHWM`
//! after the workload (cumulative over what it ran so far). Idle servers wait on sockets and
//! take no CPU from the one under load.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::load::{self, Load, Report, Target};
use crate::{Args, model_path};

/// The clients' runtime, shared by every server's start and every workload.
static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Runtime::new().expect("a runtime"));

/// One system's figures, one report per workload.
#[derive(Debug)]
pub(crate) struct Run {
    /// Name in tables, JSON and the chart.
    pub(crate) system: String,
    /// Per workload, in [`Args::workloads`] order; `None` where the system cannot serve that
    /// many clients at once.
    pub(crate) reports: Vec<Option<Report>>,
}

/// How to start a peer.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    /// llama.cpp's `llama-server` binary.
    LlamaServer(PathBuf),
    /// A launcher for the mistral.rs HTTP shim (`xtask/peers/mistralrs_server.py`), called as
    /// `LAUNCHER --model GGUF --port N --max-seqs N --threads N`.
    MistralRs(PathBuf),
}

impl Peer {
    /// The system's name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::LlamaServer(_) => "llama-server",
            Self::MistralRs(_) => "mistral.rs",
        }
    }

    /// The most concurrent sequences the peer serves on this CPU; workloads with more clients
    /// are left out for it.
    fn max_seqs(&self, a: &Args) -> u32 {
        match self {
            Self::LlamaServer(_) => a.max_clients(),
            // mistral.rs 0.9.5 fails every batched step of a GGUF model on the CPU ("input
            // tensor is not contiguous" in the LM head) and decodes one sequence at a time.
            Self::MistralRs(_) => 1,
        }
    }

    fn spawn(&self, a: &Args, port: u16) -> Child {
        let seqs = self.max_seqs(a);
        let mut cmd = match self {
            Self::LlamaServer(bin) => {
                let mut cmd = Command::new(bin);
                cmd.args(["-m", &model_path(), "--host", "127.0.0.1"])
                    .args(["--port", &port.to_string()])
                    .args(["-t", &a.threads.to_string(), "-tb", &a.threads.to_string()])
                    .args(["--parallel", &seqs.to_string()]);
                // Our backend's context: a KV stream per sequence when every one fits, else
                // one pool of the given cells for all slots; the same batch sizes.
                match a.kv_cells {
                    None => cmd
                        .args(["-c", &(seqs * a.max_model_len).to_string()])
                        .arg("--no-kv-unified"),
                    Some(cells) => cmd.args(["-c", &cells.to_string()]).arg("--kv-unified"),
                };
                cmd.args(["-b", "2048", "-ub", "512", "--cont-batching"])
                    // No host-memory prompt cache: ours has none. Weight repacking stays on as
                    // in our backend: `cargo xtask bench` builds llama-server without AMX, whose
                    // repacked kernels die with SIGILL on this VM (else pass `--no-repack`).
                    .args(["--cache-ram", "0", "--no-webui"])
                    .args(&a.llama_server_args);
                cmd
            }
            Self::MistralRs(launcher) => {
                let mut cmd = Command::new(launcher);
                cmd.args(["--model", &model_path(), "--port", &port.to_string()])
                    .args(["--max-seqs", &seqs.to_string()])
                    .args(["--threads", &a.threads.to_string()]);
                cmd
            }
        };
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", self.name()))
    }
}

fn own_child(a: &Args, mode: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.args(a.forwarded()).arg("--child").args(mode);
    cmd
}

/// The engine without HTTP, in a child process.
pub(crate) fn engine(a: &Args) -> Run {
    let mut child = own_child(a, &["engine"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the bench child starts");
    let out = BufReader::new(child.stdout.take().expect("piped"));
    let reports = out
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let json = l.strip_prefix("REPORT ")?;
            Some(Some(Report::from_json(
                &serde_json::from_str(json).expect("a JSON report"),
            )))
        })
        .collect();
    assert!(child.wait().expect("the child ends").success());
    Run {
        system: "ours: engine, no HTTP".into(),
        reports,
    }
}

/// A started HTTP system.
pub(crate) struct Server {
    name: String,
    guard: KillOnDrop,
    base: String,
    max_seqs: u32,
}

/// Starts our HTTP server with `backend` in a child process.
pub(crate) fn ours_http(a: &Args, backend: &str) -> Server {
    let port = free_port();
    let child = own_child(a, &["serve", &port.to_string(), backend])
        .stdout(Stdio::null())
        .spawn()
        .expect("the server child starts");
    ready(format!("ours: {backend}"), child, port, a.max_clients())
}

/// Starts a peer in a child process.
pub(crate) fn peer(a: &Args, peer: &Peer) -> Server {
    let port = free_port();
    let child = peer.spawn(a, port);
    ready(peer.name().into(), child, port, peer.max_seqs(a))
}

/// Kills the server child however the run ends, a panic included: an orphaned server would
/// hold its cores and skew every later measurement.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the server to be healthy and sends it the warm-up request.
fn ready(name: String, child: Child, port: u16, max_seqs: u32) -> Server {
    let mut guard = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    RUNTIME.block_on(wait_healthy(&base, &mut guard.0, &name));
    RUNTIME.block_on(load::run(&Target::Http(&base), &load::WARM_UP));
    Server {
        name,
        guard,
        base,
        max_seqs,
    }
}

/// Runs every workload on every server in turn, `passes` times with the order rotated, and
/// keeps each system's best pass (by tokens/s) per workload. Stops the servers.
pub(crate) fn interleaved(a: &Args, servers: Vec<Server>) -> Vec<Run> {
    let workloads = a.workloads();
    let mut best: Vec<Vec<Option<Report>>> = servers
        .iter()
        .map(|_| vec![None; workloads.len()])
        .collect();
    let n = servers.len();
    for (wi, w) in workloads.iter().enumerate() {
        for pass in 0..a.passes {
            for k in 0..n {
                let i = (k + pass as usize + wi) % n;
                let server = &servers[i];
                if w.clients > server.max_seqs {
                    continue;
                }
                eprintln!(
                    "  {}: {} x{} (pass {})",
                    server.name,
                    w.mix.name(),
                    w.clients,
                    pass + 1
                );
                let w = Load { pass, ..*w };
                let mut report = RUNTIME.block_on(load::run(&Target::Http(&server.base), &w));
                report.peak_rss_mib = load::peak_rss_mib(server.guard.0.id());
                let slot = &mut best[i][wi];
                if slot
                    .as_ref()
                    .is_none_or(|b| report.tokens_per_s > b.tokens_per_s)
                {
                    *slot = Some(report);
                }
            }
        }
    }
    servers
        .into_iter()
        .zip(best)
        .map(|(server, reports)| Run {
            system: server.name,
            reports,
        })
        .collect()
}

/// Polls `GET /health` until it answers 200; panics if the child exits or 5 minutes pass.
async fn wait_healthy(base: &str, child: &mut Child, system: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{system} exited with {status} before it was ready");
        }
        let ok = http
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{system} not ready after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
