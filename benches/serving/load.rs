//! The load generator: concurrent streamed chat requests against a pipeline in this process or
//! any OpenAI-compatible server, and the figures serving benchmarks report.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use llm_pipeline::core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline::core::pipeline::{EnginePipeline, Pipeline};
use serde_json::Value;

/// Chat prompts (`prompts.json`, which the GPU check ships too); client `c` in round `r` asks
/// `PROMPTS[(c + r) % len]`.
pub(crate) static PROMPTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("prompts.json")).expect("prompts.json is a list of strings")
});

/// The shared body of the prefill-heavy prompts: about 300 tokens of SmolLM2's vocabulary.
const DOCUMENT: &str = "The harbour town of Wrenmouth grew up around a narrow inlet on a rocky coast. \
    For three centuries its people fished for cod and herring, built small wooden boats in yards \
    along the shore, and traded salt, rope and dried fish with the inland markets. In the \
    eighteenth century a stone breakwater was built to shelter the fleet from winter storms, and a \
    lighthouse followed fifty years later on the headland to the north. The railway arrived in \
    1868 and brought visitors from the cities, who came for the sea air and the long sandy beach \
    to the south of the harbour. Hotels, a pier and a promenade were built within twenty years. \
    The fishing fleet declined after the Second World War as stocks fell and larger ports took \
    the trade, but tourism kept the town alive. Today the old net lofts are galleries and cafes, \
    the boatyards repair yachts, and a museum in the former customs house tells the story of the \
    fishermen, the smugglers and the lifeboat crews who saved hundreds of sailors from wrecks on \
    the reefs beyond the breakwater. Every August the town holds a regatta, and every December \
    the boats in the harbour are decorated with lights.";

/// SmolLM2's end-of-generation tokens (`<|endoftext|>`, `<|im_end|>`), banned so that every
/// answer is `max_tokens` long on every server.
pub(crate) const BANNED: [u32; 2] = [0, 2];

/// Which prompts the clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mix {
    /// Short chat prompts ([`PROMPTS`]).
    Chat,
    /// Prefill-heavy: a ~300-token document to summarize, unique from its first token on so no
    /// server can reuse a cached prefix.
    Prefill,
    /// Multi-turn chat: each client holds one conversation, a ~110-token opening unique to the
    /// client and pass, then follow-ups ([`FOLLOW_UPS`]), each request carrying the whole
    /// history with the answers so far. A server with prefix caching computes only each turn's
    /// new tokens.
    Turns,
    /// The chat prompts with a `response_format` JSON schema ([`ANSWER_SCHEMA`]): what
    /// constrained decoding costs. An answer ends when its JSON closes, so answers may be
    /// shorter than `max_tokens`; tokens/s counts the tokens generated.
    Json,
    /// Copy-heavy: the document to restate in full, where speculative decoding by prompt
    /// lookup guesses most tokens (summaries, quotes, edits, extraction). New in every pass.
    Copy,
}

/// The schema of [`Mix::Json`]: an answer in a free string, with a few typed fields around it.
pub(crate) fn answer_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "topic": {"type": "string", "maxLength": 40},
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "tags": {"type": "array", "items": {"enum": ["science", "history", "life", "other"]}}
        },
        "required": ["topic", "answer", "confidence", "tags"],
        "additionalProperties": false
    })
}

/// The follow-up questions of [`Mix::Turns`]; turn `r` asks `FOLLOW_UPS[(r - 1) % len]`.
const FOLLOW_UPS: [&str; 4] = [
    "Tell me more about that.",
    "What happened next?",
    "Why does that matter?",
    "Summarize our conversation so far.",
];

impl Mix {
    /// The mix's name in tables and JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Prefill => "prefill",
            Self::Turns => "turns",
            Self::Json => "json",
            Self::Copy => "copy",
        }
    }

    /// What client `c` asks in round `r` of pass `pass`. Chat prompts repeat, as a service's
    /// system prompts and common questions do; prefill prompts are new in every pass too.
    pub(crate) fn prompt(self, c: u32, r: u32, pass: u32) -> String {
        match self {
            Self::Chat | Self::Json => PROMPTS[(c + r) as usize % PROMPTS.len()].clone(),
            Self::Prefill => format!(
                "Document {pass}-{c}-{r}. {DOCUMENT} Summarize the document in one sentence."
            ),
            Self::Copy => format!(
                "Document {pass}-{c}-{r}. {DOCUMENT} Repeat the document above word for word."
            ),
            Self::Turns if r == 0 => {
                let opening = &DOCUMENT[..DOCUMENT.find(" Hotels").unwrap_or(DOCUMENT.len())];
                format!("Conversation {pass}-{c}. {opening} What do you think of this town?")
            }
            Self::Turns => FOLLOW_UPS[(r as usize - 1) % FOLLOW_UPS.len()].to_owned(),
        }
    }
}

/// What to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// The prompts.
    pub(crate) mix: Mix,
    /// Concurrent clients.
    pub(crate) clients: u32,
    /// Requests each client sends, one after another.
    pub(crate) rounds: u32,
    /// Which pass over the workloads this is (see [`Mix::prompt`]).
    pub(crate) pass: u32,
    /// `max_tokens` of every request.
    pub(crate) max_tokens: u32,
}

/// One short request before the measured loads, so that no system's first-use costs count.
pub(crate) const WARM_UP: Load = Load {
    mix: Mix::Chat,
    clients: 1,
    rounds: 1,
    pass: 0,
    max_tokens: 4,
};

/// Where to send it.
pub(crate) enum Target<'a> {
    /// A pipeline in this process: no HTTP.
    Pipeline(&'a EnginePipeline),
    /// An OpenAI-compatible server at this base URL (`http://host:port`).
    Http(&'a str),
}

/// One request's timings and answer.
#[derive(Debug, Clone)]
struct Sample {
    start: Instant,
    first: Instant,
    end: Instant,
    tokens: u32,
    text: String,
}

/// The figures of one load.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Report {
    /// Engine loop time outside the backend over all engine loop time, for the in-process
    /// engine; `None` elsewhere.
    pub(crate) engine_share: Option<f64>,
    pub(crate) clients: u32,
    pub(crate) requests: u32,
    pub(crate) tokens: u64,
    pub(crate) tokens_per_s: f64,
    pub(crate) ttft_p50_ms: f64,
    pub(crate) ttft_p99_ms: f64,
    pub(crate) tpot_p50_ms: f64,
    pub(crate) peak_rss_mib: f64,
}

impl Report {
    /// The report as a JSON object (also the line a child process prints).
    pub(crate) fn to_json(&self) -> Value {
        serde_json::json!({
            "clients": self.clients,
            "requests": self.requests,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "ttft_p50_ms": self.ttft_p50_ms,
            "ttft_p99_ms": self.ttft_p99_ms,
            "tpot_p50_ms": self.tpot_p50_ms,
            "peak_rss_mib": self.peak_rss_mib,
            "engine_share": self.engine_share,
        })
    }

    /// Parses [`Report::to_json`].
    pub(crate) fn from_json(v: &Value) -> Self {
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Self {
            engine_share: v["engine_share"].as_f64(),
            clients: f("clients") as u32,
            requests: f("requests") as u32,
            tokens: f("tokens") as u64,
            tokens_per_s: f("tokens_per_s"),
            ttft_p50_ms: f("ttft_p50_ms"),
            ttft_p99_ms: f("ttft_p99_ms"),
            tpot_p50_ms: f("tpot_p50_ms"),
            peak_rss_mib: f("peak_rss_mib"),
        }
    }
}

/// A greedy streamed request with usage, end-of-generation banned: the system prompt, then
/// `messages`.
pub(crate) fn request(
    model: &str,
    messages: &[ChatMessage],
    max_tokens: u32,
) -> ChatCompletionRequest {
    let mut all = vec![ChatMessage::system("You are a helpful assistant.")];
    all.extend_from_slice(messages);
    let mut request = ChatCompletionRequest::new(model, all)
        .with_temperature(0.0)
        .with_max_tokens(max_tokens)
        .streaming_with_usage();
    for token in BANNED {
        request = request.with_logit_bias(token, -100.0);
    }
    request
}

/// Runs `load` against `target` and reports its figures (`peak_rss_mib` left at 0).
pub(crate) async fn run(target: &Target<'_>, load: &Load) -> Report {
    // A fresh connection per request, for every system alike: reusing a pooled connection that
    // the server has just closed fails the request (hyper's `IncompleteMessage`), which
    // llama-server triggered here one run in a few.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client");
    let clients = (0..load.clients).map(|c| {
        let http = http.clone();
        async move {
            let mut samples = Vec::new();
            let mut history = Vec::new();
            for r in 0..load.rounds {
                if load.mix != Mix::Turns {
                    history.clear();
                }
                history.push(ChatMessage::user(load.mix.prompt(c, r, load.pass)));
                let mut request = request("", &history, load.max_tokens);
                if load.mix == Mix::Json {
                    request.response_format = Some(serde_json::json!({
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "schema": answer_schema()}
                    }));
                }
                let sample = match target {
                    Target::Pipeline(p) => one_in_process(p, request).await,
                    Target::Http(base) => one_over_http(&http, base, &request).await,
                };
                history.push(ChatMessage::assistant(sample.text.clone()));
                samples.push(sample);
            }
            samples
        }
    });
    let samples: Vec<Sample> = futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    summarize(load.clients, &samples)
}

async fn one_in_process(pipeline: &EnginePipeline, request: ChatCompletionRequest) -> Sample {
    let start = Instant::now();
    let mut first = None;
    let mut tokens = 0;
    let mut text = String::new();
    let mut stream = pipeline.chat_stream(request).await.expect("a stream");
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk");
        for piece in chunk
            .choices
            .iter()
            .filter_map(|c| c.delta.content.as_deref())
        {
            if !piece.is_empty() {
                first.get_or_insert_with(Instant::now);
                text.push_str(piece);
            }
        }
        if let Some(Some(usage)) = chunk.usage {
            tokens = usage.completion_tokens;
        }
    }
    let end = Instant::now();
    Sample {
        start,
        first: first.unwrap_or(end),
        end,
        tokens,
        text,
    }
}

async fn one_over_http(
    http: &reqwest::Client,
    base: &str,
    request: &ChatCompletionRequest,
) -> Sample {
    let mut body = serde_json::to_value(request).expect("a request serializes");
    // llama-server's and the mistral.rs shim's own switch; servers that do not know it ignore
    // it, and `logit_bias` bans the same tokens everywhere.
    body["ignore_eos"] = Value::Bool(true);
    let start = Instant::now();
    let mut response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("the server answers");
    if !response.status().is_success() {
        let status = response.status();
        panic!(
            "HTTP {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let mut first = None;
    let (mut usage_tokens, mut content_chunks) = (None, 0);
    let mut text = String::new();
    let mut buffer = String::new();
    while let Some(bytes) = response.chunk().await.expect("the stream continues") {
        buffer.push_str(std::str::from_utf8(&bytes).expect("UTF-8 events"));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let chunk: Value = serde_json::from_str(data).expect("a JSON chunk");
            if let Some(piece) = chunk["choices"][0]["delta"]["content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                content_chunks += 1;
                first.get_or_insert_with(Instant::now);
                text.push_str(piece);
            }
            if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                usage_tokens = Some(n as u32);
            }
        }
    }
    let end = Instant::now();
    Sample {
        start,
        first: first.unwrap_or(end),
        end,
        // Servers without `stream_options.include_usage` send one token per chunk.
        tokens: usage_tokens.unwrap_or(content_chunks),
        text,
    }
}

fn summarize(clients: u32, samples: &[Sample]) -> Report {
    let begin = samples.iter().map(|s| s.start).min().expect("samples");
    let end = samples.iter().map(|s| s.end).max().expect("samples");
    let tokens: u64 = samples.iter().map(|s| u64::from(s.tokens)).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ttft: Vec<f64> = samples.iter().map(|s| ms(s.first - s.start)).collect();
    let tpot: Vec<f64> = samples
        .iter()
        .filter(|s| s.tokens > 1)
        .map(|s| ms(s.end - s.first) / f64::from(s.tokens - 1))
        .collect();
    Report {
        clients,
        requests: samples.len() as u32,
        tokens,
        tokens_per_s: tokens as f64 / (end - begin).as_secs_f64(),
        ttft_p50_ms: percentile(ttft.clone(), 0.5),
        ttft_p99_ms: percentile(ttft, 0.99),
        tpot_p50_ms: percentile(tpot, 0.5),
        peak_rss_mib: 0.0,
        engine_share: None,
    }
}

/// The `q` quantile (nearest rank); 0 for no values.
fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The peak resident memory of process `pid` in MiB (`VmHWM`), 0 where unknown.
pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
