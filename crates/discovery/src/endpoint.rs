//! One endpoint as the balancer sees it: a lazily connected channel behind
//! its own circuit breaker, counting the calls it has out.
//!
//! ```text
//!   Balance ──► Endpoint (in-flight count = its load) ──► CircuitBreaker ──► Channel ──► 10.1.0.7:50053
//!               p2c compares two                          not ready while     connects on the
//!               endpoints' counts                         open: ejected       first call
//! ```
//!
//! The breaker is per endpoint, named `<upstream>@<host:port>`, and
//! *unready while open* ([`CircuitBreakerLayer::unready_while_open`]): an
//! endpoint that refuses connections or hangs fails its calls, its breaker
//! opens, it stops being ready, and the balancer sends everything to the
//! others until the breaker's interval ends and it is probed again. The
//! in-flight count is the balancer's load measure (a hung endpoint piles
//! up calls, so p2c already prefers the other one before the breaker
//! opens) and what the admin view shows.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use signalbox_resilience::{BoxError, BreakerSettings, CircuitBreaker, CircuitBreakerLayer};
use tonic::{body::Body, transport::Channel};
use tower::{load::Load, Layer, Service};

use crate::url::authority;

/// How one endpoint is built.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// Judges this endpoint alone. Its `slow_call` must be shorter than the
    /// callers' deadline, or a hung endpoint's calls end (by the deadline)
    /// before they count as failures.
    pub breaker: BreakerSettings,
}

pub(crate) struct Endpoint {
    inner: CircuitBreaker<Channel>,
    in_flight: Arc<AtomicUsize>,
}

/// What the admin view keeps of an endpoint.
#[derive(Debug, Clone)]
pub(crate) struct EndpointHandle {
    pub(crate) address: String,
    pub(crate) breaker: CircuitBreakerLayer,
    pub(crate) in_flight: Arc<AtomicUsize>,
}

impl EndpointHandle {
    pub(crate) fn in_flight(&self) -> usize {
        // Relaxed: a count to show and compare, read by nothing that
        // depends on other memory being in step with it.
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl Endpoint {
    /// The endpoint at `url` of `upstream`. Connects on the first call, so
    /// an endpoint that is not up yet costs nothing until it is chosen.
    pub(crate) fn new(
        upstream: &str,
        url: &str,
        settings: &EndpointSettings,
    ) -> anyhow::Result<(Self, EndpointHandle)> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect_timeout(settings.connect_timeout)
            .connect_lazy();
        let breaker = CircuitBreakerLayer::new(
            format!("{upstream}@{}", authority(url)),
            settings.breaker.clone(),
        )
        .unready_while_open();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let handle = EndpointHandle {
            address: url.to_owned(),
            breaker: breaker.clone(),
            in_flight: in_flight.clone(),
        };
        Ok((
            Self {
                inner: breaker.layer(channel),
                in_flight,
            },
            handle,
        ))
    }
}

/// One call out: counted from `call` until its future ends or is dropped
/// (the caller gave up).
struct Out(Arc<AtomicUsize>);

impl Out {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service<http::Request<Body>> for Endpoint {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let out = Out::new(self.in_flight.clone());
        let call = self.inner.call(request);
        Box::pin(async move {
            let _out = out;
            call.await
        })
    }
}

impl Load for Endpoint {
    type Metric = usize;

    fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}
