//! Every error the gateway answers, mapped to an RFC 9457 problem in one place.
//!
//! Four sources: a `tonic::Status` from an upstream (its code travels to the
//! client through `signalbox_platform::ErrorCode`), a refusal of the
//! gateway's own resilience layers (open breaker, full bulkhead, passed
//! deadline: [`Rejection`]), a failure to reach an upstream at all (503,
//! without the transport's internals), and the edge itself (unknown route,
//! wrong method, request timeout). Request-body
//! and token errors are mapped beside their extractors, in [`crate::extract`]
//! and [`crate::auth`].

use axum::{
    http::{HeaderValue, Method, Uri},
    response::{IntoResponse, Response},
};
use signalbox_platform::{ErrorCode, Problem};
use signalbox_resilience::Rejection;
use tonic::{Code, Status};

use crate::upstream::Upstream;

/// The problem for a failed upstream call.
///
/// Each of the three resilience outcomes has its own code wherever it was
/// decided: 503 `upstream_unavailable` (with `Retry-After`) for an open
/// breaker, 503 `overloaded` for a full bulkhead, 504 `upstream_timeout`
/// for a deadline that passed — ours, or the upstream's own server ending
/// the call at the `grpc-timeout` we sent.
///
/// A refusal of a resilience layer comes first, read from the status's
/// rejection metadata: it never reached the upstream, and the client is
/// told so with its own code — whether the gateway's layer refused, or
/// a service behind it (orders' call to catalog) refused and passed the
/// rejection on.
///
/// Then tonic reports a failure of the call itself (connection refused,
/// broken HTTP/2 stream) as a `Status` with an error `source`; a status the
/// service sent has none. The first kind is the gateway's
/// business: the client learns which service is unavailable, the log learns
/// why. The second is the service's answer and passes through.
pub fn upstream_problem(upstream: Upstream, status: Status) -> Problem {
    let name = upstream.name();
    if let Some(rejection) = Rejection::of(&status) {
        return rejected(name, rejection, &status);
    }
    if let Some(cause) = std::error::Error::source(&status) {
        let cause = cause_chain(cause);
        return if status.code() == Code::Cancelled {
            tracing::warn!(upstream = name, %cause, "upstream timed out");
            timed_out(name, "the call was cancelled")
        } else {
            tracing::warn!(upstream = name, %cause, "upstream unreachable");
            Problem::new(
                ErrorCode::Unavailable,
                format!("the {name} service is unavailable"),
            )
        };
    }
    // The upstream's own server ended the call at the deadline we sent it
    // (tonic answers `Cancelled` when `grpc-timeout` passes), or gave up on
    // a deadline of its own: the same outcome as our deadline passing.
    if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) {
        tracing::debug!(upstream = name, code = ?status.code(), "upstream ran out of time");
        return timed_out(name, status.message());
    }
    if ErrorCode::from_grpc(status.code()) == ErrorCode::Internal {
        tracing::error!(upstream = name, code = ?status.code(), error = status.message(), "upstream failed");
    } else {
        tracing::debug!(upstream = name, code = ?status.code(), "upstream refused");
    }
    Problem::from(status)
}

/// Open breaker → 503 `upstream_unavailable` with `Retry-After`; full
/// bulkhead → 503 `overloaded`; deadline → 504 `upstream_timeout`. The
/// detail names the service called and quotes the refusal, which says
/// where it happened (a rejection passed on by orders names catalog).
/// Logged at debug only: the breaker logs its own transitions once, and a
/// line per refused call would flood the log exactly while the upstream is
/// down.
fn rejected(name: &str, rejection: Rejection, status: &Status) -> Problem {
    tracing::debug!(upstream = name, ?rejection, "upstream call refused");
    let why = status.message();
    match rejection {
        Rejection::Open { retry_after } => Problem::new(
            ErrorCode::UpstreamUnavailable,
            // A refusal orders passes on happened further down (its call to
            // catalog): `why` then names catalog, so the detail does not
            // blame the service called for it.
            format!("the {name} service, or one it calls, is failing; calls are paused ({why})"),
        )
        .retry_after(retry_after.as_secs().max(1)),
        Rejection::Overloaded => Problem::new(
            ErrorCode::Overloaded,
            format!("too many calls to the {name} service are in progress ({why})"),
        ),
        Rejection::DeadlineExceeded => timed_out(name, why),
    }
}

fn timed_out(name: &str, why: &str) -> Problem {
    Problem::new(
        ErrorCode::UpstreamTimeout,
        format!("the {name} service did not answer in time ({why})"),
    )
}

/// Whether a failed call means the upstream could not answer (rather than
/// answering with an error of the request): what a fallback may stand in for.
pub fn upstream_down(status: &Status) -> bool {
    Rejection::of(status).is_some()
        || std::error::Error::source(status).is_some()
        || matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
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

/// The whole request ran out of its budget ([`crate::budget`]) in the
/// gateway's own work; an upstream call that runs out of it is answered by
/// its deadline as `upstream_timeout` instead.
pub fn request_timed_out() -> Problem {
    tracing::warn!("request timed out");
    Problem::new(ErrorCode::Timeout, "the request did not complete in time")
}
