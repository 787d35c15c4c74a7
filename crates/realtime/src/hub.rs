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
//! Per channel the hub keeps an `offset` that grows by one per event (every
//! `event` frame carries it, with the instance's random `epoch`) and a ring
//! of the last [`HISTORY_LEN`] events ([`Hub::history_since`] reads it).
//! Nothing replays that history to clients: there is no recovery of missed
//! events, `subscribe` ignores a `recover` position and always answers
//! `recovered: false`.
//!
//! A channel lives exactly as long as it has a subscriber on this instance.
//! When the last one leaves (unsubscribes, its socket ends, or it is
//! evicted) the channel goes, offset and history with it, so the hub's
//! memory follows the sockets open now, not every user who ever connected.
//! A later subscriber starts the channel afresh at offset 0: an offset
//! orders the events of one life of a channel, nothing more.
//!
//! The hub never waits for a socket. Pushing to a socket whose buffer is full
//! would stall every other subscriber behind it (head-of-line blocking), so
//! such a slow consumer is evicted instead: its subscription is dropped and
//! its socket task is told to close with 1008 "slow consumer". The client
//! may reconnect and subscribe again (what was published in between is not
//! replayed), which costs it less than it would cost everyone else to wait.
//!
//! The map sits behind a plain `std::sync::Mutex`: every critical section is
//! a few map operations and non-blocking `try_send`s, never an `.await`. One
//! lock over the whole map is also what makes dropping an empty channel
//! race-free: leaving removes the subscriber, sees the channel empty and
//! removes it under one guard ([`leave`]), and `subscribe` finds or creates
//! the channel and inserts itself under one guard. So a subscribe runs
//! wholly before a leave (the channel is not empty and stays) or wholly after
//! it (the channel is gone and is created afresh). Had the emptiness check
//! and the removal taken the lock separately, a subscribe landing between
//! them would join a channel that is then removed, and its socket would
//! silently receive nothing more.

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

/// Events kept per channel while it has subscribers: at most this many
/// frames per live channel, however many events it carries.
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
/// its latest event (0 before the first, and again when the channel is
/// created afresh after its last subscriber left).
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
    /// Hands out socket ids. `Relaxed`: the ids only need to be unique, and
    /// `fetch_add` is atomic whatever the ordering; no other memory is
    /// published through this counter.
    next_socket: AtomicU64,
    /// Every channel with at least one subscriber on this instance, and no
    /// other (see the module doc).
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
    /// returns its offset. Returns `None` when no socket of this instance is
    /// subscribed to the channel: there is nobody to push to, and nothing is
    /// kept (most events are for users connected to another instance, or to
    /// none).
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
        // Evicting the last subscriber empties the channel; it goes under
        // this same guard, like any other last leave (see [`leave`]).
        if state.subscribers.is_empty() {
            channels.remove(channel);
        }
        Some(offset)
    }

    /// The kept events of `channel` after `offset`, oldest first; `None` when
    /// the history no longer reaches back that far, when `offset` is ahead of
    /// the channel, or when the channel has no subscriber here (and so no
    /// history).
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

    /// How many channels the hub holds, which is how many distinct channels
    /// the sockets of this instance are subscribed to right now.
    pub fn channel_count(&self) -> usize {
        self.lock().len()
    }

    /// A panic while the lock was held cannot leave the map half-updated in
    /// a way that matters (each step is a single insert or remove; the worst
    /// case is an empty channel, removed by its next publish or leave), so a
    /// poisoned lock is used as is rather than taking the service down.
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
        leave(&mut self.hub.lock(), channel, self.id);
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
            leave(&mut channels, channel, self.id);
        }
    }
}

/// Takes socket `id` out of `channel`, and the channel out of the hub when
/// no subscriber is left. The caller passes the locked map, so both happen
/// under one guard: no subscribe can slip in between (see the module doc).
/// The socket may already be gone from the channel (the hub evicted it), or
/// the channel from the hub; both are fine.
fn leave(channels: &mut HashMap<String, Channel>, channel: &str, id: SocketId) {
    let Some(state) = channels.get_mut(channel) else {
        return;
    };
    state.subscribers.remove(&id);
    if state.subscribers.is_empty() {
        channels.remove(channel);
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
        // Room for every event, so the one subscriber is never evicted.
        let (mut socket, _inbox) = hub.join(HISTORY_LEN + 10);
        socket.subscribe("user:1");
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

    #[test]
    fn the_last_subscriber_leaving_drops_the_channel_and_its_history() {
        let hub = Arc::new(Hub::new());
        let (mut first, _first_inbox) = hub.join(8);
        let (mut second, _second_inbox) = hub.join(8);
        first.subscribe("user:1");
        second.subscribe("user:1");
        first.subscribe("catalog");
        hub.publish("user:1", json!({}));

        assert!(first.unsubscribe("user:1"));
        assert_eq!(hub.channel_count(), 2, "user:1 still has a subscriber");
        assert_eq!(hub.history_since("user:1", 0).map(|h| h.len()), Some(1));

        drop(second);
        assert_eq!(hub.channel_count(), 1, "only catalog is left");
        assert!(hub.history_since("user:1", 0).is_none());
        assert_eq!(hub.publish("user:1", json!({})), None);

        drop(first);
        assert_eq!(hub.channel_count(), 0);
    }

    #[test]
    fn a_channel_subscribed_again_after_it_was_dropped_starts_at_offset_zero() {
        let hub = Arc::new(Hub::new());
        let (mut socket, _inbox) = hub.join(8);
        socket.subscribe("user:1");
        hub.publish("user:1", json!({}));
        hub.publish("user:1", json!({}));
        socket.unsubscribe("user:1");

        assert_eq!(socket.subscribe("user:1").offset, 0);
        assert_eq!(hub.publish("user:1", json!({})), Some(1));
    }

    #[test]
    fn evicting_the_last_subscriber_drops_the_channel() {
        let hub = Arc::new(Hub::new());
        let (mut slow, _inbox) = hub.join(1);
        slow.subscribe("user:1");

        hub.publish("user:1", json!({}));
        hub.publish("user:1", json!({}));

        assert!(slow.subscriber.evicted.is_cancelled());
        assert_eq!(hub.channel_count(), 0);
        drop(slow); // leaving a channel the hub already dropped is a no-op
        assert_eq!(hub.channel_count(), 0);
    }

    /// Sockets of one user come and go on several threads at once, so a
    /// subscribe often lands right as another socket leaves the channel
    /// empty. Each socket publishes an event of its own while it is
    /// subscribed and checks that it arrived: a subscription lost to a
    /// racing removal of the channel would fail that check.
    #[test]
    fn a_subscribe_racing_the_last_leave_is_never_lost() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 2_000;
        let hub = Arc::new(Hub::new());
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        // Room for every event any thread publishes, so no
                        // socket is ever evicted as a slow consumer.
                        let (mut socket, mut inbox) = hub.join(THREADS * ROUNDS);
                        socket.subscribe("user:1");
                        let mark = json!({"thread": thread, "round": round});
                        assert!(
                            hub.publish("user:1", mark.clone()).is_some(),
                            "round {round}: the channel vanished under a subscriber"
                        );
                        // `publish` has pushed to every subscriber before it
                        // returns, so our own event is in the inbox now.
                        let got_own = std::iter::from_fn(|| inbox.try_recv().ok()).any(|frame| {
                            let value: Value = serde_json::from_str(frame.as_str()).unwrap();
                            value["data"] == mark
                        });
                        assert!(
                            got_own,
                            "round {round}: a subscribed socket missed its event"
                        );
                        if round % 2 == 0 {
                            socket.unsubscribe("user:1");
                        }
                        drop(socket);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("no thread saw a lost subscription");
        }
        assert_eq!(hub.channel_count(), 0);
    }
}
