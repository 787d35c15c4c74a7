//! The breaker's memory: the outcomes of the most recent calls.
//!
//! A sliding window bounded both by count (the last `capacity` calls) and by
//! age (nothing older than `max_age`), so that an upstream that failed an
//! hour ago and has served well since is judged on the recent calls only, and
//! a quiet upstream is not judged on a handful of old ones.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Window {
    capacity: usize,
    max_age: Duration,
    /// When each call ended and whether it failed, oldest first.
    outcomes: VecDeque<(Instant, bool)>,
    failures: usize,
}

impl Window {
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            max_age,
            outcomes: VecDeque::with_capacity(capacity.max(1)),
            failures: 0,
        }
    }

    pub(crate) fn record(&mut self, now: Instant, failed: bool) {
        if self.outcomes.len() == self.capacity {
            self.pop_oldest();
        }
        self.outcomes.push_back((now, failed));
        self.failures += usize::from(failed);
        self.expire(now);
    }

    /// How many calls are in the window and what fraction of them failed.
    pub(crate) fn stats(&mut self, now: Instant) -> (usize, f64) {
        self.expire(now);
        let calls = self.outcomes.len();
        let rate = if calls == 0 {
            0.0
        } else {
            self.failures as f64 / calls as f64
        };
        (calls, rate)
    }

    pub(crate) fn clear(&mut self) {
        self.outcomes.clear();
        self.failures = 0;
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.outcomes.front() {
            if now.duration_since(at) <= self.max_age {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, failed)) = self.outcomes.pop_front() {
            self.failures -= usize::from(failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_most_recent_calls_only() {
        let now = Instant::now();
        let mut window = Window::new(4, Duration::from_secs(60));
        for _ in 0..4 {
            window.record(now, true);
        }
        assert_eq!(window.stats(now), (4, 1.0));
        window.record(now, false);
        window.record(now, false);
        assert_eq!(window.stats(now), (4, 0.5), "two failures pushed out");
    }

    #[test]
    fn old_outcomes_age_out() {
        let start = Instant::now();
        let mut window = Window::new(10, Duration::from_secs(5));
        window.record(start, true);
        window.record(start + Duration::from_secs(4), false);
        assert_eq!(window.stats(start + Duration::from_secs(6)), (1, 0.0));
        assert_eq!(window.stats(start + Duration::from_secs(10)), (0, 0.0));
    }
}
