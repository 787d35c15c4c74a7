//! The request budget: one deadline per request, shared by every upstream
//! call the request makes.
//!
//! A request gets `timeouts.request_secs` in all. The handler runs inside
//! [`deadline::scope`], so each upstream call's `DeadlineLayer` takes the
//! earlier of its own timeout and what is left of the request's budget, and
//! sends that as `grpc-timeout`; orders, which inherits it on its side
//! (`InheritDeadlineLayer` in every gRPC server), passes what is left on to
//! catalog. So a call two hops down never outlives the browser's request.
//!
//! The same deadline also ends the request itself, for the time the gateway
//! spends on its own (fetching signing keys, say): then the answer is a 504
//! `timeout` problem. When an upstream call is what runs out, its deadline
//! fires at the same instant and the answer names the upstream
//! (`upstream_timeout`).

use std::time::Duration;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use signalbox_resilience::deadline;
use tokio::time::Instant;

use crate::error;

/// Runs the rest of the request within `budget`.
pub async fn request_budget(
    State(budget): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let deadline = Instant::now() + budget;
    // The handler's future is polled first when both fire at once, so an
    // upstream call that ran out answers with its own, more precise problem.
    let run = tokio::time::timeout_at(deadline, next.run(request));
    match deadline::scope(Some(deadline), run).await {
        Ok(response) => response,
        Err(_) => error::request_timed_out().into_response(),
    }
}
