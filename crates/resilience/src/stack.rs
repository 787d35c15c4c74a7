//! The one guarded stack every synchronous client call goes through (the
//! gateway's calls to auth, orders and catalog; orders' call to catalog).
//!
//! ```text
//!   call ──► Trace ──► Deadline ──► Bulkhead ──► Retry ──► endpoints (one breaker each)
//! ```

use std::time::Duration;

use tower::ServiceBuilder;

use crate::{
    trace::ClientTraceLayer, BulkheadLayer, CallPolicy, DeadlineLayer, RetryLayer, UpstreamService,
};

/// Guards the calls to one upstream: `endpoints` is what they finally go to
/// (its instances, each behind its own circuit breaker), `timeout` the
/// per-call deadline, `idempotent` the full method paths that may be
/// retried. Returns the guarded service and its bulkhead (for an admin view
/// of the calls in flight).
pub fn guard(
    endpoints: UpstreamService,
    timeout: Duration,
    policy: &CallPolicy,
    idempotent: &[String],
) -> (UpstreamService, BulkheadLayer) {
    let bulkhead = BulkheadLayer::new(policy.max_in_flight);
    // Layers run top to bottom on the way out to the upstream.
    let stack = ServiceBuilder::new()
        // Outermost: the call's client span, whose context travels in the
        // metadata to the server. Above everything else so that the span
        // covers the time a call waits for its deadline's permit, its
        // retries and a breaker's refusal, and so that a refused call is
        // traced and counted too.
        .layer(ClientTraceLayer)
        // Then: every call gets its deadline before anything else
        // happens to it — the caller's remaining budget (inherited through
        // `deadline::scope`, or from the `grpc-timeout` a server received)
        // or `timeout`, whichever is sooner — and sends what is left as
        // `grpc-timeout`. Above the bulkhead so that a call is never left
        // waiting anywhere below without a deadline, and above the retries
        // so that all attempts together stay within it.
        .layer(DeadlineLayer::new(timeout))
        // Per upstream: a bound on calls in flight to it, refused at once
        // beyond it (503 `overloaded` at the edge, `ResourceExhausted`
        // inside), so a hung upstream holds at most this many of the
        // caller's requests and the other upstreams keep theirs. Above the
        // retries: a call and its retries hold one permit, so retries cannot
        // crowd out first attempts.
        .layer(bulkhead.clone())
        // Reads only (`idempotent`), only on `Unavailable` or a failed
        // connection, within a budget shared by this upstream's calls and
        // never past the deadline set above. Above the breakers, so each
        // attempt is judged by one and an open breaker's refusal is final
        // instead of being retried.
        .layer(RetryLayer::new(policy.retry.settings(idempotent)))
        .service(endpoints);
    (UpstreamService::new(stack), bulkhead)
}
