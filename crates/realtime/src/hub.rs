//! The hub: which socket of this instance listens to which channel.
//!
//! Every realtime instance receives every order and catalog event (its own
//! queue is bound to the events exchange, see [`crate::events`]); the hub is
//! where an event meets the sockets that want it. In the order scenario it
//! is the last hop: `order.approved` for user 42 arrives here and is handed
//! to the sockets subscribed to `user:42` on this instance, if any.
//!
//! ```text
//!  events consumer ──publish("user:42", data)──▶ Hub ──try_send──▶ socket task ──▶ browser
//!                                                  │  (bounded mpsc per socket)
//!                                                  └─ full? evict the socket, never wait
//! ```
//!
//! Per channel the hub keeps an `offset` that grows by one per event and a
//! ring of the last [`HISTORY_LEN`] events; with the instance's random
//! `epoch` they name a position a client can later ask to resume from
//! (recovery itself is not wired to `subscribe` yet: `recovered` is `false`).
//!
//! The hub never waits for a socket. Pushing to a socket whose buffer is full
//! would stall every other subscriber behind it (head-of-line blocking), so
//! such a slow consumer is evicted instead: its subscription is dropped and
//! its socket task is told to close with 1008 "slow consumer". The client
//! reconnects and recovers, which costs it less than it would cost everyone
//! else to wait.
//!
//! The map sits behind a plain `std::sync::Mutex`: every critical section is
//! a few map operations and non-blocking `try_send`s, never an `.await`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use axum::extract::ws::Utf8Bytes;
use rand::RngExt;
use serde_json::Value;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::frames::ServerFrame;

/// The public channel every user may subscribe to (price changes).
pub const CATALOG_CHANNEL: &str = "catalog";

/// Events kept per channel for recovery.
pub const HISTORY_LEN: usize = 256;

/// The private channel of one user.
pub fn user_channel(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// A socket's number, unique within this instance.
pub type SocketId = u64;

/// What the hub hands a socket: an `event` frame, serialised once for all
/// subscribers (the bytes are reference-counted, so a clone is cheap).
pub type Outbound = Utf8Bytes;

/// One event in a channel's history.
#[derive(Debug, Clone)]
pub struct Publication {
    pub offset: u64,
    pub frame: Outbound,
}

/// Where a channel's stream stands: the instance epoch and the offset of
/// its latest event (0 before the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

pub struct Hub {
    /// Random per process: offsets of two instances (or of this instance
    /// before and after a restart) are not comparable, and a differing epoch
    /// tells the client so.
    epoch: String,
    next_socket: AtomicU64,
    channels: Mutex<HashMap<String, Channel>>,
}

/// A channel's state on this instance.
struct Channel {
    offset: u64,
    history: VecDeque<Publication>,
    subscribers: HashMap<SocketId, Subscriber>,
}

/// The hub's handle on one subscribed socket.
#[derive(Clone)]
struct Subscriber {
    /// The socket's outbound queue (bounded: `ws.send_buffer`).
    outbound: mpsc::Sender<Outbound>,
    /// Cancelled by the hub to tell the socket task it was evicted.
    evicted: CancellationToken,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let epoch: [u8; 8] = rand::rng().random();
        Self {
            epoch: epoch.iter().map(|b| format!("{b:02x}")).collect(),
            next_socket: AtomicU64::new(1),
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Registers a new socket. The socket task keeps the [`Membership`]
    /// (dropping it unsubscribes everywhere, whatever way the task ends) and
    /// reads its events from the receiver.
    pub fn join(self: &Arc<Self>, buffer: usize) -> (Membership, mpsc::Receiver<Outbound>) {
        // The socket's outbound queue: the hub is the producer, the socket
        // task the consumer. Bounded, so a stalled socket shows up as a full
        // queue instead of unbounded memory.
        let (outbound, receiver) = mpsc::channel(buffer.max(1));
        let membership = Membership {
            hub: Arc::clone(self),
            id: self.next_socket.fetch_add(1, Ordering::Relaxed),
            subscriber: Subscriber {
                outbound,
                evicted: CancellationToken::new(),
            },
            channels: HashSet::new(),
        };
        (membership, receiver)
    }

    /// Pushes an event to every subscriber of `channel` on this instance and
    /// returns its offset. Returns `None` when no socket of this instance has
    /// ever subscribed to the channel: no client can hold a position of this
    /// instance's epoch in it, so there is nothing to keep, and the hub's
    /// memory grows with its own sockets, not with every user of the system.
    pub fn publish(&self, channel: &str, data: Value) -> Option<u64> {
        let mut channels = self.lock();
        let state = channels.get_mut(channel)?;
        state.offset += 1;
        let offset = state.offset;
        let frame = Outbound::from(
            ServerFrame::Event {
                channel: channel.to_owned(),
                epoch: self.epoch.clone(),
                offset,
                data,
            }
            .to_json(),
        );

        if state.history.len() == HISTORY_LEN {
            state.history.pop_front();
        }
        state.history.push_back(Publication {
            offset,
            frame: frame.clone(),
        });

        state.subscribers.retain(|socket, subscriber| {
            match subscriber.outbound.try_send(frame.clone()) {
                Ok(()) => true,
                // The socket is not keeping up: evict it rather than wait.
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(socket, channel, "slow consumer; evicting");
                    subscriber.evicted.cancel();
                    false
                }
                // The socket task has ended; its membership is being dropped.
                Err(TrySendError::Closed(_)) => false,
            }
        });
        Some(offset)
    }

    /// The kept events of `channel` after `offset`, oldest first; `None` when
    /// the history no longer reaches back that far (or the channel is
    /// unknown), that is, when recovery from `offset` is impossible.
    pub fn history_since(&self, channel: &str, offset: u64) -> Option<Vec<Publication>> {
        let channels = self.lock();
        let state = channels.get(channel)?;
        if offset > state.offset {
            return None;
        }
        let oldest = state.history.front().map_or(state.offset + 1, |p| p.offset);
        if offset + 1 < oldest {
            return None;
        }
        Some(
            state
                .history
                .iter()
                .filter(|p| p.offset > offset)
                .cloned()
                .collect(),
        )
    }

    /// How many sockets of this instance are subscribed to `channel`.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.lock()
            .get(channel)
            .map_or(0, |state| state.subscribers.len())
    }

    /// A panic while the lock was held cannot leave the map half-updated in
    /// a way that matters (every operation is a single insert or remove), so
    /// a poisoned lock is used as is rather than taking the service down.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A socket's place in the hub. Owned by the socket task; dropping it (on
/// any exit path: close, error, panic, shutdown) removes the socket from
/// every channel it joined.
pub struct Membership {
    hub: Arc<Hub>,
    id: SocketId,
    subscriber: Subscriber,
    channels: HashSet<String>,
}

impl Membership {
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// Subscribes (idempotently) and returns where the channel stands.
    pub fn subscribe(&mut self, channel: &str) -> Position {
        let mut channels = self.hub.lock();
        let state = channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel {
                offset: 0,
                history: VecDeque::new(),
                subscribers: HashMap::new(),
            });
        state.subscribers.insert(self.id, self.subscriber.clone());
        self.channels.insert(channel.to_owned());
        Position {
            epoch: self.hub.epoch.clone(),
            offset: state.offset,
        }
    }

    /// Unsubscribes; `false` when the socket was not subscribed.
    pub fn unsubscribe(&mut self, channel: &str) -> bool {
        if !self.channels.remove(channel) {
            return false;
        }
        if let Some(state) = self.hub.lock().get_mut(channel) {
            state.subscribers.remove(&self.id);
        }
        true
    }

    /// Resolves when the hub evicted this socket as a slow consumer.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.subscriber.evicted.cancelled()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut channels = self.hub.lock();
        for channel in &self.channels {
            if let Some(state) = channels.get_mut(channel) {
                state.subscribers.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn offset_of(frame: &Outbound) -> u64 {
        let value: Value = serde_json::from_str(frame.as_str()).unwrap();
        value["offset"].as_u64().unwrap()
    }

    #[test]
    fn offsets_grow_by_one_per_event_in_each_channel() {
        let hub = Arc::new(Hub::new());
        let (mut socket, mut inbox) = hub.join(8);
        socket.subscribe("user:1");
        socket.subscribe("catalog");

        assert_eq!(hub.publish("user:1", json!({})), Some(1));
        assert_eq!(hub.publish("user:1", json!({})), Some(2));
        assert_eq!(hub.publish("catalog", json!({})), Some(1));

        assert_eq!(offset_of(&inbox.try_recv().unwrap()), 1);
        assert_eq!(offset_of(&inbox.try_recv().unwrap()), 2);
        assert_eq!(offset_of(&inbox.try_recv().unwrap()), 1);
    }

    #[test]
    fn an_event_for_a_channel_nobody_here_joined_is_not_kept() {
        let hub = Hub::new();
        assert_eq!(hub.publish("user:1", json!({})), None);
        assert!(hub.history_since("user:1", 0).is_none());
    }

    #[test]
    fn a_subscriber_with_a_full_buffer_is_evicted_without_blocking_others() {
        let hub = Arc::new(Hub::new());
        let (mut slow, _slow_inbox) = hub.join(1);
        let (mut fast, mut fast_inbox) = hub.join(8);
        slow.subscribe("user:1");
        fast.subscribe("user:1");

        hub.publish("user:1", json!({"n": 1}));
        hub.publish("user:1", json!({"n": 2}));

        assert!(slow.subscriber.evicted.is_cancelled());
        assert!(!fast.subscriber.evicted.is_cancelled());
        assert_eq!(hub.subscribers("user:1"), 1);
        assert_eq!(offset_of(&fast_inbox.try_recv().unwrap()), 1);
        assert_eq!(offset_of(&fast_inbox.try_recv().unwrap()), 2);
    }

    #[test]
    fn dropping_a_membership_unsubscribes_from_every_channel() {
        let hub = Arc::new(Hub::new());
        let (mut socket, _inbox) = hub.join(8);
        socket.subscribe("user:1");
        socket.subscribe("catalog");
        drop(socket);
        assert_eq!(hub.subscribers("user:1"), 0);
        assert_eq!(hub.subscribers("catalog"), 0);
    }

    #[test]
    fn history_keeps_the_latest_events_and_knows_when_it_falls_short() {
        let hub = Arc::new(Hub::new());
        let (mut socket, _inbox) = hub.join(1);
        socket.subscribe("user:1");
        drop(socket); // the channel's stream outlives its subscribers
        for _ in 0..HISTORY_LEN + 10 {
            hub.publish("user:1", json!({}));
        }
        let last = (HISTORY_LEN + 10) as u64;

        let tail = hub.history_since("user:1", last - 3).unwrap();
        assert_eq!(
            tail.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![last - 2, last - 1, last]
        );
        assert_eq!(hub.history_since("user:1", last).unwrap().len(), 0);
        assert!(
            hub.history_since("user:1", 5).is_none(),
            "fell off the ring"
        );
        assert!(
            hub.history_since("user:1", last + 1).is_none(),
            "from the future"
        );
    }
}
