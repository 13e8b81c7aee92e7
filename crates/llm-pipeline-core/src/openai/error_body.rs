//! The OpenAI error body, `{"error": {"message", "type", "param", "code"}}`.
//!
//! Only the wire shape lives here; which [`crate::Error`] becomes which body and HTTP status is
//! decided at the HTTP edge. The `type` and `code` strings are OpenAI's own, as its API sends
//! them (not vLLM's `BadRequestError` style), so clients that branch on them keep working. Note
//! that OpenAI types most client errors, authentication and unknown models included, as
//! `invalid_request_error`, and tells them apart by HTTP status and `code`.

use serde::{Deserialize, Serialize};

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A message for humans.
    pub message: String,
    /// The error's class, e.g. `invalid_request_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, in OpenAI's spelling (`temperature`, `messages[1].role`);
    /// `null` when no single field is.
    #[serde(default)]
    pub param: Option<String>,
    /// A machine-readable code, e.g. `model_not_found`; often `null`.
    #[serde(default)]
    pub code: Option<String>,
}

impl ErrorResponse {
    /// The `type` of client errors (HTTP 400, 401, 404).
    pub const INVALID_REQUEST: &'static str = "invalid_request_error";
    /// The `type` of rate-limit errors (HTTP 429) for request-count limits.
    pub const RATE_LIMIT: &'static str = "requests";
    /// The `type` of server errors (HTTP 500, 503).
    pub const SERVER_ERROR: &'static str = "server_error";

    /// An error of class `kind` with `message`, no param and no code.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: None,
            },
        }
    }

    /// A bad request (HTTP 400), naming the field at fault when there is one.
    pub fn invalid_request(message: impl Into<String>, param: Option<String>) -> Self {
        let mut response = Self::new(Self::INVALID_REQUEST, message);
        response.error.param = param;
        response
    }

    /// A missing or wrong API key (HTTP 401), as OpenAI sends it: `invalid_request_error` with
    /// code `invalid_api_key`.
    pub fn authentication(message: impl Into<String>) -> Self {
        Self::new(Self::INVALID_REQUEST, message).with_code("invalid_api_key")
    }

    /// Something that does not exist, such as an unknown route (HTTP 404).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Self::INVALID_REQUEST, message)
    }

    /// A request for a model that is not served (HTTP 404), worded as OpenAI words it, with code
    /// `model_not_found`.
    pub fn model_not_found(model: &str) -> Self {
        Self::not_found(format!(
            "The model `{model}` does not exist or you do not have access to it."
        ))
        .with_code("model_not_found")
    }

    /// Too many requests (HTTP 429): type `requests`, code `rate_limit_exceeded`, as OpenAI
    /// sends for request-count limits.
    pub fn rate_limit(message: impl Into<String>) -> Self {
        Self::new(Self::RATE_LIMIT, message).with_code("rate_limit_exceeded")
    }

    /// A failure on our side (HTTP 500 or 503). The message should not leak internals.
    pub fn server_error(message: impl Into<String>) -> Self {
        Self::new(Self::SERVER_ERROR, message)
    }

    /// Sets the machine-readable `code`.
    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.error.code = Some(code.into());
        self
    }

    /// Sets the field at fault.
    #[must_use]
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(param.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn invalid_request_has_openai_shape() {
        let body = ErrorResponse::invalid_request(
            "temperature must be in [0, 2], got 3",
            Some("temperature".to_owned()),
        );
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"error": {
                "message": "temperature must be in [0, 2], got 3",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": null
            }})
        );
    }

    #[test]
    fn constructors_use_openai_types_and_codes() {
        let cases = [
            (
                ErrorResponse::authentication("bad key"),
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            (
                ErrorResponse::not_found("Invalid URL (POST /v1/x)"),
                "invalid_request_error",
                None,
            ),
            (
                ErrorResponse::model_not_found("m"),
                "invalid_request_error",
                Some("model_not_found"),
            ),
            (
                ErrorResponse::rate_limit("slow down"),
                "requests",
                Some("rate_limit_exceeded"),
            ),
            (ErrorResponse::server_error("oops"), "server_error", None),
        ];
        for (body, kind, code) in cases {
            assert_eq!(body.error.kind, kind);
            assert_eq!(body.error.code.as_deref(), code);
            assert_eq!(body.error.param, None);
        }
        assert_eq!(
            ErrorResponse::model_not_found("gpt-9").error.message,
            "The model `gpt-9` does not exist or you do not have access to it."
        );
    }

    #[test]
    fn parses_a_real_openai_error() {
        let text = r#"{"error": {"message": "Incorrect API key provided: sk-abc.",
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}"#;
        let body: ErrorResponse = serde_json::from_str(text).unwrap();
        assert_eq!(
            body,
            ErrorResponse::authentication("Incorrect API key provided: sk-abc.")
        );
    }
}
