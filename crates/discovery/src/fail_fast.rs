//! Fail fast when no endpoint is ready, instead of queueing.
//!
//! The p2c balancer is *not ready* while none of its endpoints is: all
//! ejected by their breakers, or none known yet. A caller would then wait
//! in the buffer in front of it until one comes back — seconds, with its
//! request and its user waiting too. Like tower's `LoadShed`, this layer is
//! always ready itself and looks at the balancer's readiness without
//! waiting for it: a call that finds no ready endpoint is refused at once
//! with [`Rejection::Open`], telling the caller when the soonest endpoint
//! will be probed, which is what an open breaker in front of the whole
//! upstream would have said.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::{self, Either};
use signalbox_resilience::{BoxError, Rejection};
use tower::Service;

use crate::view::ViewInner;

/// What a refused caller is told to wait when no endpoint is open either
/// (none is known yet).
const NO_ENDPOINT_RETRY: Duration = Duration::from_secs(1);

pub(crate) struct FailFast<S> {
    inner: S,
    /// Whether the last `poll_ready` found the inner service ready.
    ready: bool,
    view: Arc<ViewInner>,
}

impl<S> FailFast<S> {
    pub(crate) fn new(inner: S, view: Arc<ViewInner>) -> Self {
        Self {
            inner,
            ready: false,
            view,
        }
    }
}

impl<S, Request> Service<Request> for FailFast<S>
where
    S: Service<Request, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<S::Future, future::Ready<Result<S::Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Polling also lets the balancer take in discovery changes and
        // arranges a wake-up for when an endpoint becomes ready.
        self.ready = match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => false,
        };
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if std::mem::take(&mut self.ready) {
            return Either::Left(self.inner.call(request));
        }
        let retry_after = self.view.soonest_probe().unwrap_or(NO_ENDPOINT_RETRY);
        tracing::debug!(?retry_after, "no endpoint ready; refused");
        Either::Right(future::ready(Err(Rejection::Open { retry_after }.boxed())))
    }
}
