//! The settings of one guarded client, as configuration spells them.
//!
//! Each service that calls another keeps one [`CallPolicy`] per upstream in
//! its settings (`APP__RESILIENCE__CATALOG__MAX_IN_FLIGHT=32`, …); the layers
//! take the typed values ([`BreakerSettings`], [`RetrySettings`]) built from
//! it. Every field has a default, so a configuration names only what it
//! changes. Durations are whole milliseconds (seconds for the window's age).
//! The deadline of a call is not here: it sits with the service's other
//! timeouts (the gateway's `timeouts.upstream_secs`, orders'
//! `upstreams.catalog_timeout_ms`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{BreakerSettings, RetrySettings};

/// How calls to one upstream are bounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallPolicy {
    /// Calls in flight to this upstream at most; one more is refused at
    /// once (the bulkhead).
    pub max_in_flight: usize,
    pub breaker: BreakerPolicy,
    pub retry: RetryPolicy,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            breaker: BreakerPolicy::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// A call slower than this counts as failed, unless configured otherwise:
/// 2 s, not the layer's 1 s, because a healthy call on a busy machine (a CI
/// runner, two cores running the whole test suite) can take over a second,
/// and a breaker that opens on a busy but healthy upstream is an outage of
/// its own. A hung call still counts when its deadline is at least this
/// long (the default deadlines are 2 s and 5 s); a shorter one is usually
/// reported as a failed call by the channel itself, which enforces the
/// `grpc-timeout` it sends, but that is a race with the deadline layer.
pub const SLOW_CALL_MS: u64 = 2_000;

/// When the circuit breaker opens and how long it stays open; see
/// [`crate::breaker`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerPolicy {
    /// How many recent calls the failure rate is computed over.
    pub window_size: usize,
    /// Outcomes older than this leave the window, in seconds.
    pub window_age_secs: u64,
    /// No verdict on fewer calls than this.
    pub minimum_calls: usize,
    /// The failure rate (0.0–1.0) at which the breaker opens.
    pub failure_rate: f64,
    /// A call slower than this counts as failed, in milliseconds.
    pub slow_call_ms: u64,
    /// The first open interval, in milliseconds; it doubles on every
    /// re-open without a close.
    pub open_base_ms: u64,
    /// The longest open interval, in milliseconds.
    pub open_max_ms: u64,
    /// Probes let through when half-open, and successes needed to close.
    pub half_open_probes: usize,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        let d = BreakerSettings::default();
        Self {
            window_size: d.window_size,
            window_age_secs: d.window_age.as_secs(),
            minimum_calls: d.minimum_calls,
            failure_rate: d.failure_rate,
            slow_call_ms: SLOW_CALL_MS,
            open_base_ms: d.open_base.as_millis() as u64,
            open_max_ms: d.open_max.as_millis() as u64,
            half_open_probes: d.half_open_probes,
        }
    }
}

impl From<&BreakerPolicy> for BreakerSettings {
    fn from(p: &BreakerPolicy) -> Self {
        Self {
            window_size: p.window_size,
            window_age: Duration::from_secs(p.window_age_secs),
            minimum_calls: p.minimum_calls,
            failure_rate: p.failure_rate,
            slow_call: Duration::from_millis(p.slow_call_ms),
            open_base: Duration::from_millis(p.open_base_ms),
            open_max: Duration::from_millis(p.open_max_ms),
            half_open_probes: p.half_open_probes,
        }
    }
}

/// How reads are retried; see [`crate::retry`]. Which methods are reads is
/// the client's code, not configuration: idempotency is a property of the
/// method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (1: never retry).
    pub max_attempts: u32,
    /// The first backoff, in milliseconds; it doubles per attempt.
    pub backoff_ms: u64,
    /// Retries as a fraction of calls (0.2: one retry per five calls).
    pub ratio: f32,
    /// Retries per second allowed whatever the ratio says.
    pub min_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let d = RetrySettings::default();
        Self {
            max_attempts: d.max_attempts,
            backoff_ms: d.backoff.as_millis() as u64,
            ratio: d.ratio,
            min_per_second: d.min_per_second,
        }
    }
}

impl RetryPolicy {
    /// The layer's settings, retrying only the `idempotent` method paths.
    pub fn settings(&self, idempotent: &[String]) -> RetrySettings {
        RetrySettings {
            idempotent: idempotent.to_vec(),
            max_attempts: self.max_attempts,
            backoff: Duration::from_millis(self.backoff_ms),
            ratio: self.ratio,
            min_per_second: self.min_per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_layers_defaults() {
        let breaker = BreakerSettings::from(&BreakerPolicy::default());
        let d = BreakerSettings::default();
        assert_eq!(breaker.window_age, d.window_age);
        assert_eq!(breaker.slow_call, Duration::from_millis(SLOW_CALL_MS));
        assert_eq!(breaker.open_max, d.open_max);
        let retry = RetryPolicy::default().settings(&[]);
        assert_eq!(retry.backoff, RetrySettings::default().backoff);
    }
}
