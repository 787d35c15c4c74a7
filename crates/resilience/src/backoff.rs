//! How long to wait before trying again.
//!
//! Every loop in Signalbox that retries something that failed waits with one
//! [`Backoff`]: the broker loops (`signalbox_messaging`'s connect, reconnect
//! and session loops), the registry loops (`signalbox_discovery`'s
//! registration and watch), `signalbox watch`'s reconnects; and the retry
//! layer and the circuit breaker jitter their waits with [`equal_jitter`].
//! The wait doubles after every failure, up to a cap, and goes back to the
//! start once something worked.
//!
//! ```text
//!   failure 1    2    3    4    5    6    7 …      success → reset
//!   step  100  200  400  800 1600 3200 5000 …   (ms, capped at `max`)
//!   wait  [step/2, step], uniformly
//! ```
//!
//! The wait is not the step itself but a random point in its upper half
//! ("equal jitter"): when a broker restarts, every instance of every service
//! lost it at the same instant, and without jitter they would all come back
//! at the same instants too. Equal jitter rather than *full* jitter (a point
//! anywhere in `[0, step]`) because it keeps a floor: a retry never comes
//! sooner than half the step, so a server that refuses is not hammered by
//! the unlucky draws.

use std::time::Duration;

use rand::RngExt;

/// The first step of [`Backoff::default`].
pub const INITIAL: Duration = Duration::from_millis(100);
/// The cap of [`Backoff::default`]: an outage of any length is noticed to be
/// over within this (plus the attempt itself).
pub const MAX: Duration = Duration::from_secs(5);

/// Exponential backoff with equal jitter: see the module documentation.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The step the next wait is drawn from.
    step: Duration,
}

impl Backoff {
    /// Starts at `initial` and doubles up to `max` (a `max` below `initial`
    /// is taken as `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            step: initial,
        }
    }

    /// How long to wait before the next attempt, after a failure: the
    /// current step with equal jitter. The step then doubles, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = equal_jitter(self.step);
        self.step = self.step.saturating_mul(2).min(self.max);
        delay
    }

    /// Something worked: the next failure waits the initial step again.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

impl Default for Backoff {
    /// [`INITIAL`] doubling up to [`MAX`], what the broker and registry loops use.
    fn default() -> Self {
        Self::new(INITIAL, MAX)
    }
}

/// A uniformly random duration in `[delay / 2, delay]` ("equal jitter").
pub fn equal_jitter(delay: Duration) -> Duration {
    // Nanoseconds, so short delays keep their spread; a u64 of nanoseconds
    // holds over 500 years.
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Asserts that `delay` is a jittered `step`: within `[step/2, step]`.
    fn assert_jittered(delay: Duration, step: Duration) {
        assert!(
            step / 2 <= delay && delay <= step,
            "{delay:?} outside [{:?}, {step:?}]",
            step / 2
        );
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half_and_spreads_over_it() {
        let step = 100 * MS;
        let draws: Vec<Duration> = (0..1_000).map(|_| equal_jitter(step)).collect();
        for &delay in &draws {
            assert_jittered(delay, step);
        }
        // Spread: both quarters of the range are hit (a constant, or a
        // draw from one end only, would fail).
        assert!(draws.iter().any(|&d| d < 60 * MS), "never near the floor");
        assert!(draws.iter().any(|&d| d > 90 * MS), "never near the step");
        assert_eq!(equal_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_step_doubles_after_each_failure() {
        let mut backoff = Backoff::new(100 * MS, Duration::from_secs(60));
        for step in [100, 200, 400, 800, 1_600] {
            assert_jittered(backoff.next_delay(), step * MS);
        }
    }

    #[test]
    fn the_step_stops_growing_at_the_cap() {
        let mut backoff = Backoff::new(100 * MS, 500 * MS);
        for step in [100, 200, 400, 500, 500, 500] {
            assert_jittered(backoff.next_delay(), step * MS);
        }
        // A cap below the start is the start.
        let mut flat = Backoff::new(100 * MS, MS);
        assert_jittered(flat.next_delay(), 100 * MS);
        assert_jittered(flat.next_delay(), 100 * MS);
    }

    #[test]
    fn a_reset_starts_again_from_the_initial_step() {
        let mut backoff = Backoff::new(100 * MS, Duration::from_secs(5));
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert_jittered(backoff.next_delay(), 5_000 * MS);
        backoff.reset();
        assert_jittered(backoff.next_delay(), 100 * MS);
        assert_jittered(backoff.next_delay(), 200 * MS);
    }

    #[test]
    fn the_default_is_what_the_broker_loops_use() {
        let mut backoff = Backoff::default();
        assert_jittered(backoff.next_delay(), INITIAL);
        for _ in 0..20 {
            backoff.next_delay();
        }
        assert_jittered(backoff.next_delay(), MAX);
    }
}
