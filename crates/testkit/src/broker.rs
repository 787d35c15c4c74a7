//! The shared RabbitMQ broker: a random namespace per test, removing what it
//! declared, and reading queues as an observer.

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::FieldTable,
    Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
};
use signalbox_messages::channels::Namespace;
use signalbox_platform::config::AmqpSettings;

use crate::DEADLINE;

/// The broker's URL: `SIGNALBOX_TEST_AMQP_URL`, or the local broker.
pub fn amqp_url() -> String {
    std::env::var("SIGNALBOX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Settings for a service under test in namespace `ns`, on the test broker.
/// The service waits up to [`DEADLINE`] for the broker at start-up.
pub fn settings(ns: &Namespace) -> AmqpSettings {
    AmqpSettings {
        url: amqp_url().into(),
        namespace: ns.prefix().to_owned(),
        connect_timeout_secs: DEADLINE.as_secs(),
    }
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
    for exchange in exchanges(ns) {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    connection.close(200, "test cleanup".into()).await?;
    Ok(())
}

/// The four exchanges of a namespace: events, commands, inbound, dead letters.
pub fn exchanges(ns: &Namespace) -> [String; 4] {
    [
        ns.events_exchange(),
        ns.commands_exchange(),
        ns.inbound_exchange(),
        ns.dead_letter_exchange(),
    ]
}

/// Whether `queue` exists: a passive declare, on a connection of its own
/// (a failed passive declare closes its channel).
pub async fn queue_exists(queue: &str) -> anyhow::Result<bool> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    exists(|channel| async move {
        channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map(drop)
    })
    .await
}

/// Whether `exchange` exists (a passive declare, like [`queue_exists`]).
pub async fn exchange_exists(exchange: &str) -> anyhow::Result<bool> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    exists(|channel| async move {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
    })
    .await
}

/// Runs a passive declare on a fresh channel: `NOT_FOUND` (which also
/// closes the channel) is how the broker says "no such object".
async fn exists<F, Fut>(declare: F) -> anyhow::Result<bool>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<(), lapin::Error>>,
{
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    let found = match declare(channel).await {
        Ok(()) => true,
        Err(error) if is_not_found(&error) => false,
        Err(error) => return Err(error.into()),
    };
    // The answer is in; a channel the broker closed may make the polite
    // close complain, which changes nothing about it.
    let _ = connection.close(200, "existence check".into()).await;
    Ok(found)
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
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
