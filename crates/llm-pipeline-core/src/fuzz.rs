//! Randomized robustness tests of every parser that reads input from outside: request JSON
//! through validation, chat templates rendering clients' messages, GGUF headers, and the
//! tokenizer's round trip with incremental detokenization.
//!
//! Each test runs a fixed number of cases from fixed seeds, so it takes bounded time in every
//! `cargo test` and a failure names the seed that reproduces it. The properties: no panic, no
//! hang, and for round trips, the text back exactly.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::detokenize::IncrementalDecoder;
use crate::gguf::GgufMetadata;
use crate::openai::ChatCompletionRequest;
use crate::template::{ChatMessage, ChatTemplate, KnownTemplate, SpecialTokenText};
use crate::tokenizer::{SkipSpecial, Tokenizer};
use crate::validation::{ModelLimits, SamplingDefaults, validate};

/// Cases per test.
const CASES: u64 = 400;

/// Text that parsers find hard: markup of every family, Jinja syntax, escapes, multi-byte
/// characters, lone surrogate-like sequences, control characters, very long runs.
const PIECES: &[&str] = &[
    "<|im_start|>system\n",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "[INST]",
    "<|user|>",
    "<s>",
    "</s>",
    "{{ messages }}",
    "{% for x in y %}",
    "{#",
    "\\u0000",
    "\u{0}",
    "\u{7f}",
    "\"",
    "\\",
    "é",
    "日本語",
    "🌊🌊",
    "\u{200d}",
    "\r\n",
    "\t",
    " ",
    "a",
    "Hello, world.",
];

fn text(rng: &mut StdRng) -> String {
    let mut s = String::new();
    for _ in 0..rng.random_range(0..12) {
        if rng.random_bool(0.8) {
            s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
        } else {
            // Planes 0 to 3 (every assigned character outside the private-use planes; the
            // lead bytes of planes 4 to 14 are missing from some byte-level vocabularies, as
            // SmolLM2's, so no model could read them), but not U+FFFD, which a stream decoder
            // holds back as a character still incomplete.
            let c = char::from_u32(rng.random_range(0..0x4_0000))
                .filter(|&c| c != '\u{fffd}')
                .unwrap_or('x');
            s.push(c);
        }
    }
    if rng.random_bool(0.02) {
        s.push_str(&"x".repeat(rng.random_range(1000..20_000)));
    }
    s
}

fn number(rng: &mut StdRng) -> Value {
    match rng.random_range(0..6) {
        0 => json!(rng.random_range(-3..300)),
        1 => json!(rng.random_range(-5.0..5.0)),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1e308),
        _ => json!(0),
    }
}

fn value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 2 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 | 3 => number(rng),
        4 => json!(text(rng)),
        5 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.random_range(0..4) {
                m.insert(text(rng), value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

const ROLES: &[&str] = &[
    "system",
    "user",
    "assistant",
    "tool",
    "developer",
    "robot",
    "",
];
const FIELDS: &[&str] = &[
    "model",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "stream",
    "stream_options",
    "seed",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "user",
    "tools",
    "tool_choice",
    "response_format",
    "parallel_tool_calls",
    "unknown_field",
];

fn message(rng: &mut StdRng) -> Value {
    let mut m = Map::new();
    m.insert(
        "role".into(),
        json!(ROLES[rng.random_range(0..ROLES.len())]),
    );
    if rng.random_bool(0.9) {
        let content = if rng.random_bool(0.8) {
            json!(text(rng))
        } else {
            value(rng, 1)
        };
        m.insert("content".into(), content);
    }
    for key in ["name", "tool_call_id", "tool_calls"] {
        if rng.random_bool(0.1) {
            m.insert(key.into(), value(rng, 1));
        }
    }
    Value::Object(m)
}

fn request(rng: &mut StdRng) -> Value {
    let mut m = Map::new();
    let messages: Vec<Value> = (0..rng.random_range(0..5)).map(|_| message(rng)).collect();
    m.insert("messages".into(), Value::Array(messages));
    for field in FIELDS {
        if rng.random_bool(0.25) {
            let v = match *field {
                "logit_bias" if rng.random_bool(0.7) => {
                    let mut b = Map::new();
                    b.insert(text(rng), number(rng));
                    b.insert(rng.random_range(0..2000u32).to_string(), number(rng));
                    Value::Object(b)
                }
                "stop" if rng.random_bool(0.7) => json!([text(rng), text(rng)]),
                _ if rng.random_bool(0.6) => number(rng),
                _ => value(rng, 1),
            };
            m.insert((*field).into(), v);
        }
    }
    Value::Object(m)
}

fn limits() -> ModelLimits {
    ModelLimits {
        model_id: "m".into(),
        vocab_size: 1000,
        defaults: SamplingDefaults::default(),
    }
}

#[test]
fn request_json_through_validation_never_panics() {
    let mut valid = 0;
    for seed in 0..CASES {
        let mut rng = StdRng::seed_from_u64(seed);
        let v = request(&mut rng);
        let mut bytes = serde_json::to_vec(&v).unwrap();
        // One case in four also gets its bytes damaged.
        if rng.random_bool(0.25) && !bytes.is_empty() {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
        }
        if let Ok(request) = serde_json::from_slice::<ChatCompletionRequest>(&bytes)
            && validate(&request, &limits()).is_ok()
        {
            valid += 1;
        }
    }
    // The generator reaches past parsing into validation's acceptance, not just its errors.
    assert!(valid > 0, "no generated request was valid");
}

#[test]
fn templates_render_any_conversation_without_panicking() {
    let special = SpecialTokenText {
        bos: "<s>".into(),
        eos: "</s>".into(),
    };
    let templates: Vec<ChatTemplate> = KnownTemplate::ALL
        .iter()
        .map(|t| ChatTemplate::new(t.source(), special.clone()).unwrap())
        .collect();
    for seed in 0..CASES {
        let mut rng = StdRng::seed_from_u64(seed);
        let owned: Vec<(String, String)> = (0..rng.random_range(0..6))
            .map(|_| {
                let role = ROLES[rng.random_range(0..ROLES.len())].to_owned();
                (role, text(&mut rng))
            })
            .collect();
        let messages: Vec<ChatMessage<'_>> = owned
            .iter()
            .map(|(role, content)| ChatMessage { role, content })
            .collect();
        for (t, known) in templates.iter().zip(KnownTemplate::ALL) {
            let started = Instant::now();
            // Refusals (roles out of order) are errors; anything but a panic is fine.
            if let Ok(rendered) = t.render(&messages) {
                // (A system message alone may be folded into a first user turn that is not
                // there: Gemma's template then drops it, as the family's own does.)
                let shown = |role: &str| matches!(role, "user" | "assistant");
                for (_, content) in owned.iter().filter(|(role, _)| shown(role)) {
                    assert!(
                        rendered.contains(content.trim()),
                        "seed {seed}, {}: {content:?} is missing from {rendered:?}",
                        known.name()
                    );
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "seed {seed}: slow render"
            );
        }
    }
}

#[test]
fn damaged_gguf_headers_are_errors_not_panics() {
    use std::io::Read;
    let mut header = vec![0u8; 4 << 20];
    let mut file = std::fs::File::open(crate::testing::smollm2()).unwrap();
    file.read_exact(&mut header).unwrap();
    let dir = crate::testing::scratch_dir("fuzz-gguf");
    let path = dir.join("damaged.gguf");
    for seed in 0..CASES / 4 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut bytes = header.clone();
        // Damage the first 64 KiB (lengths, counts, types, offsets), then cut somewhere.
        for _ in 0..rng.random_range(1..8) {
            let at = rng.random_range(0..64 << 10);
            bytes[at] = rng.random();
        }
        bytes.truncate(rng.random_range(8..bytes.len()));
        std::fs::write(&path, &bytes).unwrap();
        let started = Instant::now();
        let _ = GgufMetadata::from_path(&path);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "seed {seed}: slow parse"
        );
    }
}

#[test]
fn message_text_round_trips_through_the_tokenizer_and_the_incremental_decoder() {
    let meta = GgufMetadata::from_path(crate::testing::smollm2()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&meta).unwrap();
    for seed in 0..CASES {
        let mut rng = StdRng::seed_from_u64(seed);
        let input = text(&mut rng);
        // Message text is data: special-token spellings stay text.
        let whole = 0..input.len();
        let ids = tokenizer
            .encode_chat(&input, std::slice::from_ref(&whole))
            .unwrap();
        let back = tokenizer.decode(&ids, SkipSpecial::No).unwrap();
        assert_eq!(back, input, "seed {seed}");
        let mut decoder = IncrementalDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(piece) = decoder.step(&tokenizer, id).unwrap() {
                streamed.push_str(&piece);
            }
        }
        assert_eq!(streamed, input, "seed {seed}: streamed text");
    }
}
