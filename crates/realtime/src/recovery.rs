//! Recovery of missed events, from any instance: the event log is a
//! RabbitMQ stream, not the instance's memory.
//!
//! A client that loses its socket (its instance was killed, the network
//! dropped, every instance restarted) reconnects — to any instance — and
//! subscribes with the position of the last event it saw:
//! `subscribe {channel, recover: {epoch, offset}}`. It must get exactly the
//! events of that channel after that offset, in order, before the live
//! ones, or be told plainly that this is impossible (`recovered: false`).
//!
//! So the history cannot live in one process. Every instance reads one
//! stream, `<ns>.realtime.events`, bound to the events exchange, as the
//! source of its fan-out ([`signalbox_messaging::stream`]): an event's
//! position is its stream offset, the same on every instance, and growing,
//! so per channel too. Replaying is reading the same stream again from the
//! client's offset and keeping that channel's events ([`History::replay`]).
//!
//! ```text
//!  subscribe {recover: {epoch E, offset 41}} on instance #2
//!    1. hub.subscribe: live events after L (the last offset #2 handled) now queue for the socket
//!    2. read the stream from 42 to L, keep channel's events      ─▶ event 57, event 63
//!    3. answer subscribed {recovered: true}, send the replay, then the queued live events
//! ```
//!
//! The epoch is the stream's identity ([`signalbox_messaging::stream::epoch`]):
//! a random value stored once, when the stream is first declared, in a
//! companion queue that keeps exactly one message. It changes only when the
//! stream is deleted and declared again (offsets then start again at 0),
//! which is exactly when old positions stop meaning anything.
//!
//! When recovery is impossible: another epoch; an offset the stream no
//! longer holds (retention deleted it); a first missed event older than
//! `recovery.max_age_secs` (10 minutes); more than `recovery.max_events`
//! (500) missed events on the channel; a replay that does not finish within
//! `recovery.replay_timeout_ms`. The client then gets `recovered: false`
//! and the live events from now on, and should reload what it shows.
//!
//! An instance that was cut off from the broker resumes the stream right
//! after the last offset it handled (the consumer remembers it), so what
//! was published meanwhile still reaches its sockets, late but in order.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use lapin::options::BasicAckOptions;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use signalbox_messages::{channels::Namespace, Envelope, MessageKind, SCHEMA_VERSION};
use signalbox_messaging::{
    amqp,
    stream::{self, Start, StreamQueue},
    Broker,
};
use tokio::time::Instant;

use crate::{
    events::{channels_for, frame_data, BINDINGS},
    hub::{Outbound, Publication},
};

/// The message type of the marker an instance appends when it starts.
pub const MARK: &str = "realtime.mark";

/// Deliveries a replay may have in flight (streams require a prefetch).
const REPLAY_PREFETCH: u16 = 256;

/// How much history is kept and replayed. The stream's own limits
/// (`max_age_secs`, `stream_max_bytes`, `stream_segment_bytes`) are fixed
/// when the stream is first declared: every instance must declare it with
/// the same values, and changing them means deleting the stream and its
/// epoch queue (a new epoch: clients then get `recovered: false` once) or
/// setting them by a RabbitMQ policy instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RecoverySettings {
    /// A client may recover events up to this old (also the stream's
    /// `x-max-age`).
    pub max_age_secs: u64,
    /// ...and at most this many on one channel; beyond, `recovered: false`.
    pub max_events: usize,
    /// The stream's size limit (`x-max-length-bytes`).
    pub stream_max_bytes: u64,
    /// The stream's segment size: retention deletes whole segments.
    pub stream_segment_bytes: u64,
    /// The longest a replay may take before it counts as impossible.
    pub replay_timeout_ms: u64,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        Self {
            max_age_secs: 600,
            max_events: 500,
            // Ten minutes of events at a few hundred a second, a few KiB
            // each, fit with room to spare; the disk use is bounded either way.
            stream_max_bytes: 512 * 1024 * 1024,
            stream_segment_bytes: 16 * 1024 * 1024,
            replay_timeout_ms: 5_000,
        }
    }
}

/// The stream every instance reads, with the settings' retention.
pub fn stream_queue(ns: &Namespace, settings: &RecoverySettings) -> StreamQueue {
    StreamQueue {
        name: ns.queue("realtime.events"),
        patterns: BINDINGS.iter().map(|p| (*p).to_owned()).collect(),
        max_age: Duration::from_secs(settings.max_age_secs),
        max_bytes: settings.stream_max_bytes,
        segment_bytes: settings.stream_segment_bytes,
    }
}

/// The outcome of a replay.
#[derive(Debug)]
pub enum Replay {
    /// The missed events of the channel, oldest first (maybe none).
    Recovered(Vec<Outbound>),
    /// Why the missed events cannot be told.
    Impossible(String),
}

/// Reads the stream for recovering clients.
pub struct History {
    broker: Arc<Broker>,
    stream: StreamQueue,
    epoch: String,
    settings: RecoverySettings,
}

impl History {
    /// Declares the stream and learns its epoch (storing one if it is new).
    pub async fn open(broker: Arc<Broker>, settings: RecoverySettings) -> anyhow::Result<Self> {
        let stream = stream_queue(broker.namespace(), &settings);
        let channel = broker.channel().await?;
        stream::declare(&channel, broker.namespace(), &stream).await?;
        let candidate: [u8; 8] = rand::rng().random();
        let candidate: String = candidate.iter().map(|b| format!("{b:02x}")).collect();
        let epoch = stream::epoch(&channel, &stream.name, &candidate).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(Self {
            broker,
            stream,
            epoch,
            settings,
        })
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn stream(&self) -> &StreamQueue {
        &self.stream
    }

    /// Appends a marker to the stream, confirmed. A consumer that started
    /// at `next` before this call receives it, so once the instance has
    /// handled it, its position is known (readiness waits for that).
    pub async fn mark(&self) -> anyhow::Result<()> {
        let envelope = Envelope {
            message_id: uuid::Uuid::now_v7(),
            message_type: MARK.to_owned(),
            kind: MessageKind::Event,
            correlation_id: None,
            reply_to: None,
            causation_id: None,
            traceparent: None,
            occurred_at: chrono::Utc::now(),
            user_id: None,
            schema_version: SCHEMA_VERSION,
        };
        let message = signalbox_messaging::Outgoing {
            exchange: String::new(),
            routing_key: self.stream.name.clone(),
            envelope,
            payload: b"{}".to_vec(),
        };
        let publisher = signalbox_messaging::ConfirmedPublisher::new(&self.broker).await?;
        publisher.publish(&message).await?;
        publisher.close().await;
        Ok(())
    }

    /// The events of `channel` with an offset in `(after, until]`, read from
    /// the stream, or why they cannot be.
    #[tracing::instrument(skip(self), fields(stream = %self.stream.name))]
    pub async fn replay(&self, channel: &str, after: u64, until: u64) -> Replay {
        if after >= until {
            return Replay::Recovered(Vec::new());
        }
        let deadline = Duration::from_millis(self.settings.replay_timeout_ms);
        match tokio::time::timeout(deadline, self.read(channel, after, until)).await {
            Ok(Ok(replay)) => replay,
            Ok(Err(error)) => {
                tracing::warn!(%error, "replay failed");
                Replay::Impossible("the event log cannot be read right now".to_owned())
            }
            Err(_) => Replay::Impossible(format!("the replay took longer than {deadline:?}")),
        }
    }

    async fn read(&self, channel: &str, after: u64, until: u64) -> anyhow::Result<Replay> {
        // A channel of its own: a replay never disturbs the live consumer.
        let amqp_channel = self.broker.channel().await?;
        let mut deliveries = stream::consume(
            &amqp_channel,
            &self.stream.name,
            "realtime-replay",
            Start::Offset(after + 1),
            REPLAY_PREFETCH,
        )
        .await?;
        let oldest = chrono::Utc::now().timestamp() - self.settings.max_age_secs as i64;
        let started = Instant::now();
        let mut events = Vec::new();
        let mut first = true;
        let outcome = loop {
            let Some(delivery) = deliveries.next().await else {
                anyhow::bail!("the replay consumer was cancelled");
            };
            let delivery = delivery?;
            delivery.ack(BasicAckOptions::default()).await?;
            let Some(offset) = stream::offset_of(&delivery.properties) else {
                continue;
            };
            // A consumer is sent the chunk its offset is in from the start.
            if offset <= after {
                continue;
            }
            if first {
                first = false;
                if offset > after + 1 {
                    break Replay::Impossible(format!(
                        "offset {after} is older than the retained log (it starts at {offset})"
                    ));
                }
                let at = delivery.properties.timestamp().map_or(0, |t| t as i64);
                if at < oldest {
                    break Replay::Impossible(format!(
                        "the missed events are older than {} s",
                        self.settings.max_age_secs
                    ));
                }
            }
            if let Ok(envelope) = amqp::from_properties(&delivery.properties) {
                if channels_for(&envelope).iter().any(|c| c == channel) {
                    if events.len() == self.settings.max_events {
                        break Replay::Impossible(format!(
                            "more than {} events were missed",
                            self.settings.max_events
                        ));
                    }
                    if let Ok(data) = frame_data(&envelope, &delivery.data) {
                        let event = Publication::new(channel, &self.epoch, offset, data);
                        events.push(Arc::new(event));
                    }
                }
            }
            if offset >= until {
                break Replay::Recovered(std::mem::take(&mut events));
            }
        };
        let _ = amqp_channel.close(200, "replayed".into()).await;
        tracing::debug!(elapsed = ?started.elapsed(), "replay read");
        Ok(outcome)
    }
}
