//! The ONNX Runtime backend against real exports: the tiny random-weight model for batching
//! exactness, SmolLM2 for a real answer, and directories that are not exports.

mod common;

use std::collections::HashMap;

use llm_pipeline_core::backend::{Backend, BatchEntry, Logits, StepFailure};
use llm_pipeline_core::openai::{ChatCompletionRequest, ChatMessage};
use llm_pipeline_core::pipeline::Pipeline;
use llm_pipeline_ort::{OrtBackend, OrtError, OrtOptions};

/// The logits after each token of `tokens`, fed alone: the prompt (`prompt` tokens) in one
/// step, then one token per step.
fn alone(backend: &mut OrtBackend, seq: u64, tokens: &[u32], prompt: usize) -> Vec<Vec<f32>> {
    let vocab = backend.info().vocab_size;
    let mut out = Vec::new();
    let mut start = 0;
    let mut chunks = vec![&tokens[..prompt]];
    chunks.extend(tokens[prompt..].chunks(1));
    for chunk in chunks {
        let mut logits = Logits::new(vocab);
        let entry = BatchEntry {
            seq,
            start,
            tokens: chunk,
            logits: 1,
        };
        backend.forward(&[entry], &mut logits).unwrap();
        out.push(logits.row(0).to_vec());
        start += chunk.len() as u32;
    }
    backend.release(seq);
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs five sequences alone, then batched on a schedule that mixes prefill chunks, decode
/// steps, joins and leaves; asserts every logits row matches within `tolerance` and returns
/// the largest difference.
fn batched_equals_alone(backend: &mut OrtBackend, tolerance: f32) -> f32 {
    let backend = &mut *backend;
    // Five sequences of different prompt lengths, each with ten teacher-forced tokens after.
    let seq = |id: u64, prompt: u32| {
        let tokens: Vec<u32> = (0..prompt + 10)
            .map(|i| 5 + (id as u32 * 37 + i * 11) % 200)
            .collect();
        (id, tokens, prompt as usize)
    };
    let seqs = [seq(1, 7), seq(2, 3), seq(3, 5), seq(4, 6), seq(5, 4)];
    let expected: HashMap<u64, Vec<Vec<f32>>> = seqs
        .iter()
        .map(|(id, t, p)| (*id + 100, alone(backend, *id + 100, t, *p)))
        .map(|(id, l)| (id - 100, l))
        .collect();

    // The schedule: which sequence feeds how many tokens at each step. Sequence 4's prompt
    // comes in two chunks while others decode, its second chunk padded together with sequence
    // 5's whole prompt; sequence 2 finishes early.
    let schedule: Vec<Vec<(u64, usize)>> = vec![
        vec![(1, 7)],
        vec![(1, 1), (2, 3), (3, 5)],
        vec![(1, 1), (2, 1), (3, 1)],
        vec![(1, 1), (2, 1), (3, 1), (4, 4)],
        vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 4)],
        vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)],
        vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)],
        vec![(1, 1), (3, 1), (4, 1), (5, 1)],
        vec![(1, 1), (4, 1), (5, 1)],
        vec![(4, 1), (5, 1)],
    ];
    let vocab = backend.info().vocab_size;
    let before = backend.meter().snapshot();
    let mut fed: HashMap<u64, usize> = HashMap::new();
    let mut got: HashMap<u64, Vec<Vec<f32>>> = HashMap::new();
    for step in &schedule {
        let entries: Vec<BatchEntry<'_>> = step
            .iter()
            .map(|&(id, n)| {
                let tokens = &seqs[(id - 1) as usize].1;
                let start = fed.get(&id).copied().unwrap_or(0);
                BatchEntry {
                    seq: id,
                    start: start as u32,
                    tokens: &tokens[start..start + n],
                    logits: 1,
                }
            })
            .collect();
        let mut logits = Logits::new(vocab);
        backend.forward(&entries, &mut logits).unwrap();
        assert_eq!(logits.rows(), entries.len());
        for (row, &(id, n)) in step.iter().enumerate() {
            *fed.entry(id).or_default() += n;
            got.entry(id).or_default().push(logits.row(row).to_vec());
        }
        // Sequence 2 ends after its fifth continuation token.
        if fed.get(&2) == Some(&8) {
            backend.release(2);
        }
    }
    // Align: `alone` yields one row after the prompt, then one per token; sequence 4's first
    // chunk (4 of its 6 prompt tokens) has no counterpart there.
    let mut worst = 0.0f32;
    for (id, rows) in &got {
        let want = &expected[id];
        let rows: &[Vec<f32>] = if *id == 4 { &rows[1..] } else { rows };
        for (i, row) in rows.iter().enumerate() {
            let d = max_diff(row, &want[i]);
            assert!(
                d <= tolerance,
                "sequence {id}, step {i}: logits differ by {d}"
            );
            worst = worst.max(d);
        }
    }

    // Runs that fed the previous outputs back: steps 2 (sequence 1 alone), 4, 5 and 7 (same
    // decode rows as the step before) and 8 (sequence 2's row left in place, dead). The others
    // gather: prompts, and decode groups whose membership changed.
    let stats = backend.meter().snapshot();
    assert_eq!(
        stats.zero_copy_calls - before.zero_copy_calls,
        5,
        "{before:?} {stats:?}"
    );
    assert!(stats.copy_bytes > before.copy_bytes, "{stats:?}");
    worst
}

#[test]
fn batched_logits_equal_alone_on_the_tiny_model() {
    let dir = common::tiny();
    let mut backend =
        OrtBackend::open(&dir, &common::config(&dir, 256, 8), &OrtOptions::default()).unwrap();
    let worst = batched_equals_alone(&mut backend, 1e-4);
    eprintln!("f32: largest logit difference, batched vs alone: {worst:e}");
}

/// A step that fails (a token id outside the vocabulary makes ONNX Runtime's gather fail)
/// costs only its own sequence's cache: the others go on from where they were, with the
/// logits they would have had.
#[test]
fn a_failed_step_keeps_the_other_sequences_caches() {
    let dir = common::tiny();
    let mut backend =
        OrtBackend::open(&dir, &common::config(&dir, 256, 8), &OrtOptions::default()).unwrap();
    let vocab = backend.info().vocab_size;
    let tokens: Vec<u32> = (0..12).map(|i| 5 + i * 13).collect();
    let expected = alone(&mut backend, 9, &tokens, 8);
    let step = |backend: &mut OrtBackend, entries: &[BatchEntry<'_>]| {
        let mut logits = Logits::new(vocab);
        backend.forward(entries, &mut logits).map(|()| logits)
    };
    // Sequence 1 prefills, then sequence 2 brings a token the model does not have.
    let first = step(
        &mut backend,
        &[BatchEntry {
            seq: 1,
            start: 0,
            tokens: &tokens[..8],
            logits: 1,
        }],
    )
    .unwrap();
    assert!(max_diff(first.row(0), &expected[0]) < 1e-4);
    let bad = [vocab as u32 + 1000];
    let err = step(
        &mut backend,
        &[BatchEntry {
            seq: 2,
            start: 0,
            tokens: &bad,
            logits: 1,
        }],
    )
    .expect_err("a token outside the vocabulary");
    // The backend tells the engine that only sequence 2 lost its cache.
    assert_eq!(backend.failure(&err), StepFailure::Lost(vec![2]));
    // Sequence 1 decodes on, unharmed.
    for (k, t) in tokens[8..].iter().enumerate() {
        let logits = step(
            &mut backend,
            &[BatchEntry {
                seq: 1,
                start: 8 + k as u32,
                tokens: std::slice::from_ref(t),
                logits: 1,
            }],
        )
        .expect("the other sequence's cache survived");
        assert!(max_diff(logits.row(0), &expected[k + 1]) < 1e-4);
    }
}

#[test]
fn a_float16_export_runs_with_half_precision_kv() {
    // The tiny model's float16-interface export, alone in a directory.
    let src = common::tiny();
    let dir = std::env::temp_dir().join(format!("llmp-ort-fp16-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("onnx")).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        src.join("model_fp16.onnx"),
        dir.join("onnx/model_fp16.onnx"),
    )
    .unwrap();
    let config = common::config(&dir, 256, 8);
    let mut half = OrtBackend::open(&dir, &config, &OrtOptions::default()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        half.info().description.contains("F16"),
        "{}",
        half.info().description
    );
    // Batched equals alone up to float16 rounding of the logits (an ulp is 0.004 at 4-8): the
    // f32 arithmetic inside differs by ~1e-6 between batch shapes and can flip a rounding.
    let worst = batched_equals_alone(&mut half, 1e-2);
    eprintln!("f16: largest logit difference, batched vs alone: {worst:e}");
    // And the half-precision KV stays close to the f32 model.
    let mut full =
        OrtBackend::open(&src, &common::config(&src, 256, 8), &OrtOptions::default()).unwrap();
    let tokens: Vec<u32> = (5..25).collect();
    let (a, b) = (
        alone(&mut half, 50, &tokens, 12),
        alone(&mut full, 50, &tokens, 12),
    );
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| max_diff(x, y))
        .fold(0.0, f32::max);
    assert!(d < 0.05, "f16 KV vs f32: logits differ by {d}");
}

#[test]
fn a_directory_without_export_files_names_them() {
    let dir = std::env::temp_dir().join(format!("llmp-ort-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    let err = llm_pipeline_ort::load(&common::config(&dir, 256, 1))
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("not a decoder-with-past ONNX export"), "{err}");
    assert!(
        err.contains("tokenizer.json") && err.contains("model.onnx"),
        "{err}"
    );
    assert!(!err.contains("config.json"), "config.json is there: {err}");
}

#[test]
fn a_graph_without_the_past_inputs_is_refused_naming_them() {
    // The tiny export, but config.json claims a third layer the graph does not have.
    let src = common::tiny();
    let dir = std::env::temp_dir().join(format!("llmp-ort-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.onnx", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 3.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err =
        OrtBackend::open(&dir, &common::config(&dir, 256, 1), &OrtOptions::default()).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(err, OrtError::NotAnExport { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("input `past_key_values.2.key`"), "{text}");
    assert!(text.contains("output `present.2.value`"), "{text}");
}

#[test]
fn use_8bit_loads_the_int8_variant_and_is_refused_without_one() {
    let src = common::tiny();
    let int8 = |dir: &std::path::Path| {
        common::config(dir, 256, 1).with_quantization(llm_pipeline_core::config::Quantization::Int8)
    };
    let backend = OrtBackend::open(&src, &int8(&src), &OrtOptions::default()).unwrap();
    assert!(
        backend.info().description.contains("model_quantized.onnx"),
        "{}",
        backend.info().description
    );
    let dir = std::env::temp_dir().join(format!("llmp-ort-noint8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "model.onnx",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let err = llm_pipeline_ort::load(&int8(&dir)).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("USE_8BIT"), "{err}");
}

#[test]
fn tensor_parallelism_is_refused() {
    let dir = common::tiny();
    let config = common::config(&dir, 256, 1).with_parallelism(2, 1);
    let err = llm_pipeline_ort::load(&config).unwrap_err().to_string();
    assert!(err.contains("TENSOR_PARALLEL_SIZE"), "{err}");
}

/// The greedy answer of SmolLM2's export to the capital question.
async fn capital_of_france(config: &llm_pipeline_core::config::PipelineConfig) -> String {
    let pipeline = llm_pipeline_ort::load(config).unwrap();
    let request = ChatCompletionRequest::new(
        "",
        vec![
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user("What is the capital of France?"),
        ],
    )
    .with_temperature(0.0)
    .with_max_tokens(32);
    let answer = pipeline.chat(request).await.unwrap();
    answer.choices[0]
        .message
        .content
        .clone()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_greedy_answer_mentions_paris() {
    let dir = common::smollm2();
    let text = capital_of_france(&common::config(&dir, 1024, 4)).await;
    assert!(text.contains("Paris"), "answer: {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_int8_greedy_answer_mentions_paris() {
    let dir = common::smollm2();
    let config = common::config(&dir, 1024, 4)
        .with_quantization(llm_pipeline_core::config::Quantization::Int8);
    let text = capital_of_france(&config).await;
    assert!(text.contains("Paris"), "answer: {text:?}");
}

/// One long sequence beside many short ones: the short rows are not padded to the long one's
/// length (twelve rows of it would hold many times the KV budget). The long row runs apart, every
/// run stays within half the KV capacity, each row gets the logits it gets alone, and once the
/// runs settle neither copies any KV.
#[test]
fn a_long_sequence_beside_short_ones_runs_apart_within_the_kv_budget() {
    let dir = common::tiny();
    let probe = OrtBackend::open(&dir, &common::config(&dir, 256, 16), &OrtOptions::default())
        .unwrap()
        .info()
        .kv_capacity;
    // A budget of about 400 cells: runs of several rows hold at most about 200.
    let config = common::config(&dir, 256, 16)
        .with_cpu_kv_cache_bytes((1u64 << 30) * 400 / u64::from(probe));
    let mut backend = OrtBackend::open(&dir, &config, &OrtOptions::default()).unwrap();
    let limit = backend.run_cells();
    assert!((195..=205).contains(&limit), "{limit}");
    let vocab = backend.info().vocab_size;
    const STEPS: usize = 8;
    // Sequence 0 has a 150-token prompt, sequences 1 to 12 four tokens each.
    let seqs: Vec<(u64, Vec<u32>, usize)> = (0..13u64)
        .map(|id| {
            let prompt = if id == 0 { 150 } else { 4 };
            let tokens = (0..prompt + STEPS)
                .map(|i| 5 + (id as u32 * 31 + i as u32 * 7) % 200)
                .collect();
            (id, tokens, prompt)
        })
        .collect();
    let expected: Vec<Vec<Vec<f32>>> = seqs
        .iter()
        .map(|(id, t, p)| alone(&mut backend, 1000 + id, t, *p))
        .collect();
    let run = |backend: &mut OrtBackend, entries: &[BatchEntry<'_>]| {
        let mut logits = Logits::new(vocab);
        backend.forward(entries, &mut logits).unwrap();
        logits
    };
    let prefill = |ids: std::ops::Range<usize>| -> Vec<BatchEntry<'_>> {
        seqs[ids]
            .iter()
            .map(|(id, t, p)| BatchEntry {
                seq: *id,
                start: 0,
                tokens: &t[..*p],
                logits: 1,
            })
            .collect()
    };
    run(&mut backend, &prefill(0..1));
    run(&mut backend, &prefill(1..13));
    let before = backend.meter().snapshot();
    for k in 0..STEPS {
        let entries: Vec<BatchEntry<'_>> = seqs
            .iter()
            .map(|(id, t, p)| BatchEntry {
                seq: *id,
                start: (p + k) as u32,
                tokens: &t[p + k..=p + k],
                logits: 1,
            })
            .collect();
        let logits = run(&mut backend, &entries);
        for (row, want) in expected.iter().enumerate() {
            let d = max_diff(logits.row(row), &want[k + 1]);
            assert!(d < 1e-4, "step {k}, sequence {row}: logits differ by {d}");
        }
    }
    let stats = backend.meter().snapshot();
    assert!(
        stats.max_run_cells as usize <= limit,
        "a run held {} cells, beyond {limit}",
        stats.max_run_cells
    );
    // The first decode step gathers the short rows once; from then on both runs (the short
    // rows' resident batch and the long row's own tensors) feed their outputs back.
    assert_eq!(stats.calls - before.calls, 2 * STEPS as u64, "{stats:?}");
    assert_eq!(
        stats.zero_copy_calls - before.zero_copy_calls,
        2 * STEPS as u64 - 1,
        "{stats:?}"
    );
}
