//! Bulkhead: a bound on outstanding calls to one upstream.
//!
//! Named for the walls that keep one flooded compartment from sinking a ship:
//! when one upstream hangs, calls to it pile up, each holding a task, a socket
//! and a client waiting at the edge. A bulkhead gives each upstream its own
//! fixed number of permits; a call beyond them is refused *at once* with
//! [`Rejection::Overloaded`] instead of queueing (a queue in front of a hung
//! upstream only turns the hang into latency for everyone), and calls to the
//! other upstreams keep their own permits.
//!
//! Unlike `tower::limit::ConcurrencyLimit`, which makes callers wait in
//! `poll_ready` for a permit, this layer is always ready and decides in
//! `call`.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{self, BoxFuture, Either};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::{BoxError, Rejection};

#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl BulkheadLayer {
    /// At most `max` calls in flight through every service this layer builds
    /// (they share the permits: build one layer per upstream).
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Calls in flight now, for the admin view.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;
    fn layer(&self, inner: S) -> Bulkhead<S> {
        Bulkhead {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bulkhead<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, Request> Service<Request> for Bulkhead<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<
        future::Ready<Result<S::Response, BoxError>>,
        BoxFuture<'static, Result<S::Response, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // `try_acquire`, never `acquire`: a full bulkhead refuses, it does
        // not queue.
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Either::Left(future::ready(Err(Rejection::Overloaded.boxed())));
        };
        let call = self.inner.call(request);
        Either::Right(Box::pin(async move {
            // The permit is held until the call ends, or is dropped with it
            // when the caller gives up.
            let _permit = permit;
            call.await.map_err(Into::into)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn beyond_its_bound_a_call_is_refused_at_once_and_a_permit_frees_on_completion() {
        let layer = BulkheadLayer::new(2);
        let (release, released) = tokio::sync::watch::channel(false);
        let mut svc = layer.layer(tower::service_fn(move |_: ()| {
            let mut released = released.clone();
            async move {
                released.wait_for(|r| *r).await.ok();
                Ok::<_, BoxError>(())
            }
        }));
        let first = tokio::spawn(svc.call(()));
        let second = tokio::spawn(svc.call(()));
        assert_eq!(layer.in_flight(), 2);

        let error = svc.call(()).await.unwrap_err();
        let status = error.downcast_ref::<tonic::Status>().unwrap();
        assert_eq!(Rejection::of(status), Some(Rejection::Overloaded));

        release.send(true).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(layer.in_flight(), 0);
        svc.call(()).await.unwrap();
    }

    #[tokio::test]
    async fn a_call_given_up_by_its_caller_returns_its_permit() {
        let layer = BulkheadLayer::new(1);
        let (_never, never) = oneshot::channel::<()>();
        let never = Arc::new(tokio::sync::Mutex::new(Some(never)));
        let mut svc = layer.layer(tower::service_fn(move |_: ()| {
            let never = never.clone();
            async move {
                if let Some(rx) = never.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, BoxError>(())
            }
        }));
        let hung = svc.call(());
        assert_eq!(layer.in_flight(), 1);
        drop(hung);
        assert_eq!(layer.in_flight(), 0);
    }
}
