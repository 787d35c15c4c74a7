//! Declaring exchanges and queues.
//!
//! Every service declares what it uses at start-up. Declarations are
//! idempotent, so the order in which services start does not matter: whoever
//! comes first creates, the others confirm. Durable exchanges and queues
//! survive a broker restart; messages in them survive too because they are
//! published persistent.

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    Channel, ExchangeKind,
};
use signalbox_messages::channels::Namespace;

/// Declares the exchanges shared by every service.
pub async fn declare_exchanges(channel: &Channel, ns: &Namespace) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // Domain events: publish-subscribe by routing-key pattern.
    channel
        .exchange_declare(
            &ns.events_exchange(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Commands: point-to-point, one queue per handling service.
    channel
        .exchange_declare(
            &ns.commands_exchange(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Messages from WebSocket clients to the backend.
    channel
        .exchange_declare(
            &ns.inbound_exchange(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Dead letters: routed by the name of the queue they died in.
    channel
        .exchange_declare(
            &ns.dead_letter_exchange(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares a durable work queue with its dead-letter queue, and binds it.
///
/// A message the consumer rejects (`requeue: false`) is moved by the broker to
/// `<queue>.dlq` through the dead-letter exchange, with an `x-death` header
/// saying where and why; it is never silently dropped.
pub async fn declare_work_queue(
    channel: &Channel,
    ns: &Namespace,
    queue: &str,
    bindings: &[(String, &str)],
) -> Result<(), lapin::Error> {
    let dlq = Namespace::dead_letter_queue(queue);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(&dlq, durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            &dlq,
            &ns.dead_letter_exchange(),
            queue,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(ns.dead_letter_exchange())),
    );
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(LongString::from(queue.to_owned())),
    );
    channel.queue_declare(queue, durable, args).await?;
    for (exchange, routing_key) in bindings {
        channel
            .queue_bind(
                queue,
                exchange,
                routing_key,
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
pub async fn declare_instance_queue(
    channel: &Channel,
    ns: &Namespace,
    patterns: &[&str],
) -> Result<String, lapin::Error> {
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = queue.name().as_str().to_owned();
    for pattern in patterns {
        channel
            .queue_bind(
                &name,
                &ns.events_exchange(),
                pattern,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(name)
}
