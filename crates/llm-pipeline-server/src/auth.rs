//! Bearer-token authentication, as Livepeer's runner does it with `AUTH_TOKEN`.
//!
//! One middleware over the whole router, with `/health` exempt so that load balancers and the
//! orchestrator can probe without the key. The token is compared in constant time (for tokens
//! of the same length), so response timing does not reveal how much of a guess was right.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The paths that never need the token (ai-runner serves each route with and without a
/// trailing slash).
pub(crate) const EXEMPT_PATHS: [&str; 2] = ["/health", "/health/"];

/// Lets the request through when it carries `Authorization: Bearer <token>`.
pub(crate) async fn require_bearer(
    State(token): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    if EXEMPT_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let livepeer = crate::livepeer::is_livepeer_path(request.uri().path());
    let refuse = |error: ApiError| {
        if livepeer {
            error.into_livepeer_response()
        } else {
            error.into_response()
        }
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match given {
        None => refuse(ApiError::Unauthorized {
            message: "Missing bearer token: send `Authorization: Bearer <AUTH_TOKEN>`.",
        }),
        Some(given) if !constant_time_eq(given.as_bytes(), token.as_bytes()) => {
            refuse(ApiError::Unauthorized {
                message: "Incorrect API key provided.",
            })
        }
        Some(_) => next.run(request).await,
    }
}

/// The token of a `Bearer` authorization value (the scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `a == b`, taking the same time for every `a` of `b`'s length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_compares() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
