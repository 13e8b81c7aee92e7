//! Grammars against the real SmolLM2 (byte-level BPE) and Gemma 3 (SentencePiece) vocabularies.

use serde_json::json;

use super::*;
use crate::gguf::GgufMetadata;
use crate::testing;
use crate::tokenizer::SkipSpecial;

/// The tokenizer of the GGUF at `path`.
pub(super) fn tokenizer(path: std::path::PathBuf) -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_gguf(&GgufMetadata::from_path(path).unwrap()).unwrap())
}

/// Drives `constraint` to completion, always taking the lowest allowed id; the text it wrote.
pub(super) fn walk(tokenizer: &Tokenizer, constraint: &mut Constraint) -> String {
    let mut ids = Vec::new();
    for _ in 0..300 {
        if constraint.is_complete() {
            break;
        }
        let allowed = constraint.allowed().unwrap().expect("active").to_vec();
        let token = (0..tokenizer.vocab_size() as u32)
            .find(|&t| allowed[t as usize / 32] >> (t % 32) & 1 == 1)
            .unwrap();
        let text = tokenizer.decode(&[token], SkipSpecial::No).unwrap();
        constraint.commit(token, &text).unwrap();
        ids.push(token);
    }
    assert!(constraint.is_complete(), "the grammar never completed");
    tokenizer.decode(&ids, SkipSpecial::No).unwrap()
}

fn weather() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 8},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}
        },
        "required": ["city", "unit", "days"],
        "additionalProperties": false
    })
}

#[test]
fn a_schema_walk_yields_valid_json_on_both_vocabularies() {
    let schema = weather();
    for path in [testing::smollm2(), testing::gemma3()] {
        let tokenizer = tokenizer(path);
        let grammars = Grammars::new(Arc::clone(&tokenizer));
        let mut constraint = grammars
            .compile(&Grammar::JsonSchema(schema.clone()))
            .unwrap();
        let text = walk(&tokenizer, &mut constraint);
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(value["city"].is_string(), "{text}");
        assert!(["celsius", "fahrenheit"].contains(&value["unit"].as_str().unwrap()));
        assert!(value["days"].as_array().unwrap().len() <= 2, "{text}");
        // The layout is fixed: one space after `:` and `,`, nothing else.
        assert!(text.starts_with("{\"city\": \""), "{text}");
    }
}

#[test]
fn special_tokens_are_never_allowed_inside_json() {
    let tokenizer = tokenizer(testing::smollm2());
    let grammars = Grammars::new(Arc::clone(&tokenizer));
    let mut constraint = grammars.compile(&Grammar::JsonObject).unwrap();
    let allowed = constraint.allowed().unwrap().unwrap().to_vec();
    let ok = |t: u32| allowed[t as usize / 32] >> (t % 32) & 1 == 1;
    // `{` and ` {` may start an object; <|im_end|> (2) and letters may not.
    let brace = tokenizer.inner().token_to_id("{").unwrap();
    assert!(ok(brace));
    assert!(!ok(2));
    assert!(!ok(tokenizer.inner().token_to_id("a").unwrap()));
}

#[test]
fn an_armed_constraint_waits_for_its_trigger() {
    let tokenizer = tokenizer(testing::smollm2());
    let grammars = Grammars::new(Arc::clone(&tokenizer));
    let mut constraint = grammars
        .compile(&Grammar::JsonSchema(weather()))
        .unwrap()
        .after("<tool_call>");
    assert_eq!(constraint.allowed().unwrap(), None);
    constraint.commit(0, "Let me check. <tool").unwrap();
    assert!(!constraint.is_active());
    constraint.commit(0, "_call>\n").unwrap();
    assert!(constraint.is_active());
    let text = walk(&tokenizer, &mut constraint);
    assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
}

#[test]
fn a_schema_that_cannot_compile_says_why() {
    let tokenizer = tokenizer(testing::smollm2());
    let grammars = Grammars::new(tokenizer);
    let error = grammars
        .compile(&Grammar::JsonSchema(
            json!({"type": "object", "$ref": "#/$defs/missing"}),
        ))
        .unwrap_err();
    assert!(error.contains("missing"), "{error}");
    let error = grammars
        .compile(&Grammar::JsonSchema(
            json!({"type": "integer", "minimum": 5, "maximum": 1}),
        ))
        .unwrap_err();
    assert!(!error.is_empty());
}
