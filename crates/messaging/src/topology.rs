//! Declaring exchanges and queues.
//!
//! Every service declares what it uses at start-up. Declarations are
//! idempotent, so the order in which services start does not matter: whoever
//! comes first creates, the others confirm. Durable exchanges and queues
//! survive a broker restart; messages in them survive too because they are
//! published persistent.

use std::time::Duration;

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    Channel, ExchangeKind,
};
use signalbox_messages::channels::Namespace;

use crate::amqp::long_string;

// Queue arguments RabbitMQ understands, each written once.
/// How long a message may wait in the queue before it expires.
const MESSAGE_TTL: &str = "x-message-ttl";
/// Where the broker sends what expires or is rejected without requeue.
const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";
/// The routing key it sends it with (instead of the message's own).
const DEAD_LETTER_ROUTING_KEY: &str = "x-dead-letter-routing-key";
/// At most one consumer receives at a time; the others stand by.
const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";
/// The most messages a queue holds...
const MAX_LENGTH: &str = "x-max-length";
/// ...and the most bytes of message bodies...
const MAX_LENGTH_BYTES: &str = "x-max-length-bytes";
/// ...and what the broker does when one of them is reached.
const OVERFLOW: &str = "x-overflow";

/// The bound of every per-instance queue ([`declare_instance_queue`]):
/// far more than a live instance ever has waiting (it consumes as they
/// come: replies to its own requests, at most a few hundred outstanding;
/// census requests, one every few seconds), so only a frozen or dead
/// instance reaches it.
pub const INSTANCE_QUEUE_MAX_MESSAGES: i64 = 10_000;
/// The same bound in bytes (bodies only, as the broker counts them).
pub const INSTANCE_QUEUE_MAX_BYTES: i64 = 16 * 1024 * 1024;

/// Declares the exchanges shared by every service.
pub async fn declare_exchanges(channel: &Channel, ns: &Namespace) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // Domain events: publish-subscribe by routing-key pattern.
    channel
        .exchange_declare(
            ns.events_exchange().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Commands: point-to-point, one queue per handling service.
    channel
        .exchange_declare(
            ns.commands_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Messages from WebSocket clients to the backend.
    channel
        .exchange_declare(
            ns.inbound_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Dead letters: routed by the name of the queue they died in.
    channel
        .exchange_declare(
            ns.dead_letter_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// How often, and after how long, a transiently failed message is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay before retry n+1; the number of entries bounds the retries.
    pub delays: Vec<Duration>,
}

impl RetryPolicy {
    /// The delay before the retry that follows `attempt` failed attempts
    /// minus one, or `None` when the retries are used up.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        self.delays.get(attempt as usize).copied()
    }
}

impl Default for RetryPolicy {
    /// Four retries over about 45 seconds: long enough to ride out a
    /// database failover, short enough that a poison message surfaces soon.
    fn default() -> Self {
        Self {
            delays: [500, 2_000, 10_000, 30_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
        }
    }
}

/// A durable queue shared by every instance of a service.
#[derive(Debug, Clone)]
pub struct WorkQueue {
    pub name: String,
    /// `(exchange, routing key)` pairs; replies need none (they arrive
    /// through the default exchange, addressed by queue name).
    pub bindings: Vec<(String, String)>,
    pub retry: RetryPolicy,
    /// At most one consumer receives at a time, the others stand by: the
    /// queue is consumed strictly in order (used by sharded channels).
    pub single_active_consumer: bool,
}

impl WorkQueue {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            bindings: Vec::new(),
            retry: RetryPolicy::default(),
            single_active_consumer: false,
        }
    }

    pub fn bind(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.bindings.push((exchange.into(), routing_key.into()));
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn single_active_consumer(mut self) -> Self {
        self.single_active_consumer = true;
        self
    }

    /// Every queue [`declare_work_queue`] declares for this one: the queue,
    /// its dead-letter queue and a retry queue per delay (what to delete
    /// when a namespace is torn down).
    pub fn declared_queues(&self) -> Vec<String> {
        let retries = (0..self.retry.delays.len()).map(|attempt| retry_queue(&self.name, attempt));
        [self.name.clone(), Namespace::dead_letter_queue(&self.name)]
            .into_iter()
            .chain(retries)
            .collect()
    }
}

/// The retry queue for the retry after `attempt` failures: `<queue>.retry.<n>`.
pub fn retry_queue(queue: &str, attempt: usize) -> String {
    format!("{queue}.retry.{attempt}")
}

/// Declares a work queue with its retry queues and dead-letter queue, and
/// binds it.
///
/// ```text
///   exchange ──binding──▶ <queue> ──handler fails──▶ <queue>.retry.<n>  (TTL = delay n)
///                            ▲                              │ expires
///                            └──── default exchange ◀───────┘
///   <queue> ──rejected / retries used up──▶ <queue>.dlq  (with x-failure-reason)
/// ```
///
/// The work queue also names a dead-letter exchange, so a message nacked
/// without requeue by any client still lands in the DLQ rather than vanishing.
pub async fn declare_work_queue(
    channel: &Channel,
    ns: &Namespace,
    work: &WorkQueue,
) -> Result<(), lapin::Error> {
    let queue = work.name.as_str();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dlq = Namespace::dead_letter_queue(queue);
    channel
        .queue_declare(dlq.as_str().into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            ns.dead_letter_exchange().into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Each retry queue holds messages for its delay, then the broker
    // dead-letters them through the default exchange back to the work queue.
    for (attempt, delay) in work.retry.delays.iter().enumerate() {
        let mut args = FieldTable::default();
        args.insert(
            MESSAGE_TTL.into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        args.insert(DEAD_LETTER_EXCHANGE.into(), long_string(""));
        args.insert(DEAD_LETTER_ROUTING_KEY.into(), long_string(queue));
        channel
            .queue_declare(retry_queue(queue, attempt).into(), durable, args)
            .await?;
    }

    let mut args = FieldTable::default();
    args.insert(
        DEAD_LETTER_EXCHANGE.into(),
        long_string(&ns.dead_letter_exchange()),
    );
    args.insert(DEAD_LETTER_ROUTING_KEY.into(), long_string(queue));
    if work.single_active_consumer {
        args.insert(SINGLE_ACTIVE_CONSUMER.into(), AMQPValue::Boolean(true));
    }
    channel.queue_declare(queue.into(), durable, args).await?;
    for (exchange, routing_key) in &work.bindings {
        channel
            .queue_bind(
                queue.into(),
                exchange.as_str().into(),
                routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares this instance's private queue for fan-out: server-named,
/// exclusive to this connection and deleted with it. Every instance that
/// binds such a queue to the events exchange gets its own copy of each event.
///
/// Bounded ([`INSTANCE_QUEUE_MAX_MESSAGES`], [`INSTANCE_QUEUE_MAX_BYTES`]),
/// oldest dropped first (`x-overflow: drop-head`): a frozen instance keeps
/// its connection, and so its queue, until the broker's heartbeat gives up
/// on it, and without a bound that queue would grow the broker's memory
/// until its memory alarm blocks every publisher of the system. Dropping
/// the oldest is right for what these queues carry: a reply whose request
/// has long timed out, a census request whose asker has long answered.
/// Publishers are never refused (`reject-publish` would fail the sender of
/// the newest message instead, who is not the one at fault).
pub async fn declare_instance_queue(
    channel: &Channel,
    ns: &Namespace,
    patterns: &[&str],
) -> Result<String, lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        MAX_LENGTH.into(),
        AMQPValue::LongLongInt(INSTANCE_QUEUE_MAX_MESSAGES),
    );
    args.insert(
        MAX_LENGTH_BYTES.into(),
        AMQPValue::LongLongInt(INSTANCE_QUEUE_MAX_BYTES),
    );
    args.insert(OVERFLOW.into(), long_string("drop-head"));
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let name = queue.name().as_str().to_owned();
    for pattern in patterns {
        channel
            .queue_bind(
                name.as_str().into(),
                ns.events_exchange().into(),
                (*pattern).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(name)
}
