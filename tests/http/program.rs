//! The `llm-pipeline` program as operators run it: a process of its own, started from an
//! installed copy with a clean environment, through the container's entrypoint script.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::JsonReply;

/// The program `cargo test` built beside this test binary.
pub(crate) fn program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llm-pipeline"))
}

/// A port nothing listens on.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a local port")
        .port()
}

/// `/health`'s status, if the server answers.
pub(crate) async fn health(port: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    body["status"].as_str().map(str::to_owned)
}

/// A running server process, killed when dropped.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Process {
    /// Starts `command` (which must listen on `port`).
    pub(crate) fn spawn(command: &mut Command, port: u16) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the program starts");
        Self { child, port }
    }

    /// Waits until `/health` says `status`; panics with the program's log after `limit`.
    pub(crate) async fn wait_for(&mut self, status: &str, limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if health(self.port).await.as_deref() == Some(status) {
                return;
            }
            if let Some(exit) = self.child.try_wait().expect("the child's state") {
                panic!("the program exited ({exit}): {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child.kill().ok();
        panic!("no {status} within {limit:?}: {}", self.log());
    }

    /// Sends `signal` (`TERM`, `KILL`) with the shell's own `kill`.
    pub(crate) fn signal(&self, signal: &str) {
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", self.child.id())])
            .status()
            .expect("sh runs");
        assert!(sent.success());
    }

    /// Waits for the exit, at most `limit`.
    pub(crate) async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().expect("the child's state") {
                return exit;
            }
            if started.elapsed() > limit {
                self.child.kill().ok();
                panic!("still running {limit:?} after the signal");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the program wrote to stderr (after it ended).
    pub(crate) fn log(&mut self) -> String {
        self.child.kill().ok();
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut stderr, &mut text).ok();
        }
        text
    }

    /// The shared libraries mapped into the process.
    pub(crate) fn mapped_libraries(&self) -> Vec<String> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.child.id()))
            .expect("the process's maps");
        let mut libs: Vec<String> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.contains(".so"))
            .map(str::to_owned)
            .collect();
        libs.sort();
        libs.dedup();
        libs
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The folder llama.cpp's shared libraries were loaded from into this test process (which
/// links them as the program does).
fn llama_lib_dir() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("our maps");
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libllama.so"))
        })
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
        .expect("libllama.so is loaded")
}

/// An installed copy of the program, as `cargo xtask dist` lays it out: `bin/llm-pipeline` and
/// `lib/llm-pipeline/` with llama.cpp's libraries and CPU variants, in a folder of its own.
fn install(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    let lib = dir.join("lib").join("llm-pipeline");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::copy(program(), bin.join("llm-pipeline")).unwrap();
    let libs = llama_lib_dir();
    let backends = libs.parent().unwrap().join("backends");
    for from in [libs, backends] {
        for entry in std::fs::read_dir(&from).unwrap().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().contains(".so") {
                // Copies follow version links: each name becomes a file of its own.
                std::fs::copy(entry.path(), lib.join(&name)).unwrap();
            }
        }
    }
    bin
}

fn entrypoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/entrypoint.sh")
}

/// The container's command, run with a clean environment: ai-runner's variables only.
fn container(bin: &Path, env: &HashMap<&str, String>) -> Command {
    let mut command = Command::new("sh");
    command
        .arg(entrypoint())
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .envs(env);
    command
}

#[tokio::test]
async fn an_installed_copy_runs_alone_through_the_container_entrypoint() {
    let dir = llm_pipeline::core::testing::scratch_dir("installed-program");
    let bin = install(&dir);
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let port = free_port();
    let env = HashMap::from([
        ("PIPELINE", "llm".to_owned()),
        ("MODEL_ID", crate::support::smollm2().display().to_string()),
        ("MODEL_DIR", models.display().to_string()),
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", port.to_string()),
        ("AUTH_TOKEN", "runner-token".to_owned()),
        ("MAX_NUM_SEQS", "3".to_owned()),
        ("MAX_MODEL_LEN", "1024".to_owned()),
        ("CPU_KV_CACHE_SPACE", "1".to_owned()),
        ("NUM_THREADS", "2".to_owned()),
    ]);
    let mut server = Process::spawn(&mut container(&bin, &env), port);
    server.wait_for("IDLE", Duration::from_secs(120)).await;

    // The llama.cpp it runs is the installed copy's, CPU variant included.
    let libs = server.mapped_libraries();
    let ours = |name: &str| {
        libs.iter()
            .any(|l| l.starts_with(dir.to_str().unwrap()) && l.contains(name))
    };
    assert!(ours("libllama.so"), "{libs:#?}");
    assert!(ours("libggml-base.so"), "{libs:#?}");
    assert!(ours("libggml-cpu-"), "{libs:#?}");

    // The Livepeer variables reached it: the capacity it declares is MAX_NUM_SEQS.
    let http = reqwest::Client::new();
    let info: Value = http
        .get(format!("http://127.0.0.1:{port}/hardware/info"))
        .bearer_auth("runner-token")
        .json_reply()
        .await;
    assert_eq!(info["capacity"], 3, "{info}");
    assert_eq!(info["pipeline"], "llm");
    let answer = http
        .post(format!("http://127.0.0.1:{port}/llm"))
        .bearer_auth("runner-token")
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 4, "{answer}");

    server.signal("TERM");
    assert!(server.exit_within(Duration::from_secs(10)).await.success());
    // The copy is hundreds of megabytes (a debug build): not left behind.
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_entrypoint_refuses_another_pipeline_and_a_missing_model() {
    let dir = llm_pipeline::core::testing::scratch_dir("entrypoint-refusals");
    let cases = [
        (
            HashMap::from([
                ("PIPELINE", "text-to-image".to_owned()),
                ("MODEL_ID", "x".to_owned()),
            ]),
            "PIPELINE=text-to-image",
        ),
        (HashMap::from([("PIPELINE", "llm".to_owned())]), "MODEL_ID"),
    ];
    for (env, says) in cases {
        let out = container(&dir, &env).output().expect("sh runs");
        assert_eq!(out.status.code(), Some(64), "{env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[tokio::test]
async fn help_names_every_variable_with_its_default() {
    let out = Command::new(program())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, var, default) in [
        ("--max-num-seqs", "MAX_NUM_SEQS", Some("128")),
        ("--max-model-len", "MAX_MODEL_LEN", Some("8192")),
        (
            "--max-num-batched-tokens",
            "MAX_NUM_BATCHED_TOKENS",
            Some("8192"),
        ),
        (
            "--gpu-memory-utilization",
            "GPU_MEMORY_UTILIZATION",
            Some("0.85"),
        ),
        ("--use-8bit", "USE_8BIT", Some("false")),
        ("--tensor-parallel-size", "TENSOR_PARALLEL_SIZE", Some("1")),
        (
            "--pipeline-parallel-size",
            "PIPELINE_PARALLEL_SIZE",
            Some("1"),
        ),
        ("--model", "MODEL_ID", None),
        ("--model-dir", "MODEL_DIR", Some("/models")),
        ("--api-key", "AUTH_TOKEN", None),
        ("--host", "HOST", Some("0.0.0.0")),
        ("--port", "PORT", Some("8000")),
        ("--orchestrator", "ORCHESTRATOR_URL", None),
        ("--orchestrator-secret", "ORCHESTRATOR_SECRET", None),
    ] {
        let at = help
            .find(&format!("{flag} <"))
            .unwrap_or_else(|| panic!("{flag} missing:\n{help}"));
        let entry = &help[at..];
        let entry = &entry[..entry[2..].find("\n      --").map_or(entry.len(), |e| e + 2)];
        // Help wraps lines: compare with single spaces.
        let entry = entry.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(entry.contains(&format!("[env: {var}")), "{entry}");
        if let Some(default) = default {
            assert!(entry.contains(&format!("[default: {default}]")), "{entry}");
        }
    }
    // A bad value is named by flag and variable, before anything loads.
    let out = Command::new(program())
        .args(["serve", "--model", "m.gguf", "--max-num-seqs", "many"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--max-num-seqs") && stderr.contains("MAX_NUM_SEQS"),
        "{stderr}"
    );
}

#[tokio::test]
async fn chat_answers_a_prompt_and_holds_a_conversation_and_bench_measures() {
    let model = crate::support::smollm2();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(program())
            .args(args)
            .arg("--model")
            .arg(&model)
            .args(["--max-model-len", "512", "--threads", "2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the program starts");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // One answer: the text on stdout, usage on stderr; greedy, so the same twice.
    let args = [
        "chat",
        "--max-tokens",
        "8",
        "What is the capital of France?",
    ];
    let (answer, log) = run(&args, "");
    assert!(!answer.trim().is_empty());
    assert!(log.contains(" completion = "), "{log}");
    assert_eq!(run(&args, "").0, answer);
    // A conversation from stdin: one answer per line, until an empty line.
    let (talk, log) = run(
        &["chat", "--max-tokens", "6"],
        "Hello!\nAnd who are you?\n\n",
    );
    assert_eq!(log.matches("usage:").count(), 2, "{log}");
    assert!(!talk.trim().is_empty());
    // The speed probe: one sequence, then a batch, in tokens per second.
    let (speed, _) = run(&["bench", "--tokens", "4", "--batch", "2"], "");
    for batch in ["   1 sequence(s): ", "   2 sequence(s): "] {
        let line = speed
            .lines()
            .find(|l| l.starts_with(batch))
            .unwrap_or_else(|| panic!("{speed}"));
        let rate: f64 = line
            .split(" = ")
            .nth(1)
            .and_then(|r| r.strip_suffix(" tokens/s"))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(rate > 0.0, "{line}");
    }
    assert!(speed.contains("2 threads"), "{speed}");
}
