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
//!
//! **Readiness.** A breaker in front of a whole upstream is always *ready*:
//! its caller must get the fast [`Rejection::Open`], not wait. A breaker in
//! front of one *endpoint* behind a load balancer is the opposite case
//! ([`CircuitBreakerLayer::unready_while_open`]): the balancer picks among
//! the endpoints that are ready, so an endpoint whose breaker is open must
//! not be ready, and must wake the balancer when its open interval ends
//! (or, half-open, when a probe slot frees). That is how a failing or hung
//! endpoint is ejected from the balance and let back in for probing.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use futures::future::{self, BoxFuture, Either};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{backoff::equal_jitter, outcome, window::Window, BoxError, Rejection};

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

impl State {
    /// The value of the `resilience_breaker_state` gauge: 0 closed, 1
    /// half-open, 2 open (higher is worse, so a graph reads at a glance).
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
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
    /// Services that found every half-open probe slot taken and are not
    /// ready until one frees (only with `unready_while_open`); woken by the
    /// next verdict or transition.
    parked: Vec<Waker>,
}

/// Whether a call may be admitted now, as `poll_ready` asks it.
enum Admissible {
    Yes,
    /// Open: not before this instant.
    After(Instant),
    /// Half-open with every probe slot taken: the waker is parked.
    Parked,
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

    /// What [`Shared::admit`] would decide, without deciding it: for
    /// `poll_ready` of a breaker that is unready while open.
    fn admissible(&self, now: Instant, cx: &mut Context<'_>) -> Admissible {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => Admissible::Yes,
            Phase::Open { until } if now < until => Admissible::After(until),
            // The interval has passed: the next call is the first probe.
            Phase::Open { .. } => Admissible::Yes,
            Phase::HalfOpen { in_flight, .. } if in_flight < self.settings.half_open_probes => {
                Admissible::Yes
            }
            Phase::HalfOpen { .. } => {
                if !inner.parked.iter().any(|w| w.will_wake(cx.waker())) {
                    inner.parked.push(cx.waker().clone());
                }
                Admissible::Parked
            }
        }
    }

    /// How long the breaker stays open, while it is.
    fn open_for(&self, now: Instant) -> Option<Duration> {
        match self.lock().phase {
            Phase::Open { until } if now < until => Some(until - now),
            _ => None,
        }
    }

    fn settle(&self, admission: Admission, verdict: Verdict, now: Instant) {
        let mut inner = self.lock();
        // Whatever the verdict, a probe slot may have freed or the state
        // moved: let parked services look again.
        for waker in inner.parked.drain(..) {
            waker.wake();
        }
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
        let jittered = equal_jitter(interval);
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
        for waker in inner.parked.drain(..) {
            waker.wake();
        }
        match to {
            State::Open => {
                tracing::warn!(upstream = %self.upstream, %from, %to, %reason, "circuit breaker")
            }
            _ => tracing::info!(upstream = %self.upstream, %from, %to, %reason, "circuit breaker"),
        }
        metrics::gauge!("resilience_breaker_state", "upstream" => self.upstream.clone())
            .set(to.gauge());
        metrics::counter!(
            "resilience_breaker_transitions_total",
            "upstream" => self.upstream.clone(),
            "state" => to.to_string(),
        )
        .increment(1);
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
    unready_while_open: bool,
}

impl CircuitBreakerLayer {
    pub fn new(upstream: impl Into<String>, settings: BreakerSettings) -> Self {
        let window = Window::new(settings.window_size, settings.window_age);
        let upstream = upstream.into();
        // Every breaker shows on `/metrics` from its start, closed.
        metrics::gauge!("resilience_breaker_state", "upstream" => upstream.clone())
            .set(State::Closed.gauge());
        Self {
            shared: Arc::new(Shared {
                upstream,
                settings,
                inner: Mutex::new(Inner {
                    phase: Phase::Closed,
                    window,
                    reopens: 0,
                    history: VecDeque::with_capacity(HISTORY),
                    parked: Vec::new(),
                }),
            }),
            unready_while_open: false,
        }
    }

    /// Makes the services this layer builds *not ready* while the breaker
    /// is open (and while half-open with every probe slot taken), waking
    /// when that ends, instead of always ready with calls refused in
    /// `call`. For one endpoint among several behind a balancer, which then
    /// sends its calls to the others; never for a whole upstream, whose
    /// callers would wait instead of failing fast.
    pub fn unready_while_open(mut self) -> Self {
        self.unready_while_open = true;
        self
    }

    /// While the breaker is open, how long until it lets a probe through.
    pub fn open_for(&self) -> Option<Duration> {
        self.shared.open_for(Instant::now())
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
            unready_while_open: self.unready_while_open,
            reopens_at: None,
        }
    }
}

#[derive(Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
    unready_while_open: bool,
    /// With `unready_while_open`: the timer that wakes `poll_ready` when
    /// the open interval ends. Each service has its own; none is shared.
    reopens_at: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: Clone> Clone for CircuitBreaker<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            unready_while_open: self.unready_while_open,
            // A timer belongs to the task that polls it.
            reopens_at: None,
        }
    }
}

impl<S> CircuitBreaker<S> {
    /// `Pending` while the breaker refuses calls (open, or half-open with
    /// every probe slot taken), with a wake-up arranged for when that ends.
    fn poll_admissible(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.shared.admissible(Instant::now(), cx) {
                Admissible::Yes => {
                    self.reopens_at = None;
                    return Poll::Ready(());
                }
                Admissible::Parked => return Poll::Pending,
                Admissible::After(until) => {
                    let timer = self
                        .reopens_at
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                    if timer.deadline() != until {
                        timer.as_mut().reset(until);
                    }
                    match timer.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        // The interval is over: look again (it is now
                        // admissible, unless the breaker moved meanwhile).
                        Poll::Ready(()) => self.reopens_at = None,
                    }
                }
            }
        }
    }
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
        if self.unready_while_open && self.poll_admissible(cx).is_pending() {
            return Poll::Pending;
        }
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

    /// A waker that records that it was woken.
    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl futures::task::ArcWake for Woken {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.store(true, Ordering::SeqCst);
        }
    }

    impl Woken {
        fn take(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_breaker_is_not_ready_while_open_and_wakes_when_the_interval_ends() {
        let upstream = Upstream::new();
        let layer = CircuitBreakerLayer::new("catalog@a", settings()).unready_while_open();
        let mut svc = layer.layer(upstream.service());
        // The same breaker settings for a whole upstream stay ready: its
        // callers get the fast rejection instead.
        let whole = CircuitBreakerLayer::new("catalog", settings());
        let mut plain = whole.layer(upstream.service());
        upstream.answer(Some(14));
        for _ in 0..4 {
            let _ = call(&mut svc).await;
            let _ = call(&mut plain).await;
        }
        assert_eq!(layer.state(), State::Open);
        assert_eq!(whole.state(), State::Open);
        let opened = Instant::now();
        let open_for = layer.open_for().expect("open");

        let woken = Arc::new(Woken::default());
        let waker = futures::task::waker(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(svc.poll_ready(&mut cx).is_pending(), "ready while open");
        assert!(plain.poll_ready(&mut cx).is_ready());

        // Jittered within [1 s, 2 s]: nothing before the first second.
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!woken.take(), "woken before the interval ended");
        assert!(svc.poll_ready(&mut cx).is_pending());
        tokio::time::advance(open_for).await;
        assert!(woken.take(), "not woken when the interval ended");
        assert!(svc.poll_ready(&mut cx).is_ready());
        assert!(opened.elapsed() >= open_for);

        // Ready means admitted: the call is the first probe.
        upstream.answer(Some(0));
        assert_eq!(call(&mut svc).await, Ok(()));
        assert_eq!(layer.state(), State::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_breaker_with_every_probe_out_waits_for_a_slot() {
        let upstream = Upstream::new();
        let layer = CircuitBreakerLayer::new("catalog@a", settings()).unready_while_open();
        let mut svc = layer.layer(upstream.service());
        upstream.answer(Some(14));
        for _ in 0..4 {
            let _ = call(&mut svc).await;
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        upstream.answer(None); // probes hang
        let first = svc.call(http::Request::new(()));
        let second = svc.call(http::Request::new(()));
        assert_eq!(layer.state(), State::HalfOpen);

        let woken = Arc::new(Woken::default());
        let waker = futures::task::waker(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(
            svc.poll_ready(&mut cx).is_pending(),
            "ready with both probes out"
        );

        // A probe given up early frees its slot without a verdict.
        drop(first);
        assert!(woken.take(), "not woken when a probe slot freed");
        assert!(svc.poll_ready(&mut cx).is_ready());
        drop(second);
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
