//! Criterion benches of the core's per-step hot paths.
//!
//! The engine samples every running sequence at every step, so one sampler call over a whole
//! vocabulary row has to stay far below a decode step's time. Benched at Llama-2's 32k and
//! Llama-3's 128k vocabularies with random logits of a fixed seed.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod template;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use llm_pipeline_core::sampling::{Sampler, SamplingParams};
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

criterion_group!(benches, bench_sampling, template::bench_template);
criterion_main!(benches);
