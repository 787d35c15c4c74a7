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
//!                                                  │  (bounded queue per socket, crate::queue)
//!                                                  └─ full? evict the socket, never wait
//! ```
//!
//! Every event arrives with its *stream offset*: its position in the event
//! log every instance reads (a RabbitMQ stream, see [`crate::recovery`]).
//! The hub puts that offset, and the log's epoch, on the `event` frame, so
//! the same event has the same `(epoch, offset)` on every instance, and the
//! offsets of one channel strictly increase. The hub also remembers the
//! offset of the last event it handled, for any channel or none
//! ([`Hub::position`]): everything up to it has been pushed, everything
//! after it will be, which is where a recovering subscriber's replay ends.
//! The history itself is not kept here: it is the stream, so it survives
//! the instance.
//!
//! A channel lives exactly as long as it has a subscriber on this instance.
//! When the last one leaves (unsubscribes, its socket ends, or it is
//! evicted) the channel goes, so the hub's memory follows the sockets open
//! now, not every user who ever connected; nothing is lost by it, since
//! positions come from the stream, not from the channel.
//!
//! The hub never waits for a socket. Pushing to a socket whose buffer is full
//! would stall every other subscriber behind it (head-of-line blocking), so
//! such a slow consumer is evicted instead: its subscription is dropped and
//! its socket task is told to close with 1008 "slow consumer". The client
//! may reconnect and subscribe again with `recover`, which replays what it
//! missed from the stream; that costs it less than it would cost everyone
//! else to wait.
//!
//! When the instance lags behind the log, the hub also applies the
//! shedding policy of [`crate::backpressure`] ([`Hub::handle`]): an old
//! superseded event (a price) is not pushed, its channel's subscribers are
//! told once with an `error events_dropped` frame when events flow fresh
//! again, and, if that is not enough, the socket with the most frames
//! waiting is evicted like a slow consumer. A gap in the log's offsets (the
//! instance resumed at a position retention had deleted) is told to every
//! channel the same way: nothing a client must see is lost without a word.
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
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

use crate::{
    backpressure::{BackpressureSettings, EventKind, Load},
    error::frame_code,
    frames::ServerFrame,
    queue::{self, TrySendError},
};

/// The public channel every user may subscribe to (price changes).
pub const CATALOG_CHANNEL: &str = "catalog";

/// The private channel of one user.
pub fn user_channel(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// A socket's number, unique within this instance.
pub type SocketId = u64;

/// What the hub hands a socket: an `event` frame, serialised once for all
/// subscribers, with the channel and offset it carries (the socket skips
/// events a recovery already covered). Behind an `Arc`, so the clone for
/// each subscriber is cheap.
pub type Outbound = Arc<Publication>;

/// One event on one channel.
#[derive(Debug)]
pub struct Publication {
    pub channel: String,
    pub offset: u64,
    pub frame: Utf8Bytes,
}

impl Publication {
    /// The `event` frame for `data` at `offset` of `channel`.
    pub fn new(channel: &str, epoch: &str, offset: u64, data: Value) -> Self {
        let frame = ServerFrame::Event {
            channel: channel.to_owned(),
            epoch: epoch.to_owned(),
            offset,
            data,
        };
        Self {
            channel: channel.to_owned(),
            offset,
            frame: Utf8Bytes::from(frame.to_json()),
        }
    }

    /// The `error events_dropped` frame for `channel`: events of it were not
    /// pushed to this socket (the instance shed them, or never saw them).
    /// It travels the socket's queue like an event, at `offset`, the event
    /// at which the hub noticed.
    pub fn dropped_notice(channel: &str, offset: u64) -> Self {
        let frame = ServerFrame::error(
            frame_code::EVENTS_DROPPED,
            format!(
                "events of `{channel}` were dropped while this instance was behind; \
                 reload, or subscribe again with `recover` to replay them"
            ),
        );
        Self {
            channel: channel.to_owned(),
            offset,
            frame: Utf8Bytes::from(frame.to_json()),
        }
    }
}

/// Where the event log stands for this instance: its epoch and the offset
/// of the last event handled (`None` before the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: Option<u64>,
}

pub struct Hub {
    /// The epoch of the event log (the stream), the same on every instance.
    epoch: String,
    /// Hands out socket ids. `Relaxed`: the ids only need to be unique, and
    /// `fetch_add` is atomic whatever the ordering; no other memory is
    /// published through this counter.
    next_socket: AtomicU64,
    /// Every channel with at least one subscriber on this instance, and no
    /// other (see the module doc), and the last offset handled. One lock
    /// for both: a subscribe reads the position under the same guard that
    /// a publish moves it, so "handled before" and "pushed to me" agree.
    state: Mutex<State>,
    /// The instance's lag and what the policy shed (see
    /// [`crate::backpressure`]); shared with the socket upgrade, which
    /// refuses new sockets while the instance is far behind.
    load: Arc<Load>,
}

struct State {
    channels: HashMap<String, Channel>,
    last_offset: Option<u64>,
    /// Channels whose subscribers missed events and have not been told yet
    /// (they are, once events flow fresh again).
    gaps: HashSet<String>,
}

/// A channel's state on this instance.
struct Channel {
    subscribers: HashMap<SocketId, Subscriber>,
}

/// The hub's handle on one subscribed socket.
#[derive(Clone)]
struct Subscriber {
    /// The socket's outbound queue (bounded: `ws.send_buffer`).
    outbound: queue::Sender<Outbound>,
    /// Cancelled by the hub to tell the socket task it was evicted.
    evicted: CancellationToken,
}

impl Hub {
    /// A hub for the event log of `epoch`, with the default shedding bounds.
    pub fn new(epoch: impl Into<String>) -> Self {
        Self::with_backpressure(epoch, BackpressureSettings::default())
    }

    /// A hub for the event log of `epoch` that sheds by `settings`.
    pub fn with_backpressure(epoch: impl Into<String>, settings: BackpressureSettings) -> Self {
        Self {
            epoch: epoch.into(),
            next_socket: AtomicU64::new(1),
            state: Mutex::new(State {
                channels: HashMap::new(),
                last_offset: None,
                gaps: HashSet::new(),
            }),
            load: Arc::new(Load::new(settings)),
        }
    }

    /// The instance's load: lag, shedding counters, the refusal check.
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }

    /// Where the log stands for this instance.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.lock().last_offset,
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Registers a new socket. The socket task keeps the [`Membership`]
    /// (dropping it unsubscribes everywhere, whatever way the task ends) and
    /// reads its events from the receiver.
    pub fn join(self: &Arc<Self>, buffer: usize) -> (Membership, queue::Receiver<Outbound>) {
        self.join_under(buffer, &CancellationToken::new())
    }

    /// Like [`Hub::join`], with the socket's eviction token a child of
    /// `stop` (the service's shutdown token): the socket task then waits
    /// on one token of its own for both, instead of polling the token every
    /// socket shares on every wake-up (and taking its lock).
    pub fn join_under(
        self: &Arc<Self>,
        buffer: usize,
        stop: &CancellationToken,
    ) -> (Membership, queue::Receiver<Outbound>) {
        // The socket's outbound queue: the hub is the producer, the socket
        // task the consumer. Bounded, so a stalled socket shows up as a full
        // queue instead of unbounded memory.
        let (outbound, receiver) = queue::bounded(buffer.max(1));
        let membership = Membership {
            hub: Arc::clone(self),
            id: self.next_socket.fetch_add(1, Ordering::Relaxed),
            subscriber: Subscriber {
                outbound,
                evicted: stop.child_token(),
            },
            channels: HashSet::new(),
        };
        (membership, receiver)
    }

    /// Handles the log's event at `offset`: pushes it to every subscriber
    /// of each of `channels` on this instance, and moves the position to
    /// `offset` (also when nobody here listens, or the event is for no
    /// channel at all). Returns how many sockets it was pushed to; most
    /// events are for users connected to another instance, or to none.
    pub fn publish(&self, offset: u64, channels: &[String], data: &Value) -> usize {
        let mut state = self.lock();
        state.last_offset = Some(state.last_offset.map_or(offset, |last| last.max(offset)));
        let mut pushed = 0;
        for channel in channels {
            let Some(subscribers) = state.channels.get_mut(channel) else {
                continue;
            };
            let event = Arc::new(Publication::new(channel, &self.epoch, offset, data.clone()));
            pushed += push(subscribers, channel, &event);
            // Evicting the last subscriber empties the channel; it goes
            // under this same guard, like any other last leave (see
            // [`leave`]).
            if subscribers.subscribers.is_empty() {
                state.channels.remove(channel);
            }
        }
        pushed
    }

    /// Handles the log's event at `offset`, of `kind`, `lag` after it
    /// occurred, by the shedding policy ([`crate::backpressure`]): like
    /// [`Hub::publish`], except that an old superseded event is not pushed
    /// (its channels are noted, and told when events are fresh again), that
    /// the slowest socket is evicted when the policy says so, and that an
    /// offset at or below the position (a resumed consumer is sent its
    /// chunk from the start) was handled already and is skipped. Returns
    /// how many sockets it was pushed to.
    pub fn handle(
        &self,
        offset: u64,
        channels: &[String],
        data: &Value,
        kind: EventKind,
        lag: std::time::Duration,
    ) -> usize {
        let verdict = self.load.observe(kind, lag);
        let fresh = lag.as_millis() <= u128::from(self.load.settings().drop_superseded_after_ms);
        let mut state = self.lock();
        match state.last_offset {
            Some(last) if offset <= last => return 0,
            // Offsets of the log have no holes; this instance skipped some
            // (it resumed where retention had deleted): every channel here
            // may have missed something.
            Some(last) if offset > last + 1 => {
                tracing::warn!(after = last, offset, "events missed; telling every channel");
                let all: Vec<String> = state.channels.keys().cloned().collect();
                state.gaps.extend(all);
            }
            _ => {}
        }
        state.last_offset = Some(offset);
        if fresh && !state.gaps.is_empty() {
            tell_gaps(&mut state, offset);
        }
        let mut pushed = 0;
        if verdict.push {
            for channel in channels {
                let Some(subscribers) = state.channels.get_mut(channel) else {
                    continue;
                };
                let event = Arc::new(Publication::new(channel, &self.epoch, offset, data.clone()));
                pushed += push(subscribers, channel, &event);
                if subscribers.subscribers.is_empty() {
                    state.channels.remove(channel);
                }
            }
        } else {
            let subscribed = channels.iter().filter(|c| state.channels.contains_key(*c));
            let subscribed: Vec<String> = subscribed.cloned().collect();
            state.gaps.extend(subscribed);
        }
        if verdict.evict && evict_slowest(&mut state) {
            self.load.evicted_one();
        }
        pushed
    }

    /// Tells the channels that missed events, if the instance is no longer
    /// behind: the catch-up (or quiet) after an overload may bring no fresh
    /// event to carry the notice, so the instance calls this on a timer
    /// (see `startup`). Returns how many channels were told.
    pub fn tell_gaps_if_caught_up(&self) -> usize {
        let bound = self.load.settings().drop_superseded_after_ms;
        if self.load.lag().as_millis() > u128::from(bound) {
            return 0;
        }
        let mut state = self.lock();
        let (Some(offset), false) = (state.last_offset, state.gaps.is_empty()) else {
            return 0;
        };
        let told = state.gaps.len();
        tell_gaps(&mut state, offset);
        told
    }

    /// How many sockets of this instance are subscribed to `channel`.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.lock()
            .channels
            .get(channel)
            .map_or(0, |state| state.subscribers.len())
    }

    /// How many channels the hub holds, which is how many distinct channels
    /// the sockets of this instance are subscribed to right now.
    pub fn channel_count(&self) -> usize {
        self.lock().channels.len()
    }

    /// A panic while the lock was held cannot leave the map half-updated in
    /// a way that matters (each step is a single insert or remove; the worst
    /// case is an empty channel, removed by its next publish or leave), so a
    /// poisoned lock is used as is rather than taking the service down.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands `event` to every subscriber of one channel without waiting; a
/// subscriber whose queue is full is evicted. Returns how many took it.
fn push(state: &mut Channel, channel: &str, event: &Outbound) -> usize {
    let mut pushed = 0;
    state.subscribers.retain(|socket, subscriber| {
        match subscriber.outbound.try_send(Arc::clone(event)) {
            Ok(()) => {
                pushed += 1;
                true
            }
            // The socket is not keeping up: evict it rather than wait.
            Err(TrySendError::Full) => {
                tracing::warn!(socket, channel, "slow consumer; evicting");
                subscriber.evicted.cancel();
                false
            }
            // The socket task has ended; its membership is being dropped.
            Err(TrySendError::Closed) => false,
        }
    });
    pushed
}

/// Tells the subscribers of every channel in `gaps` that they missed
/// events (an `error events_dropped` frame through their queue), and
/// forgets the gaps: a channel nobody here subscribes to any more has
/// nobody to tell.
fn tell_gaps(state: &mut State, offset: u64) {
    for channel in std::mem::take(&mut state.gaps) {
        let Some(subscribers) = state.channels.get_mut(&channel) else {
            continue;
        };
        let notice = Arc::new(Publication::dropped_notice(&channel, offset));
        let told = push(subscribers, &channel, &notice);
        tracing::info!(%channel, told, "subscribers told of dropped events");
        if subscribers.subscribers.is_empty() {
            state.channels.remove(&channel);
        }
    }
}

/// Evicts the subscribed socket with the most frames waiting in its queue
/// (the one furthest behind), from every channel; `false` when no socket
/// has anything waiting (then none is behind, and none is evicted).
fn evict_slowest(state: &mut State) -> bool {
    let slowest = state
        .channels
        .values()
        .flat_map(|channel| channel.subscribers.iter())
        .map(|(id, subscriber)| {
            let waiting = subscriber.outbound.len();
            (waiting, *id, subscriber.evicted.clone())
        })
        .filter(|(waiting, _, _)| *waiting > 0)
        .max_by_key(|(waiting, id, _)| (*waiting, *id));
    let Some((waiting, socket, evicted)) = slowest else {
        return false;
    };
    tracing::warn!(
        socket,
        waiting,
        "instance lagging; evicting the slowest socket"
    );
    evicted.cancel();
    state.channels.retain(|_, channel| {
        channel.subscribers.remove(&socket);
        !channel.subscribers.is_empty()
    });
    true
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

    /// Subscribes (idempotently) and returns where the log stands: every
    /// event of the channel up to that offset was handled before this call,
    /// every later one will be pushed to this socket.
    pub fn subscribe(&mut self, channel: &str) -> Position {
        let mut state = self.hub.lock();
        let last_offset = state.last_offset;
        state
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel {
                subscribers: HashMap::new(),
            })
            .subscribers
            .insert(self.id, self.subscriber.clone());
        self.channels.insert(channel.to_owned());
        Position {
            epoch: self.hub.epoch.clone(),
            offset: last_offset,
        }
    }

    /// Unsubscribes; `false` when the socket was not subscribed.
    pub fn unsubscribe(&mut self, channel: &str) -> bool {
        if !self.channels.remove(channel) {
            return false;
        }
        leave(&mut self.hub.lock().channels, channel, self.id);
        true
    }

    /// Resolves when the hub evicted this socket as a slow consumer (or,
    /// for a socket that joined with [`Hub::join_under`], when its parent
    /// token was cancelled).
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.subscriber.evicted.cancelled()
    }

    /// Like [`Membership::evicted`], but owning a handle on the token, so
    /// the socket task can make it once and keep it across the turns of
    /// its loop while it borrows the membership mutably.
    pub fn eviction(&self) -> WaitForCancellationFutureOwned {
        self.subscriber.evicted.clone().cancelled_owned()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        for channel in &self.channels {
            leave(&mut state.channels, channel, self.id);
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
    use crate::backpressure::{BackpressureSettings, EventKind};
    use serde_json::json;

    fn user(id: &str) -> Vec<String> {
        vec![user_channel(id)]
    }

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new("e1"))
    }

    #[test]
    fn an_event_carries_its_stream_offset_and_the_logs_epoch() {
        let hub = hub();
        let (mut socket, mut inbox) = hub.join(8);
        socket.subscribe("user:1");

        assert_eq!(hub.publish(41, &user("1"), &json!({"n": 1})), 1);
        let event = inbox.try_recv().unwrap();
        let frame: Value = serde_json::from_str(event.frame.as_str()).unwrap();
        assert_eq!(
            frame,
            json!({"type": "event", "channel": "user:1", "epoch": "e1", "offset": 41,
                   "data": {"n": 1}})
        );
        assert_eq!((event.channel.as_str(), event.offset), ("user:1", 41));
    }

    #[test]
    fn the_position_moves_with_every_event_also_for_no_subscriber() {
        let hub = hub();
        assert_eq!(hub.position().offset, None);
        assert_eq!(hub.publish(3, &user("1"), &json!({})), 0);
        assert_eq!(hub.publish(4, &[], &json!({})), 0);
        assert_eq!(hub.position().offset, Some(4));
        assert_eq!(hub.channel_count(), 0, "nothing is kept for nobody");

        let (mut socket, _inbox) = hub.join(8);
        assert_eq!(socket.subscribe("user:1").offset, Some(4));
    }

    #[test]
    fn a_subscriber_with_a_full_buffer_is_evicted_without_blocking_others() {
        let hub = hub();
        let (mut slow, _slow_inbox) = hub.join(1);
        let (mut fast, mut fast_inbox) = hub.join(8);
        slow.subscribe("user:1");
        fast.subscribe("user:1");

        hub.publish(1, &user("1"), &json!({"n": 1}));
        hub.publish(2, &user("1"), &json!({"n": 2}));

        assert!(slow.subscriber.evicted.is_cancelled());
        assert!(!fast.subscriber.evicted.is_cancelled());
        assert_eq!(hub.subscribers("user:1"), 1);
        assert_eq!(fast_inbox.try_recv().unwrap().offset, 1);
        assert_eq!(fast_inbox.try_recv().unwrap().offset, 2);
    }

    #[test]
    fn dropping_a_membership_unsubscribes_from_every_channel() {
        let hub = hub();
        let (mut socket, _inbox) = hub.join(8);
        socket.subscribe("user:1");
        socket.subscribe("catalog");
        drop(socket);
        assert_eq!(hub.subscribers("user:1"), 0);
        assert_eq!(hub.subscribers("catalog"), 0);
    }

    #[test]
    fn the_last_subscriber_leaving_drops_the_channel() {
        let hub = hub();
        let (mut first, _first_inbox) = hub.join(8);
        let (mut second, _second_inbox) = hub.join(8);
        first.subscribe("user:1");
        second.subscribe("user:1");
        first.subscribe("catalog");

        assert!(first.unsubscribe("user:1"));
        assert_eq!(hub.channel_count(), 2, "user:1 still has a subscriber");
        drop(second);
        assert_eq!(hub.channel_count(), 1, "only catalog is left");
        assert_eq!(hub.publish(1, &user("1"), &json!({})), 0);
        drop(first);
        assert_eq!(hub.channel_count(), 0);
    }

    #[test]
    fn evicting_the_last_subscriber_drops_the_channel() {
        let hub = hub();
        let (mut slow, _inbox) = hub.join(1);
        slow.subscribe("user:1");

        hub.publish(1, &user("1"), &json!({}));
        hub.publish(2, &user("1"), &json!({}));

        assert!(slow.subscriber.evicted.is_cancelled());
        assert_eq!(hub.channel_count(), 0);
        drop(slow); // leaving a channel the hub already dropped is a no-op
        assert_eq!(hub.channel_count(), 0);
    }

    fn frame(event: &Outbound) -> Value {
        serde_json::from_str(event.frame.as_str()).unwrap()
    }

    fn catalog() -> Vec<String> {
        vec![CATALOG_CHANNEL.to_owned()]
    }

    const FRESH: std::time::Duration = std::time::Duration::from_millis(10);
    const OLD: std::time::Duration = std::time::Duration::from_secs(2);

    #[test]
    fn an_old_price_is_dropped_and_its_subscribers_told_once_events_are_fresh_again() {
        let hub = hub();
        let (mut socket, mut inbox) = hub.join(8);
        socket.subscribe(CATALOG_CHANNEL);

        assert_eq!(
            hub.handle(1, &catalog(), &json!({"n": 1}), EventKind::Superseded, OLD),
            0
        );
        assert_eq!(
            hub.handle(2, &catalog(), &json!({"n": 2}), EventKind::Superseded, OLD),
            0
        );
        assert!(inbox.try_recv().is_err(), "nothing pushed while behind");
        assert_eq!(
            hub.position().offset,
            Some(2),
            "dropped events were handled"
        );

        assert_eq!(
            hub.handle(
                3,
                &catalog(),
                &json!({"n": 3}),
                EventKind::Superseded,
                FRESH
            ),
            1
        );
        let notice = frame(&inbox.try_recv().unwrap());
        assert_eq!(notice["type"], "error");
        assert_eq!(notice["code"], "events_dropped");
        assert_eq!(frame(&inbox.try_recv().unwrap())["offset"], 3);
        assert!(inbox.try_recv().is_err(), "told once");
        assert_eq!(hub.load().shed().dropped, 2);
    }

    #[test]
    fn subscribers_are_told_of_dropped_events_once_the_lag_is_gone_without_a_fresh_event() {
        let hub = hub();
        let (mut socket, mut inbox) = hub.join(8);
        socket.subscribe(CATALOG_CHANNEL);
        hub.handle(1, &catalog(), &json!({}), EventKind::Superseded, OLD);
        assert_eq!(hub.tell_gaps_if_caught_up(), 0, "still behind");
        hub.handle(2, &[], &Value::Null, EventKind::MustArrive, FRESH);
        assert_eq!(frame(&inbox.try_recv().unwrap())["code"], "events_dropped");
        assert_eq!(hub.tell_gaps_if_caught_up(), 0, "told already");
    }

    #[test]
    fn an_old_order_event_is_pushed_all_the_same() {
        let hub = hub();
        let (mut socket, mut inbox) = hub.join(8);
        socket.subscribe("user:1");
        assert_eq!(
            hub.handle(1, &user("1"), &json!({}), EventKind::MustArrive, OLD * 30),
            1
        );
        assert_eq!(frame(&inbox.try_recv().unwrap())["offset"], 1);
        assert_eq!(hub.load().shed().dropped, 0);
    }

    #[test]
    fn a_gap_in_the_offsets_is_told_to_every_channel_and_a_repeat_is_skipped() {
        let hub = hub();
        let (mut socket, mut inbox) = hub.join(8);
        socket.subscribe("user:1");
        hub.handle(1, &user("1"), &json!({}), EventKind::MustArrive, FRESH);
        assert_eq!(frame(&inbox.try_recv().unwrap())["offset"], 1);

        // Resumed after a reconnect: offset 1 again, then a hole (2..=4).
        assert_eq!(
            hub.handle(1, &user("1"), &json!({}), EventKind::MustArrive, FRESH),
            0
        );
        hub.handle(5, &[], &Value::Null, EventKind::MustArrive, FRESH);
        assert_eq!(frame(&inbox.try_recv().unwrap())["code"], "events_dropped");
        assert!(inbox.try_recv().is_err());
    }

    #[test]
    fn a_sustained_lag_evicts_the_socket_furthest_behind() {
        let hub = Arc::new(Hub::with_backpressure(
            "e1",
            BackpressureSettings {
                evict_interval_ms: 0,
                ..Default::default()
            },
        ));
        let (mut behind, _behind_inbox) = hub.join(8);
        let (mut keeping_up, mut keeping_up_inbox) = hub.join(8);
        behind.subscribe("user:1");
        keeping_up.subscribe("user:1");
        // Both are sent two events; only one socket reads them.
        for offset in 1..=2 {
            hub.handle(offset, &user("1"), &json!({}), EventKind::MustArrive, FRESH);
            keeping_up_inbox.try_recv().unwrap();
        }
        hub.handle(3, &user("1"), &json!({}), EventKind::MustArrive, OLD * 5);

        assert!(behind.subscriber.evicted.is_cancelled());
        assert!(!keeping_up.subscriber.evicted.is_cancelled());
        assert_eq!(hub.subscribers("user:1"), 1);
        assert_eq!(hub.load().shed().evicted, 1);
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
        let hub = hub();
        let offsets = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (hub, offsets) = (Arc::clone(&hub), Arc::clone(&offsets));
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        // Room for every event any thread publishes, so no
                        // socket is ever evicted as a slow consumer.
                        let (mut socket, mut inbox) = hub.join(THREADS * ROUNDS);
                        socket.subscribe("user:1");
                        let mark = json!({"thread": thread, "round": round});
                        let offset = offsets.fetch_add(1, Ordering::Relaxed);
                        assert!(
                            hub.publish(offset, &user("1"), &mark) >= 1,
                            "round {round}: the channel vanished under a subscriber"
                        );
                        // `publish` has pushed to every subscriber before it
                        // returns, so our own event is in the inbox now.
                        let got_own = std::iter::from_fn(|| inbox.try_recv().ok()).any(|event| {
                            let value: Value = serde_json::from_str(event.frame.as_str()).unwrap();
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
