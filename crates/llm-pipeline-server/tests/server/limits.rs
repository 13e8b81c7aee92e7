//! The edge's limits on a real socket: slow and idle clients hold a connection for a bounded
//! time and never keep `/health` from answering; a body that does not arrive gets 408.

use std::time::{Duration, Instant};

use llm_pipeline_server::{ServeOptions, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Setup, chat_body, listen_with, server};

/// GET `path` on a fresh connection; returns the status line.
async fn status_line(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_beside_a_thousand_idle_or_slow_connections() {
    let s = server(Setup::default());
    let config = ServerConfig::default()
        .with_timeouts(Duration::from_secs(2), Duration::from_secs(2))
        .with_shutdown_grace(Duration::from_millis(100));
    let net = listen_with(&s.router, ServeOptions::from(&config)).await;
    // 500 connections that say nothing, 500 that send half a request's headers.
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut c = TcpStream::connect(net.addr).await.expect("a connection");
        if i % 2 == 1 {
            c.write_all(b"GET /health HTTP/1.1\r\nhost: slow\r\nx-wait: ")
                .await
                .unwrap();
        }
        held.push(c);
    }
    let started = Instant::now();
    assert_eq!(status_line(net.addr, "/health").await, "HTTP/1.1 200 OK");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "/health answered in {:?}",
        started.elapsed()
    );
    // The header timeout closes every one of them: each read ends (EOF or a 408) in time.
    let deadline = Duration::from_secs(10);
    for c in &mut held {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(deadline, c.read(&mut buf)).await;
        assert!(
            read.is_ok(),
            "a held connection was not closed within {deadline:?}"
        );
    }
    assert_eq!(status_line(net.addr, "/health").await, "HTTP/1.1 200 OK");
    net.stop.send(()).unwrap();
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_408() {
    let s = server(Setup {
        config: ServerConfig::default()
            .with_timeouts(Duration::from_secs(5), Duration::from_millis(300)),
        ..Setup::default()
    });
    let config = ServerConfig::default().with_shutdown_grace(Duration::from_millis(100));
    let net = listen_with(&s.router, ServeOptions::from(&config)).await;
    let body = chat_body("hi", 4).to_string();
    let mut c = TcpStream::connect(net.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut answer))
        .await
        .expect("an answer before the client gives up")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
    net.stop.send(()).unwrap();
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let s = server(Setup::default());
    let config = ServerConfig::default()
        .with_timeouts(Duration::from_millis(500), Duration::from_secs(2))
        .with_max_connections(2)
        .with_shutdown_grace(Duration::from_millis(100));
    let net = listen_with(&s.router, ServeOptions::from(&config)).await;
    let _a = TcpStream::connect(net.addr).await.unwrap();
    let _b = TcpStream::connect(net.addr).await.unwrap();
    // The third is accepted by the kernel but served only when a slot frees: after the
    // idle two time out.
    let started = Instant::now();
    assert_eq!(status_line(net.addr, "/health").await, "HTTP/1.1 200 OK");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "served at once despite the cap: {:?}",
        started.elapsed()
    );
    net.stop.send(()).unwrap();
}

/// Reads one whole response (headers, then `content-length` bytes) from a kept-alive connection.
async fn read_response(c: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed mid-response: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The idle and header clocks are apart: a request that takes longer than both is never cut; a
/// kept-alive connection may then sit idle longer than the header clock and still be served; it
/// closes cleanly once idle longer than the idle clock; and a request whose headers stall is cut
/// at the header clock, however long the idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_slow_headers_have_their_own_clocks() {
    let (header, idle) = (Duration::from_millis(500), Duration::from_millis(1500));
    let s = server(Setup {
        step_delay: Duration::from_millis(1200),
        ..Setup::default()
    });
    let config = ServerConfig::default()
        .with_timeouts(header, Duration::from_secs(5))
        .with_idle_timeout(idle)
        .with_shutdown_grace(Duration::from_millis(100));
    let net = listen_with(&s.router, ServeOptions::from(&config)).await;
    let mut c = TcpStream::connect(net.addr).await.unwrap();
    let body = chat_body("hi", 2).to_string();
    let started = Instant::now();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let answer = read_response(&mut c).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() > header + idle, "{:?}", started.elapsed());
    // Idle for twice the header clock, then the next request on the same connection.
    tokio::time::sleep(2 * header).await;
    c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut c).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let idle_since = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(4 * idle, c.read(&mut buf))
        .await
        .expect("the idle connection closes")
        .unwrap();
    assert_eq!(n, 0, "a clean close");
    let waited = idle_since.elapsed();
    assert!(waited >= idle - Duration::from_millis(100), "{waited:?}");

    let mut slow = TcpStream::connect(net.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let stalled = Instant::now();
    let read = tokio::time::timeout(4 * idle, slow.read(&mut buf))
        .await
        .expect("the stalled request is cut");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(stalled.elapsed() < idle, "{:?}", stalled.elapsed());
    net.stop.send(()).unwrap();
}
