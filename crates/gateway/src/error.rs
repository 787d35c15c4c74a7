//! Every error the gateway answers, mapped to an RFC 9457 problem in one place.
//!
//! Three sources: a `tonic::Status` from an upstream (its code travels to the
//! client through `signalbox_platform::ErrorCode`), a failure to reach an
//! upstream at all (503 / 504, without the transport's internals), and the
//! edge itself (unknown route, wrong method, request timeout). Request-body
//! and token errors are mapped beside their extractors, in [`crate::extract`]
//! and [`crate::auth`].

use axum::{
    http::{HeaderValue, Method, Uri},
    response::{IntoResponse, Response},
    BoxError,
};
use signalbox_platform::{ErrorCode, Problem};
use tonic::{Code, Status};

use crate::upstream::Upstream;

/// The problem for a failed upstream call.
///
/// tonic reports a failure of the call itself (connection refused, per-call
/// timeout, broken HTTP/2 stream) as a `Status` with an error `source`; a
/// status the service sent has none. The first kind is the gateway's
/// business: the client learns which service is unavailable, the log learns
/// why. The second is the service's answer and passes through.
pub fn upstream_problem(upstream: Upstream, status: Status) -> Problem {
    let name = upstream.name();
    if let Some(cause) = std::error::Error::source(&status) {
        let cause = cause_chain(cause);
        return if status.code() == Code::Cancelled {
            tracing::warn!(upstream = name, %cause, "upstream timed out");
            Problem::new(
                ErrorCode::Timeout,
                format!("the {name} service did not answer in time"),
            )
        } else {
            tracing::warn!(upstream = name, %cause, "upstream unreachable");
            Problem::new(
                ErrorCode::Unavailable,
                format!("the {name} service is unavailable"),
            )
        };
    }
    if ErrorCode::from_grpc(status.code()) == ErrorCode::Internal {
        tracing::error!(upstream = name, code = ?status.code(), error = status.message(), "upstream failed");
    } else {
        tracing::debug!(upstream = name, code = ?status.code(), "upstream refused");
    }
    Problem::from(status)
}

/// Turns the result of a gRPC call into the message or a problem.
pub trait UpstreamResult<T> {
    fn or_problem(self, upstream: Upstream) -> Result<T, Problem>;
}

impl<T> UpstreamResult<T> for Result<tonic::Response<T>, Status> {
    fn or_problem(self, upstream: Upstream) -> Result<T, Problem> {
        self.map(tonic::Response::into_inner)
            .map_err(|status| upstream_problem(upstream, status))
    }
}

/// The `Retry-After` of an upstream's own throttled answer: a
/// `ResourceExhausted` it sent (not one tonic made up for a failed call),
/// with the seconds to wait in its `retry-after` metadata, 1 when it names
/// none. `None` for any other failure.
pub fn throttled(status: &Status) -> Option<HeaderValue> {
    if status.code() != Code::ResourceExhausted || std::error::Error::source(status).is_some() {
        return None;
    }
    let wait = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(HeaderValue::from_static("1"), HeaderValue::from);
    Some(wait)
}

/// `outer: inner: innermost`, the whole story of a transport failure.
fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// The router's fallback: no route matches the path.
pub async fn not_found(method: Method, uri: Uri) -> Problem {
    Problem::new(
        ErrorCode::NotFound,
        format!("no route for {method} {}", uri.path()),
    )
}

/// A route matches the path but not the method. axum adds the `Allow` header.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    Problem::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into_response()
}

/// Errors of the edge's own tower layers (today only the request timeout).
pub async fn layer_failed(error: BoxError) -> Problem {
    if error.is::<tower::timeout::error::Elapsed>() {
        tracing::warn!("request timed out");
        Problem::new(ErrorCode::Timeout, "the request did not complete in time")
    } else {
        tracing::error!(error = %error, "middleware failed");
        Problem::new(ErrorCode::Internal, "an internal error occurred")
    }
}
