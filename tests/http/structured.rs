//! Structured output through the OpenAI client: a JSON schema with nested objects, arrays,
//! enums and required fields holds for every answer sampled at temperature 1.0, whole and
//! streamed, checked by the `jsonschema` crate's validator; a schema the grammar engine cannot
//! enforce is a 400 naming the field.

use async_openai::types::chat::{
    CreateChatCompletionRequest, ResponseFormat, ResponseFormatJsonSchema,
};
use futures::StreamExt;
use serde_json::{Value, json};

use super::{EXCLUSIVE, client, greedy, settled, stream_chat};

/// How many sampled answers must all be valid.
const ANSWERS: usize = 50;

fn order_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "customer": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "tier": {"enum": ["free", "pro", "enterprise"]}
                },
                "required": ["name", "tier"],
                "additionalProperties": false
            },
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 99}
                    },
                    "required": ["sku", "quantity"],
                    "additionalProperties": false
                }
            },
            "express": {"type": "boolean"},
            "note": {"type": "string", "maxLength": 40}
        },
        "required": ["customer", "items", "express"],
        "additionalProperties": false
    })
}

fn with_schema(
    mut request: CreateChatCompletionRequest,
    schema: Value,
) -> CreateChatCompletionRequest {
    request.response_format = Some(ResponseFormat::JsonSchema {
        json_schema: ResponseFormatJsonSchema {
            name: "order".into(),
            description: None,
            schema,
            strict: Some(true),
        },
    });
    request
}

#[tokio::test]
async fn sampled_answers_always_follow_the_json_schema() {
    let _turn = EXCLUSIVE.lock().await;
    let schema = order_schema();
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let answers = futures::stream::iter(0..ANSWERS)
        .map(|i| {
            let mut request = with_schema(
                greedy("", "Write an order for a customer as JSON.", 256),
                schema.clone(),
            );
            request.temperature = Some(1.0);
            // Deprecated by OpenAI, still honoured here: each answer samples differently.
            #[allow(deprecated)]
            {
                request.seed = Some(i as i64);
            }
            async move { client().chat().create(request).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut distinct = std::collections::HashSet::new();
    for answer in answers {
        let answer = answer.expect("a chat completion");
        let text = answer.choices[0]
            .message
            .content
            .clone()
            .unwrap_or_default();
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{text}: {errors:?}");
        distinct.insert(text);
    }
    assert!(
        distinct.len() > ANSWERS / 2,
        "sampling still varies: {distinct:?}"
    );

    // Streamed, the deltas join into a valid document too.
    let streamed = stream_chat(with_schema(
        greedy("", "Write an order for a customer as JSON.", 256),
        schema,
    ))
    .await;
    let value: Value = serde_json::from_str(&streamed.text).expect("streamed JSON");
    assert!(validator.is_valid(&value), "{}", streamed.text);
    settled().await;
}

#[tokio::test]
async fn json_object_mode_answers_an_object() {
    let _turn = EXCLUSIVE.lock().await;
    let mut request = greedy("", "List three colors.", 96);
    request.response_format = Some(ResponseFormat::JsonObject);
    let answer = client()
        .chat()
        .create(request)
        .await
        .expect("a chat completion");
    let text = answer.choices[0]
        .message
        .content
        .clone()
        .unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(value.is_object(), "{text}");
    settled().await;
}

#[tokio::test]
async fn a_schema_that_cannot_be_enforced_is_refused_by_field() {
    let _turn = EXCLUSIVE.lock().await;
    let bad = json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}});
    let request = with_schema(greedy("", "Hello", 8), bad);
    match client().chat().create(request).await {
        Err(async_openai::error::OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code, 400, "{e:?}");
            let e = e.api_error;
            assert_eq!(
                e.param.as_deref(),
                Some("response_format.json_schema.schema"),
                "{e:?}"
            );
            assert!(e.message.contains("missing"), "the reason is given: {e:?}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    settled().await;
}
