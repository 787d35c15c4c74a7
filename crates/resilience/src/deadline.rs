//! Deadlines: every call has one, and a deep call never outlives its caller.
//!
//! A timeout per hop is not enough: if the gateway gives a request 5 s and
//! orders gives its own call to catalog another 5 s, catalog may still be
//! working for a caller that gave up long ago. gRPC carries the caller's
//! remaining budget in the `grpc-timeout` header; a server that reads it and
//! passes on what is left makes the whole call tree share one deadline.
//!
//! ```text
//!   gateway ── grpc-timeout: 5000m ──► orders ── grpc-timeout: 4870m ──► catalog
//!     (Deadline: now + 5 s)            (InheritDeadline: scope = now + 5 s,
//!                                       Deadline: min(own timeout, scope))
//! ```
//!
//! - [`DeadlineLayer`] (client side) fixes the call's absolute deadline, the
//!   earlier of its own timeout and the one inherited from the task, stamps
//!   what remains of it into `grpc-timeout`, and fails the call with
//!   [`Rejection::DeadlineExceeded`] when it passes.
//! - [`InheritDeadlineLayer`] (server side) reads `grpc-timeout` from an
//!   incoming request and runs the handler in [`scope`], where every
//!   `Deadline` below it finds the budget.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{self, BoxFuture, Either};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{BoxError, Rejection};

tokio::task_local! {
    /// The deadline of the request this task is serving, if it had one.
    static INHERITED: Instant;
}

/// The absolute deadline of a call, in the request's extensions for the
/// layers below [`Deadline`] (the retry layer re-stamps it per attempt).
#[derive(Debug, Clone, Copy)]
pub struct CallDeadline(pub Instant);

/// Runs `f` with `deadline` as the inherited deadline of every call it makes.
pub async fn scope<F: Future>(deadline: Option<Instant>, f: F) -> F::Output {
    match deadline {
        Some(deadline) => INHERITED.scope(deadline, f).await,
        None => f.await,
    }
}

/// The deadline inherited from the request being served, if any.
pub fn inherited() -> Option<Instant> {
    INHERITED.try_with(|d| *d).ok()
}

/// Writes what remains of the request's [`CallDeadline`] into `grpc-timeout`.
pub fn stamp<B>(request: &mut http::Request<B>) {
    let Some(CallDeadline(deadline)) = request.extensions().get::<CallDeadline>().copied() else {
        return;
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if let Ok(value) = http::HeaderValue::from_str(&encode(remaining)) {
        request.headers_mut().insert("grpc-timeout", value);
    }
}

/// `grpc-timeout` wire format: at most eight digits and a unit.
pub fn encode(budget: Duration) -> String {
    let millis = budget.as_millis();
    if millis >= 100_000_000 {
        format!("{}S", budget.as_secs().min(99_999_999))
    } else if millis > 0 {
        format!("{millis}m")
    } else {
        format!("{}u", budget.as_micros())
    }
}

/// Parses a `grpc-timeout` value (`<digits><H|M|S|m|u|n>`).
pub fn decode(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Gives every call a deadline: `timeout` from now, or sooner if the task
/// inherited an earlier one.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B, R> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = BoxError;
    type Future = Either<
        future::Ready<Result<Self::Response, BoxError>>,
        BoxFuture<'static, Result<Self::Response, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let now = Instant::now();
        let own = now + self.timeout;
        let deadline = inherited().map_or(own, |inherited| inherited.min(own));
        if deadline <= now {
            // The caller's budget is already spent: do not send at all.
            return Either::Left(future::ready(Err(Rejection::DeadlineExceeded.boxed())));
        }
        request.extensions_mut().insert(CallDeadline(deadline));
        stamp(&mut request);
        let call = self.inner.call(request);
        Either::Right(Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Rejection::DeadlineExceeded.boxed()),
            }
        }))
    }
}

/// Server side: runs each request in [`scope`] of the deadline its
/// `grpc-timeout` names, so the calls its handler makes inherit it.
#[derive(Debug, Clone, Default)]
pub struct InheritDeadlineLayer;

impl<S> Layer<S> for InheritDeadlineLayer {
    type Service = InheritDeadline<S>;
    fn layer(&self, inner: S) -> InheritDeadline<S> {
        InheritDeadline { inner }
    }
}

#[derive(Debug, Clone)]
pub struct InheritDeadline<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for InheritDeadline<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(decode)
            .map(|budget| Instant::now() + budget);
        let call = self.inner.call(request);
        Box::pin(scope(deadline, call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips_and_refuses_garbage() {
        for budget in [
            Duration::from_millis(1),
            Duration::from_millis(4870),
            Duration::from_micros(250),
            Duration::from_secs(200_000),
        ] {
            let decoded = decode(&encode(budget)).unwrap();
            assert!(decoded <= budget, "{budget:?} became {decoded:?}");
            assert!(budget - decoded < Duration::from_secs(1));
        }
        assert_eq!(decode("5S"), Some(Duration::from_secs(5)));
        assert_eq!(decode("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "5", "S", "5x", "123456789m", "-1m"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_inherited_deadline_shortens_the_call_budget() {
        let outer = Instant::now() + Duration::from_millis(300);
        let seen = scope(Some(outer), async {
            let mut svc = DeadlineLayer::new(Duration::from_secs(10)).layer(tower::service_fn(
                |req: http::Request<()>| async move {
                    let header = req.headers()["grpc-timeout"].to_str().unwrap().to_owned();
                    Ok::<_, BoxError>(http::Response::new(header))
                },
            ));
            svc.call(http::Request::new(())).await.unwrap().into_body()
        })
        .await;
        let budget = decode(&seen).unwrap();
        assert!(budget <= Duration::from_millis(300), "sent {seen}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_outlives_its_deadline_is_ended() {
        let mut svc = DeadlineLayer::new(Duration::from_secs(1)).layer(tower::service_fn(
            |_req: http::Request<()>| future::pending::<Result<http::Response<()>, BoxError>>(),
        ));
        let error = svc.call(http::Request::new(())).await.unwrap_err();
        let status = error.downcast_ref::<tonic::Status>().unwrap();
        assert_eq!(Rejection::of(status), Some(Rejection::DeadlineExceeded));
    }

    #[tokio::test]
    async fn a_spent_budget_is_not_sent() {
        let past = Instant::now();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = sent.clone();
        let result = scope(Some(past), async move {
            let mut svc = DeadlineLayer::new(Duration::from_secs(1)).layer(tower::service_fn(
                move |_req: http::Request<()>| {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    future::ready(Ok::<_, BoxError>(http::Response::new(())))
                },
            ));
            svc.call(http::Request::new(())).await
        })
        .await;
        assert!(result.is_err());
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
    }
}
