//! The shared RabbitMQ broker: a random namespace per test, removing what it
//! declared, and reading queues as an observer.

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicConsumeOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
    Channel, Connection, ConnectionProperties, Consumer,
};
use signalbox_messages::channels::Namespace;

use crate::DEADLINE;

/// The broker's URL: `SIGNALBOX_TEST_AMQP_URL`, or the local broker.
pub fn amqp_url() -> String {
    std::env::var("SIGNALBOX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A random namespace: `t` and 12 hex digits. Also the prefix of the test's
/// database names.
pub fn random_namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A plain connection to the broker, outside any service.
pub async fn connect() -> anyhow::Result<Connection> {
    Ok(Connection::connect(&amqp_url(), ConnectionProperties::default()).await?)
}

/// Deletes `queues` and the namespace's four exchanges (events, commands,
/// inbound, dead letters) over a connection of its own. Queues that were
/// never declared are no error; exclusive queues go with their connections.
pub async fn delete_namespace(ns: &Namespace, queues: &[String]) -> anyhow::Result<()> {
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [
        ns.events_exchange(),
        ns.commands_exchange(),
        ns.inbound_exchange(),
        ns.dead_letter_exchange(),
    ] {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    connection.close(200, "test cleanup".into()).await?;
    Ok(())
}

/// Reads a queue as a test observer: an auto-ack consumer whose deliveries
/// are awaited with a deadline.
pub struct Tap {
    consumer: Consumer,
}

impl Tap {
    /// Starts consuming `queue` on `channel`. The consumer tag is left to
    /// the broker, so several taps can share a channel.
    pub async fn open(channel: &Channel, queue: &str) -> anyhow::Result<Self> {
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consumer = channel
            .basic_consume(queue.into(), "".into(), no_ack, FieldTable::default())
            .await?;
        Ok(Self { consumer })
    }

    /// The next delivery; an error if none arrives within [`DEADLINE`].
    pub async fn next(&mut self) -> anyhow::Result<Delivery> {
        match tokio::time::timeout(DEADLINE, self.consumer.next()).await {
            Ok(Some(delivery)) => Ok(delivery?),
            Ok(None) => anyhow::bail!("the observer was cancelled"),
            Err(_) => anyhow::bail!("nothing arrived within {DEADLINE:?}"),
        }
    }
}

/// The number of ready messages in `queue` (a passive declare).
pub async fn queue_depth(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(declared.message_count())
}

/// Waits until `queue` holds `expected` ready messages; an error if it does
/// not within [`DEADLINE`].
pub async fn await_depth(channel: &Channel, queue: &str, expected: u32) -> anyhow::Result<()> {
    crate::probe::until(&format!("{queue} holding {expected}"), DEADLINE, || async {
        let current = queue_depth(channel, queue).await?;
        Ok(if current == expected {
            Ok(())
        } else {
            Err(format!("{current} messages"))
        })
    })
    .await
}
