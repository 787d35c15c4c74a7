//! The generic cell rate algorithm (GCRA), in this process's memory.
//!
//! A limit of `burst` requests refilled at `per_minute` is one number per
//! key: the *theoretical arrival time* (TAT), the moment the key's bucket
//! would be full again. Each admitted request pushes it one emission interval
//! `T = 60 s / per_minute` further; a request is refused when that would put
//! the TAT more than `burst × T` ahead of now. One number per key, no
//! background refill, and the same arithmetic as the Redis script of
//! [`super::shared`], so both stores answer alike.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{Decision, Key, Rate};

/// Keys kept before the ones whose bucket is full again are dropped.
const MAX_TRACKED_KEYS: usize = 10_000;

/// One key's limit, as GCRA needs it.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    /// The emission interval `T`.
    pub interval: Duration,
    /// How far ahead of now the TAT may run: `burst × T`.
    pub tolerance: Duration,
}

impl Cell {
    pub fn of(rate: Rate) -> Self {
        // A rate of 0 per minute admits the burst once and then one request
        // a day: refusing everything is what `burst: 0` is for.
        let interval = match rate.per_minute {
            0 => Duration::from_secs(86_400),
            n => Duration::from_secs(60) / n,
        };
        Self {
            interval,
            tolerance: interval * rate.burst,
        }
    }
}

/// The TAT of every key this instance has seen recently.
pub struct LocalCells {
    // A plain mutex: the critical section is a map lookup and two additions,
    // never held across an `.await`, so an async mutex would only add cost.
    tats: Mutex<HashMap<Key, Instant>>,
}

impl Default for LocalCells {
    fn default() -> Self {
        Self {
            tats: Mutex::new(HashMap::new()),
        }
    }
}

impl LocalCells {
    /// Admits one request against every key in `cells`, or none: a request
    /// refused by one limit must not use up another.
    pub fn check(&self, cells: &[(Key, Cell)]) -> Vec<Decision> {
        self.check_at(Instant::now(), cells)
    }

    pub(super) fn check_at(&self, now: Instant, cells: &[(Key, Cell)]) -> Vec<Decision> {
        // A poisoned lock only means another request panicked mid-update;
        // the instants are still usable.
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        if tats.len() >= MAX_TRACKED_KEYS {
            tats.retain(|_, tat| *tat > now);
        }
        let mut decisions = Vec::with_capacity(cells.len());
        let mut next = Vec::with_capacity(cells.len());
        for (key, cell) in cells {
            let tat = tats.get(key).copied().filter(|t| *t > now).unwrap_or(now);
            let new_tat = tat + cell.interval;
            let ahead = new_tat - now;
            if ahead > cell.tolerance {
                decisions.push(Decision {
                    allowed: false,
                    remaining: 0,
                    reset: tat - now,
                    retry_after: ahead - cell.tolerance,
                });
            } else {
                decisions.push(Decision {
                    allowed: true,
                    remaining: remaining(cell, ahead),
                    reset: ahead,
                    retry_after: Duration::ZERO,
                });
                next.push((key.clone(), new_tat));
            }
        }
        if decisions.iter().all(|d| d.allowed) {
            tats.extend(next);
        }
        decisions
    }
}

/// Whole requests left once the TAT is `ahead` of now.
fn remaining(cell: &Cell, ahead: Duration) -> u64 {
    let room = cell.tolerance.saturating_sub(ahead);
    (room.as_nanos() / cell.interval.as_nanos().max(1)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Class;

    fn key(n: u8) -> Key {
        Key::ip(Class::Reads, [203, 0, 113, n].into())
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_one_interval() {
        let cells = LocalCells::default();
        let cell = Cell::of(Rate {
            burst: 3,
            per_minute: 6,
        });
        let now = Instant::now();
        let left: Vec<u64> = (0..3)
            .map(|_| cells.check_at(now, &[(key(1), cell)])[0].remaining)
            .collect();
        let refused = cells.check_at(now, &[(key(1), cell)])[0];

        assert_eq!(left, vec![2, 1, 0]);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        assert_eq!(refused.reset, Duration::from_secs(30));
        assert!(cells.check_at(now, &[(key(2), cell)])[0].allowed);
        let later = now + Duration::from_secs(10);
        assert!(cells.check_at(later, &[(key(1), cell)])[0].allowed);
    }

    #[test]
    fn a_request_refused_by_one_key_uses_up_none() {
        let cells = LocalCells::default();
        let roomy = Cell::of(Rate {
            burst: 10,
            per_minute: 60,
        });
        let tight = Cell::of(Rate {
            burst: 1,
            per_minute: 1,
        });
        let now = Instant::now();
        cells.check_at(now, &[(key(9), tight)]);

        let both = cells.check_at(now, &[(key(1), roomy), (key(9), tight)]);
        let roomy_alone = cells.check_at(now, &[(key(1), roomy)])[0];

        assert!(both[0].allowed && !both[1].allowed);
        assert_eq!(roomy_alone.remaining, 9, "the refused request took nothing");
    }
}
