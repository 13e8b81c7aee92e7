//! Criterion benches of the core's per-step hot paths.
//!
//! The engine samples every running sequence at every step, so one sampler call over a whole
//! vocabulary row has to stay far below a decode step's time. Benched at Llama-2's 32k and
//! Llama-3's 128k vocabularies with random logits of a fixed seed.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod template;

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use llm_pipeline_core::detokenize::IncrementalDecoder;
use llm_pipeline_core::engine::scheduler::{self, Budget, SeqView};
use llm_pipeline_core::gguf::GgufMetadata;
use llm_pipeline_core::sampling::{Sampler, SamplingParams};
use llm_pipeline_core::structured::{Grammar, Grammars};
use llm_pipeline_core::testing::{gemma3, smollm2};
use llm_pipeline_core::tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Normally distributed logits (Box–Muller) with standard deviation 2, from a fixed seed.
fn random_logits(n: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    (0..n)
        .map(|_| {
            let u1: f32 = 1.0 - rng.random::<f32>();
            let u2: f32 = rng.random();
            2.0 * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

fn bench_sampling(c: &mut Criterion) {
    let mut group = c.benchmark_group("sampling");
    let cases = [
        (
            "greedy",
            SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
        ),
        (
            "top_p_0.9_temp_0.8",
            SamplingParams {
                temperature: 0.8,
                top_p: 0.9,
                ..SamplingParams::default()
            },
        ),
        (
            "top_k_40",
            SamplingParams {
                top_k: 40,
                ..SamplingParams::default()
            },
        ),
    ];
    for (vocab, label) in [(32_000, "32k"), (128_256, "128k")] {
        let logits = random_logits(vocab);
        for (name, params) in &cases {
            let mut sampler = Sampler::new(params.clone(), &[]);
            // `sample` uses the row as scratch: each iteration gets a fresh copy, made untimed.
            group.bench_function(format!("{name}/{label}"), |b| {
                b.iter_batched_ref(
                    || logits.clone(),
                    |row| sampler.sample(row).token,
                    BatchSize::LargeInput,
                );
            });
        }
    }
    group.finish();
}

/// One token through a JSON-schema constraint: the mask for the next token (the work the
/// engine runs beside the forward step) and the commit of the sampled one, averaged over a valid
/// answer, on SmolLM2's 49k vocabulary and Gemma 3's 262k (Llama 3's 128k lies between).
fn bench_grammar(c: &mut Criterion) {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "forecast": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "day": {"enum": ["monday", "tuesday", "wednesday"]},
                        "high": {"type": "integer"},
                        "sky": {"type": "string"}
                    },
                    "required": ["day", "high", "sky"]
                }
            },
            "advice": {"type": "string"}
        },
        "required": ["city", "forecast", "advice"]
    });
    let answer = r#"{"city": "Paris", "forecast": [{"day": "monday", "high": 21, "sky": "sunny with a light breeze"}, {"day": "tuesday", "high": 18, "sky": "cloudy, rain in the evening"}], "advice": "Take an umbrella on Tuesday evening and enjoy the sun on Monday."}"#;
    let mut group = c.benchmark_group("grammar");
    for (label, path) in [("smollm2_49k", smollm2()), ("gemma3_262k", gemma3())] {
        let meta = GgufMetadata::from_path(path).expect("the fixture GGUF");
        let tokenizer = Arc::new(Tokenizer::from_gguf(&meta).expect("tokenizer"));
        // The answer's tokens, without the BOS a prompt of Gemma's starts with.
        let mut ids = tokenizer.encode_prompt(answer).expect("encodes");
        ids.retain(|&id| Some(id) != tokenizer.special().bos);
        let grammars = Grammars::new(Arc::clone(&tokenizer));
        let grammar = Grammar::JsonSchema(schema.clone());
        group.throughput(Throughput::Elements(ids.len() as u64));
        // A fresh parser each time (compiled untimed), as each request gets: its lexer states
        // are built as the answer goes, not carried over from an earlier answer.
        group.bench_function(format!("mask_and_commit_per_token/{label}"), |b| {
            b.iter_batched(
                || grammars.compile(&grammar).expect("the schema compiles"),
                |mut constraint| {
                    for &id in &ids {
                        constraint.allowed().expect("a mask");
                        constraint.commit(id, "").expect("the answer is valid");
                    }
                    constraint.is_complete()
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// One token through the incremental decoder, averaged over a mixed text (ASCII, accents,
/// CJK and emoji, so that partial UTF-8 characters are exercised).
fn bench_detokenizer(c: &mut Criterion) {
    let meta = GgufMetadata::from_path(smollm2()).expect("SmolLM2 GGUF (run `cargo xtask models`)");
    let tokenizer = Tokenizer::from_gguf(&meta).expect("tokenizer");
    let text = "The café in Zürich serves 日本の抹茶 and 🍰 with a smile. ".repeat(8);
    let ids = tokenizer.encode_prompt(&text).expect("encodes");
    let mut group = c.benchmark_group("detokenizer");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("step_per_token/smollm2", |b| {
        b.iter(|| {
            let mut decoder = IncrementalDecoder::new();
            let mut out = 0;
            for &id in &ids {
                if let Some(piece) = decoder.step(&tokenizer, id).expect("decodes") {
                    out += piece.len();
                }
            }
            out
        })
    });
    group.finish();
}

/// The step planner with 128 running sequences and 64 waiting.
fn bench_scheduler(c: &mut Criterion) {
    let running: Vec<SeqView> = (0..128)
        .map(|i| SeqView {
            id: i,
            computed: 100 + (i as u32 * 37) % 900,
            pending: if i % 16 == 0 { 50 } else { 1 },
        })
        .collect();
    let waiting: Vec<SeqView> = (128..192)
        .map(|i| SeqView {
            id: i,
            computed: 0,
            pending: 200,
        })
        .collect();
    let budget = Budget {
        max_batched_tokens: 8192,
        max_seqs: 160,
        kv_capacity: 1 << 20,
    };
    c.bench_function("scheduler/plan_128_running_64_waiting", |b| {
        b.iter(|| scheduler::plan(&running, &waiting, budget))
    });
}

criterion_group!(
    benches,
    bench_sampling,
    bench_detokenizer,
    bench_scheduler,
    bench_grammar,
    template::bench_template
);
criterion_main!(benches);
