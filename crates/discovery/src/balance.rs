//! One cloneable service over a changing set of endpoints: the client side
//! of both ways of discovery.
//!
//! ```text
//!   UpstreamService (a BoxCloneSyncService, what the guarded stack sits on)
//!     └─ Shared ─────────── one balancer behind a lock; every clone calls through it
//!         └─ FailFast ───── no endpoint ready → Rejection::Open at once
//!             └─ Balance (p2c) ─ of two random ready endpoints, the one with fewer calls out
//!                 ├─ Endpoint 10.1.0.7 ─ in-flight count ─ breaker (unready while open) ─ Channel
//!                 └─ Endpoint 10.1.0.9 ─ …
//!                     ▲
//!   Discovered ───────┘ Insert / Remove, from the Source's sets (DNS or registry)
//! ```
//!
//! Power of two choices: picking the less loaded of two random endpoints
//! avoids both round-robin's blindness to a slow endpoint and the herd that
//! "always the least loaded" sends to one endpoint at once, and it costs two
//! comparisons per call. Failing and hung endpoints drop out of the choice
//! because their breakers make them unready.

use std::{
    future::Future,
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::future::{self, Either};
use signalbox_resilience::{BoxError, Rejection};
use tower::{balance::p2c::Balance, util::BoxCloneSyncService, Service};

use crate::{
    discover::Discovered, endpoint::EndpointSettings, fail_fast::FailFast, view::UpstreamView,
    Mode, Source,
};

/// A balanced upstream is the boxed, cloneable service every guarded
/// client's stack is built on (`signalbox_resilience::UpstreamService`), so
/// it drops in under that stack where one channel was; clones share the
/// balancer.
pub use signalbox_resilience::UpstreamService;

/// Balances over the endpoints `source` publishes. `mode` is for the admin
/// view. The calls take the source's changes in and make the endpoints'
/// channels (each spawns its connection's tasks), so they must run within
/// a Tokio runtime.
pub fn balanced(
    upstream: &str,
    mode: Mode,
    source: Source,
    settings: EndpointSettings,
) -> (UpstreamService, UpstreamView) {
    let view = UpstreamView::new(upstream, mode, source.status.clone());
    // Insertions and removals from the source's sets.
    let discovered = Discovered::new(upstream, source, settings, view.inner.clone());
    // p2c over the ready endpoints, by calls in flight (`Endpoint: Load`).
    let balance = Balance::new(discovered);
    // Refuse at once when no endpoint is ready, instead of waiting.
    let fail_fast = FailFast::new(balance, view.inner.clone());
    // One balancer, shared by every clone of the upstream's service.
    (BoxCloneSyncService::new(Shared::new(fail_fast)), view)
}

/// The balancer behind a lock, so that every clone of an upstream's service
/// (each request's client) calls the same one: one set of endpoints, one
/// count of calls in flight per endpoint.
///
/// A balancer's `poll_ready` and `call` take `&mut self`, and tower's usual
/// way to share one is a `Buffer`: a task that owns it, fed by a channel.
/// That costs every call two task hand-offs (there and back) and their
/// wake-ups, which B2's profile of the gateway showed (`docs/benchmarks.md`).
/// A lock is enough here, because nothing under it ever waits: `FailFast`
/// answers `poll_ready` at once (an endpoint is ready, or the call is
/// refused), so a call holds the lock for the p2c choice and the hand-off
/// to the chosen endpoint's channel, and never across an `.await`.
///
/// Readiness is asked in `call`, under the lock, and not in `poll_ready`:
/// between a clone's `poll_ready` and its `call`, another clone could take
/// the endpoint that `poll_ready` found, so the answer would not hold.
struct Shared<S> {
    inner: Arc<Mutex<S>>,
}

impl<S> Shared<S> {
    fn new(inner: S) -> Self {
        Self {
            inner: Arc::new(Mutex::new(inner)),
        }
    }
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S, Request> Service<Request> for Shared<S>
where
    S: Service<Request, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<S::Future, future::Ready<Result<S::Response, BoxError>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Always ready: the choice is made in `call`, see above.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // A panic under the lock (in an endpoint's `call`) can at worst
        // lose that endpoint; the balancer stays usable, so a poisoned lock
        // is used as it is rather than failing every later call.
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // No waker is needed: nothing waits for this readiness. Polling
        // takes in the discovery changes that arrived since the last call
        // and the endpoints that became ready (each endpoint's readiness
        // future has its own waker in the balancer's ready cache). Out of
        // the caller's cooperative budget (`unconstrained`): a task that
        // has used its budget would otherwise see every channel unready
        // and be refused as if no endpoint were up.
        let ready = {
            let mut cx = Context::from_waker(Waker::noop());
            let mut ready = pin!(tokio::task::unconstrained(future::poll_fn(|cx| {
                inner.poll_ready(cx)
            })));
            ready.as_mut().poll(&mut cx)
        };
        match ready {
            Poll::Ready(Ok(())) => Either::Left(inner.call(request)),
            Poll::Ready(Err(error)) => Either::Right(future::ready(Err(error))),
            // `FailFast` is always ready; were it not, the call is refused
            // as an unready balancer's would be.
            Poll::Pending => Either::Right(future::ready(Err(Rejection::Open {
                retry_after: Duration::from_secs(1),
            }
            .boxed()))),
        }
    }
}
