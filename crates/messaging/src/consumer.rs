//! The consumer: receive, handle, then acknowledge — and survive the broker.
//!
//! The rule that makes the system lose nothing: a delivery is acked only
//! after its handler returned `Ok`, that is, after the handler's transaction
//! committed. If the process dies before the ack, the broker redelivers, and
//! the idempotent handler recognises the duplicate ([`crate::processed`]).
//!
//! Failures are sorted, because they need different treatment:
//! - the *message* is bad ([`HandleError::Reject`]: undecodable, unknown type):
//!   no retry can help, it goes to `<queue>.dlq` at once;
//! - something *around* it failed ([`HandleError::Transient`]: database down,
//!   deadlock): it is retried later, with growing delays, through retry
//!   queues (`<queue>.retry.<n>`, whose TTL dead-letters it back to the work
//!   queue); after the last retry it goes to the DLQ too.
//!
//! Either way the message leaves the work queue, so a poison message never
//! blocks the ones behind it, and the failure reason travels in the headers
//! (`x-failure-reason`, `x-retry-count`, `x-original-queue`, `x-failed-at`;
//! see [`crate::headers`]). A copy is published (with a confirm) *before* the
//! original is acked, so a crash in between duplicates rather than loses.
//!
//! A consumer runs in sessions (see [`crate::session`]): when the channel
//! or connection fails it waits a moment, gets a new channel, declares its
//! queue again and resumes. Deliveries that were in flight return to the
//! queue when the channel dies and are redelivered.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
    Channel, Confirmation, PublisherConfirm,
};
use signalbox_messages::{channels::Namespace, Envelope};
use tokio_util::sync::CancellationToken;

use crate::{
    amqp::{self, long_string},
    chain::Chain,
    connection::close_quietly,
    headers::{retry_count, FAILED_AT, FAILURE_REASON, ORIGINAL_QUEUE, RETRY_COUNT},
    session,
    topology::{self, WorkQueue},
    Broker,
};

/// A received message, its envelope already decoded.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub envelope: Envelope,
    pub body: Vec<u8>,
    /// 0 on the first delivery, then the number of retries so far.
    pub attempt: u32,
    /// The broker delivered this very copy before (to us or another
    /// consumer) and it was not acked.
    pub redelivered: bool,
    /// The message's offset when it comes from a stream
    /// ([`Source::Stream`]): its position in the log, the same for every
    /// reader.
    pub stream_offset: Option<u64>,
}

/// How a handler failed, which decides what happens to the message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message itself is bad: retrying cannot help. A reason rather
    /// than a source, because it is written into the dead letter's
    /// `x-failure-reason` header; [`crate::chain::Chain`] puts a cause's
    /// whole chain into it.
    #[error("rejected: {0}")]
    Reject(String),
    /// Something around the message failed: retry later.
    #[error("transient failure")]
    Transient(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The handler stopped without deciding (the service is shutting down
    /// while it waited): the message goes back to the queue untouched, and
    /// so does everything prefetched behind it, because the session ends and
    /// its channel closes. Ordered queues need this (see
    /// [`crate::sharding::InOrder`]): a retry queue would let later messages
    /// overtake this one.
    #[error("interrupted before the message was settled")]
    Interrupted,
}

impl HandleError {
    pub fn transient(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Transient(Box::new(error))
    }
}

impl From<sqlx::Error> for HandleError {
    fn from(error: sqlx::Error) -> Self {
        Self::transient(error)
    }
}

impl From<signalbox_messages::DecodeError> for HandleError {
    fn from(error: signalbox_messages::DecodeError) -> Self {
        // A reject carries text: it becomes the dead letter's
        // `x-failure-reason` header, so the whole chain goes into it.
        Self::Reject(Chain(&error).to_string())
    }
}

/// What a service implements to consume a queue.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: Incoming) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// Where a consumer's messages come from. Declared at the start of every
/// session, so a broker that lost its state gets it back.
#[derive(Debug, Clone)]
pub enum Source {
    /// A durable queue shared by every instance of a service: competing
    /// consumers, with retry queues and a dead-letter queue.
    Work(WorkQueue),
    /// This instance's private queue on the events exchange (fan-out):
    /// server-named, exclusive, re-created by every session. Failed messages
    /// are requeued; there is nothing to dead-letter for a push.
    Instance { patterns: Vec<String> },
    /// A stream on the events exchange, read by every instance (fan-out
    /// with a history, see [`crate::stream`]). The first session starts at
    /// `start`; every later one resumes right after the last offset handled,
    /// so what was appended while the broker was unreachable is still
    /// delivered. A message is never retried: a stream does not requeue, and
    /// a failed push is logged and passed over.
    Stream {
        stream: crate::stream::StreamQueue,
        start: crate::stream::Start,
    },
}

/// A shared yes/no the consumer sets while it is attached to its queue;
/// services report it in their readiness check.
#[derive(Debug, Clone, Default)]
pub struct Flag(Arc<AtomicBool>);

impl Flag {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The flag as a readiness probe (`Health::flag("events", flag.probe())`).
    pub fn probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let flag = self.clone();
        move || flag.get()
    }

    fn set(&self, value: bool) {
        self.0.store(value, Ordering::Release);
    }
}

/// Why a consumer session ended without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("the broker ended the consumer on `{0}`")]
    Cancelled(String),
    #[error("the broker refused to store a copy of message {0}")]
    Nacked(String),
    #[error("no queue `{0}` to take a copy of message {1}")]
    Unroutable(String, String),
    #[error("the broker did not answer within {0:?}")]
    Stalled(Duration),
    #[error("the handler gave its message back")]
    Interrupted,
    #[error("the channel closed before the broker took the ack")]
    ChannelClosed,
}

/// Longest wait for the broker to take an ack or a confirm. An operation on a
/// connection that died underneath it may otherwise never complete; the
/// session then ends and a new one starts (the message is redelivered).
const BROKER_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a broker operation with [`BROKER_OP_TIMEOUT`], failing fast when the
/// channel is already closed.
async fn settle<T>(
    channel: &Channel,
    operation: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, ConsumeError> {
    if !channel.status().connected() {
        return Err(ConsumeError::ChannelClosed);
    }
    match tokio::time::timeout(BROKER_OP_TIMEOUT, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ConsumeError::Stalled(BROKER_OP_TIMEOUT)),
    }
}

/// Acks or nacks a delivery through [`settle`]. lapin answers `false` when the
/// delivery's channel is already gone; the broker then redelivers the message,
/// so the session ends as it does on any channel failure.
async fn settle_delivery(
    channel: &Channel,
    operation: impl Future<Output = Result<bool, lapin::Error>>,
) -> Result<(), ConsumeError> {
    match settle(channel, operation).await? {
        true => Ok(()),
        false => Err(ConsumeError::ChannelClosed),
    }
}

/// How many unacknowledged deliveries the broker may push ahead to this
/// consumer. Deliveries are handled one at a time, in order; the prefetch only
/// hides the network round trip between them.
const PREFETCH: u16 = 16;

/// How many deliveries the broker may push ahead to a stream consumer
/// ([`Source::Stream`]). Larger than [`PREFETCH`]: a stream consumer is the
/// fan-out feed of a realtime instance, which takes every event of the log,
/// and the further ahead the broker may send, the more deliveries arrive in
/// one read of lapin's I/O thread and the fewer times that thread wakes
/// the consumer. Not more: with 256 the fan-out benchmark's p99 at a fixed
/// rate to 10,000 sockets rose to two to six times that of 16 or 64,
/// for no more deliveries per CPU-second than 64 gives. Nothing is lost
/// by it: deliveries still in flight when a session ends are read again
/// from the log by the next one.
const STREAM_PREFETCH: u16 = 64;

/// A stream's acks are credit, not removal ([`crate::stream`]): the broker
/// sends at most [`STREAM_PREFETCH`] deliveries beyond the last one acked,
/// and an ack removes nothing. So a stream consumer acks every
/// [`STREAM_ACK_EVERY`]th handled delivery, with `multiple` (covering the
/// ones before it), instead of each one: a broker round trip through lapin's
/// I/O thread per batch instead of per event, which the fan-out benchmark's
/// user mode (one event per socket) showed to be much of what an event
/// costs. Fewer than `STREAM_PREFETCH` are ever owed, so the broker never
/// stops for want of credit; where a new session resumes is the consumer's
/// own record of the last offset handled (`Consumer::resume`), not the acks.
const STREAM_ACK_EVERY: u16 = STREAM_PREFETCH / 2;

/// The handled stream deliveries not yet acked, in one session.
#[derive(Default)]
struct StreamCredit {
    owed: u16,
}

impl StreamCredit {
    /// `delivery` was handled: give credit back if enough is owed.
    async fn handled(
        &mut self,
        channel: &Channel,
        delivery: &Delivery,
    ) -> Result<(), ConsumeError> {
        self.owed += 1;
        if self.owed < STREAM_ACK_EVERY {
            return Ok(());
        }
        self.owed = 0;
        let all_so_far = BasicAckOptions { multiple: true };
        settle_delivery(channel, delivery.ack(all_so_far)).await
    }
}

pub struct Consumer {
    broker: Arc<Broker>,
    source: Source,
    tag: String,
    attached: Flag,
    /// A session opened by [`Consumer::attach`], used first by `run`.
    prepared: Option<Attached>,
    /// The last stream offset handled ([`Source::Stream`] only), where the
    /// next session resumes. A `std` mutex: it is written after each
    /// delivery and read when a session opens, never across an `.await`.
    resume: std::sync::Mutex<Option<u64>>,
}

/// A channel consuming from a declared queue.
struct Attached {
    channel: Channel,
    queue: String,
    deliveries: lapin::Consumer,
}

impl Consumer {
    /// `tag` names the consumer in the broker (management UI, logs).
    pub fn new(broker: Arc<Broker>, source: Source, tag: impl Into<String>) -> Self {
        Self {
            broker,
            source,
            tag: tag.into(),
            attached: Flag::default(),
            prepared: None,
            resume: std::sync::Mutex::new(None),
        }
    }

    /// True while a session is consuming (queue declared and bound).
    pub fn attached(&self) -> Flag {
        self.attached.clone()
    }

    /// Declares the queue and starts consuming now, before `run`: a service
    /// calls this while it starts, so its queue exists (and, for an instance
    /// queue, is bound) before it serves anything that could lead to a
    /// message for it. Deliveries wait in the channel until `run` handles
    /// them.
    pub async fn attach(&mut self) -> Result<(), ConsumeError> {
        let channel = self.broker.channel().await?;
        self.prepared = Some(self.open(channel).await?);
        Ok(())
    }

    /// Consumes until `shutdown` is cancelled, resuming after every broker
    /// failure (see [`crate::session`]). Only returns early for good reason
    /// (shutdown).
    pub async fn run<H: Handler>(
        mut self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), ConsumeError> {
        let prepared = self.prepared.take();
        let (this, handler, stop) = (&self, &handler, &shutdown);
        session::run(
            stop,
            prepared,
            // A channel (waiting for a reconnect if the broker is gone), and
            // the queue declared and consumed on it.
            move || async move { this.open(this.broker.channel().await?).await },
            move |attached| async move {
                let ended = this.session(attached, handler, stop).await;
                this.attached.set(false);
                ended
            },
            |error, retry_in| {
                tracing::warn!(consumer = %this.tag, error = %Chain(error), ?retry_in, "consumer interrupted; resuming");
            },
        )
        .await;
        Ok(())
    }

    /// Declares the source's queue on `channel` and starts consuming.
    async fn open(&self, channel: Channel) -> Result<Attached, ConsumeError> {
        // Confirm mode: copies sent to retry and dead-letter queues are
        // confirmed before the original is acked.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let ns = self.broker.namespace();
        let queue = match &self.source {
            Source::Work(work) => {
                topology::declare_work_queue(&channel, ns, work).await?;
                work.name.clone()
            }
            Source::Instance { patterns } => {
                let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
                topology::declare_instance_queue(&channel, ns, &patterns).await?
            }
            Source::Stream { stream, start } => {
                crate::stream::declare(&channel, ns, stream).await?;
                let resume = *self
                    .resume
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Right after the last offset handled, or where the
                // consumer was told to start.
                let start = resume.map_or(*start, |last| crate::stream::Start::Offset(last + 1));
                let deliveries = crate::stream::consume(
                    &channel,
                    &stream.name,
                    &self.tag,
                    start,
                    STREAM_PREFETCH,
                )
                .await?;
                self.attached.set(true);
                tracing::info!(consumer = %self.tag, stream = %stream.name, ?start, "consuming");
                return Ok(Attached {
                    channel,
                    queue: stream.name.clone(),
                    deliveries,
                });
            }
        };
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                self.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.attached.set(true);
        tracing::info!(consumer = %self.tag, %queue, "consuming");
        Ok(Attached {
            channel,
            queue,
            deliveries,
        })
    }

    /// One session: handle deliveries until the channel fails (Err) or
    /// shutdown (Ok).
    async fn session<H: Handler>(
        &self,
        attached: Attached,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumeError> {
        let Attached {
            channel,
            queue,
            mut deliveries,
        } = attached;
        let work = match &self.source {
            Source::Work(work) => Some(work),
            Source::Instance { .. } | Source::Stream { .. } => None,
        };
        let mut credit = matches!(self.source, Source::Stream { .. }).then(StreamCredit::default);
        loop {
            let delivery = tokio::select! {
                // Stop taking new deliveries; the one being handled (if any)
                // has already finished, because handling happens below, not
                // here. Closing the channel returns unacked prefetched
                // deliveries to the queue at once, for another instance.
                // (No basic.cancel first: in our tests on RabbitMQ 3.10,
                // cancelling during single-active-consumer handovers made the
                // broker crash the queue.)
                _ = shutdown.cancelled() => {
                    close_quietly(&channel).await;
                    return Ok(());
                }
                // The next delivery; `None` or an error means the channel or
                // connection is gone, and the session ends.
                next = deliveries.next() => match next {
                    Some(delivery) => delivery?,
                    None => return Err(ConsumeError::Cancelled(queue)),
                },
            };
            let offset = crate::stream::offset_of(&delivery.properties);
            let processed = process(&channel, &queue, work, credit.as_mut(), handler, delivery);
            if let Err(error) = processed.await {
                // A channel that is still open keeps its unacked deliveries
                // until it closes; close it so they return to the queue now,
                // for the next session (or another instance).
                close_quietly(&channel).await;
                return Err(error);
            }
            if let Some(offset) = offset {
                *self
                    .resume
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(offset);
            }
        }
    }
}

/// Handles one delivery and settles it, inside the delivery's span.
///
/// One span per delivery (OpenTelemetry's messaging conventions: `process
/// <queue>`, kind consumer), child of the trace context the message carries
/// (`traceparent`, [`crate::trace_context`]): the handler's database work
/// and the messages it enqueues continue the trace of whatever sent it. A
/// redelivery and every retry carry the same header, so each attempt is
/// another child of the same producer span. Every line logged while the
/// delivery is handled (by the handler too) names the queue, the message and
/// the attempt; `message_id` and `message_type` stay empty for a delivery
/// without a valid envelope.
async fn process<H: Handler>(
    channel: &Channel,
    queue: &str,
    work: Option<&WorkQueue>,
    credit: Option<&mut StreamCredit>,
    handler: &H,
    delivery: Delivery,
) -> Result<(), ConsumeError> {
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let envelope = amqp::from_properties(&delivery.properties);
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = queue,
        messaging.message.id = tracing::field::Empty,
        messaging.message.conversation_id = tracing::field::Empty,
        messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
        queue = %queue,
        message_id = tracing::field::Empty,
        message_type = tracing::field::Empty,
        attempt = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    if let Ok(envelope) = &envelope {
        // Before the span is first entered: its parent is fixed then.
        let _ = span.set_parent(crate::trace_context::context_of(envelope));
    }
    let started = std::time::Instant::now();
    let result = handle_delivery(channel, queue, work, credit, handler, delivery, envelope)
        .instrument(span.clone())
        .await;
    let outcome = match &result {
        Ok(outcome) => outcome.as_str(),
        Err(_) => "interrupted",
    };
    span.record("outcome", outcome);
    metrics::histogram!(
        "messaging_consumer_handle_duration_seconds",
        "queue" => queue.to_owned(),
        "outcome" => outcome,
    )
    .record(started.elapsed().as_secs_f64());
    let counter = match &result {
        Ok(Settled::Handled) => Some("messaging_consumer_handled_total"),
        Ok(Settled::Retried) => Some("messaging_consumer_retried_total"),
        Ok(Settled::DeadLettered) => {
            span.record("otel.status_code", "ERROR");
            Some("messaging_consumer_dead_lettered_total")
        }
        Err(_) => None,
    };
    if let Some(name) = counter {
        metrics::counter!(name, "queue" => queue.to_owned()).increment(1);
    }
    result.map(|_| ())
}

/// How a delivery was settled, for the consumer's metrics.
#[derive(Debug, Clone, Copy)]
enum Settled {
    /// Handled and acked (a stream message passed over counts here too).
    Handled,
    /// Sent to a retry queue, or requeued on an instance queue.
    Retried,
    /// Moved to the dead-letter queue, or dropped from an instance queue.
    DeadLettered,
}

impl Settled {
    fn as_str(self) -> &'static str {
        match self {
            Settled::Handled => "handled",
            Settled::Retried => "retried",
            Settled::DeadLettered => "dead_lettered",
        }
    }
}

async fn handle_delivery<H: Handler>(
    channel: &Channel,
    queue: &str,
    work: Option<&WorkQueue>,
    credit: Option<&mut StreamCredit>,
    handler: &H,
    delivery: Delivery,
    envelope: Result<Envelope, amqp::EnvelopeError>,
) -> Result<Settled, ConsumeError> {
    let span = tracing::Span::current();
    let attempt = retry_count(&delivery.properties);
    span.record("attempt", attempt);
    let envelope = match envelope {
        Ok(envelope) => envelope,
        Err(error) => {
            // The reason travels as a header: text, but the whole chain.
            let reason = format!("bad envelope: {}", Chain(&error));
            tracing::warn!(%reason, "undecodable envelope; dead-lettering");
            return give_up(channel, queue, work, &delivery, &reason).await;
        }
    };
    span.record("message_id", tracing::field::display(envelope.message_id));
    span.record(
        "messaging.message.id",
        tracing::field::display(envelope.message_id),
    );
    if let Some(correlation_id) = &envelope.correlation_id {
        span.record("messaging.message.conversation_id", correlation_id.as_str());
    }
    span.record("message_type", envelope.message_type.as_str());
    let incoming = Incoming {
        envelope,
        body: delivery.data.clone(),
        attempt,
        redelivered: delivery.redelivered,
        stream_offset: crate::stream::offset_of(&delivery.properties),
    };

    match handler.handle(incoming).await {
        Ok(()) => match credit {
            Some(credit) => credit.handled(channel, &delivery).await,
            None => settle_delivery(channel, delivery.ack(BasicAckOptions::default())).await,
        }
        .map(|()| Settled::Handled),
        Err(HandleError::Interrupted) => {
            // Neither ack nor nack: closing the channel returns this delivery
            // and the prefetched ones behind it to the queue, in order.
            tracing::info!("handler interrupted; returning the message");
            close_quietly(channel).await;
            Err(ConsumeError::Interrupted)
        }
        Err(HandleError::Reject(reason)) => {
            tracing::warn!(%reason, "message rejected; dead-lettering");
            give_up(channel, queue, work, &delivery, &reason).await
        }
        Err(HandleError::Transient(error)) if credit.is_some() => {
            // A stream keeps the message whatever we do; there is no
            // requeue, and waiting here would hold up every later event.
            tracing::error!(error = %Chain(&*error), "handler failed; passing over the stream message");
            if let Some(credit) = credit {
                credit.handled(channel, &delivery).await?;
            }
            Ok(Settled::Handled)
        }
        Err(HandleError::Transient(error)) => {
            let reason = Chain(&*error).to_string();
            match work.and_then(|w| w.retry.delay(attempt).map(|d| (w, d))) {
                Some((work, delay)) => {
                    tracing::warn!(retry_in = ?delay, error = %reason, "handler failed; will retry");
                    let retry_queue = topology::retry_queue(&work.name, attempt as usize);
                    let headers = [
                        (RETRY_COUNT, AMQPValue::LongUInt(attempt + 1)),
                        (FAILURE_REASON, long_string(&reason)),
                    ];
                    republish(channel, &retry_queue, &delivery, &headers).await?;
                    settle_delivery(channel, delivery.ack(BasicAckOptions::default()))
                        .await
                        .map(|()| Settled::Retried)
                }
                None if work.is_none() => {
                    // An instance queue has no retry queues: put it back.
                    tracing::warn!(error = %reason, "handler failed; requeueing");
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    };
                    settle_delivery(channel, delivery.nack(requeue))
                        .await
                        .map(|()| Settled::Retried)
                }
                None => {
                    tracing::error!(error = %reason, "retries exhausted; dead-lettering");
                    let reason = format!("gave up after {attempt} retries: {reason}");
                    give_up(channel, queue, work, &delivery, &reason).await
                }
            }
        }
    }
}

/// Moves a message to `<queue>.dlq` with the reason, then acks it. On an
/// instance queue (no DLQ) the message is dropped with a log line.
async fn give_up(
    channel: &Channel,
    queue: &str,
    work: Option<&WorkQueue>,
    delivery: &Delivery,
    reason: &str,
) -> Result<Settled, ConsumeError> {
    if work.is_some() {
        let headers = [
            (FAILURE_REASON, long_string(reason)),
            (ORIGINAL_QUEUE, long_string(queue)),
            (
                RETRY_COUNT,
                AMQPValue::LongUInt(retry_count(&delivery.properties)),
            ),
            (FAILED_AT, long_string(&chrono::Utc::now().to_rfc3339())),
        ];
        republish(
            channel,
            &Namespace::dead_letter_queue(queue),
            delivery,
            &headers,
        )
        .await?;
    } else {
        tracing::error!(%reason, "message dropped from instance queue");
    }
    settle_delivery(channel, delivery.ack(BasicAckOptions::default()))
        .await
        .map(|()| Settled::DeadLettered)
}

/// Publishes a copy of `delivery` (same body and properties, extra headers)
/// straight to `queue` through the default exchange, and waits for the
/// broker's confirm.
async fn republish(
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    extra: &[(&str, AMQPValue)],
) -> Result<(), ConsumeError> {
    // Mandatory: if the retry queue or DLQ is gone (deleted by hand), the
    // broker hands the copy back instead of dropping it; the session then
    // ends without acking the original, and the next session declares the
    // queues again before the message is redelivered.
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = settle(channel, async {
        publish_copy(channel, queue, delivery, extra, mandatory)
            .await?
            .await
    })
    .await?;
    let id = || {
        let id = delivery.properties.message_id().as_ref();
        id.map(|m| m.to_string()).unwrap_or_default()
    };
    match confirm {
        Confirmation::Nack(_) => Err(ConsumeError::Nacked(id())),
        Confirmation::Ack(Some(_)) => Err(ConsumeError::Unroutable(queue.to_owned(), id())),
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
    }
}

/// Publishes a copy of `delivery`, its headers extended by `extra`, to
/// `queue` through the default exchange; the caller awaits the confirm. The
/// one way a message is moved between queues: to a retry queue or the DLQ
/// here, back to its work queue by [`crate::dead_letters::replay`].
pub(crate) async fn publish_copy(
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    extra: &[(&str, AMQPValue)],
    options: BasicPublishOptions,
) -> Result<PublisherConfirm, lapin::Error> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    for (key, value) in extra {
        headers.insert(ShortString::from(*key), value.clone());
    }
    let properties = delivery.properties.clone().with_headers(headers);
    channel
        .basic_publish("".into(), queue.into(), options, &delivery.data, properties)
        .await
}

#[cfg(test)]
mod tests {
    use signalbox_messages::{decode, orders::OrderCancelled};

    use super::*;
    use crate::chain::Chain;

    #[test]
    fn a_transient_failure_keeps_its_cause_as_the_source() {
        let error = HandleError::transient(std::io::Error::other("database restarting"));

        let source = std::error::Error::source(&error).expect("the cause is kept");
        assert_eq!(source.to_string(), "database restarting");
        assert_eq!(
            Chain(&error).to_string(),
            "transient failure: database restarting"
        );
    }

    #[test]
    fn a_payload_that_does_not_decode_is_rejected_with_the_parse_error() {
        let envelope = Envelope::new::<OrderCancelled>();
        let error = decode::<OrderCancelled>(&envelope, b"{\"order_id\":").unwrap_err();
        let parse_error = std::error::Error::source(&error)
            .expect("a parse error")
            .to_string();

        let HandleError::Reject(reason) = HandleError::from(error) else {
            panic!("a payload that does not decode is not worth a retry");
        };
        assert!(
            reason.starts_with("malformed `order.cancelled` payload"),
            "{reason}"
        );
        assert_eq!(reason.matches(&parse_error).count(), 1, "{reason}");
    }
}
