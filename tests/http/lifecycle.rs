//! `llm-pipeline serve`, a process of its own: it answers `/health` with `LOADING` while the
//! model is still downloading, and SIGTERM stops it at once even then.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::program::{free_port, health, program};

#[tokio::test]
async fn sigterm_during_a_stalled_download_exits_at_once() {
    // A hub that accepts connections and never answers: the model's download stalls.
    let hub = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hub_addr = hub.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = hub.incoming().collect();
        drop(held);
    });
    let models = llm_pipeline::core::testing::scratch_dir("serve-sigterm");
    let port = free_port();
    let mut child = Command::new(program())
        .args([
            "serve",
            "--model",
            "stalled/model",
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(port.to_string())
        .env("HF_ENDPOINT", format!("http://{hub_addr}"))
        .env("MODEL_DIR", &models)
        .env_remove("MODEL_ID")
        .env_remove("HF_HUB_OFFLINE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the program starts");

    // It answers while the download hangs.
    let started = Instant::now();
    let mut status = None;
    while started.elapsed() < Duration::from_secs(30) {
        status = health(port).await;
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status.as_deref(), Some("LOADING"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(health(port).await.as_deref(), Some("LOADING"));

    // The shell's own `kill`: no procps needed.
    let signalled = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .expect("sh runs");
    assert!(signalled.success());
    let stopping = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("the child's state") {
            break exit;
        }
        if stopping.elapsed() > Duration::from_secs(10) {
            child.kill().ok();
            panic!("still running 10 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stopped {:?} after SIGTERM",
        stopping.elapsed()
    );
}
