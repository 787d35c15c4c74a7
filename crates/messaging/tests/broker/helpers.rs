//! A fresh database (with the messaging tables) and a fresh namespace per
//! test, removed again by [`Fixture::cleanup`].

use std::sync::Arc;

use signalbox_messages::channels::Namespace;
use signalbox_messaging::{topology, Broker, WorkQueue};
use signalbox_testkit::{broker, db::TestDatabase};
use sqlx::PgPool;

pub use signalbox_testkit::{
    broker::{amqp_url, await_depth, Tap},
    DEADLINE,
};

pub struct Fixture {
    pub pool: PgPool,
    pub broker: Arc<Broker>,
    pub ns: Namespace,
    database: TestDatabase,
    queues: Vec<String>,
}

impl Fixture {
    pub async fn new() -> anyhow::Result<Self> {
        // Logs go through the test harness: shown for failing tests only.
        signalbox_platform::telemetry::init_for_tests();
        let prefix = broker::random_namespace();
        let database = TestDatabase::create(format!("{prefix}_messaging")).await?;
        let pool = PgPool::connect(&database.url).await?;
        // Every service schema carries the messaging tables; orders' will do.
        sqlx::migrate!("../../migrations/orders").run(&pool).await?;
        let ns = Namespace::new(prefix);
        let broker = Broker::connect(&amqp_url(), ns.clone(), "test", DEADLINE).await?;
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
        broker::delete_namespace(&self.ns, &self.queues).await?;
        self.broker.close().await;
        self.pool.close().await;
        self.database.drop().await
    }
}
