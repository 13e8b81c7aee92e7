//! Downloads against a local hub: an HTTP server on loopback that answers the Hugging Face
//! Hub's API and file routes (`/api/models/{repo}/revision/main`, `/{repo}/resolve/main/{file}`
//! with `Range`, `x-repo-commit` and `etag`) from memory, with `HF_ENDPOINT` pointing at it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use llm_pipeline_core::Error;
use llm_pipeline_core::config::{HubSettings, PipelineConfig};
use llm_pipeline_core::model::ModelSource;

const REPO: &str = "org/tiny";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_secret";

/// What the hub serves and what it saw.
struct Hub {
    files: HashMap<String, Vec<u8>>,
    /// Requests to cut halfway through the body, per file.
    cuts: Mutex<HashMap<String, usize>>,
    /// `GET path range` of every request.
    seen: Mutex<Vec<String>>,
    requests: AtomicUsize,
    stop: AtomicBool,
}

struct Running {
    hub: Arc<Hub>,
    endpoint: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let hub = Arc::new(Hub {
            files,
            cuts: Mutex::default(),
            seen: Mutex::default(),
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let served = Arc::clone(&hub);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if served.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    served.requests.fetch_add(1, Ordering::SeqCst);
                    let _ = answer(&served, stream);
                }
            }
        });
        Self {
            hub,
            endpoint,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.hub.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn answer(hub: &Hub, mut stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let range = headers.get("range").cloned().unwrap_or_default();
    hub.seen.lock().unwrap().push(format!("GET {path} {range}"));
    if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
        let body = r#"{"error":"Invalid credentials in Authorization header"}"#;
        return reply(
            &mut stream,
            "401 Unauthorized",
            &[],
            body.as_bytes(),
            body.len(),
        );
    }
    if path == format!("/api/models/{REPO}/revision/main") {
        let mut names: Vec<&String> = hub.files.keys().collect();
        names.sort();
        let siblings: Vec<String> = names
            .iter()
            .map(|n| format!(r#"{{"rfilename":"{n}"}}"#))
            .collect();
        let body = format!(r#"{{"sha":"{SHA}","siblings":[{}]}}"#, siblings.join(","));
        return reply(&mut stream, "200 OK", &[], body.as_bytes(), body.len());
    }
    let prefix = format!("/{REPO}/resolve/main/");
    let Some(data) = path.strip_prefix(&prefix).and_then(|f| hub.files.get(f)) else {
        return reply(&mut stream, "404 Not Found", &[], b"Entry not found", 15);
    };
    let file = path.strip_prefix(&prefix).unwrap_or_default().to_owned();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => (
            a.parse::<usize>().unwrap_or(0),
            b.parse::<usize>()
                .map_or(data.len() - 1, |b| b.min(data.len() - 1)),
        ),
        None => (0, data.len() - 1),
    };
    let etag = format!("\"etag-{file}-{}\"", data.len()).replace('/', "_");
    let extra = [
        ("x-repo-commit", SHA.to_owned()),
        ("etag", etag),
        (
            "content-range",
            format!("bytes {start}-{end}/{}", data.len()),
        ),
    ];
    let body = &data[start..=end];
    let mut cuts = hub.cuts.lock().unwrap();
    let cut = match cuts.get_mut(&file) {
        Some(n) if *n > 0 && body.len() > 1 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    drop(cuts);
    if cut {
        // Declare the whole range, send half, hang up: an interrupted transfer.
        return reply(
            &mut stream,
            "206 Partial Content",
            &extra,
            &body[..body.len() / 2],
            body.len(),
        );
    }
    reply(&mut stream, "206 Partial Content", &extra, body, body.len())
}

fn reply(
    stream: &mut TcpStream,
    status: &str,
    extra: &[(&str, String)],
    body: &[u8],
    declared: usize,
) -> std::io::Result<()> {
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Length: {declared}\r\nConnection: close\r\n");
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmp-hub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(model_dir: &Path, endpoint: &str, token: Option<&str>, offline: bool) -> PipelineConfig {
    PipelineConfig::default()
        .with_model_id(REPO)
        .with_model_dir(model_dir)
        .with_hub(HubSettings {
            endpoint: Some(endpoint.to_owned()),
            token: token.map(str::to_owned),
            offline,
        })
}

fn fetch(config: &PipelineConfig) -> Result<PathBuf, Error> {
    ModelSource::parse(&config.model_id).fetch(config)
}

fn variable(e: &Error) -> &'static str {
    match e {
        Error::Config { variable, .. } => variable,
        other => panic!("not a configuration error: {other}"),
    }
}

#[test]
fn a_local_hub_fills_model_dir_resumes_and_is_not_needed_afterwards() {
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let files: HashMap<String, Vec<u8>> = [
        ("config.json", br#"{"model_type":"llama"}"#.to_vec()),
        ("tokenizer.json", b"{}".to_vec()),
        ("model.safetensors", weights.clone()),
        ("README.md", b"# tiny".to_vec()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut hub = Running::start(files);
    let model_dir = scratch("cache");

    // A wrong token and no token: the hub's 401, reported with the variable to fix.
    let err = fetch(&config(&model_dir, &hub.endpoint, Some("hf_wrong"), false)).unwrap_err();
    assert_eq!(variable(&err), "HF_TOKEN", "{err}");
    assert!(
        err.to_string().contains("401") && err.to_string().contains("cannot read it"),
        "{err}"
    );
    let err = fetch(&config(&model_dir, &hub.endpoint, None, false)).unwrap_err();
    assert!(err.to_string().contains("set HF_TOKEN"), "{err}");

    // Offline: nothing is fetched, and the hub is never contacted.
    let before = hub.hub.requests.load(Ordering::SeqCst);
    let err = fetch(&config(&model_dir, &hub.endpoint, Some(TOKEN), true)).unwrap_err();
    assert_eq!(variable(&err), "HF_HUB_OFFLINE", "{err}");
    assert_eq!(hub.hub.requests.load(Ordering::SeqCst), before);

    // Every attempt at the weights is cut halfway: the download fails and leaves a part file.
    hub.hub
        .cuts
        .lock()
        .unwrap()
        .insert("model.safetensors".into(), 5);
    let online = config(&model_dir, &hub.endpoint, Some(TOKEN), false);
    let err = fetch(&online).unwrap_err();
    assert_eq!(variable(&err), "HF_ENDPOINT", "{err}");
    let blobs = model_dir.join("models--org--tiny/blobs");
    let part: u64 = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        part > 0 && part < weights.len() as u64,
        "part file of {part} bytes"
    );

    // The partial snapshot is never served as a model, not even offline.
    let err = fetch(&config(&model_dir, &hub.endpoint, Some(TOKEN), true)).unwrap_err();
    assert!(err.to_string().contains("was interrupted"), "{err}");

    // The next start resumes from the part file and completes the snapshot.
    hub.hub.seen.lock().unwrap().clear();
    let snapshot = fetch(&online).unwrap();
    assert_eq!(
        snapshot,
        model_dir.join(format!("models--org--tiny/snapshots/{SHA}"))
    );
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        std::fs::read_to_string(snapshot.join("config.json")).unwrap(),
        r#"{"model_type":"llama"}"#
    );
    assert!(
        !snapshot.join("README.md").exists(),
        "only what a backend reads"
    );
    assert_eq!(
        std::fs::read_to_string(model_dir.join("models--org--tiny/refs/main")).unwrap(),
        SHA
    );
    let seen = hub.hub.seen.lock().unwrap().clone();
    let resumed = seen.iter().any(|r| {
        r.contains("model.safetensors bytes=")
            && !r.ends_with("bytes=0-0")
            && !r.ends_with("bytes=0-")
    });
    assert!(resumed, "no resumed range request: {seen:?}");

    // With the hub gone, the cache serves.
    hub.stop();
    assert_eq!(fetch(&online).unwrap(), snapshot);
    std::fs::remove_dir_all(&model_dir).unwrap();
}
