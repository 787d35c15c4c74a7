//! A fresh database (with the messaging tables) and a fresh namespace per
//! test, removed again by [`Fixture::cleanup`].

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicConsumeOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
    Channel,
};
use signalbox_messages::channels::Namespace;
use signalbox_messaging::{topology, Broker, WorkQueue};
use sqlx::{Connection, PgConnection, PgPool};

pub const DEADLINE: Duration = Duration::from_secs(15);

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub struct Fixture {
    pub pool: PgPool,
    pub broker: Arc<Broker>,
    pub ns: Namespace,
    database: String,
    queues: Vec<String>,
}

impl Fixture {
    pub async fn new() -> anyhow::Result<Self> {
        // Logs go through the test harness: shown for failing tests only.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,lapin=warn".into()),
            )
            .with_test_writer()
            .try_init();
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let database = format!("{prefix}_messaging");
        let mut admin = PgConnection::connect(&format!("{SERVER}/postgres")).await?;
        sqlx::query(&format!(r#"CREATE DATABASE "{database}""#))
            .execute(&mut admin)
            .await?;
        let pool = PgPool::connect(&format!("{SERVER}/{database}")).await?;
        // Every service schema carries the messaging tables; orders' will do.
        sqlx::migrate!("../../migrations/orders").run(&pool).await?;
        let ns = Namespace::new(prefix);
        let broker = Broker::connect(AMQP, ns.clone(), "test", DEADLINE).await?;
        Ok(Self {
            pool,
            broker,
            ns,
            database,
            queues: Vec::new(),
        })
    }

    /// Declares a durable work queue (with its DLQ) bound to the events
    /// exchange for `pattern`.
    pub async fn queue(&mut self, name: &str, pattern: &'static str) -> anyhow::Result<String> {
        let queue = self.ns.queue(name);
        let work = WorkQueue::new(queue.clone()).bind(self.ns.events_exchange(), pattern);
        self.declare(&work).await?;
        Ok(queue)
    }

    /// Declares `work` (with its retry and dead-letter queues) and remembers
    /// every queue for cleanup.
    pub async fn declare(&mut self, work: &WorkQueue) -> anyhow::Result<()> {
        let channel = self.broker.channel().await?;
        topology::declare_work_queue(&channel, &self.ns, work).await?;
        self.queues.push(work.name.clone());
        self.queues.push(Namespace::dead_letter_queue(&work.name));
        for attempt in 0..work.retry.delays.len() {
            self.queues.push(topology::retry_queue(&work.name, attempt));
        }
        Ok(())
    }

    pub async fn cleanup(self) -> anyhow::Result<()> {
        let channel = self.broker.channel().await?;
        for queue in &self.queues {
            channel
                .queue_delete(queue, QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            self.ns.events_exchange(),
            self.ns.commands_exchange(),
            self.ns.inbound_exchange(),
            self.ns.dead_letter_exchange(),
        ] {
            channel
                .exchange_delete(&exchange, ExchangeDeleteOptions::default())
                .await?;
        }
        self.broker.close().await;
        self.pool.close().await;
        let mut admin = PgConnection::connect(&format!("{SERVER}/postgres")).await?;
        sqlx::query(&format!(
            r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
            self.database
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// Reads a queue as a test observer: an auto-ack consumer whose deliveries
/// are awaited with a deadline.
pub struct Tap {
    consumer: lapin::Consumer,
}

impl Tap {
    pub async fn open(channel: &Channel, queue: &str) -> anyhow::Result<Self> {
        let consumer = channel
            .basic_consume(
                queue,
                "test-tap",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Self { consumer })
    }

    pub async fn next(&mut self) -> anyhow::Result<Delivery> {
        match tokio::time::timeout(DEADLINE, self.consumer.next()).await {
            Ok(Some(delivery)) => Ok(delivery?),
            Ok(None) => anyhow::bail!("the consumer was cancelled"),
            Err(_) => anyhow::bail!("nothing arrived within {DEADLINE:?}"),
        }
    }
}

/// The number of ready messages in `queue` (a passive declare).
pub async fn depth(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue, passive, FieldTable::default())
        .await?;
    Ok(declared.message_count())
}

/// Waits until `queue` holds `expected` ready messages.
pub async fn await_depth(channel: &Channel, queue: &str, expected: u32) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let current = depth(channel, queue).await?;
        if current == expected {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{queue} holds {current} messages, not {expected}, after {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
