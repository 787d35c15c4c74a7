//! Retries within a budget: try a failed call again, but never make an
//! outage worse.
//!
//! A retry helps when a call failed for a passing reason (a connection reset,
//! one endpoint restarting). It hurts when the upstream is overloaded: every
//! caller retrying multiplies the load on it exactly when it can bear least.
//! So this layer retries only when all of these hold:
//!
//! - the call is **idempotent** — a read, named in [`RetrySettings::idempotent`]
//!   (doing a write twice is not safe just because its reply was lost);
//! - it failed with a **retryable** code ([`outcome::is_retryable`]:
//!   `Unavailable`, which means the call most likely never ran);
//! - the **budget** allows it: retries may add at most `ratio` (say 20 %) to
//!   the calls made, plus a small floor per second so that a quiet client can
//!   still retry at all (tower's `TpsBudget`);
//! - another attempt can still **finish before the call's deadline**
//!   ([`CallDeadline`]): the backoff plus as long as the failed attempt took.
//!   An upstream that took a second to say `Unavailable` (its database
//!   pool waiting for a connection, say) will likely take as long again, and
//!   a retry cut off by the deadline would turn its clear refusal into a
//!   timeout.
//!
//! gRPC request bodies are streams, so the layer reads a unary request's
//! body once into memory and sends a fresh copy per attempt; that is why it
//! is for unary calls only.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tonic::body::Body;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

use crate::backoff::equal_jitter;
use crate::deadline::{self, CallDeadline};
use crate::{outcome, BoxError, Rejection};

#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Full gRPC method paths that are safe to send twice
    /// (`/signalbox.catalog.v1.CatalogService/GetProduct`).
    pub idempotent: Vec<String>,
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// The first backoff; it doubles per attempt (equal jitter).
    pub backoff: Duration,
    /// Retries as a fraction of calls (0.2: at most one retry per five calls).
    pub ratio: f32,
    /// Retries per second allowed whatever the ratio says.
    pub min_per_second: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            idempotent: Vec::new(),
            max_attempts: 3,
            backoff: Duration::from_millis(25),
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

/// Builds retrying services that share one budget (build one layer per
/// upstream).
#[derive(Clone)]
pub struct RetryLayer {
    settings: Arc<RetrySettings>,
    budget: Arc<TpsBudget>,
}

impl RetryLayer {
    pub fn new(settings: RetrySettings) -> Self {
        // Deposits are remembered for ten seconds: the ratio is over the
        // recent past, not since start-up.
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            settings.min_per_second,
            settings.ratio,
        );
        Self {
            settings: Arc::new(settings),
            budget: Arc::new(budget),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            settings: self.settings.clone(),
            budget: self.budget.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    settings: Arc<RetrySettings>,
    budget: Arc<TpsBudget>,
}

impl<S, R> Service<http::Request<Body>> for Retry<S>
where
    S: Service<http::Request<Body>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Every call earns a fraction of a retry.
        self.budget.deposit();
        let idempotent = self
            .settings
            .idempotent
            .iter()
            .any(|method| method == request.uri().path());
        if !idempotent {
            let call = self.inner.call(request);
            return Box::pin(async move { call.await.map_err(Into::into) });
        }
        // The ready service goes into the future; a clone takes its place
        // (tower's usual move, since the future outlives `&mut self`).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        let budget = self.budget.clone();
        Box::pin(attempts(inner, request, settings, budget))
    }
}

async fn attempts<S, R>(
    mut inner: S,
    request: http::Request<Body>,
    settings: Arc<RetrySettings>,
    budget: Arc<TpsBudget>,
) -> Result<http::Response<R>, BoxError>
where
    S: Service<http::Request<Body>, Response = http::Response<R>>,
    S::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let call_deadline = parts.extensions.get::<CallDeadline>().copied();
    let mut attempt = 1;
    loop {
        let mut copy = http::Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .version(parts.version)
            .body(Body::new(Full::new(bytes.clone())))?;
        *copy.headers_mut() = parts.headers.clone();
        if let Some(call_deadline) = call_deadline {
            copy.extensions_mut().insert(call_deadline);
            // What is left of the budget, not what was left at the first try.
            deadline::stamp(&mut copy);
        }
        let started = Instant::now();
        let ready = inner.ready().await.map_err(Into::into);
        let result = match ready {
            Ok(ready) => ready.call(copy).await.map_err(Into::into),
            Err(error) => Err(error),
        };
        if attempt >= settings.max_attempts || !retryable(&result) {
            return result;
        }
        let base = settings.backoff.saturating_mul(1 << (attempt - 1).min(16));
        let backoff = equal_jitter(base);
        let next_ends = Instant::now() + backoff + started.elapsed();
        if call_deadline.is_some_and(|CallDeadline(at)| next_ends >= at) {
            return result; // a retry could not finish in time
        }
        if !budget.withdraw() {
            tracing::debug!(path = %parts.uri.path(), "retry budget spent; not retrying");
            return result;
        }
        tracing::debug!(path = %parts.uri.path(), attempt, ?backoff, "retrying");
        tokio::time::sleep(backoff).await;
        attempt += 1;
    }
}

fn retryable<R>(result: &Result<http::Response<R>, BoxError>) -> bool {
    match result {
        Ok(response) => outcome::code_of(response).is_some_and(outcome::is_retryable),
        Err(error) => {
            let rejected = error
                .downcast_ref::<tonic::Status>()
                .is_some_and(|status| Rejection::of(status).is_some());
            // A layer's own refusal (bulkhead full, breaker open) is final:
            // retrying into it would only add load. A transport error is a
            // connection that failed: the call did not run.
            !rejected && outcome::code_of_error(error).is_none_or(outcome::is_retryable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const READ: &str = "/signalbox.catalog.v1.CatalogService/GetProduct";
    const WRITE: &str = "/signalbox.orders.v1.OrderService/CreateOrder";

    /// Answers `Unavailable` to the first `failures` calls, then OK; counts
    /// every call and checks each attempt's body arrived whole.
    fn flaky(
        failures: usize,
        calls: Arc<AtomicUsize>,
    ) -> impl Service<
        http::Request<Body>,
        Response = http::Response<()>,
        Error = BoxError,
        Future = BoxFuture<'static, Result<http::Response<()>, BoxError>>,
    > + Clone {
        tower::service_fn(move |request: http::Request<Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let body = request.into_body().collect().await?.to_bytes();
                assert_eq!(
                    &body[..],
                    b"request",
                    "every attempt carries the whole body"
                );
                let code = if n < failures { "14" } else { "0" };
                Ok(http::Response::builder()
                    .header("grpc-status", code)
                    .body(())
                    .unwrap())
            }) as BoxFuture<'static, _>
        })
    }

    fn request(path: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(format!("http://upstream{path}"))
            .body(Body::new("request".to_owned()))
            .unwrap()
    }

    fn settings() -> RetrySettings {
        RetrySettings {
            idempotent: vec![READ.to_owned()],
            min_per_second: 0,
            ..RetrySettings::default()
        }
    }

    fn code(response: &http::Response<()>) -> Option<tonic::Code> {
        outcome::code_of(response)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotent_call_is_retried_and_a_write_is_not() {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = RetryLayer::new(settings());
        // Earn budget for the retries below.
        let mut svc = layer.layer(flaky(0, calls.clone()));
        for _ in 0..10 {
            svc.call(request(READ)).await.unwrap();
        }

        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = layer.layer(flaky(1, calls.clone()));
        let response = svc.call(request(READ)).await.unwrap();
        assert_eq!(code(&response), Some(tonic::Code::Ok));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one retry");

        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = layer.layer(flaky(1, calls.clone()));
        let response = svc.call(request(WRITE)).await.unwrap();
        assert_eq!(code(&response), Some(tonic::Code::Unavailable));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a write is sent once");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_the_budget() {
        let calls = Arc::new(AtomicUsize::new(0));
        // Always failing: every call would retry twice without a budget.
        let layer = RetryLayer::new(settings());
        let mut svc = layer.layer(flaky(usize::MAX, calls.clone()));
        for _ in 0..50 {
            let _ = svc.call(request(READ)).await;
        }
        let retries = calls.load(Ordering::SeqCst) - 50;
        // 20 % of 50 calls.
        assert!(retries <= 10, "{retries} retries for 50 calls");
        assert!(retries > 0, "the budget allows some");
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_is_started_that_would_end_past_the_deadline() {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = RetryLayer::new(settings());
        let mut warm = layer.layer(flaky(0, Arc::new(AtomicUsize::new(0))));
        for _ in 0..10 {
            warm.call(request(READ)).await.unwrap();
        }
        let mut svc = layer.layer(flaky(usize::MAX, calls.clone()));
        let mut call = request(READ);
        // 1 ms left: shorter than any backoff.
        call.extensions_mut()
            .insert(CallDeadline(Instant::now() + Duration::from_millis(1)));
        let response = svc.call(call).await.unwrap();
        assert_eq!(code(&response), Some(tonic::Code::Unavailable));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_is_started_with_less_time_left_than_the_failed_attempt_took() {
        let layer = RetryLayer::new(settings());
        let mut warm = layer.layer(flaky(0, Arc::new(AtomicUsize::new(0))));
        for _ in 0..10 {
            warm.call(request(READ)).await.unwrap();
        }
        // Every attempt takes 300 ms to answer `Unavailable`.
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = flaky(usize::MAX, calls.clone()).map_future(|answer| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            answer.await
        });
        let mut svc = layer.layer(slow);
        let mut call = request(READ);
        // Time for two attempts and a backoff, not for three.
        call.extensions_mut()
            .insert(CallDeadline(Instant::now() + Duration::from_millis(800)));
        let response = svc.call(call).await.unwrap();
        assert_eq!(code(&response), Some(tonic::Code::Unavailable));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one retry, not two");
    }
}
