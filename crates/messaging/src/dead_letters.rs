//! Dead-letter tooling: see what failed, and send it back once it can work.
//!
//! A message ends in `<queue>.dlq` when its handler rejected it (it cannot be
//! understood) or kept failing past the retry bound (see [`crate::consumer`]).
//! The consumer stores the story in the headers: `x-failure-reason`,
//! `x-retry-count`, `x-original-queue` and `x-failed-at` ([`crate::headers`]).
//! Dead letters are not thrown away because the usual cause is not the
//! message but the system: a bug that is fixed by the next deploy, a product
//! that did not exist yet, a database that was down for longer than the
//! retries waited. After the fix an operator replays them.
//!
//! This module holds the two operations, [`list`] and [`replay`], for any
//! caller; the command line's `signalbox dlq` (`crates/cli/src/dlq.rs`)
//! parses its arguments, calls them and prints what they return:
//!
//! ```text
//! signalbox dlq list   <queue> [--limit N]   # print <queue>.dlq without consuming it
//! signalbox dlq replay <queue> [--limit N]   # move <queue>.dlq back into <queue>
//! ```
//!
//! **Listing without consuming.** AMQP has no "peek". [`list`] takes each
//! message with `basic.get` *without* acknowledging it and, at the end,
//! rejects them all with `requeue`, which puts them back at their original
//! positions. A taken, unacknowledged message is not delivered again while
//! we hold it, so the loop cannot see one twice; it is still bounded by the
//! queue's depth when it started (the first `basic.get` reports how many
//! messages remain behind it), so messages that arrive meanwhile cannot keep
//! it going forever. If the tool dies midway, its channel closes and the
//! broker requeues what it held: listing never loses a dead letter.
//!
//! (The depth comes from the `basic.get` rather than from a passive
//! `queue.declare` because the broker answers the declare's statistics query
//! ahead of work it has queued: right after a listing, while the requeue is
//! still pending, a declare can report an empty queue. A `get` is handled in
//! order. For the same reason, a depth read right after [`list`] may show
//! fewer messages for a moment.)
//!
//! **Replaying without losing or looping.** [`replay`] moves one message at
//! a time: publish a copy to the work queue (through the default exchange,
//! with a publisher confirm), and only then acknowledge the dead letter. A
//! crash between the two leaves the message in both queues: a duplicate,
//! which the idempotent handler absorbs, never a loss. The copy starts
//! afresh (`x-retry-count` reset to 0) and says when it was replayed
//! (`x-replayed-at`). The number of messages moved is bounded by the DLQ's
//! depth at the start, so a message that fails again at once and returns to
//! the DLQ is not replayed a second time in the same run.
//!
//! A replayed message joins the *tail* of its queue. On a sharded channel
//! (see [`crate::sharding`]) that means it comes after later messages of the
//! same aggregate: replay is an operator's decision, made knowing that.

use chrono::Utc;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
    Channel, Confirmation, Connection,
};
use signalbox_messages::channels::Namespace;

use crate::{
    amqp::{self, long_string},
    connection::connection_properties,
    consumer::publish_copy,
    headers::{retry_count, FAILED_AT, FAILURE_REASON, ORIGINAL_QUEUE, REPLAYED_AT, RETRY_COUNT},
};

/// How much of a body [`DeadLetter::body_preview`] keeps.
const PREVIEW_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot open queue `{queue}`")]
    NoQueue {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker refused the replayed copy of message {message_id}")]
    Nacked { message_id: String },
    #[error("no queue `{queue}` took the replayed copy of message {message_id}")]
    Unroutable { queue: String, message_id: String },
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

/// One dead letter as an operator needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    /// Why it was dead-lettered (`x-failure-reason`).
    pub failure_reason: Option<String>,
    /// How many retries it had (`x-retry-count`).
    pub retry_count: u32,
    /// When it was dead-lettered (`x-failed-at`).
    pub failed_at: Option<String>,
    /// The queue it failed in (`x-original-queue`).
    pub original_queue: Option<String>,
    /// When it was replayed before, if it was (`x-replayed-at`).
    pub replayed_at: Option<String>,
    /// The start of the body as text, control characters escaped.
    pub body_preview: String,
}

impl DeadLetter {
    fn from_delivery(delivery: &Delivery) -> Self {
        let properties = &delivery.properties;
        let header = |key: &str| amqp::header_str(properties.headers(), key);
        Self {
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            message_type: properties.kind().as_ref().map(|kind| kind.to_string()),
            failure_reason: header(FAILURE_REASON),
            retry_count: retry_count(properties),
            failed_at: header(FAILED_AT),
            original_queue: header(ORIGINAL_QUEUE),
            replayed_at: header(REPLAYED_AT),
            body_preview: preview(&delivery.data),
        }
    }
}

/// The work queue and its dead-letter queue, from either name: `orders.x`
/// and `orders.x.dlq` both mean the pair (`orders.x`, `orders.x.dlq`).
pub fn queue_pair(name: &str) -> (String, String) {
    let work = name.strip_suffix(".dlq").unwrap_or(name);
    (work.to_owned(), Namespace::dead_letter_queue(work))
}

/// The dead letters of `queue` (a work queue, or its `.dlq`), oldest first,
/// at most `limit` of them, left in place.
///
/// Use a channel of its own: the messages are returned with one
/// `basic.nack(multiple)`, which would also return the caller's other
/// unacknowledged deliveries on that channel.
#[tracing::instrument(skip(channel))]
pub async fn list(
    channel: &Channel,
    queue: &str,
    limit: Option<usize>,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let (_, dlq) = queue_pair(queue);
    depth(channel, &dlq).await?; // a clear error when there is no such queue
    let mut bound = limit.unwrap_or(usize::MAX);

    let mut letters = Vec::new();
    let mut last_tag = None;
    let mut failure = None;
    while letters.len() < bound {
        match channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(Some(message)) => {
                if letters.is_empty() {
                    // The depth at the start: this one and those behind it.
                    bound = bound.min(1 + message.message_count as usize);
                }
                last_tag = Some(message.delivery.delivery_tag);
                letters.push(DeadLetter::from_delivery(&message.delivery));
            }
            // Empty (sooner than the count said, if someone took some).
            Ok(None) => break,
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    // Put every message back where it was, whatever happened above. (Had the
    // channel died instead, the broker would have requeued them itself.)
    if let Some(tag) = last_tag {
        let back = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        channel.basic_nack(tag, back).await?;
    }
    match failure {
        Some(error) => Err(error.into()),
        None => Ok(letters),
    }
}

/// Moves up to `limit` dead letters of `queue` (a work queue, or its `.dlq`)
/// back into the work queue, oldest first. Returns how many moved.
///
/// Puts the channel into confirm mode; use a channel of its own.
#[tracing::instrument(skip(channel))]
pub async fn replay(
    channel: &Channel,
    queue: &str,
    limit: Option<usize>,
) -> Result<usize, DeadLetterError> {
    let (work, dlq) = queue_pair(queue);
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Fail before taking anything if the way back does not exist.
    depth(channel, &work).await?;
    depth(channel, &dlq).await?;
    let mut bound = limit.unwrap_or(usize::MAX);

    let mut moved = 0;
    while moved < bound {
        let Some(message) = channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        if moved == 0 {
            // The depth at the start, so that what fails again and comes
            // back meanwhile is not replayed twice in one run.
            bound = bound.min(1 + message.message_count as usize);
        }
        let delivery = message.delivery;
        match send_back(channel, &work, &delivery).await {
            // The copy is safe in the work queue: now the original may go.
            Ok(()) => {
                channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .await?;
                moved += 1;
            }
            // Not stored: leave the dead letter where it was.
            Err(error) => {
                let back = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                if let Err(nack) = channel.basic_nack(delivery.delivery_tag, back).await {
                    tracing::debug!(error = %nack, "dead letter nack; the channel close requeues it");
                }
                return Err(error);
            }
        }
    }
    tracing::info!(%work, moved, "dead letters replayed");
    Ok(moved)
}

/// Publishes a fresh copy of a dead letter to `work` and waits for the
/// broker's confirm. `mandatory`, so a missing queue is an error rather than
/// a silent drop.
async fn send_back(
    channel: &Channel,
    work: &str,
    delivery: &Delivery,
) -> Result<(), DeadLetterError> {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let headers = [
        (RETRY_COUNT, AMQPValue::LongUInt(0)),
        (REPLAYED_AT, long_string(&Utc::now().to_rfc3339())),
    ];
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = publish_copy(channel, work, delivery, &headers, mandatory)
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(DeadLetterError::Unroutable {
            queue: work.to_owned(),
            message_id,
        }),
        Confirmation::Nack(_) => Err(DeadLetterError::Nacked { message_id }),
    }
}

/// The number of ready messages in `queue`, by a passive declare (which
/// fails, closing the channel, when the queue does not exist). Used to check
/// that the queue exists; its count may lag (see the module documentation).
async fn depth(channel: &Channel, queue: &str) -> Result<usize, DeadLetterError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map(|declared| declared.message_count() as usize)
        .map_err(|source| DeadLetterError::NoQueue {
            queue: queue.to_owned(),
            source,
        })
}

/// The first [`PREVIEW_CHARS`] characters of `body` as text, on one line.
fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut preview: String = text
        .chars()
        .take(PREVIEW_CHARS)
        .flat_map(|c| {
            // Newlines and other control characters would break the layout.
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if text.chars().count() > PREVIEW_CHARS {
        preview.push('…');
    }
    preview
}

/// A plain connection for [`list`] and [`replay`], named `dlq` in the
/// broker, with its I/O on the tokio runtime. It does not reconnect: an
/// operator's run either completes or fails and is run again.
pub async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    let properties = connection_properties().with_connection_name("dlq".into());
    Connection::connect(url, properties).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_name_of_the_pair_means_the_pair() {
        let pair = (
            "t1.orders.replies".to_owned(),
            "t1.orders.replies.dlq".to_owned(),
        );
        assert_eq!(queue_pair("t1.orders.replies"), pair);
        assert_eq!(queue_pair("t1.orders.replies.dlq"), pair);
    }

    #[test]
    fn a_preview_is_one_bounded_line() {
        assert_eq!(preview(b"{\"a\":\n1}"), "{\"a\":\\n1}");
        let long = "x".repeat(PREVIEW_CHARS + 10);
        let shown = preview(long.as_bytes());
        assert_eq!(shown.chars().count(), PREVIEW_CHARS + 1);
        assert!(shown.ends_with('…'));
    }
}
