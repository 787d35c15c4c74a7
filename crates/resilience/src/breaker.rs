//! Circuit breaker: stop calling an upstream that is known to be failing.
//!
//! Without a breaker, every call to a dead or hung upstream pays the full
//! deadline before it fails, and keeps a connection, a task and a user busy
//! while it does. A breaker watches the outcomes of recent calls and, once
//! too many failed, fails calls at once for a while instead of sending them,
//! giving the upstream room to recover and the caller a fast answer (an
//! error, or a fallback value).
//!
//! ```text
//!                 failure rate ≥ threshold over ≥ minimum calls
//!     ┌────────┐ ──────────────────────────────────────────────► ┌──────┐
//!     │ Closed │                                                  │ Open │ ◄─┐
//!     └────────┘ ◄──────────┐                     open interval   └──────┘   │
//!         ▲                  │                      passed, next call │       │ a probe
//!         │   enough probes  │   ┌───────────┐ ◄──────────────────────┘       │ fails
//!         └──────────────────┴── │ Half-open │ ───────────────────────────────┘
//!               succeeded        └───────────┘   (interval grows: 1 s, 2 s, 4 s … max)
//! ```
//!
//! - **Closed**: calls go through; each outcome enters a sliding window (the
//!   last `window_size` calls, none older than `window_age`). A call counts as
//!   failed when the connection failed, when the upstream answered with a code
//!   that means trouble (`Unavailable`, `DeadlineExceeded`, `Internal`, …, see
//!   [`outcome::is_upstream_failure`]), or when it took longer than
//!   `slow_call` — so a *hung* upstream, whose calls end only by their
//!   deadline, trips the breaker as surely as one that refuses.
//! - **Open**: calls are refused with [`Rejection::Open`], which says when to
//!   try again. The interval doubles each time the breaker re-opens without
//!   having closed (up to `open_max`) and is jittered, so that many callers
//!   do not probe a recovering upstream in the same instant.
//! - **Half-open**: after the interval, up to `half_open_probes` calls are let
//!   through as probes. One failure re-opens; that many successes close the
//!   breaker and forget the old window.
//!
//! Every transition is logged once, with the upstream, the two states and
//! why, and kept in a short history for the admin view.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::future::{self, BoxFuture, Either};
use rand::RngExt;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{outcome, window::Window, BoxError, Rejection};

/// How a breaker judges an upstream. The defaults suit a call with a deadline
/// of a few seconds.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// How many recent calls the failure rate is computed over.
    pub window_size: usize,
    /// Outcomes older than this leave the window.
    pub window_age: Duration,
    /// No verdict on fewer calls than this: two failures out of two is not
    /// yet a pattern.
    pub minimum_calls: usize,
    /// The failure rate (0.0–1.0) at which the breaker opens.
    pub failure_rate: f64,
    /// A call slower than this counts as failed even if it succeeds.
    pub slow_call: Duration,
    /// The first open interval; it doubles on every re-open.
    pub open_base: Duration,
    /// The longest open interval.
    pub open_max: Duration,
    /// Probes let through when half-open, and successes needed to close.
    pub half_open_probes: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window_size: 20,
            window_age: Duration::from_secs(30),
            minimum_calls: 5,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(1),
            open_base: Duration::from_secs(1),
            open_max: Duration::from_secs(30),
            half_open_probes: 2,
        }
    }
}

/// The breaker's state, as the admin view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        })
    }
}

/// One change of state, kept for the admin view.
#[derive(Debug, Clone)]
pub struct Transition {
    pub at: SystemTime,
    pub from: State,
    pub to: State,
    pub reason: String,
}

/// How many transitions the history keeps.
const HISTORY: usize = 16;

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: usize, successes: usize },
}

impl Phase {
    fn state(&self) -> State {
        match self {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    window: Window,
    /// Opens since the breaker last closed: the exponent of the interval.
    reopens: u32,
    history: VecDeque<Transition>,
}

/// How a call was admitted, so that its outcome is booked to the right state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    Probe,
}

/// What a finished (or abandoned) call tells the breaker.
#[derive(Debug)]
enum Verdict {
    Success,
    Failure(String),
    /// The caller gave up quickly: nothing is known about the upstream.
    Unknown,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    settings: BreakerSettings,
    // A std mutex, not tokio's: it guards a few fields for a few
    // instructions and is never held across an `.await`, so there is nothing
    // to gain from an async lock and an await on every call to lose.
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent counters behind
        // (every update is a few assignments), so keep going with them.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit(&self, now: Instant) -> Result<Admission, Rejection> {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => Ok(Admission::Normal),
            Phase::Open { until } if now < until => Err(Rejection::Open {
                retry_after: until - now,
            }),
            Phase::Open { .. } => {
                self.move_to(
                    &mut inner,
                    Phase::HalfOpen {
                        in_flight: 1,
                        successes: 0,
                    },
                    "open interval passed; probing".to_owned(),
                );
                Ok(Admission::Probe)
            }
            Phase::HalfOpen {
                ref mut in_flight, ..
            } if *in_flight < self.settings.half_open_probes => {
                *in_flight += 1;
                Ok(Admission::Probe)
            }
            // Enough probes are out; the others wait for their verdict.
            Phase::HalfOpen { .. } => Err(Rejection::Open {
                retry_after: self.settings.open_base,
            }),
        }
    }

    fn settle(&self, admission: Admission, verdict: Verdict, now: Instant) {
        let mut inner = self.lock();
        match (admission, &mut inner.phase) {
            (Admission::Normal, Phase::Closed) => {
                let failed = match &verdict {
                    Verdict::Success => false,
                    Verdict::Failure(_) => true,
                    Verdict::Unknown => return,
                };
                inner.window.record(now, failed);
                let (calls, rate) = inner.window.stats(now);
                if failed
                    && calls >= self.settings.minimum_calls
                    && rate >= self.settings.failure_rate
                {
                    let why = match verdict {
                        Verdict::Failure(why) => why,
                        _ => unreachable!("only a failure can trip the breaker"),
                    };
                    let reason = format!(
                        "{:.0}% of the last {calls} calls failed (last: {why})",
                        rate * 100.0
                    );
                    self.open(&mut inner, now, reason);
                }
            }
            (
                Admission::Probe,
                Phase::HalfOpen {
                    in_flight,
                    successes,
                },
            ) => {
                *in_flight = in_flight.saturating_sub(1);
                match verdict {
                    Verdict::Success => {
                        *successes += 1;
                        if *successes >= self.settings.half_open_probes {
                            inner.window.clear();
                            inner.reopens = 0;
                            let reason =
                                format!("{} probes succeeded", self.settings.half_open_probes);
                            self.move_to(&mut inner, Phase::Closed, reason);
                        }
                    }
                    Verdict::Failure(why) => {
                        self.open(&mut inner, now, format!("a probe failed: {why}"))
                    }
                    Verdict::Unknown => {}
                }
            }
            // The state moved on while the call was out (another call opened
            // or closed the breaker): its outcome belongs to the old state.
            _ => {}
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant, reason: String) {
        inner.reopens = inner.reopens.saturating_add(1);
        let interval = self
            .settings
            .open_base
            .saturating_mul(1 << (inner.reopens - 1).min(16))
            .min(self.settings.open_max);
        // Equal jitter: somewhere in [interval/2, interval].
        let millis = interval.as_millis().max(2) as u64;
        let jittered = Duration::from_millis(rand::rng().random_range(millis / 2..=millis));
        self.move_to(
            inner,
            Phase::Open {
                until: now + jittered,
            },
            format!("{reason}; open for {jittered:?}"),
        );
    }

    fn move_to(&self, inner: &mut Inner, phase: Phase, reason: String) {
        let from = inner.phase.state();
        let to = phase.state();
        inner.phase = phase;
        match to {
            State::Open => {
                tracing::warn!(upstream = %self.upstream, %from, %to, %reason, "circuit breaker")
            }
            _ => tracing::info!(upstream = %self.upstream, %from, %to, %reason, "circuit breaker"),
        }
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(Transition {
            at: SystemTime::now(),
            from,
            to,
            reason,
        });
    }
}

/// A breaker for one upstream (or one endpoint of it). Every service it
/// builds shares its state; keep the layer to read the state for the admin
/// view.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

impl CircuitBreakerLayer {
    pub fn new(upstream: impl Into<String>, settings: BreakerSettings) -> Self {
        let window = Window::new(settings.window_size, settings.window_age);
        Self {
            shared: Arc::new(Shared {
                upstream: upstream.into(),
                settings,
                inner: Mutex::new(Inner {
                    phase: Phase::Closed,
                    window,
                    reopens: 0,
                    history: VecDeque::with_capacity(HISTORY),
                }),
            }),
        }
    }

    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    pub fn state(&self) -> State {
        self.shared.lock().phase.state()
    }

    /// The most recent transitions, oldest first.
    pub fn transitions(&self) -> Vec<Transition> {
        self.shared.lock().history.iter().cloned().collect()
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;
    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A call the breaker let through. Dropped without a verdict (the caller
/// gave up, e.g. its deadline passed above this layer), it still tells the
/// breaker: a failure if it had already been out longer than `slow_call`,
/// nothing otherwise. A half-open probe always gives its slot back.
struct Admitted {
    shared: Arc<Shared>,
    admission: Admission,
    started: Instant,
    settled: bool,
}

impl Admitted {
    fn settle(mut self, verdict: Verdict) {
        self.settled = true;
        self.shared.settle(self.admission, verdict, Instant::now());
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.settled {
            let verdict = if self.started.elapsed() >= self.shared.settings.slow_call {
                Verdict::Failure("abandoned by its caller after the slow-call threshold".to_owned())
            } else {
                Verdict::Unknown
            };
            self.shared.settle(self.admission, verdict, Instant::now());
        }
    }
}

impl<S, B, R> Service<http::Request<B>> for CircuitBreaker<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    R: Send + 'static,
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let admission = match self.shared.admit(started) {
            Ok(admission) => admission,
            // Open: answer now, without touching the upstream.
            Err(rejection) => return Either::Left(future::ready(Err(rejection.boxed()))),
        };
        let admitted = Admitted {
            shared: self.shared.clone(),
            admission,
            started,
            settled: false,
        };
        let slow_call = self.shared.settings.slow_call;
        let call = self.inner.call(request);
        Either::Right(Box::pin(async move {
            let result = call.await.map_err(Into::into);
            let verdict = judge(&result, started.elapsed(), slow_call);
            admitted.settle(verdict);
            result
        }))
    }
}

fn judge<R>(
    result: &Result<http::Response<R>, BoxError>,
    elapsed: Duration,
    slow_call: Duration,
) -> Verdict {
    let code = match result {
        Ok(response) => outcome::code_of(response),
        // A transport error carries no status: the connection failed.
        Err(error) => Some(outcome::code_of_error(error).unwrap_or(tonic::Code::Unavailable)),
    };
    match code {
        Some(code) if outcome::is_upstream_failure(code) => Verdict::Failure(format!("{code:?}")),
        _ if elapsed > slow_call => Verdict::Failure(format!("slow call ({elapsed:?})")),
        _ => Verdict::Success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream whose answer the test sets: a gRPC code, or hanging.
    #[derive(Clone)]
    struct Upstream {
        code: Arc<Mutex<Option<i32>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Upstream {
        fn new() -> Self {
            Self {
                code: Arc::new(Mutex::new(Some(0))),
                calls: Arc::new(AtomicUsize::new(0)),
            }
        }
        fn answer(&self, code: Option<i32>) {
            *self.code.lock().unwrap() = code;
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn service(
            &self,
        ) -> impl Service<
            http::Request<()>,
            Response = http::Response<()>,
            Error = BoxError,
            Future = BoxFuture<'static, Result<http::Response<()>, BoxError>>,
        > + Clone {
            let this = self.clone();
            tower::service_fn(move |_req: http::Request<()>| {
                this.calls.fetch_add(1, Ordering::SeqCst);
                let code = *this.code.lock().unwrap();
                let fut: BoxFuture<'static, _> = match code {
                    Some(code) => Box::pin(future::ready(Ok(http::Response::builder()
                        .header("grpc-status", code.to_string())
                        .body(())
                        .unwrap()))),
                    None => Box::pin(future::pending()),
                };
                fut
            })
        }
    }

    fn settings() -> BreakerSettings {
        BreakerSettings {
            window_size: 10,
            minimum_calls: 4,
            failure_rate: 0.5,
            slow_call: Duration::from_millis(500),
            open_base: Duration::from_secs(2),
            open_max: Duration::from_secs(8),
            half_open_probes: 2,
            ..BreakerSettings::default()
        }
    }

    async fn call(
        svc: &mut impl Service<http::Request<()>, Response = http::Response<()>, Error = BoxError>,
    ) -> Result<(), Option<Rejection>> {
        match svc.call(http::Request::new(())).await {
            Ok(response) if outcome::code_of(&response) == Some(tonic::Code::Ok) => Ok(()),
            Ok(_) => Err(None),
            Err(error) => Err(error
                .downcast_ref::<tonic::Status>()
                .and_then(Rejection::of)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_upstream_opens_the_breaker_and_rejections_do_not_reach_it() {
        let upstream = Upstream::new();
        let layer = CircuitBreakerLayer::new("catalog", settings());
        let mut svc = layer.layer(upstream.service());

        upstream.answer(Some(14)); // Unavailable
        for _ in 0..4 {
            assert_eq!(call(&mut svc).await, Err(None));
        }
        assert_eq!(layer.state(), State::Open);
        let seen = upstream.calls();

        let rejected = call(&mut svc).await;
        assert!(
            matches!(rejected, Err(Some(Rejection::Open { .. }))),
            "{rejected:?}"
        );
        assert_eq!(
            upstream.calls(),
            seen,
            "an open breaker does not call the upstream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_of_the_request_itself_do_not_open_it() {
        let upstream = Upstream::new();
        let layer = CircuitBreakerLayer::new("catalog", settings());
        let mut svc = layer.layer(upstream.service());
        upstream.answer(Some(5)); // NotFound
        for _ in 0..10 {
            let _ = call(&mut svc).await;
        }
        assert_eq!(layer.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_upstream_opens_it_through_calls_abandoned_past_the_slow_threshold() {
        let upstream = Upstream::new();
        let layer = CircuitBreakerLayer::new("catalog", settings());
        // The deadline above the breaker ends each hung call.
        let mut svc = crate::DeadlineLayer::new(Duration::from_secs(1))
            .layer(layer.layer(upstream.service()));
        upstream.answer(None);
        for _ in 0..4 {
            assert_eq!(call(&mut svc).await, Err(Some(Rejection::DeadlineExceeded)));
        }
        assert_eq!(layer.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_interval_probes_close_it_or_a_failed_probe_reopens_it_for_longer() {
        let upstream = Upstream::new();
        let layer = CircuitBreakerLayer::new("catalog", settings());
        let mut svc = layer.layer(upstream.service());
        upstream.answer(Some(14));
        for _ in 0..4 {
            let _ = call(&mut svc).await;
        }
        assert_eq!(layer.state(), State::Open);

        // Still failing when probed: open again, for longer (base 2 s → 4 s,
        // jittered within [2 s, 4 s]).
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(call(&mut svc).await, Err(None));
        assert_eq!(layer.state(), State::Open);
        match call(&mut svc).await {
            Err(Some(Rejection::Open { retry_after })) => {
                assert!(
                    retry_after > Duration::from_secs(1) && retry_after <= Duration::from_secs(4),
                    "{retry_after:?}"
                )
            }
            other => panic!("expected an open rejection, got {other:?}"),
        }

        // Recovered: two successful probes close it.
        upstream.answer(Some(0));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(call(&mut svc).await, Ok(()));
        assert_eq!(layer.state(), State::HalfOpen);
        assert_eq!(call(&mut svc).await, Ok(()));
        assert_eq!(layer.state(), State::Closed);

        let path: Vec<_> = layer.transitions().iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            path,
            [
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_only_a_few_probes_through() {
        let upstream = Upstream::new();
        let layer = CircuitBreakerLayer::new("catalog", settings());
        let mut svc = layer.layer(upstream.service());
        upstream.answer(Some(14));
        for _ in 0..4 {
            let _ = call(&mut svc).await;
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        upstream.answer(None); // probes hang
        let first = svc.call(http::Request::new(()));
        let second = svc.call(http::Request::new(()));
        let seen = upstream.calls();
        let third = call(&mut svc).await;
        assert!(
            matches!(third, Err(Some(Rejection::Open { .. }))),
            "{third:?}"
        );
        assert_eq!(upstream.calls(), seen);
        drop((first, second));
    }
}
