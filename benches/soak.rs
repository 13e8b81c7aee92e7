//! Soak: the HTTP server on SmolLM2 (llama.cpp) under mixed load for a long time, with faults
//! injected into the backend, to show that faults stay with the requests they hit, that
//! `/health` tells the truth, and that memory does not grow.
//!
//! ```text
//! cargo xtask soak [--minutes 30] [--clients 16] [--fault-every 120]
//! ```
//!
//! It checks behaviour, not speed, so the xtask runs it in the tests' build (`cargo test
//! --bench soak -- --bench …`).
//!
//! Clients send, each drawing at random: chat completions whole or streamed (55%), streams they
//! drop after two chunks (10%), bad requests that must get a 4xx (10%), Livepeer `/llm`
//! requests (15%) and long prompts (10%). Every `--fault-every` seconds the backend's next step
//! suffers a fault, in turn: a step failure pinned on one sequence (the engine computes it
//! again: no request fails), a step failure it cannot pin (that step's requests fail), and a
//! panic (that step's requests fail; the engine goes on). A poller reads `/health` every 250 ms.
//! The report: requests served, failed, refused, dropped, bad requests answered, the resident
//! memory after warm-up and at the end, and every `/health` transition.
//!
//! Without `--bench` (as `cargo test --all-targets` runs benches) it is a 20-second smoke run
//! that asserts the same properties.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::core::load::{self, ModelFiles};
use llm_pipeline::core::pipeline::EnginePipeline;
use llm_pipeline::core::testing::{Fault, FaultSwitch, Faulty};
use llm_pipeline::llama_cpp::LlamaCppBackend;
use llm_pipeline::server::{ServeOptions, ServerConfig, ServerState, router, serve};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[derive(Debug)]
struct Args {
    duration: Duration,
    clients: usize,
    fault_every: Duration,
    smoke: bool,
}

fn parse_args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let smoke = !argv.iter().any(|a| a == "--bench");
    let mut args = Args {
        duration: Duration::from_secs(if smoke { 20 } else { 30 * 60 }),
        clients: if smoke { 6 } else { 16 },
        fault_every: Duration::from_secs(if smoke { 5 } else { 120 }),
        smoke,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a flag's value").clone();
        match flag.as_str() {
            "--minutes" => {
                let minutes: f64 = value().parse().expect("--minutes takes a number");
                args.duration = Duration::from_secs_f64(minutes * 60.0);
            }
            "--clients" => args.clients = value().parse().expect("--clients takes a count"),
            "--fault-every" => {
                let secs: f64 = value().parse().expect("--fault-every takes seconds");
                args.fault_every = Duration::from_secs_f64(secs);
            }
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    served: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    dropped: AtomicU64,
    bad_refused: AtomicU64,
    bad_answered_wrongly: AtomicU64,
    server_errors: AtomicU64,
    /// The bad requests not refused with a 4xx: which, and the status.
    wrong: std::sync::Mutex<Vec<(u64, u16)>>,
}

impl Tally {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Resident and peak resident memory of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn load(switch: FaultSwitch) -> EnginePipeline {
    let model = llm_pipeline::core::testing::smollm2();
    let config = PipelineConfig::default()
        .with_model_id(model.to_string_lossy())
        .with_max_model_len(1024)
        .with_max_num_seqs(8)
        .with_max_queue(32)
        .with_threads(2)
        .with_cpu_kv_cache_bytes(256 << 20)
        .validated()
        .expect("a valid configuration");
    let files = ModelFiles::locate(&config).expect("the SmolLM2 fixture");
    let meta = files
        .require_gguf("the soak bench")
        .expect("SmolLM2's GGUF");
    let backend_config = config.clone();
    load::start(&config, &files, move || {
        let backend = LlamaCppBackend::load(meta.path(), &backend_config)?;
        Ok(Faulty::new(backend, switch))
    })
    .expect("SmolLM2 loads")
}

/// The request bodies clients send that must be refused with a 4xx.
fn bad_request(i: u64) -> (String, &'static str) {
    let body = match i % 5 {
        0 => "{\"messages\": [".to_owned(),
        1 => json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).to_string(),
        2 => json!({"messages": [{"role": "wizard", "content": "hi"}]}).to_string(),
        3 => json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 9.5})
            .to_string(),
        _ => json!({"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}})
            .to_string(),
    };
    (body, "/v1/chat/completions")
}

const QUESTIONS: [&str; 6] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a rainbow is.",
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
];

/// How one request ended, from the client's side.
enum Outcome {
    Served,
    Failed,
    Refused,
    Dropped,
}

/// Sends `body` to `path`; reads the answer whole, or streamed to the end, or (with `drop_after`)
/// for that many chunks before hanging up.
async fn exchange(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    drop_after: Option<usize>,
    tally: &Tally,
) -> Outcome {
    let response = match http.post(url).json(body).send().await {
        Ok(r) => r,
        Err(_) => return Outcome::Failed,
    };
    let status = response.status().as_u16();
    if status == 429 || status == 503 {
        return Outcome::Refused;
    }
    if status >= 500 {
        Tally::add(&tally.server_errors);
        return Outcome::Failed;
    }
    if status != 200 {
        return Outcome::Failed;
    }
    let streamed = body["stream"].as_bool().unwrap_or(false);
    let mut response = response;
    if !streamed {
        return match response.json::<Value>().await {
            Ok(v) if v["choices"][0]["message"].is_object() => Outcome::Served,
            _ => Outcome::Failed,
        };
    }
    let mut text = String::new();
    let mut chunks = 0;
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => {
                chunks += 1;
                text.push_str(&String::from_utf8_lossy(&bytes));
                if drop_after.is_some_and(|n| chunks >= n) {
                    return Outcome::Dropped;
                }
            }
            Ok(None) => break,
            Err(_) => return Outcome::Failed,
        }
    }
    let failed = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .any(|d| d.starts_with("{\"error\""));
    if failed || !text.contains("[DONE]") && !text.contains("finish_reason\":\"") {
        Outcome::Failed
    } else {
        Outcome::Served
    }
}

async fn client(id: u64, base: String, deadline: Instant, tally: Arc<Tally>) {
    let http = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(id);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let roll = rng.random_range(0..100);
        let question = QUESTIONS[rng.random_range(0..QUESTIONS.len())];
        let stream = rng.random_bool(0.5);
        let chat = |content: String, max_tokens: u32, stream: bool| {
            json!({
                "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "stream": stream,
            })
        };
        let chat_url = format!("{base}/v1/chat/completions");
        let outcome = match roll {
            0..55 => {
                let max_tokens = rng.random_range(8..64);
                exchange(
                    &http,
                    &chat_url,
                    &chat(question.into(), max_tokens, stream),
                    None,
                    &tally,
                )
                .await
            }
            55..65 => {
                exchange(
                    &http,
                    &chat_url,
                    &chat(question.into(), 64, true),
                    Some(2),
                    &tally,
                )
                .await
            }
            65..75 => {
                let kind = id * 1000 + n;
                let (body, path) = bad_request(kind);
                let status = http
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                if (400..500).contains(&status) {
                    Tally::add(&tally.bad_refused);
                } else {
                    Tally::add(&tally.bad_answered_wrongly);
                    if let Ok(mut wrong) = tally.wrong.lock() {
                        wrong.push((kind % 5, status));
                    }
                    if status >= 500 {
                        Tally::add(&tally.server_errors);
                    }
                }
                continue;
            }
            75..90 => {
                let body = json!({
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 32,
                    "stream": stream,
                });
                exchange(&http, &format!("{base}/llm"), &body, None, &tally).await
            }
            _ => {
                let long = format!("{} Summarize all of this in one line.", question.repeat(40));
                exchange(&http, &chat_url, &chat(long, 8, stream), None, &tally).await
            }
        };
        Tally::add(match outcome {
            Outcome::Served => &tally.served,
            Outcome::Failed => &tally.failed,
            Outcome::Refused => &tally.refused,
            Outcome::Dropped => &tally.dropped,
        });
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let switch = FaultSwitch::default();
    let pipeline = {
        let switch = switch.clone();
        tokio::task::spawn_blocking(move || load(switch))
            .await
            .expect("the load ran")
    };
    let engine = pipeline.engine().clone();
    let state = ServerState::new(pipeline, ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        router(state),
        async move {
            let _ = stopped.await;
        },
        ServeOptions::from(&ServerConfig::default()),
    ));

    let started = Instant::now();
    let deadline = started + args.duration;
    let tally = Arc::new(Tally::default());
    eprintln!(
        "soak: {:?} with {} clients, a fault every {:?}{}",
        args.duration,
        args.clients,
        args.fault_every,
        if args.smoke { " (smoke run)" } else { "" }
    );
    let clients: Vec<_> = (0..args.clients as u64)
        .map(|id| tokio::spawn(client(id, base.clone(), deadline, Arc::clone(&tally))))
        .collect();

    // `/health` every 250 ms: its transitions.
    let poller = {
        let base = base.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut last = String::new();
            let mut transitions = Vec::new();
            while Instant::now() < deadline {
                let status = match http.get(format!("{base}/health")).send().await {
                    Ok(r) => r.json::<Value>().await.map_or_else(
                        |_| "unreadable".to_owned(),
                        |v| v["status"].as_str().unwrap_or("?").to_owned(),
                    ),
                    Err(_) => "unreachable".to_owned(),
                };
                if status != last {
                    transitions.push((started.elapsed(), status.clone()));
                    last = status;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            transitions
        })
    };

    // Memory after warm-up (a tenth of the run, at least 5 s), faults on a timer.
    let warm_up = (args.duration / 10).max(Duration::from_secs(5));
    let mut faults = Vec::new();
    let mut memory_start = None;
    let mut samples = Vec::new();
    let rotation = [Fault::OneSequence, Fault::Step, Fault::Panic];
    let mut next_fault = started + args.fault_every;
    let mut next_sample = started + warm_up;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        if now >= next_sample {
            let m = memory();
            memory_start.get_or_insert(m);
            samples.push(m.0);
            next_sample = now + (args.duration / 20).max(Duration::from_secs(1));
        }
        if now >= next_fault && now + Duration::from_secs(2) < deadline {
            let fault = rotation[faults.len() % rotation.len()];
            switch.arm(fault);
            faults.push((started.elapsed(), fault));
            next_fault = now + args.fault_every;
        }
    }
    for c in clients {
        c.await.expect("a client ran");
    }
    let transitions = poller.await.expect("the poller ran");
    // Every request is over: the engine holds nothing.
    let settle = Instant::now();
    let stats = loop {
        let s = engine.stats();
        if s.in_flight == 0 || settle.elapsed() > Duration::from_secs(10) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let memory_end = memory();
    let health = reqwest::get(format!("{base}/health"))
        .await
        .expect("the server answers")
        .json::<Value>()
        .await
        .expect("a health body")["status"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    stop.send(()).ok();
    server.await.ok();

    let t = &tally;
    let memory_start = memory_start.unwrap_or(memory_end);
    let half = &samples[samples.len() / 2..];
    let late_max = half.iter().copied().fold(0.0, f64::max);
    let late_min = half.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "| minutes | clients | served | failed | refused | dropped | bad → 4xx | bad → other | of them 5xx | faults (pinned/step/panic) | RSS after warm-up → end (MiB) | RSS range, second half | /health transitions |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let count = |f: Fault| faults.iter().filter(|(_, x)| *x == f).count();
    println!(
        "| {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{}/{} | {:.0} → {:.0} | {:.0}–{:.0} | {} |",
        args.duration.as_secs_f64() / 60.0,
        args.clients,
        Tally::get(&t.served),
        Tally::get(&t.failed),
        Tally::get(&t.refused),
        Tally::get(&t.dropped),
        Tally::get(&t.bad_refused),
        Tally::get(&t.bad_answered_wrongly),
        Tally::get(&t.server_errors),
        count(Fault::OneSequence),
        count(Fault::Step),
        count(Fault::Panic),
        memory_start.0,
        memory_end.0,
        late_min,
        late_max,
        transitions
            .iter()
            .map(|(at, s)| format!("{s} at {:.0} s", at.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    println!(
        "engine: {} steps, {} generated tokens, {} faults ({} panics), {} cancelled, {} preemptions; \
         peak RSS {:.0} MiB; final /health {health}",
        stats.steps,
        stats.generated_tokens,
        stats.faults,
        stats.panics,
        stats.cancelled,
        stats.preemptions,
        memory_end.1,
    );
    for (at, fault) in &faults {
        println!("fault at {:.0} s: {fault:?}", at.as_secs_f64());
    }

    // What must hold whatever the run's length.
    assert_eq!(
        stats.in_flight, 0,
        "every request is counted out: {stats:?}"
    );
    assert!(
        !stats.broken,
        "a single panic does not break the engine: {stats:?}"
    );
    assert_eq!(
        Tally::get(&t.bad_answered_wrongly),
        0,
        "every bad request gets a 4xx; (kind, status) of those that did not: {:?}",
        t.wrong.lock().map(|w| w.clone()).unwrap_or_default()
    );
    // A fault the backend cannot pin fails the requests of its step, at most MAX_NUM_SEQS.
    let unpinned = (count(Fault::Step) + count(Fault::Panic)) as u64;
    assert!(
        Tally::get(&t.failed) <= unpinned * 8,
        "faults stay with the step they hit: {} failed after {unpinned} unpinned faults",
        Tally::get(&t.failed)
    );
    assert!(Tally::get(&t.served) > 0, "requests were served");
    assert!(
        health == "OK" || health == "IDLE",
        "the server is healthy at the end: {health}"
    );
    assert!(
        transitions.iter().all(|(_, s)| s == "OK" || s == "IDLE"),
        "no fault here persists, so /health never says otherwise: {transitions:?}"
    );
}
