//! Draining the edge before it stops, so that a rolling restart drops no
//! request.
//!
//! A gateway that closed its listener and its idle keep-alive connections
//! the moment `SIGTERM` arrived would race its clients: a request already
//! on its way over a pooled connection meets a closed socket, and the
//! client cannot tell whether it was handled (a `POST /api/orders` must not
//! simply be sent again). So shutdown happens in two steps:
//!
//! ```text
//!   SIGTERM ─► draining for DRAIN: still serving; /health/ready answers 503;
//!              │                   every response says `Connection: close`
//!              ▼
//!              stop accepting ─► in-flight requests finish ─► exit
//! ```
//!
//! While draining, a load balancer that follows readiness takes the
//! instance out, and every client that sends a request gets its answer and
//! then a closed connection, so its next request opens a new one — to
//! another instance once this one has stopped accepting (a refused
//! connection, which is safe to send elsewhere).

use std::time::Duration;

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue},
    middleware::Next,
    response::Response,
};
use tokio_util::sync::CancellationToken;

/// How long the gateway keeps serving after shutdown was asked for. Long
/// enough for a client's pooled connections to each carry one more request
/// (and be closed after its answer) at the rates the edge sees; short
/// enough to stay well inside the grace period an orchestrator or
/// `scripts/up` gives before it kills (15 s).
pub const DRAIN: Duration = Duration::from_secs(1);

/// Whether the gateway is draining; cloned into the middleware and the
/// readiness check.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Cancelled when draining begins.
    draining: CancellationToken,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Starts draining when `shutdown` is cancelled; returns the token the
    /// server stops accepting on, cancelled `period` later.
    pub fn on(&self, shutdown: CancellationToken, period: Duration) -> CancellationToken {
        let stop_accepting = CancellationToken::new();
        let (draining, stop) = (self.draining.clone(), stop_accepting.clone());
        // Waits for shutdown, then for the drain period: a task of its own,
        // so the server keeps serving meanwhile.
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!(period = ?period, "draining");
            draining.cancel();
            tokio::time::sleep(period).await;
            stop.cancel();
        });
        stop_accepting
    }
}

/// Middleware: while draining, every response closes its connection, so
/// the client's next request opens a new one.
pub async fn close_connections(
    State(drain): State<Drain>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if drain.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
