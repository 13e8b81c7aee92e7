//! The systems under load, each in a child process: ours (the in-process engine and the HTTP
//! server, per backend built) and the peers users would run instead (llama.cpp's
//! `llama-server`, mistral.rs).
//!
//! Every HTTP system gets the same threads, parallel sequences and per-sequence context, one
//! warm-up request, then every workload in turn; its peak resident memory is the child's
//! `VmHWM` after each workload (so it is cumulative over the workloads run so far).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{self, Report, Target};
use crate::{Args, MAX_MODEL_LEN, model_path};

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
                    .args(["--parallel", &seqs.to_string()])
                    .args(["-c", &(seqs * MAX_MODEL_LEN).to_string()])
                    // Our backend's context: a KV stream per sequence, the same batch sizes.
                    .args([
                        "--no-kv-unified",
                        "-b",
                        "2048",
                        "-ub",
                        "512",
                        "--cont-batching",
                    ])
                    // No host-memory prompt cache: ours has none. Weight repacking stays on as
                    // in our backend: `cargo xtask bench` builds llama-server without AMX, whose
                    // repacked kernels die with SIGILL on this VM (else pass `--no-repack`).
                    .args(["--cache-ram", "0", "--no-webui"]);
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

/// Our HTTP server with `backend`, in a child process.
pub(crate) fn ours_http(a: &Args, backend: &str) -> Run {
    let port = free_port();
    let child = own_child(a, &["serve", &port.to_string(), backend])
        .stdout(Stdio::null())
        .spawn()
        .expect("the server child starts");
    over_http(
        a,
        format!("ours: {backend}"),
        child,
        (port, a.max_clients()),
    )
}

/// A peer, in a child process.
pub(crate) fn peer(a: &Args, peer: &Peer) -> Run {
    let port = free_port();
    let child = peer.spawn(a, port);
    over_http(a, peer.name().into(), child, (port, peer.max_seqs(a)))
}

/// Kills the server child however `over_http` ends, a panic included: an orphaned server would
/// hold its cores and skew every later measurement.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn over_http(a: &Args, system: String, child: Child, (port, max_seqs): (u16, u32)) -> Run {
    let mut guard = KillOnDrop(child);
    let child = &mut guard.0;
    let base = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(wait_healthy(&base, child, &system));
    runtime.block_on(load::run(&Target::Http(&base), &load::WARM_UP));
    let reports = a
        .workloads()
        .iter()
        .map(|w| {
            if w.clients > max_seqs {
                return None;
            }
            eprintln!("  {system}: {} x{}", w.mix.name(), w.clients);
            let mut report = runtime.block_on(load::run(&Target::Http(&base), w));
            report.peak_rss_mib = load::peak_rss_mib(child.id());
            Some(report)
        })
        .collect();
    drop(guard);
    Run { system, reports }
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
