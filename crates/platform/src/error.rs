//! One error vocabulary for every boundary.
//!
//! An [`ErrorCode`] is what a client may rely on: it has a stable string, an
//! HTTP status and a gRPC code, all defined here and nowhere else. Services
//! turn their domain errors into a `tonic::Status` with [`ErrorCode::status`];
//! the gateway turns a `Status` back into an RFC 9457 [`Problem`]. So a
//! "not found" raised in orders reaches the browser as a 404 with
//! `code: "not_found"`, without any service knowing about HTTP.
//!
//! Three codes are decided by the caller's own resilience layers rather than
//! sent by a service: `upstream_unavailable` (its circuit breaker is open),
//! `overloaded` (its bulkhead is full) and `upstream_timeout` (the call's
//! deadline passed). Inside, they travel as the gRPC codes below plus the
//! `signalbox-rejected` metadata (`signalbox_resilience::Rejection`), which
//! is how the gateway tells them from the same code sent by a service.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidInput,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    FailedPrecondition,
    PayloadTooLarge,
    HeadersTooLarge,
    UnsupportedMediaType,
    RateLimited,
    Unimplemented,
    Unavailable,
    Timeout,
    /// The caller's circuit breaker for the upstream is open.
    UpstreamUnavailable,
    /// The caller's bulkhead for the upstream is full.
    Overloaded,
    /// The call's deadline passed before the upstream answered.
    UpstreamTimeout,
    Internal,
}

impl ErrorCode {
    /// Every code, for documents that list them (the gateway's OpenAPI
    /// `code` enum) and for the tests below.
    pub const ALL: [ErrorCode; 18] = [
        Self::InvalidInput,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::FailedPrecondition,
        Self::PayloadTooLarge,
        Self::HeadersTooLarge,
        Self::UnsupportedMediaType,
        Self::RateLimited,
        Self::Unimplemented,
        Self::Unavailable,
        Self::Timeout,
        Self::UpstreamUnavailable,
        Self::Overloaded,
        Self::UpstreamTimeout,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::FailedPrecondition => "failed_precondition",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "request_header_fields_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited => "rate_limited",
            Self::Unimplemented => "unimplemented",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::Overloaded => "overloaded",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal => "internal",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Self::InvalidInput => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamUnavailable | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidInput
            | Self::PayloadTooLarge
            | Self::HeadersTooLarge
            | Self::UnsupportedMediaType => tonic::Code::InvalidArgument,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::Forbidden => tonic::Code::PermissionDenied,
            Self::NotFound => tonic::Code::NotFound,
            Self::Conflict => tonic::Code::AlreadyExists,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::RateLimited => tonic::Code::ResourceExhausted,
            // A method is a property of the edge's routing table; inside, the
            // nearest meaning is "this operation is not implemented".
            Self::MethodNotAllowed | Self::Unimplemented => tonic::Code::Unimplemented,
            Self::Unavailable | Self::UpstreamUnavailable => tonic::Code::Unavailable,
            Self::Overloaded => tonic::Code::ResourceExhausted,
            Self::Timeout | Self::UpstreamTimeout => tonic::Code::DeadlineExceeded,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// The inverse of [`Self::grpc_code`], for errors coming back from a
    /// downstream service. The three resilience codes come back as the
    /// plain code of their gRPC code: what tells them apart is the
    /// rejection metadata, which the gateway reads first.
    pub fn from_grpc(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidInput,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::Forbidden,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists | Code::Aborted => Self::Conflict,
            Code::FailedPrecondition => Self::FailedPrecondition,
            Code::ResourceExhausted => Self::RateLimited,
            Code::Unimplemented => Self::Unimplemented,
            Code::Unavailable => Self::Unavailable,
            Code::DeadlineExceeded | Code::Cancelled => Self::Timeout,
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => Self::Internal,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::InvalidInput => "The request is invalid",
            Self::Unauthenticated => "Authentication is required",
            Self::Forbidden => "Not allowed",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "Conflict",
            Self::FailedPrecondition => "The request cannot be carried out",
            Self::PayloadTooLarge => "The request body is too large",
            Self::HeadersTooLarge => "Request header fields too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::RateLimited => "Too many requests",
            Self::Unimplemented => "Not implemented",
            Self::Unavailable => "A dependency is unavailable",
            Self::Timeout => "A dependency did not answer in time",
            Self::UpstreamUnavailable => "A dependency is failing; calls to it are paused",
            Self::Overloaded => "Too many calls to a dependency are in progress",
            Self::UpstreamTimeout => "A dependency did not answer within the deadline",
            Self::Internal => "Internal error",
        }
    }

    /// A gRPC status with this code.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), message)
    }
}

/// On the wire a code is its stable string, the one [`ErrorCode::as_str`] gives.
impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable, machine-readable; clients switch on this, not on `detail`.
    pub code: ErrorCode,
    /// Seconds after which a retry may succeed, sent as `Retry-After`.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:signalbox:problem:{}", code.as_str()),
            title: code.title(),
            status: code.http_status().as_u16(),
            detail: detail.into(),
            code,
            retry_after: None,
        }
    }

    /// The same problem, telling the client when to try again.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl From<tonic::Status> for Problem {
    fn from(status: tonic::Status) -> Self {
        let code = ErrorCode::from_grpc(status.code());
        // Never forward internal details of a downstream failure.
        let detail = match code {
            ErrorCode::Internal => "an internal error occurred".to_owned(),
            _ => status.message().to_owned(),
        };
        Self::new(code, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.code.http_status();
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 18] = ErrorCode::ALL;

    #[test]
    fn a_code_survives_a_grpc_hop_except_the_edge_only_ones() {
        for code in ALL {
            let back = ErrorCode::from_grpc(code.grpc_code());
            match code {
                ErrorCode::PayloadTooLarge
                | ErrorCode::HeadersTooLarge
                | ErrorCode::UnsupportedMediaType => {
                    assert_eq!(back, ErrorCode::InvalidInput)
                }
                ErrorCode::MethodNotAllowed => assert_eq!(back, ErrorCode::Unimplemented),
                // Told apart by the rejection metadata, not by the code.
                ErrorCode::UpstreamUnavailable => assert_eq!(back, ErrorCode::Unavailable),
                ErrorCode::Overloaded => assert_eq!(back, ErrorCode::RateLimited),
                ErrorCode::UpstreamTimeout => assert_eq!(back, ErrorCode::Timeout),
                _ => assert_eq!(back, code, "{code:?}"),
            }
        }
    }

    #[test]
    fn an_internal_status_does_not_leak_its_message() {
        let problem = Problem::from(tonic::Status::internal("pool timed out on db-7"));
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("db-7"));
    }
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;

    #[test]
    fn a_problem_that_says_when_to_retry_sends_retry_after() {
        let response = Problem::new(ErrorCode::UpstreamUnavailable, "paused")
            .retry_after(3)
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let plain = Problem::new(ErrorCode::Unavailable, "down").into_response();
        assert!(plain.headers().get(header::RETRY_AFTER).is_none());
    }
}
