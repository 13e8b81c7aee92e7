//! Tool calling through the OpenAI client, on SmolLM2 with a ChatML template that declares
//! tools in the Hermes format (`tests/support/chatml-tools.jinja`): a weather round trip (call,
//! tool result, final answer) whole and streamed, `required` always calls with arguments valid
//! against the tool's schema, a named function is the one called, and `auto` answers either
//! text or well-formed calls.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, CreateChatCompletionRequest, CreateChatCompletionResponse,
    FinishReason,
};
use futures::StreamExt;
use llm_pipeline::core::openai::ChatCompletionRequest;
use serde_json::{Value, json};

use super::{EXCLUSIVE, QUEUE, SEQS, Served, start, support};

/// SmolLM2 with a template that declares tools (the Python client test uses it too).
pub(crate) static TOOLS_SERVER: LazyLock<Served> = LazyLock::new(|| {
    let template = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/chatml-tools.jinja"
    );
    start(
        support::config(1024, SEQS)
            .with_max_queue(QUEUE)
            .with_chat_template(template),
    )
});

fn client() -> Client<OpenAIConfig> {
    super::client_of(&TOOLS_SERVER)
}

fn weather_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city", "maxLength": 30},
            "unit": {"enum": ["celsius", "fahrenheit"]}
        },
        "required": ["city", "unit"],
        "additionalProperties": false
    })
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": weather_parameters()}},
        {"type": "function", "function": {
            "name": "get_time",
            "description": "The current time in a timezone",
            "parameters": {"type": "object",
                           "properties": {"timezone": {"type": "string", "maxLength": 30}},
                           "required": ["timezone"], "additionalProperties": false}}}
    ])
}

/// A request from OpenAI's JSON, as a client would send it.
fn request(body: Value) -> CreateChatCompletionRequest {
    let mut body = body;
    body["model"] = json!("");
    body["tools"] = tools();
    body.as_object_mut()
        .unwrap()
        .entry("max_completion_tokens")
        .or_insert(json!(96));
    serde_json::from_value(body).expect("a well-formed request")
}

fn weather_question() -> Value {
    json!([
        {"role": "system", "content": "You are a helpful assistant with tools."},
        {"role": "user", "content": "What is the weather like in Paris today?"}
    ])
}

/// The calls of an answer as (id, name, arguments), checking each is a function call.
fn calls_of(answer: &CreateChatCompletionResponse) -> Vec<(String, String, Value)> {
    answer.choices[0]
        .message
        .tool_calls
        .iter()
        .flatten()
        .map(|call| match call {
            ChatCompletionMessageToolCalls::Function(f) => (
                f.id.clone(),
                f.function.name.clone(),
                serde_json::from_str(&f.function.arguments)
                    .unwrap_or_else(|e| panic!("arguments are JSON ({e}): {f:?}")),
            ),
            other => panic!("a function call, not {other:?}"),
        })
        .collect()
}

fn assert_valid_weather(arguments: &Value) {
    let validator = jsonschema::validator_for(&weather_parameters()).unwrap();
    assert!(validator.is_valid(arguments), "{arguments}");
}

async fn settled() {
    super::settled_on(&TOOLS_SERVER).await;
}

#[tokio::test]
async fn a_weather_round_trip_whole_and_streamed() {
    let _turn = EXCLUSIVE.lock().await;
    let asked = json!({"messages": weather_question(), "tool_choice": "required",
                       "parallel_tool_calls": false, "temperature": 0});
    let answer = client()
        .chat()
        .create(request(asked.clone()))
        .await
        .expect("an answer");
    assert_eq!(
        answer.choices[0].finish_reason,
        Some(FinishReason::ToolCalls)
    );
    let calls = calls_of(&answer);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (id, name, arguments) = calls[0].clone();
    assert!(id.starts_with("call_"), "{id}");
    assert_eq!(name, "get_weather", "the question is about the weather");
    assert_valid_weather(&arguments);

    // Streamed, the pieces reassemble (by index) into the same call.
    let mut stream = client()
        .chat()
        .create_stream(request(asked))
        .await
        .expect("a stream");
    let mut assembled: BTreeMap<u32, (Option<String>, String, String)> = BTreeMap::new();
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a well-formed chunk");
        for choice in chunk.choices {
            for piece in choice.delta.tool_calls.into_iter().flatten() {
                let call = assembled.entry(piece.index).or_default();
                if let Some(id) = piece.id {
                    assert!(call.0.replace(id).is_none(), "the id comes once");
                }
                if let Some(function) = piece.function {
                    if let Some(name) = function.name {
                        assert!(call.1.is_empty(), "the name comes once");
                        call.1 = name;
                    }
                    call.2.push_str(function.arguments.as_deref().unwrap_or(""));
                }
            }
            finish = choice.finish_reason.or(finish);
        }
    }
    assert_eq!(finish, Some(FinishReason::ToolCalls));
    assert_eq!(assembled.len(), 1, "{assembled:?}");
    let (streamed_id, streamed_name, streamed_arguments) = assembled.remove(&0).unwrap();
    assert!(streamed_id.is_some_and(|id| id.starts_with("call_")));
    assert_eq!(streamed_name, name);
    let streamed_arguments: Value = serde_json::from_str(&streamed_arguments).unwrap();
    assert_eq!(
        streamed_arguments, arguments,
        "greedy: streamed equals whole"
    );

    // The tool's result goes back with the call; the model answers in text.
    let mut messages = weather_question();
    let messages_list = messages.as_array_mut().unwrap();
    messages_list.push(json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": id, "type": "function",
         "function": {"name": name, "arguments": arguments.to_string()}}]}));
    messages_list.push(json!({"role": "tool", "tool_call_id": id,
                              "content": "{\"temperature\": 22, \"sky\": \"sunny\"}"}));
    let followed = json!({"messages": messages, "tool_choice": "none", "temperature": 0});
    let prompt = TOOLS_SERVER
        .pipeline
        .prompt_tokens(&serde_json::from_value::<ChatCompletionRequest>(followed.clone()).unwrap())
        .await
        .expect("the conversation renders");
    let prompt = TOOLS_SERVER
        .pipeline
        .tokenizer()
        .decode(&prompt, llm_pipeline::core::tokenizer::SkipSpecial::No)
        .unwrap();
    assert!(
        prompt.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {")
            && prompt.contains("<tool_response>\n{\"temperature\": 22"),
        "the call and its result reach the template: {prompt}"
    );
    let last = client()
        .chat()
        .create(request(followed))
        .await
        .expect("an answer");
    assert_eq!(last.choices[0].finish_reason, Some(FinishReason::Stop));
    assert!(last.choices[0].message.tool_calls.is_none());
    let text = last.choices[0].message.content.clone().unwrap_or_default();
    assert!(!text.trim().is_empty(), "a final answer in text");
    settled().await;
}

#[tokio::test]
async fn required_always_calls_and_a_named_function_is_the_one_called() {
    let _turn = EXCLUSIVE.lock().await;
    // One call each: the grammar ends the answer when the call closes. With parallel calls
    // allowed, a model may go on calling until `max_tokens`; the calls it closed still count.
    let answers = futures::stream::iter(0..16)
        .map(|seed| {
            let body = json!({"messages": weather_question(), "tool_choice": "required",
                              "temperature": 1.0, "seed": seed,
                              "parallel_tool_calls": seed >= 12});
            async move { (seed, client().chat().create(request(body)).await) }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    for (seed, answer) in answers {
        let answer = answer.expect("an answer");
        let calls = calls_of(&answer);
        let reason = answer.choices[0].finish_reason;
        if seed < 12 {
            assert_eq!(
                reason,
                Some(FinishReason::ToolCalls),
                "{:?}",
                answer.choices[0]
            );
            assert_eq!(calls.len(), 1, "{calls:?}");
        } else {
            assert!(matches!(
                reason,
                Some(FinishReason::ToolCalls | FinishReason::Length)
            ));
            assert!(!calls.is_empty(), "{:?}", answer.choices[0]);
        }
        for (_, name, arguments) in calls {
            match name.as_str() {
                "get_weather" => assert_valid_weather(&arguments),
                "get_time" => assert!(arguments["timezone"].is_string(), "{arguments}"),
                other => panic!("`{other}` was not declared"),
            }
        }
    }
    let named = json!({"messages": weather_question(), "temperature": 1.0,
                       "tool_choice": {"type": "function", "function": {"name": "get_time"}}});
    let answer = client()
        .chat()
        .create(request(named))
        .await
        .expect("an answer");
    let calls = calls_of(&answer);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, "get_time");
    settled().await;
}

#[tokio::test]
async fn auto_answers_text_or_well_formed_calls() {
    let _turn = EXCLUSIVE.lock().await;
    for seed in 0..4 {
        let body = json!({"messages": weather_question(), "temperature": 1.0, "seed": seed});
        let answer = client()
            .chat()
            .create(request(body))
            .await
            .expect("an answer");
        let choice = &answer.choices[0];
        match choice.finish_reason {
            Some(FinishReason::ToolCalls) => {
                for (_, name, arguments) in calls_of(&answer) {
                    assert!(["get_weather", "get_time"].contains(&name.as_str()));
                    assert!(arguments.is_object());
                }
            }
            _ => assert!(choice.message.tool_calls.is_none(), "{choice:?}"),
        }
    }
    settled().await;
}
