//! Every failure of the HTTP edge, and the one place where failures become HTTP responses.
//!
//! Handlers return [`ApiError`]; its [`IntoResponse`] picks the status code and writes the
//! OpenAI error body, so that no handler invents its own. Core errors are mapped by kind: a
//! validation error is the client's (400, naming the field), a full queue is 429 with
//! `Retry-After`, and everything else is ours: logged in full here, answered with a message that
//! leaks nothing.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use llm_pipeline_core::Error;
use llm_pipeline_core::openai::ErrorResponse;

/// Seconds a refused client should wait before retrying.
const RETRY_AFTER_SECS: &str = "1";

/// A failed request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The pipeline refused or failed the request.
    #[error(transparent)]
    Core(#[from] Error),
    /// The body is not JSON, or not the JSON the endpoint takes.
    #[error("{message}")]
    BadJson {
        /// What is wrong, from the JSON parser.
        message: String,
        /// The field at fault, when the parser knows it (`temperature`, `messages[0].role`).
        param: Option<String>,
    },
    /// The body is larger than the configured limit.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not all arrive in time (`HTTP_BODY_TIMEOUT`).
    #[error("the request body did not arrive within {} s", timeout.as_secs_f64())]
    BodyTimeout {
        /// The limit.
        timeout: std::time::Duration,
    },
    /// The body could not be read.
    #[error("cannot read the request body: {message}")]
    BadBody {
        /// Why.
        message: String,
    },
    /// The API key is missing or wrong.
    #[error("{message}")]
    Unauthorized {
        /// What was wrong with it.
        message: &'static str,
    },
    /// No such route.
    #[error("Invalid URL ({method} {path})")]
    NotFound {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// The route exists but not with this method.
    #[error("Method {method} is not allowed for {path}")]
    MethodNotAllowed {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// The model is still loading.
    #[error("the model is loading; retry shortly")]
    Loading,
    /// The model failed to load; the server cannot serve.
    #[error("the model failed to load")]
    LoadFailed,
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Core(e) => core_status(e),
            Self::BadJson { .. } | Self::BadBody { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Loading | Self::LoadFailed => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The OpenAI error body sent to the client.
    pub fn body(&self) -> ErrorResponse {
        match self {
            Self::Core(Error::Validation { param, .. }) => {
                let body = ErrorResponse::invalid_request(self.to_string(), Some(param.clone()));
                if param == "model" {
                    body.with_code("model_not_found")
                } else {
                    body
                }
            }
            Self::Core(Error::QueueFull { .. }) => ErrorResponse::rate_limit(self.to_string()),
            Self::Core(Error::EngineStopped) => {
                ErrorResponse::server_error("the engine has stopped; the server cannot serve")
            }
            Self::Core(_) => ErrorResponse::server_error(
                "The server had an error while processing your request.",
            ),
            Self::BadJson { message, param } => {
                ErrorResponse::invalid_request(message.clone(), param.clone())
            }
            Self::PayloadTooLarge { .. }
            | Self::BodyTimeout { .. }
            | Self::BadBody { .. }
            | Self::MethodNotAllowed { .. } => {
                ErrorResponse::invalid_request(self.to_string(), None)
            }
            Self::Unauthorized { .. } => ErrorResponse::authentication(self.to_string()),
            Self::NotFound { .. } => ErrorResponse::not_found(self.to_string()),
            Self::Loading | Self::LoadFailed => ErrorResponse::server_error(self.to_string()),
        }
    }
}

fn core_status(error: &Error) -> StatusCode {
    match error {
        Error::Validation { .. } => StatusCode::BAD_REQUEST,
        Error::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::EngineStopped => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Logs an internal fault with its causes; the client gets only a generic message.
pub(crate) fn log_internal(error: &dyn std::error::Error) {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = %text, "internal error");
}

impl ApiError {
    /// The response in the shape of Livepeer's runner, for `/llm`: `{"detail": {"msg": …}}`
    /// (ai-runner's `HTTPError`, `runner/src/runner/routes/utils.py`), which go-livepeer's
    /// worker parses for 400, 401 and 500 and passes on as "LLM container returned N: msg"
    /// (`ai/worker/worker.go`, `handleNonStreamingResponse`). Status and headers are the
    /// OpenAI response's.
    /// The message names the field at fault, as the OpenAI body's `param` does.
    pub fn into_livepeer_response(self) -> Response {
        let error = self.body().error;
        let message = match error.param {
            Some(param) if !error.message.contains(param.as_str()) => {
                format!("{param}: {}", error.message)
            }
            _ => error.message,
        };
        let mut response = self.into_response();
        let body = serde_json::json!({"detail": {"msg": message}});
        *response.body_mut() = axum::body::Body::from(body.to_string());
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            match &self {
                Self::Core(e) => log_internal(e),
                other => tracing::warn!(error = %other, "request refused"),
            }
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            _ => {}
        }
        response
    }
}
