//! What both ways of discovery produce: the current set of an upstream's
//! endpoints, as a [`watch`] channel, and how current it is.
//!
//! ```text
//!   dns::resolve  ─┐                        ┌─► discover::Endpoints ─► p2c balancer
//!                  ├─► Source { endpoints ──┤
//!   registry::watch┘           status ──────┴─► UpstreamView (admin)
//! ```
//!
//! A watch channel because only the latest set matters: a balancer that
//! looks after three changes needs the set after the third, not the three
//! diffs. The task that fills it (a resolver, a registry watcher) stops
//! when the last receiver is gone, that is when the balancer is dropped.

use std::{collections::BTreeSet, fmt, time::SystemTime};

use tokio::sync::watch;

/// Endpoint URLs (`http://10.1.2.3:50053`), ordered so that two sets
/// compare cheaply.
pub type Endpoints = BTreeSet<String>;

/// How much to trust the endpoint set right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceStatus {
    /// Nothing heard yet (the first resolution or listing is under way).
    Starting,
    /// The set is what the platform or the registry says now.
    Current { since: SystemTime },
    /// The source cannot be reached: the set is the last one known, kept
    /// rather than emptied, because the instances in it are most likely
    /// still there. `reason` says what failed.
    Stale { since: SystemTime, reason: String },
}

impl fmt::Display for SourceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceStatus::Starting => f.write_str("starting"),
            SourceStatus::Current { .. } => f.write_str("current"),
            SourceStatus::Stale { reason, .. } => write!(f, "stale: {reason}"),
        }
    }
}

/// The receiving half of a discovery source.
#[derive(Debug, Clone)]
pub struct Source {
    pub endpoints: watch::Receiver<Endpoints>,
    pub status: watch::Receiver<SourceStatus>,
    /// A fixed set has no task to feed it: the sender lives here, so the
    /// channel stays open for as long as the source is used.
    _fixed: Option<std::sync::Arc<watch::Sender<Endpoints>>>,
}

/// The sending half, owned by the task that keeps the set current.
#[derive(Debug)]
pub struct Publisher {
    /// The upstream, for the logs.
    upstream: String,
    endpoints: watch::Sender<Endpoints>,
    status: watch::Sender<SourceStatus>,
}

impl Source {
    /// A new, empty source for `upstream` and the publisher that fills it.
    pub fn channel(upstream: &str) -> (Publisher, Source) {
        let (endpoints, endpoints_rx) = watch::channel(Endpoints::new());
        let (status, status_rx) = watch::channel(SourceStatus::Starting);
        (
            Publisher {
                upstream: upstream.to_owned(),
                endpoints,
                status,
            },
            Source {
                endpoints: endpoints_rx,
                status: status_rx,
                _fixed: None,
            },
        )
    }

    /// A set that never changes (an upstream given by IP address).
    pub fn fixed(endpoints: Endpoints) -> Source {
        let (sender, receiver) = watch::channel(endpoints);
        let (_, status) = watch::channel(SourceStatus::Current {
            since: SystemTime::now(),
        });
        Source {
            endpoints: receiver,
            status,
            _fixed: Some(std::sync::Arc::new(sender)),
        }
    }
}

impl Publisher {
    /// Publishes `endpoints` as the current set (waking the balancer only
    /// if it differs from the last one).
    pub fn current(&self, endpoints: Endpoints) {
        self.endpoints.send_if_modified(|known| {
            let changed = *known != endpoints;
            if changed {
                tracing::info!(upstream = %self.upstream, ?endpoints, "endpoints changed");
                *known = endpoints;
            }
            changed
        });
        self.status.send_if_modified(|status| {
            let was_current = matches!(status, SourceStatus::Current { .. });
            if !was_current {
                *status = SourceStatus::Current {
                    since: SystemTime::now(),
                };
            }
            !was_current
        });
    }

    /// The source failed: keep the last set, say why it may be stale.
    pub fn stale(&self, reason: String) {
        tracing::warn!(upstream = %self.upstream, %reason, "keeping the last endpoints");
        self.status.send_replace(SourceStatus::Stale {
            since: SystemTime::now(),
            reason,
        });
    }

    /// Resolves once nobody receives any more: the feeding task's cue to
    /// stop.
    pub async fn closed(&self) {
        self.endpoints.closed().await
    }
}
