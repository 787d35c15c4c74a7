//! A fresh database (with the messaging tables) and a fresh namespace per
//! test, removed again by [`Fixture::cleanup`] or, when a test panicked,
//! when the fixture is dropped (it keeps them in a [`Sandbox`]).

use std::sync::Arc;

use signalbox_messages::channels::Namespace;
use signalbox_messaging::{topology, Broker, WorkQueue};
use signalbox_testkit::Sandbox;
use sqlx::PgPool;

pub use signalbox_testkit::{
    broker::{amqp_url, await_depth, Tap},
    DEADLINE,
};

pub struct Fixture {
    pub pool: PgPool,
    /// The test database's URL, for a process of the test's own (see
    /// `sharding::Victim`).
    pub database_url: String,
    pub broker: Arc<Broker>,
    pub ns: Namespace,
    /// Declared last, so it is dropped after the pool and the broker.
    sandbox: Sandbox,
}

impl Fixture {
    pub async fn new() -> anyhow::Result<Self> {
        // Logs go through the test harness: shown for failing tests only.
        signalbox_platform::telemetry::init_for_tests();
        let mut sandbox = Sandbox::new();
        let ns = sandbox.namespace().clone();
        let database = sandbox.database("messaging").await?;
        let pool = PgPool::connect(&database.url).await?;
        // Every service schema carries the messaging tables; orders' will do.
        sqlx::migrate!("../../migrations/orders").run(&pool).await?;
        let broker = Broker::connect(&amqp_url(), ns.clone(), "test", DEADLINE).await?;
        Ok(Self {
            pool,
            database_url: database.url,
            broker,
            ns,
            sandbox,
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
        self.sandbox.queues(work.declared_queues());
        Ok(())
    }

    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.broker.close().await;
        self.pool.close().await;
        self.sandbox.remove().await
    }
}

/// The fixture itself: a test that fails half-way leaves nothing behind.
#[tokio::test]
async fn a_test_that_panics_leaves_no_database_queues_or_exchanges() -> anyhow::Result<()> {
    use std::panic::AssertUnwindSafe;

    use futures::FutureExt;

    let mut fx = Fixture::new().await?;
    let queue = fx.queue("work", "order.*").await?;
    let footprint = fx.sandbox.footprint();
    let present = footprint.present().await?;
    for object in [
        format!("database {}_messaging", fx.ns.prefix()),
        format!("queue {queue}"),
        format!("queue {}", Namespace::dead_letter_queue(&queue)),
        format!("exchange {}", fx.ns.events_exchange()),
    ] {
        assert!(present.contains(&object), "{object} missing in {present:?}");
    }

    let test = AssertUnwindSafe(async move {
        let _fx = fx;
        panic!("a failed assertion");
    });
    assert!(test.catch_unwind().await.is_err());

    footprint.await_gone().await
}
