//! Serving figures, side by side with the systems users would pick instead, in one run: our
//! HTTP server (each backend built), our engine without HTTP, llama.cpp's `llama-server` (the
//! anchor every ratio divides by) and mistral.rs, under the same load generator, plus the
//! machine's memory-bandwidth limit for decoding.
//!
//! ```text
//! cargo bench --features server,candle --bench serving -- [--threads 2] [--tokens 64]
//!     [--clients 1,8,32] [--rounds 2] [--passes 2] [--prefill-clients 8] [--prefill-tokens 8]
//!     [--turns-clients 8] [--turns 4] [--turns-tokens 32] [--json-clients 1,32]
//!     [--copy-clients 1] [--llama-server-args "--spec-type ngram-simple"]
//!     [--max-model-len 512] [--kv-cells N]
//!     [--llama-server PATH] [--mistralrs LAUNCHER] [--systems ours,engine,llama-server,mistral.rs]
//!     [--json PATH] [--markdown PATH]
//! ```
//! `cargo xtask bench` builds the peers (cached under `~/.cache/llm-pipeline/peers`) and passes
//! their paths; `LLM_PIPELINE_LLAMA_SERVER` and `LLM_PIPELINE_MISTRALRS` do the same. A peer
//! without a path is left out, and so are the ratios when llama-server is.
//!
//! Workloads: `C` clients each send `rounds` streamed chat requests one after another (greedy,
//! `max_tokens` fixed, end-of-generation banned through `logit_bias` and `ignore_eos` so every
//! answer has the same length), for each `C` in `--clients`; then the prefill-heavy mix: ~300
//! token prompts, each unique from its first token, with short answers; then multi-turn chat:
//! `--turns-clients` conversations of `--turns` requests, each carrying the history so far
//! (a ~110-token opening unique to the client and pass, the answers, short follow-ups), where
//! prefix caching decides the time to first token; with `--json-clients`, the chat prompts again
//! under a `response_format` JSON schema (what constrained decoding costs). Figures per system and
//! workload: aggregate output tokens/s (completion tokens over the wall time from the first
//! request to the last answer), median and p99 time to first token, median time per output
//! token after the first, the serving process's peak resident memory, and for the in-process
//! engine its own share of its loop time (everything outside the backend's forward step).
//! The HTTP systems run every workload back to back, `--passes` times in rotated order, best
//! pass counting (see `systems.rs`); the in-process engine runs after them, once.
//!
//! Every system gets `--max-model-len` tokens of context per sequence and by default a KV cache
//! that holds that much for every client. With `--kv-cells N` they all get the same KV memory
//! instead, N cells of SmolLM2's f16 keys and values (23 040 bytes each): ours as
//! `CPU_KV_CACHE_SPACE` (our llama.cpp backend then runs as many streams as fit, or one pool
//! with `KV_UNIFIED=true` in the environment), llama-server as one unified pool of N cells
//! (`-c N --kv-unified`) for all its slots, since its per-slot streams would cut each slot's
//! context to N ÷ slots.
//!
//! Each system runs in a child process of its own (see `benches/throughput.rs` for why two
//! llama.cpp engines must not share a process); this process only generates load.

mod bandwidth;
mod child;
mod load;
mod systems;
mod table;

use std::path::PathBuf;
use std::time::Instant;

use load::{Load, Mix};
use systems::{Peer, Run};

/// SmolLM2's KV bytes per cell: keys and values, f16, 30 layers × 3 KV heads × 64.
pub(crate) const KV_BYTES_PER_CELL: u64 = 2 * 2 * 30 * 3 * 64;

/// The command line (also forwarded to our child processes).
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) threads: u32,
    /// Context per sequence, for every system.
    pub(crate) max_model_len: u32,
    /// The KV memory of every system, in cells; by default room for every client.
    pub(crate) kv_cells: Option<u32>,
    tokens: u32,
    clients: Vec<u32>,
    rounds: u32,
    /// Times each workload runs on each HTTP system, interleaved; the best counts.
    passes: u32,
    prefill_clients: u32,
    prefill_tokens: u32,
    turns_clients: u32,
    turns: u32,
    turns_tokens: u32,
    /// Clients of the JSON-schema workloads (none by default).
    json_clients: Vec<u32>,
    /// Clients of the copy-heavy workloads (none by default).
    copy_clients: Vec<u32>,
    /// More flags for llama-server (its speculative decoding options).
    pub(crate) llama_server_args: Vec<String>,
    llama_server: Option<PathBuf>,
    mistralrs: Option<PathBuf>,
    systems: Option<Vec<String>>,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
    bandwidth_bytes: usize,
    child: Option<Vec<String>>,
}

impl Args {
    /// The most clients of any workload: every system's parallel sequences.
    pub(crate) fn max_clients(&self) -> u32 {
        self.clients
            .iter()
            .copied()
            .chain([self.prefill_clients, self.turns_clients])
            .chain(self.json_clients.iter().copied())
            .chain(self.copy_clients.iter().copied())
            .max()
            .unwrap_or(1)
    }

    /// The loads every system runs, in order.
    pub(crate) fn workloads(&self) -> Vec<Load> {
        let chat = self.clients.iter().map(|&clients| Load {
            mix: Mix::Chat,
            clients,
            rounds: self.rounds,
            pass: 0,
            max_tokens: self.tokens,
        });
        let prefill = (self.prefill_clients > 0).then_some(Load {
            mix: Mix::Prefill,
            clients: self.prefill_clients,
            rounds: self.rounds,
            pass: 0,
            max_tokens: self.prefill_tokens,
        });
        let turns = (self.turns_clients > 0).then_some(Load {
            mix: Mix::Turns,
            clients: self.turns_clients,
            rounds: self.turns,
            pass: 0,
            max_tokens: self.turns_tokens,
        });
        let json = self.json_clients.iter().map(|&clients| Load {
            mix: Mix::Json,
            clients,
            rounds: self.rounds,
            pass: 0,
            max_tokens: self.tokens,
        });
        let copy = self.copy_clients.iter().map(|&clients| Load {
            mix: Mix::Copy,
            clients,
            rounds: self.rounds,
            pass: 0,
            max_tokens: self.tokens,
        });
        chat.chain(prefill)
            .chain(turns)
            .chain(json)
            .chain(copy)
            .collect()
    }

    /// The flags that shape the workloads, for a child process.
    pub(crate) fn forwarded(&self) -> Vec<String> {
        let clients: Vec<String> = self.clients.iter().map(u32::to_string).collect();
        let json_clients: Vec<String> = self.json_clients.iter().map(u32::to_string).collect();
        let copy_clients: Vec<String> = self.copy_clients.iter().map(u32::to_string).collect();
        [
            ("--threads", self.threads.to_string()),
            ("--max-model-len", self.max_model_len.to_string()),
            (
                "--kv-cells",
                self.kv_cells.map_or(String::new(), |c| c.to_string()),
            ),
            ("--tokens", self.tokens.to_string()),
            ("--rounds", self.rounds.to_string()),
            ("--clients", clients.join(",")),
            ("--prefill-clients", self.prefill_clients.to_string()),
            ("--prefill-tokens", self.prefill_tokens.to_string()),
            ("--turns-clients", self.turns_clients.to_string()),
            ("--turns", self.turns.to_string()),
            ("--turns-tokens", self.turns_tokens.to_string()),
            ("--json-clients", json_clients.join(",")),
            ("--copy-clients", copy_clients.join(",")),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
    }

    fn wants(&self, system: &str) -> bool {
        self.systems
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == system))
    }
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let env_path = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let mut a = Args {
        threads: 2,
        max_model_len: 512,
        kv_cells: None,
        tokens: 64,
        clients: vec![1, 8, 32],
        rounds: 2,
        passes: 2,
        prefill_clients: 8,
        prefill_tokens: 8,
        turns_clients: 8,
        turns: 4,
        turns_tokens: 32,
        json_clients: Vec::new(),
        copy_clients: Vec::new(),
        llama_server_args: Vec::new(),
        llama_server: env_path("LLM_PIPELINE_LLAMA_SERVER"),
        mistralrs: env_path("LLM_PIPELINE_MISTRALRS"),
        systems: None,
        json: None,
        markdown: None,
        bandwidth_bytes: bandwidth::BUFFER_BYTES,
        child: None,
    };
    if !argv.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs this without `--bench`: a quick smoke run of ours.
        a.tokens = 4;
        a.clients = vec![1, 2];
        a.rounds = 1;
        a.passes = 1;
        a.prefill_clients = 2;
        a.prefill_tokens = 2;
        a.turns_clients = 1;
        a.turns = 2;
        a.turns_tokens = 2;
        a.json_clients = vec![2];
        a.copy_clients = vec![1];
        a.systems = Some(vec!["ours".into(), "engine".into()]);
        a.bandwidth_bytes = 64 << 20;
    }
    let mut it = argv.iter().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        let num = |v: String| -> u32 { v.parse().unwrap_or_else(|_| panic!("{flag} N")) };
        match flag.as_str() {
            "--threads" => a.threads = num(val()),
            "--max-model-len" => a.max_model_len = num(val()),
            "--kv-cells" => a.kv_cells = Some(val()).filter(|v| !v.is_empty()).map(num),
            "--tokens" => a.tokens = num(val()),
            "--rounds" => a.rounds = num(val()),
            "--passes" => a.passes = num(val()),
            "--prefill-clients" => a.prefill_clients = num(val()),
            "--prefill-tokens" => a.prefill_tokens = num(val()),
            "--turns-clients" => a.turns_clients = num(val()),
            "--turns" => a.turns = num(val()),
            "--turns-tokens" => a.turns_tokens = num(val()),
            "--clients" => a.clients = val().split(',').map(|c| num(c.to_owned())).collect(),
            "--json-clients" | "--copy-clients" => {
                let clients = val()
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(|c| num(c.to_owned()))
                    .collect();
                match flag.as_str() {
                    "--json-clients" => a.json_clients = clients,
                    _ => a.copy_clients = clients,
                }
            }
            "--llama-server-args" => {
                a.llama_server_args = val().split_whitespace().map(str::to_owned).collect();
            }
            "--llama-server" => a.llama_server = Some(val().into()),
            "--mistralrs" => a.mistralrs = Some(val().into()),
            "--systems" => a.systems = Some(val().split(',').map(str::to_owned).collect()),
            "--json" => a.json = Some(val().into()),
            "--markdown" => a.markdown = Some(val().into()),
            "--child" => a.child = Some(it.by_ref().cloned().collect()),
            _ => {}
        }
    }
    a
}

pub(crate) fn model_path() -> String {
    llm_pipeline::core::testing::smollm2()
        .to_string_lossy()
        .into_owned()
}

fn main() {
    let a = args();
    if let Some(mode) = &a.child {
        match mode.first().map(String::as_str) {
            Some("engine") => child::engine(&a),
            Some("serve") => child::serve_http(
                &a,
                mode[1].parse().expect("--child serve PORT BACKEND"),
                &mode[2],
            ),
            other => panic!("unknown child mode {other:?}"),
        }
        return;
    }
    let started = Instant::now();
    let workloads = a.workloads();
    eprintln!(
        "serving: SmolLM2-135M Q4_1, {} threads, {} parallel sequences of up to {} tokens, KV \
         {}, {} tokens per chat answer, {} per prefill answer, {} rounds per client",
        a.threads,
        a.max_clients(),
        a.max_model_len,
        a.kv_cells
            .map_or_else(|| "for all".into(), |c| format!("{c} cells")),
        a.tokens,
        a.prefill_tokens,
        a.rounds
    );
    let peers = [
        a.llama_server.clone().map(Peer::LlamaServer),
        a.mistralrs.clone().map(Peer::MistralRs),
    ];
    let mut servers = Vec::new();
    for peer in peers.iter().flatten().filter(|p| a.wants(p.name())) {
        servers.push(systems::peer(&a, peer));
    }
    if a.wants("ours") {
        for backend in child::backends() {
            servers.push(systems::ours_http(&a, backend));
        }
    }
    let mut runs: Vec<Run> = systems::interleaved(&a, servers);
    if a.wants("engine") {
        runs.push(systems::engine(&a));
    }
    let model = model_path();
    let ctx = table::Context {
        threads: a.threads,
        rounds: a.rounds,
        model_bytes: std::fs::metadata(&model).map_or(0, |m| m.len()),
        model,
        bandwidth: bandwidth::read_bandwidth(a.threads, a.bandwidth_bytes),
    };
    let markdown = table::markdown(&runs, &workloads);
    println!("{markdown}");
    println!("{}", table::verdicts(&runs, &workloads, &ctx));
    if let Some(path) = &a.json {
        let json = table::json(&runs, &workloads, &ctx);
        std::fs::write(path, serde_json::to_string_pretty(&json).expect("JSON"))
            .expect("the JSON report is written");
    }
    if let Some(path) = &a.markdown {
        std::fs::write(path, &markdown).expect("the Markdown table is written");
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
