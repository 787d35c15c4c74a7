//! The admin view of one balanced upstream: where its endpoints come from,
//! which endpoints the balancer holds, and how each is doing (breaker
//! state and recent transitions, calls in flight) — what the gateway's
//! `GET /api/system/upstreams` shows.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use signalbox_resilience::{breaker::Transition, CircuitBreakerLayer, State};
use tokio::sync::watch;

use crate::{endpoint::EndpointHandle, Mode, SourceStatus};

/// A handle on a balanced upstream's state; cheap to clone.
#[derive(Debug, Clone)]
pub struct UpstreamView {
    pub(crate) inner: Arc<ViewInner>,
}

#[derive(Debug)]
pub(crate) struct ViewInner {
    name: String,
    mode: Mode,
    status: watch::Receiver<SourceStatus>,
    // A std mutex: held for a map insert, remove or copy, never across an
    // `.await`.
    endpoints: Mutex<BTreeMap<String, EndpointHandle>>,
}

/// The upstream at one moment.
#[derive(Debug, Clone)]
pub struct UpstreamSnapshot {
    pub name: String,
    pub mode: Mode,
    /// Whether the endpoint set is current or the last one known.
    pub source: SourceStatus,
    pub endpoints: Vec<EndpointSnapshot>,
}

/// One endpoint at one moment.
#[derive(Debug, Clone)]
pub struct EndpointSnapshot {
    /// Its URL (`http://10.1.0.7:50053`).
    pub address: String,
    /// Its own breaker: `open` means ejected from the balance.
    pub state: State,
    /// While open, how long until it is probed.
    pub open_for: Option<Duration>,
    /// The breaker's recent transitions, oldest first.
    pub transitions: Vec<Transition>,
    pub in_flight: usize,
    /// The endpoint's breaker itself (shared, not a copy), for a view that
    /// reads it later.
    pub breaker: CircuitBreakerLayer,
}

impl UpstreamView {
    pub(crate) fn new(name: &str, mode: Mode, status: watch::Receiver<SourceStatus>) -> Self {
        Self {
            inner: Arc::new(ViewInner {
                name: name.to_owned(),
                mode,
                status,
                endpoints: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Everything the admin view shows, copied out.
    pub fn snapshot(&self) -> UpstreamSnapshot {
        let endpoints = self
            .inner
            .lock()
            .values()
            .map(|handle| EndpointSnapshot {
                address: handle.address.clone(),
                state: handle.breaker.state(),
                open_for: handle.breaker.open_for(),
                transitions: handle.breaker.transitions(),
                in_flight: handle.in_flight(),
                breaker: handle.breaker.clone(),
            })
            .collect();
        UpstreamSnapshot {
            name: self.inner.name.clone(),
            mode: self.inner.mode,
            source: self.inner.status.borrow().clone(),
            endpoints,
        }
    }

    /// The URLs of the endpoints the balancer holds.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.lock().keys().cloned().collect()
    }
}

impl ViewInner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, EndpointHandle>> {
        // Every update is one map operation: a panic elsewhere while the
        // lock was held leaves a consistent map.
        self.endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn insert(&self, handle: EndpointHandle) {
        self.lock().insert(handle.address.clone(), handle);
    }

    pub(crate) fn remove(&self, address: &str) {
        self.lock().remove(address);
    }

    /// The soonest any open endpoint may be probed again: what a caller
    /// refused because no endpoint is ready is told to wait.
    pub(crate) fn soonest_probe(&self) -> Option<Duration> {
        self.lock()
            .values()
            .filter_map(|handle| handle.breaker.open_for())
            .min()
    }
}
