//! How long the registry loops wait before trying etcd again.
//!
//! The same shape as the broker loops' `signalbox_messaging::backoff`: the
//! wait doubles after every failure up to a cap, goes back to the start once
//! something worked, and is drawn from the upper half of the step ("equal
//! jitter"), so that every instance that lost etcd at the same instant does
//! not come back at the same instants too. Not that type itself: it lives
//! in the RabbitMQ crate, and auth, which registers but has no broker, must
//! not depend on RabbitMQ code to wait.

use std::time::Duration;

use rand::RngExt;

/// The first wait after a failure.
pub const INITIAL: Duration = Duration::from_millis(100);
/// The longest wait: an etcd outage of any length is noticed to be over
/// within this.
pub const MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: INITIAL }
    }
}

impl Backoff {
    /// The wait before the next attempt, after a failure; the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let nanos = u64::try_from(self.step.as_nanos()).unwrap_or(u64::MAX);
        self.step = self.step.saturating_mul(2).min(MAX);
        Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
    }

    /// Something worked: the next failure waits the initial step again.
    pub fn reset(&mut self) {
        self.step = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_to_the_cap_in_its_upper_half_and_resets() {
        let mut backoff = Backoff::default();
        for step in [100, 200, 400, 800, 1600, 3200, 5000, 5000] {
            let step = Duration::from_millis(step);
            let delay = backoff.next_delay();
            assert!(step / 2 <= delay && delay <= step, "{delay:?} for {step:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL);
    }
}
