//! The error format of the OAuth endpoints (RFC 6749 §5.2) and the
//! `no-store` rule every token response follows (§5.1). Its own module
//! because more than the token routes answer in it: the per-IP limiter in
//! front of `/oauth/token` throttles with `slow_down`.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use tonic::Status;

use crate::{error::upstream_problem, upstream::Upstream};

/// An error response of the token or revocation endpoint (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    status: StatusCode,
    pub(crate) error: &'static str,
    description: String,
    /// Answer with `WWW-Authenticate: Basic` (the client used the header).
    challenge: bool,
}

#[derive(Serialize)]
struct OAuthErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl OAuthError {
    pub(crate) fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            challenge: false,
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    /// `invalid_client`: 401 with a `Basic` challenge when the client
    /// authenticated with the `Authorization` header, 400 otherwise.
    pub fn invalid_client(description: impl Into<String>, used_header: bool) -> Self {
        Self {
            status: if used_header {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            },
            challenge: used_header,
            ..Self::new("invalid_client", description)
        }
    }

    /// Throttled (429). `slow_down` is the token-endpoint error registered
    /// for "ask less often" (RFC 8628 §3.5).
    pub fn slow_down(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            ..Self::new("slow_down", description)
        }
    }

    /// The auth service could not answer: not a protocol error, but the
    /// client still gets the endpoint's format (and `no-store`). Whatever
    /// the edge answers 503 or 504 elsewhere (down, timed out, its breaker
    /// open, its bulkhead full) is `temporarily_unavailable` here, 503;
    /// only a failure of the service itself is `server_error`, 500.
    pub(crate) fn unavailable(status: Status) -> Self {
        let problem = upstream_problem(Upstream::Auth, status);
        match problem.code.http_status() {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                ..Self::new("temporarily_unavailable", problem.detail)
            },
            _ => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                ..Self::new("server_error", problem.detail)
            },
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = OAuthErrorBody {
            error: self.error,
            error_description: &self.description,
        };
        let mut response = no_store((self.status, Json(&body)).into_response());
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(BASIC_CHALLENGE),
            );
        }
        response
    }
}

/// The challenge of a failed HTTP Basic client authentication (a test
/// checks it names `auth::REALM`).
const BASIC_CHALLENGE: &str = "Basic realm=\"signalbox\"";

/// Tokens must not be stored by any cache on the way (RFC 6749 §5.1).
pub fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::REALM;

    #[test]
    fn the_basic_challenge_names_the_realm() {
        assert_eq!(BASIC_CHALLENGE, format!("Basic realm=\"{REALM}\""));
    }
}
