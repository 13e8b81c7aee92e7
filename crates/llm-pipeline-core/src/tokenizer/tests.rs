//! Tests against the real SmolLM2 GGUF.

use super::*;
use crate::testing::smollm2 as smollm2_path;

fn smollm2() -> Tokenizer {
    let meta = GgufMetadata::from_path(smollm2_path()).unwrap();
    Tokenizer::from_gguf(&meta).unwrap()
}

#[test]
fn builds_from_gguf_and_reports_time() {
    let start = std::time::Instant::now();
    let meta = GgufMetadata::from_path(smollm2_path()).unwrap();
    let read = start.elapsed();
    let tokenizer = Tokenizer::from_gguf(&meta).unwrap();
    eprintln!(
        "SmolLM2: metadata {read:?}, tokenizer {:?}",
        start.elapsed() - read
    );
    assert_eq!(tokenizer.vocab_size(), 49152);
}

#[test]
fn smollm2_special_tokens() {
    let t = smollm2();
    let s = t.special();
    assert_eq!(s.bos, Some(1));
    assert_eq!(s.eos, Some(2));
    assert!(!s.add_bos);
    assert_eq!(s.bos_text.as_deref(), Some("<|im_start|>"));
    assert_eq!(s.eos_text.as_deref(), Some("<|im_end|>"));
    // <|endoftext|>, <|im_end|>, and <reponame> (a FIM repository marker llama.cpp also stops at).
    assert_eq!(s.end_of_generation, [0, 2, 4]);
    assert!(s.is_end_of_generation(2) && !s.is_end_of_generation(1));
}

#[test]
fn encodes_chat_prompts_with_special_tokens() {
    let t = smollm2();
    let ids = t
        .encode_prompt("<|im_start|>user\nHello, world!<|im_end|>\n")
        .unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids[ids.len() - 2], 2);
    assert_eq!(
        t.decode(&ids, SkipSpecial::No).unwrap(),
        "<|im_start|>user\nHello, world!<|im_end|>\n"
    );
    assert_eq!(
        t.decode(&ids, SkipSpecial::Yes).unwrap(),
        "user\nHello, world!\n"
    );
    // Digits are split one by one (the `smollm` pre-tokenizer).
    let digits = t.encode_prompt("1234").unwrap();
    assert_eq!(digits.len(), 4);
}

#[test]
fn token_text_is_the_surface_text() {
    let t = smollm2();
    let ids = t.encode_prompt(" Hello").unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(t.token_text(ids[0]).as_deref(), Some(" Hello"));
    assert_eq!(t.token_text(2).as_deref(), Some("<|im_end|>"));
    // One byte of a multi-byte character decodes lossily.
    let ids = t.encode_prompt("🦀").unwrap();
    assert!(ids.len() > 1);
    assert!(t.token_text(ids[0]).unwrap().contains('\u{FFFD}'));
    assert_eq!(t.token_text(1_000_000), None);
}

#[test]
fn tokenizer_is_cheap_to_share() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Tokenizer>();
}

#[test]
fn unsupported_pre_tokenizer_is_named() {
    let meta = GgufMetadata::from_path(smollm2_path()).unwrap();
    let mut values: Vec<(String, crate::gguf::GgufValue)> = meta
        .iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
    for (k, v) in &mut values {
        if k == "tokenizer.ggml.pre" {
            *v = crate::gguf::GgufValue::String("klingon".into());
        }
    }
    let meta = GgufMetadata::from_values(meta.path(), values);
    let err = Tokenizer::from_gguf(&meta).unwrap_err().to_string();
    assert!(err.contains("klingon"), "{err}");
}

/// A tiny SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`) built in memory.
fn tiny_spm() -> Tokenizer {
    use crate::gguf::{GgufArray, GgufValue};
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (text, score) in [
        ("▁", -10.0),
        ("a", -10.0),
        ("b", -10.0),
        ("c", -10.0),
        ("ab", -5.0),
        ("bc", -1.0),
        ("▁a", -3.0),
    ] {
        tokens.push(text.into());
        types.push(1);
        scores.push(score);
    }
    let values = [
        ("tokenizer.ggml.model", GgufValue::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(GgufArray::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(GgufArray::I32(types)),
        ),
        (
            "tokenizer.ggml.scores",
            GgufValue::Array(GgufArray::F32(scores)),
        ),
    ];
    let meta = GgufMetadata::from_values("tiny.gguf", values.map(|(k, v)| (k.to_owned(), v)));
    Tokenizer::from_gguf(&meta).unwrap()
}

#[test]
fn sentencepiece_merges_by_score_with_byte_fallback() {
    let t = tiny_spm();
    let id = |text: &str| t.inner().token_to_id(text).unwrap();
    let s = t.special();
    assert_eq!((s.bos, s.eos, s.add_bos), (Some(1), Some(2), true));
    assert_eq!(s.end_of_generation, [2]);
    // "▁abc": `bc` (score -1) merges before `▁a` (-3) and `ab` (-5), as in llama.cpp; BOS first.
    let ids = t.encode_prompt("abc").unwrap();
    assert_eq!(ids, [1, id("▁a"), id("bc")]);
    assert_eq!(t.decode(&ids, SkipSpecial::Yes).unwrap(), "abc");
    // A BOS written by the template is not doubled.
    assert_eq!(t.encode_prompt("<s>abc").unwrap(), ids);
    // Unknown characters fall back to bytes; every text piece after a special token gets `▁`.
    let ids = t.encode_prompt("<s>é</s>b").unwrap();
    assert_eq!(
        ids,
        [1, id("▁"), id("<0xC3>"), id("<0xA9>"), 2, id("▁"), id("b")]
    );
    assert_eq!(t.decode(&ids, SkipSpecial::No).unwrap(), "<s> é</s> b");
    assert_eq!(t.token_text(id("▁a")).as_deref(), Some(" a"));
}

#[test]
fn from_dir_reads_hugging_face_files() {
    let gguf = smollm2();
    let dir = std::env::temp_dir().join(format!("llm-pipeline-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    gguf.inner()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>", "add_bos_token": true}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [2, 7]}"#,
    )
    .unwrap();
    let t = Tokenizer::from_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let s = t.special();
    assert_eq!((s.bos, s.eos, s.add_bos), (Some(1), Some(2), true));
    assert_eq!(s.bos_text.as_deref(), Some("<|im_start|>"));
    assert_eq!(s.end_of_generation, [0, 2, 4, 7]);
    assert_eq!(t.vocab_size(), gguf.vocab_size());
    let text = "<|im_start|>user\ncafé 123 🦀<|im_end|>\n";
    assert_eq!(
        t.encode_prompt(text).unwrap(),
        gguf.encode_prompt(text).unwrap()
    );
    assert_eq!(
        t.encode_prompt("hi").unwrap()[0],
        1,
        "add_bos_token adds BOS"
    );
}
