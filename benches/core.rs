//! Criterion benches of the core's per-step hot paths.
//!
//! The engine samples every running sequence at every step, so one sampler call over a whole
//! vocabulary row has to stay far below a decode step's time. Benched at Llama-2's 32k and
//! Llama-3's 128k vocabularies with random logits of a fixed seed.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod template;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use llm_pipeline_core::detokenize::IncrementalDecoder;
use llm_pipeline_core::engine::scheduler::{self, Budget, SeqView};
use llm_pipeline_core::gguf::GgufMetadata;
use llm_pipeline_core::sampling::{Sampler, SamplingParams};
use llm_pipeline_core::testing::smollm2;
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
    template::bench_template
);
criterion_main!(benches);
