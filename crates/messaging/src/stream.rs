//! An event log on the broker: a RabbitMQ stream, read from any position.
//!
//! A queue delivers each message once and forgets it; a *stream*
//! (`x-queue-type: stream`) is an append-only log that keeps its messages
//! for a retention period and lets every consumer read from a position of
//! its choosing (`x-stream-offset`: `first`, `last`, `next`, or an offset).
//! Each message gets an *offset* when it is appended, the same for every
//! reader, and offsets only grow. That is what a realtime instance needs to
//! tell a reconnecting client "here is everything you missed": the realtime
//! service binds one stream to the events exchange and reads it as the
//! fan-out source of every instance (see `signalbox_realtime::recovery`).
//!
//! ```text
//!  events exchange ──order.*, catalog.*──▶ <ns>.realtime.events (stream, durable, 10 min)
//!                                           │ offset 0, 1, 2, …  (one log, on disk)
//!                     ┌─────────────────────┼──────────────────────┐
//!             realtime #1 (next)     realtime #2 (next)     a replay (offset 41 → …)
//! ```
//!
//! Rules of stream consumers that a classic-queue consumer does not have:
//! a prefetch (`basic.qos`) is required, acks only give credit back (a
//! message is never removed by its ack), and a consumer starting at an
//! offset in the middle of a chunk is sent the chunk from its start, so a
//! reader skips offsets below the one it asked for.
//!
//! A stream has no identity a reader can see: if it is deleted and declared
//! again, offsets start again at 0. So the stream gets an [`epoch`], a value
//! stored once in a companion queue when the stream is first declared;
//! positions are `(epoch, offset)`, and a position of another epoch is
//! known to be meaningless. The two are deleted together.

use std::time::Duration;

use lapin::{
    options::{
        BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Confirmation,
};
use signalbox_messages::channels::Namespace;

use crate::amqp::long_string;

/// The header a stream puts on every delivery: the message's offset.
pub const STREAM_OFFSET: &str = "x-stream-offset";
// Stream arguments, each written once.
const QUEUE_TYPE: &str = "x-queue-type";
const MAX_AGE: &str = "x-max-age";
const MAX_LENGTH_BYTES: &str = "x-max-length-bytes";
const MAX_SEGMENT_BYTES: &str = "x-stream-max-segment-size-bytes";
const MAX_LENGTH: &str = "x-max-length";
const OVERFLOW: &str = "x-overflow";

/// A stream bound to the events exchange.
#[derive(Debug, Clone)]
pub struct StreamQueue {
    pub name: String,
    /// Routing-key patterns it is bound with on the events exchange.
    pub patterns: Vec<String>,
    /// Segments older than this are deleted (`x-max-age`).
    pub max_age: Duration,
    /// The log is cut to at most this many bytes (`x-max-length-bytes`).
    pub max_bytes: u64,
    /// Retention deletes whole segments, never the one being written, so
    /// the segment size is the granularity of both limits. RabbitMQ's
    /// default (500 MB) would keep everything far beyond `max_age` on a
    /// quiet system; a smaller one lets the limits bite.
    pub segment_bytes: u64,
}

/// Where a stream consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only messages appended after the consumer attached.
    Next,
    /// From this offset (or the oldest one kept, if it is older).
    Offset(u64),
}

impl Start {
    fn argument(self) -> AMQPValue {
        match self {
            Self::Next => long_string("next"),
            Self::Offset(offset) => AMQPValue::LongLongInt(offset as i64),
        }
    }
}

/// The offset of a delivery from a stream (`None` for any other queue).
pub fn offset_of(properties: &BasicProperties) -> Option<u64> {
    let value = properties
        .headers()
        .as_ref()?
        .inner()
        .get(STREAM_OFFSET)?
        .clone();
    match value {
        AMQPValue::LongLongInt(offset) => u64::try_from(offset).ok(),
        AMQPValue::LongInt(offset) => u64::try_from(offset).ok(),
        AMQPValue::LongUInt(offset) => Some(u64::from(offset)),
        AMQPValue::Timestamp(offset) => Some(offset),
        _ => None,
    }
}

/// Declares the stream (durable, with its retention) and binds it.
pub async fn declare(
    channel: &Channel,
    ns: &Namespace,
    stream: &StreamQueue,
) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(QUEUE_TYPE.into(), long_string("stream"));
    args.insert(
        MAX_AGE.into(),
        long_string(&format!("{}s", stream.max_age.as_secs().max(1))),
    );
    args.insert(
        MAX_LENGTH_BYTES.into(),
        AMQPValue::LongLongInt(stream.max_bytes as i64),
    );
    args.insert(
        MAX_SEGMENT_BYTES.into(),
        AMQPValue::LongLongInt(stream.segment_bytes as i64),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(stream.name.as_str().into(), durable, args)
        .await?;
    for pattern in &stream.patterns {
        channel
            .queue_bind(
                stream.name.as_str().into(),
                ns.events_exchange().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Starts consuming `stream` at `start`, with `prefetch` deliveries in
/// flight (streams require a prefetch) and manual acks (credit).
pub async fn consume(
    channel: &Channel,
    stream: &str,
    tag: &str,
    start: Start,
    prefetch: u16,
) -> Result<lapin::Consumer, lapin::Error> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(STREAM_OFFSET.into(), start.argument());
    channel
        .basic_consume(
            stream.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
}

/// The companion queue that holds a stream's epoch.
pub fn epoch_queue(stream: &str) -> String {
    format!("{stream}.epoch")
}

/// The epoch of `stream`: the value in its epoch queue, stored by whoever
/// came first. The queue holds at most one message and refuses any other
/// (`x-max-length: 1`, `x-overflow: reject-publish`), so when several
/// instances start at once and each offers `candidate`, exactly one value
/// is kept and every instance reads that one. Reading is a peek: the
/// message is taken and put back (nacked with requeue), never consumed.
pub async fn epoch(
    channel: &Channel,
    stream: &str,
    candidate: &str,
) -> Result<String, lapin::Error> {
    let queue = epoch_queue(stream);
    let mut args = FieldTable::default();
    args.insert(MAX_LENGTH.into(), AMQPValue::LongLongInt(1));
    args.insert(OVERFLOW.into(), long_string("reject-publish"));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, args)
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Twice at most: find none, offer ours (the broker keeps it or, if
    // another instance was faster, refuses it), then read what was kept.
    for _ in 0..2 {
        if let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            let epoch = String::from_utf8_lossy(&message.delivery.data).into_owned();
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            message.delivery.nack(requeue).await?;
            return Ok(epoch);
        }
        let persistent = BasicProperties::default().with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                candidate.as_bytes(),
                persistent,
            )
            .await?
            .await?;
        if let Confirmation::Nack(_) = confirm {
            tracing::debug!(%queue, "another instance stored the epoch first");
        }
    }
    Err(lapin::ErrorKind::InvalidChannelState(
        lapin::ChannelState::Error,
        "the epoch queue stays empty",
    )
    .into())
}
