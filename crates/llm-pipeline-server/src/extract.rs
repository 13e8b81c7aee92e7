//! A JSON body extractor whose rejections are [`ApiError`]s.
//!
//! axum's own `Json` answers bad bodies with plain text and 415/422; OpenAI clients expect the
//! OpenAI error body and 400. This extractor reads the body as bytes (so axum's
//! `DefaultBodyLimit` still applies and yields 413), does not insist on a `Content-Type` (curl
//! users forget it, and the body is JSON on every endpoint), and names the field at fault for
//! wrong types through `serde_path_to_error`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A request body parsed from JSON.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(crate::config::DEFAULT_MAX_REQUEST_BYTES, |l| l.0);
        let timeout = req
            .extensions()
            .get::<BodyTimeout>()
            .map_or(crate::config::DEFAULT_BODY_TIMEOUT, |t| t.0);
        let read = tokio::time::timeout(timeout, Bytes::from_request(req, state))
            .await
            .map_err(|_| ApiError::BodyTimeout { timeout })?;
        let bytes = read.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::BadBody {
                    message: rejection.body_text(),
                }
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// The configured body limit, put in the request extensions so that the 413 message can say it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// The configured time a body may take to arrive (`HTTP_BODY_TIMEOUT`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyTimeout(pub(crate) std::time::Duration);

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_eof() || inner.is_syntax() {
            return ApiError::BadJson {
                message: format!("the body is not valid JSON: {inner}"),
                param: None,
            };
        }
        let param = (path != ".").then_some(path);
        let message = match &param {
            Some(p) => format!("invalid value for `{p}`: {inner}"),
            None => format!("invalid request body: {inner}"),
        };
        ApiError::BadJson { message, param }
    })?;
    // Trailing garbage after the JSON value is malformed JSON too.
    de.end().map_err(|e| ApiError::BadJson {
        message: format!("the body is not valid JSON: {e}"),
        param: None,
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        temperature: f32,
        messages: Vec<Message>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Message {
        role: String,
    }

    #[test]
    fn names_the_field_of_a_wrong_type() {
        let err = parse::<Body>(br#"{"temperature": "hot", "messages": []}"#).unwrap_err();
        match err {
            ApiError::BadJson { param, message } => {
                assert_eq!(param.as_deref(), Some("temperature"));
                assert!(message.contains("invalid type"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let err = parse::<Body>(br#"{"temperature": 1, "messages": [{"role": 3}]}"#).unwrap_err();
        assert!(
            matches!(err, ApiError::BadJson { param: Some(ref p), .. } if p == "messages[0].role"),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_json_has_no_param() {
        for body in [
            &b"{"[..],
            b"nope",
            b"{\"temperature\": 1, \"messages\": []} x",
        ] {
            match parse::<Body>(body).unwrap_err() {
                ApiError::BadJson { param, message } => {
                    assert_eq!(param, None, "{message}");
                    assert!(message.contains("not valid JSON"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
