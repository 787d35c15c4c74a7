//! Backpressure: what an instance sheds when it cannot keep up, and in
//! which order, instead of letting a backlog grow.
//!
//! An instance reads the event log (the stream every instance shares, see
//! [`crate::recovery`]) at its own pace. When it is slower than the log
//! grows, because it is frozen, starved of CPU, or has more fan-out than it
//! can push, the difference does not pile up in the broker's memory: the
//! stream is on disk, bounded by age and size, and the broker has at most
//! the consumer's prefetch in flight to this instance. It piles up as
//! *lag*: the instance handles older and older events, and its sockets get
//! minutes-old prices. So the instance measures its lag, the age of each
//! event when it is handled ([`Load::observe`], from the envelope's
//! `occurred_at`), and sheds in this order:
//!
//! ```text
//!  lag ─▶ > drop_superseded_after_ms   1. drop superseded events (catalog prices, stock)
//!                                         unpushed; their subscribers get one `error events_dropped`
//!       ─▶ > evict_after_ms            2. evict the slowest socket (most frames waiting), 1008,
//!                                         one per `evict_interval_ms` while it lasts
//!       ─▶ > refuse_after_ms, for 1 s  3. refuse new sockets, 1013 "try again later"
//! ```
//!
//! Why this order: a catalog event carries the whole new price or stock of
//! its product, so a later one replaces it, and it fans out to every socket
//! on `catalog` (the costly kind); dropping the old ones costs clients
//! nothing they cannot reload, and the instance catches up at once. Order
//! events are never dropped here: they are few (one user's sockets each),
//! and a client must not miss one. If the instance is still behind, the
//! sockets furthest behind go (their client resumes with `recover`, from
//! the stream, on any instance), and new sockets are sent elsewhere, since
//! each one would only add to the load. Everything dropped is still in the
//! stream: a client told `events_dropped` may subscribe again with
//! `recover` and get it, or reload.
//!
//! A measurement is only as fresh as the last event: an instance that has
//! handled nothing for [`STALE_AFTER`] has no backlog to speak of (a
//! lagging consumer handles events back to back), so its lag counts as 0.
//! The lag uses the publisher's clock: on one machine, or with clocks kept
//! in step (NTP), that is what a user sees.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, PoisonError,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A lag measured longer ago than this no longer counts (see the module doc).
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// The bounds of the lag policy (`backpressure.*` in the settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct BackpressureSettings {
    /// A superseded event (a catalog price or stock change) handled more
    /// than this many milliseconds after it occurred is dropped instead of
    /// pushed.
    pub drop_superseded_after_ms: u64,
    /// Lagging more than this, the instance evicts its slowest socket...
    pub evict_after_ms: u64,
    /// ...one per this many milliseconds, the first after the lag has been
    /// above `evict_after_ms` this long (a short catch-up evicts nobody).
    pub evict_interval_ms: u64,
    /// Lagging more than this for at least a second ([`STALE_AFTER`]),
    /// new sockets are refused with 1013.
    pub refuse_after_ms: u64,
}

impl Default for BackpressureSettings {
    fn default() -> Self {
        Self {
            // A price a second old is still news; one several seconds old
            // on a screen that updates live looks like a bug.
            drop_superseded_after_ms: 1_000,
            // Three seconds behind even after dropping what may be dropped:
            // the fan-out itself is too much for this instance.
            evict_after_ms: 3_000,
            evict_interval_ms: 1_000,
            // Refusing starts with eviction, so an evicted client cannot
            // come straight back to the instance that evicted it.
            refuse_after_ms: 3_000,
        }
    }
}

/// What kind of event, for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A later event of the same kind and key replaces it (catalog prices
    /// and stock): may be dropped when old.
    Superseded,
    /// A client must see it (an order's state): never dropped.
    MustArrive,
}

impl EventKind {
    /// The kind of a message type: `catalog.*` events carry the new state
    /// of a product whole; everything else must arrive.
    pub fn of(message_type: &str) -> Self {
        if message_type.starts_with("catalog.") {
            Self::Superseded
        } else {
            Self::MustArrive
        }
    }
}

/// What the policy says about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Push it (false: drop it, it is superseded and too old).
    pub push: bool,
    /// Evict the slowest socket now.
    pub evict: bool,
}

/// How much was shed so far (for tests and logs; the same figures go to
/// `/metrics` as `realtime_events_dropped_total`,
/// `realtime_lag_evictions_total`, `realtime_sockets_refused_total`, and
/// the lag as the gauge `realtime_event_lag_seconds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shed {
    /// Superseded events not pushed.
    pub dropped: u64,
    /// Sockets evicted because the instance lagged (slow consumers whose
    /// buffer filled are counted by the hub, not here).
    pub evicted: u64,
    /// Sockets refused with 1013.
    pub refused: u64,
    /// The last lag measured, in milliseconds.
    pub lag_ms: u64,
}

/// The instance's load: its lag and what the policy shed. Shared by the
/// events consumer (which measures), the hub (which drops and evicts) and
/// the socket upgrade (which refuses).
pub struct Load {
    settings: BackpressureSettings,
    /// The last lag measured and when; the eviction clock. A `std` mutex:
    /// a few comparisons per event, never held across an `.await`.
    state: Mutex<State>,
    /// Counters read from outside. `Relaxed`: each is a statistic on its
    /// own; nothing else is published through them.
    dropped: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    /// Whether the refusal bound is being hit, so its log line is written
    /// once per episode, not once per socket.
    refusing: AtomicBool,
}

struct State {
    lag: Duration,
    measured_at: Option<Instant>,
    /// Since when the lag has been above `evict_after_ms` (None: it is not).
    over_evict_since: Option<Instant>,
    /// Since when the lag has been above `refuse_after_ms` (None: it is not).
    over_refuse_since: Option<Instant>,
    last_eviction: Option<Instant>,
    /// Whether the superseded bound is being hit (for its log line).
    dropping: bool,
}

impl Load {
    pub fn new(settings: BackpressureSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State {
                lag: Duration::ZERO,
                measured_at: None,
                over_evict_since: None,
                over_refuse_since: None,
                last_eviction: None,
                dropping: false,
            }),
            dropped: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
        }
    }

    pub fn settings(&self) -> &BackpressureSettings {
        &self.settings
    }

    /// Records that an event of `kind` is handled `lag` after it occurred,
    /// and says what to do with it.
    pub fn observe(&self, kind: EventKind, lag: Duration) -> Verdict {
        self.observe_at(kind, lag, Instant::now())
    }

    fn observe_at(&self, kind: EventKind, lag: Duration, now: Instant) -> Verdict {
        let settings = &self.settings;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.lag = lag;
        state.measured_at = Some(now);

        metrics::gauge!("realtime_event_lag_seconds").set(lag.as_secs_f64());

        let drop_after = Duration::from_millis(settings.drop_superseded_after_ms);
        let push = kind == EventKind::MustArrive || lag <= drop_after;
        if !push {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("realtime_events_dropped_total").increment(1);
            if !state.dropping {
                tracing::warn!(
                    lag_ms = lag.as_millis() as u64,
                    bound_ms = settings.drop_superseded_after_ms,
                    "instance lagging; dropping superseded events"
                );
            }
        }
        if lag <= drop_after && state.dropping {
            tracing::info!(
                dropped = self.dropped.load(Ordering::Relaxed),
                "instance caught up; superseded events flow again"
            );
        }
        state.dropping = lag > drop_after;

        let mut evict = false;
        if lag > Duration::from_millis(settings.evict_after_ms) {
            let since = *state.over_evict_since.get_or_insert(now);
            let interval = Duration::from_millis(settings.evict_interval_ms);
            let due = state
                .last_eviction
                .is_none_or(|last| now.duration_since(last) >= interval);
            if now.duration_since(since) >= interval && due {
                state.last_eviction = Some(now);
                evict = true;
            }
        } else {
            state.over_evict_since = None;
        }
        if lag > Duration::from_millis(settings.refuse_after_ms) {
            state.over_refuse_since.get_or_insert(now);
        } else {
            state.over_refuse_since = None;
        }
        Verdict { push, evict }
    }

    /// The hub evicted a socket on the policy's word.
    pub fn evicted_one(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("realtime_lag_evictions_total").increment(1);
    }

    /// The lag now: the last one measured, or zero once it is stale.
    pub fn lag(&self) -> Duration {
        self.lag_at(Instant::now())
    }

    fn lag_at(&self, now: Instant) -> Duration {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.measured_at {
            Some(at) if now.duration_since(at) < STALE_AFTER => state.lag,
            _ => Duration::ZERO,
        }
    }

    /// Whether a new socket must be refused now (1013); counts it if so.
    ///
    /// Only a lag that lasts counts: above `refuse_after_ms` on every event
    /// for at least [`STALE_AFTER`], and measured within it. One late event
    /// (held up in an outbox, say) is no backlog, and refuses nobody.
    pub fn refuse_new_socket(&self) -> bool {
        self.refuse_at(Instant::now())
    }

    fn refuse_at(&self, now: Instant) -> bool {
        let lag = self.lag_at(now);
        let sustained = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state
                .over_refuse_since
                .is_some_and(|since| now.duration_since(since) >= STALE_AFTER)
        };
        let refuse = sustained && lag > Duration::from_millis(self.settings.refuse_after_ms);
        let was = self.refusing.swap(refuse, Ordering::Relaxed);
        if refuse {
            self.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("realtime_sockets_refused_total").increment(1);
            if !was {
                tracing::warn!(
                    lag_ms = lag.as_millis() as u64,
                    bound_ms = self.settings.refuse_after_ms,
                    "instance lagging; refusing new sockets"
                );
            }
        }
        refuse
    }

    /// What was shed so far.
    pub fn shed(&self) -> Shed {
        Shed {
            dropped: self.dropped.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            lag_ms: self.lag().as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn load() -> Load {
        Load::new(BackpressureSettings::default())
    }

    #[test]
    fn catalog_events_are_superseded_and_order_events_must_arrive() {
        assert_eq!(
            EventKind::of("catalog.price_changed"),
            EventKind::Superseded
        );
        assert_eq!(
            EventKind::of("catalog.stock_changed"),
            EventKind::Superseded
        );
        assert_eq!(EventKind::of("order.approved"), EventKind::MustArrive);
    }

    #[test]
    fn an_old_superseded_event_is_dropped_an_old_order_event_never() {
        let load = load();
        let now = Instant::now();
        let fresh = load.observe_at(EventKind::Superseded, ms(900), now);
        assert!(fresh.push);
        let stale = load.observe_at(EventKind::Superseded, ms(1_100), now);
        assert!(!stale.push);
        let order = load.observe_at(EventKind::MustArrive, ms(60_000), now);
        assert!(order.push, "an order event is pushed however late");
        assert_eq!(load.shed().dropped, 1);
    }

    #[test]
    fn eviction_starts_after_a_sustained_lag_and_is_paced() {
        let load = load();
        let start = Instant::now();
        let at = |offset: u64| start + ms(offset);
        let kind = EventKind::MustArrive;
        // Above the bound, but not yet for a whole interval.
        assert!(!load.observe_at(kind, ms(5_000), at(0)).evict);
        assert!(!load.observe_at(kind, ms(5_000), at(500)).evict);
        // One interval above it: evict one...
        assert!(load.observe_at(kind, ms(5_000), at(1_000)).evict);
        // ...and the next only one interval later.
        assert!(!load.observe_at(kind, ms(5_000), at(1_500)).evict);
        assert!(load.observe_at(kind, ms(5_000), at(2_000)).evict);
        // Back under the bound: the clock starts again.
        assert!(!load.observe_at(kind, ms(10), at(2_100)).evict);
        assert!(!load.observe_at(kind, ms(5_000), at(2_200)).evict);
    }

    #[test]
    fn new_sockets_are_refused_only_while_the_lag_lasts_is_fresh_and_above_the_bound() {
        let load = load();
        let start = Instant::now();
        let at = |offset: u64| start + ms(offset);
        assert!(!load.refuse_at(at(0)), "no lag measured yet");
        load.observe_at(EventKind::MustArrive, ms(2_000), at(0));
        assert!(!load.refuse_at(at(0)), "below the refusal bound");
        load.observe_at(EventKind::MustArrive, ms(4_000), at(100));
        assert!(!load.refuse_at(at(100)), "one late event is no backlog");
        load.observe_at(EventKind::MustArrive, ms(4_000), at(1_100));
        assert!(load.refuse_at(at(1_100)), "late for a second");
        assert_eq!(load.shed().refused, 1);
        assert!(!load.refuse_at(at(2_200)), "a stale lag refuses nobody");
        assert_eq!(
            load.lag_at(at(2_200)),
            Duration::ZERO,
            "a stale lag is none"
        );
    }
}
