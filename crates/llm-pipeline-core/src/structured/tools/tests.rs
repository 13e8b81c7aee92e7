//! The formats' parsers, the stream's independence from how an answer is cut, and the grammars
//! walked on SmolLM2's vocabulary.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::structured::Grammars;
use crate::structured::tests::{tokenizer, walk};
use crate::testing;
use crate::tokenizer::Tokenizer;

fn call(name: &str, arguments: Value) -> ParsedCall {
    ParsedCall {
        name: name.into(),
        arguments: arguments.to_string(),
    }
}

#[test]
fn hermes_answers_split_into_text_and_calls() {
    let text = "Let me check both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
                {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>\n<tool_call>\n\
                {\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let (content, calls) = ToolFormat::Hermes.parse(text);
    assert_eq!(content, "Let me check both.");
    assert_eq!(
        calls,
        [
            call("get_weather", json!({"city": "Paris", "unit": "celsius"})),
            call("get_time", json!({}))
        ]
    );
    // Key order is kept; arguments are compact JSON.
    assert_eq!(calls[0].arguments, r#"{"city":"Paris","unit":"celsius"}"#);
    // Prose stays prose, and a block that is not a call stays text.
    assert_eq!(
        ToolFormat::Hermes.parse("Hello!"),
        ("Hello!".into(), vec![])
    );
    let broken = "<tool_call>\nnot json\n</tool_call>";
    assert_eq!(ToolFormat::Hermes.parse(broken), (broken.into(), vec![]));
}

#[test]
fn the_other_formats_parse_their_calls() {
    assert_eq!(
        ToolFormat::Llama3Json.parse(
            "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"a\": 1}}; {\"name\": \"g\", \"parameters\": {}}"
        ),
        (String::new(), vec![call("f", json!({"a": 1})), call("g", json!({}))])
    );
    assert_eq!(
        ToolFormat::Mistral.parse("[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"x\": \"y\"}}]"),
        (String::new(), vec![call("f", json!({"x": "y"}))])
    );
    // Arguments written as a JSON string are read as the object they hold.
    assert_eq!(
        ToolFormat::Json.parse("[{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 2}\"}]"),
        (String::new(), vec![call("f", json!({"x": 2}))])
    );
    for format in [
        ToolFormat::Llama3Json,
        ToolFormat::Mistral,
        ToolFormat::Json,
    ] {
        assert_eq!(format.parse("Sure: 4"), ("Sure: 4".into(), vec![]));
        assert_eq!(
            format.parse("{\"answer\": 4}"),
            ("{\"answer\": 4}".into(), vec![])
        );
    }
}

#[test]
fn formats_are_detected_from_templates_and_named() {
    assert_eq!(
        ToolFormat::detect("{{ '<tool_call>' }}"),
        ToolFormat::Hermes
    );
    assert_eq!(ToolFormat::detect("[TOOL_CALLS]"), ToolFormat::Mistral);
    assert_eq!(ToolFormat::detect("<|python_tag|>"), ToolFormat::Llama3Json);
    assert_eq!(ToolFormat::detect("<|im_start|>"), ToolFormat::Json);
    for (name, format) in ToolFormat::ALL {
        assert_eq!(ToolFormat::from_name(name), Some(format));
        assert_eq!(format.name(), name);
    }
    assert_eq!(ToolFormat::from_name("pythonic"), None);
}

/// Any cut of an answer into pieces releases the same text and the same calls as the whole.
#[test]
fn any_split_of_an_answer_streams_the_same_calls() {
    let answers = [
        (
            ToolFormat::Hermes,
            "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich <tool_call>\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n",
        ),
        (ToolFormat::Hermes, "  No tools needed <tool but> text \n\n"),
        (
            ToolFormat::Hermes,
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"</tool\"}}",
        ),
        (
            ToolFormat::Hermes,
            "A<tool_call>oops</tool_call> B <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
        ),
        (
            ToolFormat::Llama3Json,
            " {\"name\": \"f\", \"parameters\": {\"q\": \"x; y\"}}; {\"name\": \"g\", \"parameters\": {}}",
        ),
        (ToolFormat::Llama3Json, "The answer is {4}."),
        (
            ToolFormat::Mistral,
            "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"n\": 1.5}}]",
        ),
        (
            ToolFormat::Json,
            "\n[{\"name\": \"f\", \"arguments\": {\"s\": \"é\"}}]",
        ),
    ];
    let mut rng = StdRng::seed_from_u64(5);
    for (format, answer) in answers {
        let whole = format.parse(answer);
        let bounds: Vec<usize> = (0..=answer.len())
            .filter(|&i| answer.is_char_boundary(i))
            .collect();
        for _ in 0..400 {
            let mut cuts: Vec<usize> = (0..rng.random_range(1..8))
                .map(|_| bounds[rng.random_range(0..bounds.len())])
                .collect();
            cuts.sort_unstable();
            let mut stream = ToolCallStream::new(format);
            let mut items = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([answer.len()]) {
                items.extend(stream.push(&answer[from..cut]));
                from = cut;
            }
            items.extend(stream.finish());
            let (mut text, mut calls) = (String::new(), Vec::new());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    ToolStreamItem::Text(t) => text.push_str(&t),
                    ToolStreamItem::Call { index, call } => {
                        assert_eq!(index as usize, calls.len(), "calls numbered in order ({i})");
                        calls.push(call);
                    }
                }
            }
            assert_eq!((text, calls), whole, "{format}: {answer:?}");
        }
    }
}

fn weather_tools(choice: ToolChoice, parallel: bool) -> ToolUse {
    let tool = |name: &str, parameters: Value| Tool {
        name: name.into(),
        parameters: parameters.clone(),
        definition: json!({"type": "function", "function": {"name": name, "parameters": parameters}}),
    };
    ToolUse {
        tools: vec![
            tool(
                "get_weather",
                json!({
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "maxLength": 12},
                        "unit": {"enum": ["celsius", "fahrenheit"]}
                    },
                    "required": ["city", "unit"],
                    "additionalProperties": false
                }),
            ),
            tool(
                "get_time",
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
            ),
        ],
        choice,
        parallel,
    }
}

/// The text of a walk through `grammar` (see [`walk`]).
fn walk_grammar(tokenizer: &Arc<Tokenizer>, grammar: &Grammar) -> String {
    let grammars = Grammars::new(Arc::clone(tokenizer));
    walk(tokenizer, &mut grammars.compile(grammar).unwrap())
}

#[test]
fn required_and_named_grammars_yield_valid_calls_in_every_format() {
    let tokenizer = tokenizer(testing::smollm2());
    for (_, format) in ToolFormat::ALL {
        for (choice, names) in [
            (ToolChoice::Required, &["get_weather", "get_time"][..]),
            (ToolChoice::Function("get_time".into()), &["get_time"][..]),
        ] {
            let tools = weather_tools(choice.clone(), false);
            let (grammar, trigger) = format.grammar(&tools).expect("a grammar");
            assert_eq!(trigger, None);
            let text = walk_grammar(&tokenizer, &grammar);
            let (content, calls) = format.parse(&text);
            assert_eq!(content, "", "{format} {choice:?}: {text}");
            assert_eq!(calls.len(), 1, "{format} {choice:?}: {text}");
            assert!(names.contains(&calls[0].name.as_str()), "{text}");
            let arguments: Value = serde_json::from_str(&calls[0].arguments).unwrap();
            if calls[0].name == "get_weather" {
                assert!(arguments["city"].is_string(), "{text}");
            } else {
                assert_eq!(arguments, json!({}), "{text}");
            }
        }
    }
    // `auto` is armed at the Hermes and Mistral markers and left free in the formats without
    // one; `none` enforces nothing.
    let auto = weather_tools(ToolChoice::Auto, true);
    assert_eq!(
        ToolFormat::Hermes.grammar(&auto).unwrap().1,
        Some("<tool_call>")
    );
    assert_eq!(
        ToolFormat::Mistral.grammar(&auto).unwrap().1,
        Some("[TOOL_CALLS]")
    );
    assert_eq!(ToolFormat::Json.grammar(&auto), None);
    assert_eq!(ToolFormat::Llama3Json.grammar(&auto), None);
    assert_eq!(
        ToolFormat::Hermes.grammar(&weather_tools(ToolChoice::None, true)),
        None
    );
}

#[test]
fn the_armed_mistral_grammar_completes_calls_after_its_special_token() {
    let tokenizer = tokenizer(testing::smollm2());
    let grammars = Grammars::new(Arc::clone(&tokenizer));
    let (grammar, trigger) = ToolFormat::Mistral
        .grammar(&weather_tools(ToolChoice::Auto, false))
        .unwrap();
    let mut constraint = grammars.compile(&grammar).unwrap().after(trigger.unwrap());
    // The marker arrives as one token whose text the engine passes on.
    constraint.commit(0, "[TOOL_CALLS]").unwrap();
    assert!(constraint.is_active());
    let text = walk(&tokenizer, &mut constraint);
    // The detokenizer drops the special token from the answer; the calls still parse.
    let (content, calls) = ToolFormat::Mistral.parse(&text);
    assert_eq!(content, "", "{text}");
    assert_eq!(calls.len(), 1, "{text}");
}

#[test]
fn the_armed_hermes_grammar_completes_calls_after_the_marker() {
    let tokenizer = tokenizer(testing::smollm2());
    let grammars = Grammars::new(Arc::clone(&tokenizer));
    let (grammar, trigger) = ToolFormat::Hermes
        .grammar(&weather_tools(ToolChoice::Auto, false))
        .unwrap();
    let mut constraint = grammars.compile(&grammar).unwrap().after(trigger.unwrap());
    let mut text = String::from("I will look it up.\n<tool_call>\n");
    constraint.commit(0, &text).unwrap();
    text.push_str(&walk(&tokenizer, &mut constraint));
    let (content, calls) = ToolFormat::Hermes.parse(&text);
    assert_eq!(content, "I will look it up.");
    assert_eq!(calls.len(), 1, "{text}");
}
