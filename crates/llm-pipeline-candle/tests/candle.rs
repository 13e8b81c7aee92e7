//! The candle backend on a tiny random-weight Llama (always) and on SmolLM2 (when
//! `LLM_PIPELINE_SMOLLM2` names its GGUF, as `cargo xtask test` does).

mod common;

use llm_pipeline_candle::{CandleBackend, GgufKernels, LoadOptions};
use llm_pipeline_core::backend::{Backend, BatchEntry};
use llm_pipeline_core::config::{PipelineConfig, Quantization};
use llm_pipeline_core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline_core::pipeline::Pipeline;

use common::{TINY, argmax, config, greedy, max_diff, step, tiny_backend};
use llm_pipeline_core::testing::smollm2;

/// Three different token sequences.
fn prompts() -> [Vec<u32>; 3] {
    [
        (0..14).map(|i| (i * 37 + 5) % 256).collect(),
        (0..11).map(|i| (i * 91 + 17) % 256).collect(),
        (0..9).map(|i| (i * 13 + 200) % 256).collect(),
    ]
}

/// Logits after every position of `tokens`, the sequence run alone one token at a time.
fn alone(tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut b = tiny_backend(&config(&TINY));
    (0..tokens.len())
        .map(|p| {
            let rows = step(
                &mut b,
                &[BatchEntry {
                    seq: 1,
                    start: p as u32,
                    tokens: &tokens[p..=p],
                    logits: 1,
                }],
            );
            rows.into_iter().next().unwrap()
        })
        .collect()
}

#[test]
fn a_batch_at_mixed_positions_gives_each_sequence_its_logits_alone() {
    let prompts = prompts();
    let reference: Vec<_> = prompts.iter().map(|p| alone(p)).collect();
    let mut b = tiny_backend(&config(&TINY));
    // Per step, how many tokens each sequence brings (0: not in this step): prefill chunks of
    // different sizes beside single-token decodes, sequences joining late.
    let plan: [[usize; 3]; 6] = [
        [5, 0, 0],
        [1, 4, 0],
        [3, 1, 6],
        [1, 5, 1],
        [2, 1, 2],
        [2, 0, 0],
    ];
    let mut pos = [0usize; 3];
    for (s, counts) in plan.iter().enumerate() {
        let batch: Vec<BatchEntry<'_>> = (0..3)
            .filter(|&i| counts[i] > 0)
            .map(|i| BatchEntry {
                seq: 10 + i as u64,
                start: pos[i] as u32,
                tokens: &prompts[i][pos[i]..pos[i] + counts[i]],
                logits: 1,
            })
            .collect();
        let rows = step(&mut b, &batch);
        assert_eq!(rows.len(), batch.len());
        for (row, e) in rows.iter().zip(&batch) {
            let i = (e.seq - 10) as usize;
            let last = e.start as usize + e.tokens.len() - 1;
            let gap = max_diff(row, &reference[i][last]);
            assert!(
                gap < 1e-4,
                "step {s}, sequence {i}, position {last}: gap {gap}"
            );
        }
        for i in 0..3 {
            pos[i] += counts[i];
        }
    }
}

#[test]
fn only_the_rows_asked_for_produce_logits() {
    let prompts = prompts();
    let mut b = tiny_backend(&config(&TINY));
    let batch = [
        BatchEntry {
            seq: 1,
            start: 0,
            tokens: &prompts[0][..4],
            logits: 0,
        },
        BatchEntry {
            seq: 2,
            start: 0,
            tokens: &prompts[1][..3],
            logits: 1,
        },
    ];
    let rows = step(&mut b, &batch);
    assert_eq!(rows.len(), 1);
    let reference = alone(&prompts[1][..3]);
    assert!(max_diff(&rows[0], &reference[2]) < 1e-4);
}

#[test]
fn prefill_in_chunks_equals_prefill_at_once() {
    let tokens = &prompts()[0];
    let mut whole = tiny_backend(&config(&TINY));
    let at_once = step(
        &mut whole,
        &[BatchEntry {
            seq: 1,
            start: 0,
            tokens,
            logits: 1,
        }],
    );
    let mut chunked = tiny_backend(&config(&TINY));
    let mut last = Vec::new();
    for (start, end) in [(0, 4), (4, 5), (5, 11), (11, 14)] {
        last = step(
            &mut chunked,
            &[BatchEntry {
                seq: 1,
                start: start as u32,
                tokens: &tokens[start..end],
                logits: 1,
            }],
        );
    }
    let gap = max_diff(&at_once[0], &last[0]);
    assert!(gap < 1e-4, "gap {gap}");
}

#[test]
fn a_long_prefill_attends_in_slices_like_short_chunks() {
    // 300 tokens at once cross the 256-row attention slice; 100-token chunks do not.
    let tokens: Vec<u32> = (0..300).map(|i| (i * 71 + 3) % 256).collect();
    let mut whole = tiny_backend(&config(&TINY));
    let at_once = step(
        &mut whole,
        &[BatchEntry {
            seq: 1,
            start: 0,
            tokens: &tokens,
            logits: 1,
        }],
    );
    let mut chunked = tiny_backend(&config(&TINY));
    let mut last = Vec::new();
    for start in [0, 100, 200] {
        last = step(
            &mut chunked,
            &[BatchEntry {
                seq: 1,
                start: start as u32,
                tokens: &tokens[start..start + 100],
                logits: 1,
            }],
        );
    }
    let gap = max_diff(&at_once[0], &last[0]);
    assert!(gap < 1e-4, "gap {gap}");
}

#[test]
fn release_frees_the_cache_and_the_id_can_be_reused() {
    let prompts = prompts();
    let mut b = tiny_backend(&config(&TINY));
    let first = greedy(&mut b, 5, &prompts[0], 4);
    assert_eq!(b.live_sequences(), 0, "greedy() releases its sequence");
    assert_eq!(b.kv_cells_allocated(), 0);
    b.release(12345);
    // The same id, new tokens from position 0: a fresh sequence, not a continuation.
    let second = greedy(&mut b, 5, &prompts[1], 4);
    let fresh = greedy(&mut tiny_backend(&config(&TINY)), 9, &prompts[1], 4);
    assert_eq!(second, fresh);
    assert_eq!(first, greedy(&mut b, 5, &prompts[0], 4));
}

/// One entry that wants logits.
fn entry(seq: u64, start: usize, tokens: &[u32]) -> BatchEntry<'_> {
    BatchEntry {
        seq,
        start: start as u32,
        tokens,
        logits: 1,
    }
}

/// Prefix caching: a sequence that takes over a released sequence's cache, or gets a copy of
/// the part they share, computes bit for bit the logits of one sequence that computed the same
/// chunks itself; with prefix caching off nothing is reused.
#[test]
fn reused_prefixes_give_the_logits_of_computing_them() {
    let [a, b, _] = prompts();
    let mut cached = tiny_backend(&config(&TINY));
    let mut plain = tiny_backend(&config(&TINY).with_prefix_caching(false));
    step(&mut cached, &[entry(1, 0, &a[..10])]);
    cached.release(1);
    assert_eq!(cached.live_sequences(), 0);
    assert!(cached.kv_cells_retained() >= 10);
    assert_eq!(plain.reuse_prefix(2, &a[..13]), 0, "prefix caching is off");

    // The whole released cache is the new sequence's prefix: taken over.
    assert_eq!(cached.reuse_prefix(2, &a[..13]), 10);
    assert_eq!(cached.kv_cells_retained(), 0);
    let got = step(&mut cached, &[entry(2, 10, &a[10..])]);
    step(&mut plain, &[entry(1, 0, &a[..10])]);
    let want = step(&mut plain, &[entry(1, 10, &a[10..])]);
    assert_eq!(got, want);

    // A new sequence shares 6 tokens with it: a copy of those cells.
    cached.release(2);
    let mixed: Vec<u32> = a[..6].iter().chain(&b).copied().collect();
    assert_eq!(cached.reuse_prefix(3, &mixed[..mixed.len() - 1]), 6);
    let got = step(&mut cached, &[entry(3, 6, &mixed[6..])]);
    // The plain sequence rolls back to its first 6 cells, computed in the same chunk.
    let want = step(&mut plain, &[entry(1, 6, &mixed[6..])]);
    assert_eq!(got, want);
    // The original is still whole for the next one.
    assert_eq!(cached.reuse_prefix(5, &a[..13]), 13);
}

#[test]
fn the_kv_budget_is_reported_and_respected() {
    // 3 layers × 2 KV heads × 16 dims × 2 (K and V) × 4 bytes = 768 bytes per token.
    let cfg = config(&TINY).with_cpu_kv_cache_bytes(768 * 200);
    let mut b = tiny_backend(&cfg);
    assert_eq!(b.info().kv_capacity, 200);
    let tokens: Vec<u32> = (0..150).map(|i| i % 256).collect();
    step(
        &mut b,
        &[BatchEntry {
            seq: 1,
            start: 0,
            tokens: &tokens,
            logits: 1,
        }],
    );
    assert!(b.kv_cells_allocated() <= 200);
    let mut logits = llm_pipeline_core::backend::Logits::new(b.info().vocab_size);
    let too_many = BatchEntry {
        seq: 2,
        start: 0,
        tokens: &tokens[..60],
        logits: 1,
    };
    assert!(b.forward(&[too_many], &mut logits).is_err());
    b.release(1);
    b.forward(&[too_many], &mut logits)
        .expect("fits after release");
}

#[test]
fn use_8bit_agrees_with_full_precision_at_about_half_of_f16() {
    let prompts = prompts();
    let full_cfg = config(&TINY);
    let int8_cfg = config(&TINY).with_quantization(Quantization::Int8);
    let mut full = tiny_backend(&full_cfg);
    let mut int8 = tiny_backend(&int8_cfg);
    for (i, p) in prompts.iter().enumerate() {
        let a = greedy(&mut full, 1, p, 8);
        let b = greedy(&mut int8, 1, p, 8);
        assert_eq!(a[..4], b[..4], "prompt {i}: f32 {a:?} vs Q8_0 {b:?}");
    }
    let m = int8.weight_memory();
    let ratio = m.linear_bytes as f64 / m.linear_f16_bytes() as f64;
    eprintln!(
        "USE_8BIT linear weights: {} bytes, f16 would be {}, f32 is {} (ratio to f16 {ratio:.3})",
        m.linear_bytes,
        m.linear_f16_bytes(),
        full.weight_memory().linear_bytes
    );
    assert!((0.5..0.56).contains(&ratio), "Q8_0/f16 = {ratio}");
}

#[test]
fn parallelism_above_one_is_refused_naming_the_variable() {
    for (tp, pp, var) in [
        (2, 1, "TENSOR_PARALLEL_SIZE"),
        (1, 2, "PIPELINE_PARALLEL_SIZE"),
    ] {
        let cfg = PipelineConfig {
            tensor_parallel_size: tp,
            pipeline_parallel_size: pp,
            ..config(&TINY)
        };
        let err = llm_pipeline_candle::load(&cfg).unwrap_err();
        assert!(
            matches!(err, llm_pipeline_core::Error::Config { variable, .. } if variable == var),
            "{err}"
        );
    }
}

#[tokio::test]
async fn the_pipeline_serves_a_chat_over_the_tiny_model() {
    let pipeline = llm_pipeline_candle::load(&config(&TINY)).expect("the pipeline starts");
    let request = ChatCompletionRequest::new("", vec![ChatMessage::user("hello there")])
        .with_max_tokens(12)
        .with_temperature(0.0);
    let prompt = pipeline.prompt_tokens(&request).await.unwrap();
    let answer = pipeline.chat(request).await.expect("generation succeeds");
    assert_eq!(answer.usage.prompt_tokens as usize, prompt.len());
    assert!(answer.usage.completion_tokens >= 1);
}

#[tokio::test]
async fn smollm2_gguf_says_paris() {
    let path = smollm2();
    let cfg = PipelineConfig::default()
        .with_model_id(path.to_string_lossy())
        .with_max_model_len(512)
        .with_max_num_seqs(4)
        .with_threads(2)
        .with_cpu_kv_cache_bytes(64 << 20)
        .validated()
        .unwrap();
    let pipeline = llm_pipeline_candle::load(&cfg).expect("SmolLM2 loads");
    let request = ChatCompletionRequest::new(
        "",
        vec![
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user("What is the capital of France?"),
        ],
    )
    .with_max_tokens(48)
    .with_temperature(0.0);
    let answer = pipeline.chat(request).await.expect("generation succeeds");
    let text = answer.choices[0]
        .message
        .content
        .clone()
        .unwrap_or_default();
    assert!(text.contains("Paris"), "answer: {text:?}");
}

/// Logits after the prompt and after each of `forced` fed one at a time.
fn teacher_forced(backend: &mut CandleBackend, prompt: &[u32], forced: &[u32]) -> Vec<Vec<f32>> {
    let mut rows = step(
        backend,
        &[BatchEntry {
            seq: 1,
            start: 0,
            tokens: prompt,
            logits: 1,
        }],
    );
    for (i, t) in forced.iter().enumerate() {
        rows.extend(step(
            backend,
            &[BatchEntry {
                seq: 1,
                start: (prompt.len() + i) as u32,
                tokens: std::slice::from_ref(t),
                logits: 1,
            }],
        ));
    }
    backend.release(1);
    rows
}

/// The quality cost of each way of running SmolLM2's Q4_1 tensors, against candle's own Q4_1
/// kernel on the tensors as stored: greedy tokens along the reference's greedy path, and the
/// largest logit gaps (at the reference's top token, and over the whole vocabulary).
#[test]
fn smollm2_kernels_keep_the_greedy_tokens_of_q4_1_as_stored() {
    let path = smollm2();
    let cfg = PipelineConfig::default()
        .with_max_model_len(256)
        .with_threads(2)
        .with_cpu_kv_cache_bytes(64 << 20);
    let load = |k: GgufKernels| {
        CandleBackend::load_with(&path, &cfg, LoadOptions::default().with_kernels(k)).unwrap()
    };
    let meta = llm_pipeline_core::gguf::GgufMetadata::from_path(&path).unwrap();
    let tokenizer = llm_pipeline_core::tokenizer::Tokenizer::from_gguf(&meta).unwrap();
    let prompt = tokenizer
        .encode_prompt(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        )
        .unwrap();
    let mut reference = load(GgufKernels::Candle);
    let mut path_tokens = Vec::new();
    for _ in 0..16 {
        let rows = teacher_forced(&mut reference, &prompt, &path_tokens);
        path_tokens.push(argmax(rows.last().unwrap()));
    }
    let ref_rows = teacher_forced(&mut reference, &prompt, &path_tokens[..15]);
    for kernels in [GgufKernels::Auto, GgufKernels::RequantizeToQ8_0] {
        let mut b = load(kernels);
        let rows = teacher_forced(&mut b, &prompt, &path_tokens[..15]);
        let agree = rows
            .iter()
            .zip(&path_tokens)
            .filter(|(r, t)| argmax(r) == **t)
            .count();
        let top_gap = rows
            .iter()
            .zip(&ref_rows)
            .zip(&path_tokens)
            .map(|((r, q), &t)| (r[t as usize] - q[t as usize]).abs())
            .fold(0f32, f32::max);
        let worst = rows
            .iter()
            .zip(&ref_rows)
            .map(|(r, q)| max_diff(r, q))
            .fold(0f32, f32::max);
        eprintln!(
            "{kernels:?} vs Q4_1 as stored: {agree}/16 greedy tokens agree; largest logit gap \
             at the top token {top_gap:.4}, over the vocabulary {worst:.4}; linear weights \
             {} bytes (as stored: {})",
            b.weight_memory().linear_bytes,
            reference.weight_memory().linear_bytes
        );
        assert!(agree >= 14, "{kernels:?}: {agree}/16");
    }
}

/// More tokens in flight than the KV cache holds: the engine preempts sequences and brings them
/// back, the backend never refuses what the engine admitted, and every request completes.
#[tokio::test]
async fn a_full_kv_cache_preempts_and_every_request_completes() {
    // 400 cells for 8 requests of ~20 prompt and 100 generated tokens (about 960 in all).
    let per_token = 2 * common::LAYERS * common::KV_HEADS * common::HEAD_DIM * 4;
    let config = config(&TINY)
        .with_cpu_kv_cache_bytes((400 * per_token) as u64)
        .validated()
        .unwrap();
    let pipeline = std::sync::Arc::new(llm_pipeline_candle::load(&config).expect("it starts"));
    let requests = (0..8).map(|i| {
        let pipeline = std::sync::Arc::clone(&pipeline);
        tokio::spawn(async move {
            // No end-of-sequence or end-of-turn token: each request runs its whole length.
            let request =
                ChatCompletionRequest::new("", vec![ChatMessage::user(format!("story {i}"))])
                    .with_max_tokens(100)
                    .with_temperature(1.0)
                    .with_seed(i)
                    .with_logit_bias(257, -100.0)
                    .with_logit_bias(259, -100.0);
            pipeline.chat(request).await
        })
    });
    for r in futures::future::join_all(requests).await {
        let answer = r.unwrap().expect("every request completes");
        assert_eq!(answer.usage.completion_tokens, 100);
    }
    let stats = pipeline.engine().stats();
    assert!(stats.preemptions > 0, "the cache was full: {stats:?}");
    assert_eq!(stats.faults, 0, "the backend never refused: {stats:?}");
    assert!(!stats.broken);
}
