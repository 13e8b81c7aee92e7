//! candle on a bf16 safetensors model: memory and decode speed with the weights kept in bf16
//! (the default) against widened to f32, and peak RSS while loading against the file's size.
//!
//! ```text
//! cargo bench --bench precision [-- --threads 2 --tokens 32 --batches 1,8]
//! ```
//! The model has SmolLM2-135M's shape (30 layers, hidden 576, vocabulary 49 152, tied
//! embeddings) with random bf16 weights, written once to the temporary directory
//! as a Hugging Face directory. Each precision loads in a child process of its own, so its
//! peak RSS (`VmHWM`) is its own; the figures are the RSS before loading, the peak during it,
//! the RSS after it, the bytes of weights as loaded, and decode tokens/s (one step per token
//! for every sequence of the batch, after a 32-token prefill), with greedy argmax on the
//! host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use llm_pipeline::candle::candle_core::{DType, Device, Tensor};
use llm_pipeline::candle::{CandleBackend, LoadOptions, Precision};
use llm_pipeline::core::backend::{Backend, BatchEntry, Logits};
use llm_pipeline::core::config::PipelineConfig;

/// A Llama's sizes.
#[derive(Debug, Clone, Copy)]
struct Shape {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
}

/// SmolLM2-135M's.
const SMOLLM2: Shape = Shape {
    hidden: 576,
    intermediate: 1536,
    layers: 30,
    heads: 9,
    kv_heads: 3,
    vocab: 49_152,
};

/// A two-layer model for the smoke run that `cargo test --all-targets` makes of this bench.
const SMOKE: Shape = Shape {
    hidden: 64,
    intermediate: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    vocab: 512,
};

struct Args {
    threads: u32,
    tokens: u32,
    batches: Vec<u32>,
    child: Option<String>,
    /// Run without `--bench` (by `cargo test`): the smoke model, a few tokens.
    smoke: bool,
}

fn args() -> Args {
    let mut a = Args {
        threads: 2,
        tokens: 32,
        batches: vec![1, 8],
        child: None,
        smoke: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if !argv.iter().any(|a| a == "--bench" || a == "--full") {
        a.smoke = true;
        a.tokens = 2;
        a.batches = vec![1];
    }
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--threads" => a.threads = value().parse().expect("--threads N"),
            "--tokens" => a.tokens = value().parse().expect("--tokens N"),
            "--batches" => {
                a.batches = value()
                    .split(',')
                    .map(|b| b.parse().expect("--batches 1,8"))
                    .collect();
            }
            "--child" => a.child = Some(value()),
            _ => {} // cargo bench passes --bench; children get --full
        }
    }
    a
}

fn main() {
    let args = args();
    let dir = model_dir(if args.smoke { SMOKE } else { SMOLLM2 });
    if let Some(precision) = &args.child {
        run_child(&args, &dir, precision);
        return;
    }
    let file = std::fs::metadata(dir.join("model.safetensors"))
        .expect("the model file")
        .len();
    println!(
        "model: {}, bf16 safetensors of {:.1} MiB; {} threads",
        if args.smoke {
            "smoke run (2 layers)"
        } else {
            "SmolLM2-135M's shape"
        },
        mib(file),
        args.threads
    );
    println!(
        "{:<7} {:>10} {:>10} {:>10} {:>10} decode tokens/s by batch",
        "weights", "RSS before", "peak load", "RSS after", "weights"
    );
    for precision in ["bf16", "f32"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--child", precision, "--threads", &args.threads.to_string()])
            .args(if args.smoke { &[][..] } else { &["--full"][..] })
            .args(["--tokens", &args.tokens.to_string()])
            .args([
                "--batches",
                &args
                    .batches
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ])
            .output()
            .expect("the child runs");
        if !out.status.success() {
            eprintln!("{precision}: {}", String::from_utf8_lossy(&out.stderr));
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn run_child(args: &Args, dir: &Path, precision: &str) {
    let before = status_kib("VmRSS");
    let config = PipelineConfig::default()
        .with_model_id(dir.to_string_lossy())
        .with_max_model_len(512)
        .with_max_num_seqs(16)
        .with_max_num_batched_tokens(512)
        .with_threads(args.threads)
        .with_cpu_kv_cache_bytes(256 << 20)
        .validated()
        .expect("a valid configuration");
    let options = LoadOptions::default().with_precision(match precision {
        "f32" => Precision::F32,
        _ => Precision::Stored,
    });
    let mut backend = CandleBackend::load_with(dir, &config, options).expect("the model loads");
    let peak = status_kib("VmHWM");
    let after = status_kib("VmRSS");
    let weights = backend.weight_memory().total_bytes();
    let speeds: Vec<String> = args
        .batches
        .iter()
        .map(|&b| format!("{b}: {:.1}", decode(&mut backend, b, args.tokens)))
        .collect();
    println!(
        "{:<7} {:>10} {:>10} {:>10} {:>10} {}",
        precision,
        format!("{:.0} MiB", before as f64 / 1024.0),
        format!("{:.0} MiB", peak as f64 / 1024.0),
        format!("{:.0} MiB", after as f64 / 1024.0),
        format!("{:.0} MiB", mib(weights)),
        speeds.join(", ")
    );
}

/// Decode tokens/s of `batch` sequences after a 32-token prefill each.
fn decode(backend: &mut CandleBackend, batch: u32, tokens: u32) -> f64 {
    let mut logits = Logits::new(backend.info().vocab_size);
    let prompt: Vec<u32> = (0..32).map(|i| 100 + i * 7).collect();
    let seqs: Vec<u64> = (0..u64::from(batch)).map(|s| 1000 + s).collect();
    for &s in &seqs {
        logits.clear();
        let entry = [BatchEntry {
            seq: s,
            start: 0,
            tokens: &prompt,
            logits: 1,
        }];
        backend.forward(&entry, &mut logits).expect("prefill");
    }
    let mut next: Vec<[u32; 1]> = seqs.iter().map(|_| [1]).collect();
    let started = Instant::now();
    for step in 0..tokens {
        logits.clear();
        let entries: Vec<BatchEntry<'_>> = seqs
            .iter()
            .zip(&next)
            .map(|(&seq, t)| BatchEntry {
                seq,
                start: 32 + step,
                tokens: t,
                logits: 1,
            })
            .collect();
        backend.forward(&entries, &mut logits).expect("decode step");
        next = (0..seqs.len())
            .map(|i| {
                let row = logits.row(i);
                let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b]));
                [best.unwrap_or(0) as u32]
            })
            .collect();
    }
    let secs = started.elapsed().as_secs_f64();
    for &s in &seqs {
        backend.release(s);
    }
    f64::from(tokens * batch) / secs
}

/// A bf16 model of `shape`, written once.
fn model_dir(shape: Shape) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("llmp-bench-bf16-{}x{}", shape.layers, shape.hidden));
    if dir.join("model.safetensors").is_file() {
        return dir;
    }
    std::fs::create_dir_all(&dir).expect("the model directory");
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate, "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
        "vocab_size": shape.vocab, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "max_position_embeddings": 8192, "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors = HashMap::new();
    let mut random = |name: String, dims: &[usize], scale: f32| {
        let t = Tensor::rand(-scale, scale, dims, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::BF16))
            .expect("a random tensor");
        tensors.insert(name, t);
    };
    let w = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    let (h, i) = (shape.hidden, shape.intermediate);
    let (q, kv) = (h, h / shape.heads * shape.kv_heads);
    random("model.embed_tokens.weight".into(), &[shape.vocab, h], 1.0);
    random("model.norm.weight".into(), &[h], 1.0);
    for l in 0..shape.layers {
        let p = format!("model.layers.{l}");
        random(format!("{p}.self_attn.q_proj.weight"), &[q, h], w(h));
        random(format!("{p}.self_attn.k_proj.weight"), &[kv, h], w(h));
        random(format!("{p}.self_attn.v_proj.weight"), &[kv, h], w(h));
        random(format!("{p}.self_attn.o_proj.weight"), &[h, q], w(q));
        random(format!("{p}.mlp.gate_proj.weight"), &[i, h], w(h));
        random(format!("{p}.mlp.up_proj.weight"), &[i, h], w(h));
        random(format!("{p}.mlp.down_proj.weight"), &[h, i], w(i));
        random(format!("{p}.input_layernorm.weight"), &[h], 1.0);
        random(format!("{p}.post_attention_layernorm.weight"), &[h], 1.0);
    }
    let part = dir.join("model.safetensors.part");
    llm_pipeline::candle::candle_core::safetensors::save(&tensors, &part).expect("the weights");
    std::fs::rename(&part, dir.join("model.safetensors")).unwrap();
    dir
}

/// A `/proc/self/status` figure in KiB.
fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix(" kB")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}
