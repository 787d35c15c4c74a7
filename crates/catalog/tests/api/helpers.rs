//! `spawn_app()`: a catalog on port 0 with a fresh database and a random
//! namespace, plus what a test needs to talk to it like the saga does. The
//! database, the queues and the exchanges are the test's [`Sandbox`]:
//! removed by [`TestApp::cleanup`], or when the app is dropped if the test
//! panicked first.

use std::sync::Arc;

use lapin::Channel;
use signalbox_catalog::{Application, Settings};
use signalbox_messages::{
    catalog::{ReleaseStock, ReserveStock, ReserveStockReply},
    channels::{commands, Namespace},
    decode,
    orders::LineItem,
    Envelope, Message,
};
use signalbox_messaging::{
    amqp, topology, Broker, ConfirmedPublisher, Outgoing, Shards, WorkQueue,
};
use signalbox_platform::config::ListenSettings;
use signalbox_testkit::{
    broker::{self, amqp_url, Tap},
    probe, Sandbox,
};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use signalbox_testkit::DEADLINE;

/// Seeded products (`migrations/catalog/0002_seed_products.sql`).
pub const LAMP: Uuid = Uuid::from_u128(0x0193a4c0_0000_7000_8000_000000000001);
pub const TABLET: Uuid = Uuid::from_u128(0x0193a4c0_0000_7000_8000_000000000004);

pub struct TestApp {
    pub ns: Namespace,
    /// Where catalog answers liveness and readiness.
    pub http_port: u16,
    /// The catalog's own database.
    pub pool: PgPool,
    /// The test's connection to the broker, in the app's namespace.
    pub broker: Arc<Broker>,
    pub shards: Shards,
    replies: Replies,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// Declared last, so it is dropped last: after the test's own
    /// connections, when a panicking test drops the app.
    sandbox: Sandbox,
}

/// The test's private reply queue: server-named, exclusive, read with a
/// deadline.
struct Replies {
    name: String,
    _channel: Channel,
    tap: Tap,
}

pub async fn spawn_app() -> anyhow::Result<TestApp> {
    // Logs go through the test harness: shown for failing tests only.
    signalbox_platform::telemetry::init_for_tests();
    let mut sandbox = Sandbox::new();
    let ns = sandbox.namespace().clone();
    let database = sandbox.database("catalog").await?;
    let shards = published_shards();
    sandbox.queues(durable_queues(&ns, &shards));

    let settings = Settings {
        grpc: ListenSettings::ephemeral(),
        http: ListenSettings::ephemeral(),
        database: database.settings(4),
        amqp: broker::settings(&ns),
        ..Settings::default()
    };
    let app = Application::build(settings).await?;
    let http_port = app.http_port();
    let shutdown = CancellationToken::new();
    sandbox.stops(shutdown.clone());
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let broker = Broker::connect(&amqp_url(), ns.clone(), "catalog-test", DEADLINE).await?;
    let channel = broker.channel().await?;
    // Bound to nothing: replies come through the default exchange, by name.
    let name = topology::declare_instance_queue(&channel, &ns, &[]).await?;
    let tap = Tap::open(&channel, &name).await?;

    Ok(TestApp {
        ns,
        http_port,
        pool: PgPool::connect(&database.url).await?,
        broker,
        shards,
        replies: Replies {
            name,
            _channel: channel,
            tap,
        },
        shutdown,
        task,
        sandbox,
    })
}

/// The durable queues catalog declares in `ns`: every command shard queue
/// with its retry and dead-letter queues.
fn durable_queues(ns: &Namespace, shards: &Shards) -> Vec<String> {
    shards
        .work_queues(
            &ns.catalog_commands_queue(),
            &ns.commands_exchange(),
            &[commands::RESERVE_STOCK, commands::RELEASE_STOCK],
        )
        .iter()
        .flat_map(WorkQueue::declared_queues)
        .collect()
}

impl TestApp {
    /// Sends a command exactly as the saga does: to the shard of its order.
    pub async fn send<M: Message>(
        &self,
        order_id: Uuid,
        envelope: Envelope,
        payload: &M,
    ) -> anyhow::Result<()> {
        let key = self.shards.routing_key(M::TYPE, order_id.to_string());
        let message = Outgoing::command_to(&self.ns, key, envelope, payload);
        let publisher = ConfirmedPublisher::new(&self.broker).await?;
        publisher.publish(&message).await?;
        publisher.close().await;
        Ok(())
    }

    /// Asks for `quantity` of `product` for `order_id`, replying to the
    /// test's queue. Returns the command's message id.
    pub async fn reserve(
        &self,
        order_id: Uuid,
        product: Uuid,
        quantity: i64,
    ) -> anyhow::Result<Uuid> {
        self.reserve_items(order_id, &[(product, quantity)]).await
    }

    /// Sends `reserve_stock` for `order_id` with these (product, quantity)
    /// items, a new message each time.
    pub async fn reserve_items(
        &self,
        order_id: Uuid,
        items: &[(Uuid, i64)],
    ) -> anyhow::Result<Uuid> {
        let command = ReserveStock {
            order_id,
            items: items
                .iter()
                .map(|&(product_id, quantity)| LineItem {
                    product_id,
                    quantity,
                })
                .collect(),
        };
        let envelope = Envelope::new::<ReserveStock>()
            .with_correlation_id(order_id.to_string())
            .with_reply_to(self.replies.name.clone());
        let id = envelope.message_id;
        self.send(order_id, envelope, &command).await?;
        Ok(id)
    }

    /// Sends `release_stock` for `order_id`, a new message each time. It
    /// carries a `reply_to` on purpose: a one-way command must not use it.
    pub async fn release(&self, order_id: Uuid) -> anyhow::Result<Uuid> {
        let envelope = Envelope::new::<ReleaseStock>()
            .with_correlation_id(order_id.to_string())
            .with_reply_to(self.replies.name.clone());
        let id = envelope.message_id;
        self.send(order_id, envelope, &ReleaseStock { order_id })
            .await?;
        Ok(id)
    }

    /// The next message on the test's reply queue, as a reservation reply.
    pub async fn next_reply(&mut self) -> anyhow::Result<ReserveStockReply> {
        let delivery = self.replies.tap.next().await?;
        let envelope = amqp::from_properties(&delivery.properties)?;
        Ok(decode(&envelope, &delivery.data)?)
    }

    pub async fn stock(&self, product: Uuid) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT stock FROM products WHERE id = $1")
                .bind(product)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Sets the stock of `product` (as an operator would, through the
    /// database: the test's own setting, not the system's behaviour).
    pub async fn set_stock(&self, product: Uuid, stock: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE products SET stock = $2 WHERE id = $1")
            .bind(product)
            .bind(stock)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Waits (probing the database, with a deadline) until `product` has
    /// `expected` units in stock.
    pub async fn await_stock(&self, product: Uuid, expected: i64) -> anyhow::Result<()> {
        probe::until(
            &format!("stock of {product} at {expected}"),
            DEADLINE,
            || async {
                let stock = self.stock(product).await?;
                Ok(if stock == expected {
                    Ok(())
                } else {
                    Err(format!("stock {stock}"))
                })
            },
        )
        .await
    }

    /// Waits until catalog has committed the handling of `message_id` (its
    /// claim in `processed_messages` commits with the effect).
    pub async fn await_handled(&self, message_id: Uuid) -> anyhow::Result<()> {
        probe::until(
            &format!("message {message_id} handled"),
            DEADLINE,
            || async {
                let handled: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM processed_messages WHERE message_id = $1)",
                )
                .bind(message_id)
                .fetch_one(&self.pool)
                .await?;
                Ok(if handled {
                    Ok(())
                } else {
                    Err("not yet".to_owned())
                })
            },
        )
        .await
    }

    /// A channel for looking at the broker's queues.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self.broker.channel().await?)
    }

    /// Stops the app (it must stop cleanly) and removes its database,
    /// queues and exchanges.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        (&mut self.task).await??;
        self.broker.close().await;
        self.pool.close().await;
        self.sandbox.remove().await
    }
}

/// The catalog's command shard count, as the publishers use it.
pub fn published_shards() -> Shards {
    Shards::new(commands::CATALOG_SHARDS)
}

/// The harness itself: a test that fails half-way leaves nothing behind.
#[tokio::test]
async fn a_test_that_panics_leaves_no_database_queues_or_exchanges() -> anyhow::Result<()> {
    use std::panic::AssertUnwindSafe;

    use futures::FutureExt;

    let app = spawn_app().await?;
    let footprint = app.sandbox.footprint();
    let present = footprint.present().await?;
    let expected = published_shards()
        .queues(&app.ns.catalog_commands_queue())
        .into_iter()
        .map(|queue| format!("queue {queue}"))
        .chain([
            format!("database {}_catalog", app.ns.prefix()),
            format!("exchange {}", app.ns.events_exchange()),
            format!("exchange {}", app.ns.commands_exchange()),
        ]);
    for object in expected {
        assert!(present.contains(&object), "{object} missing in {present:?}");
    }

    let test = AssertUnwindSafe(async move {
        let _app = app;
        panic!("a failed assertion");
    });
    assert!(test.catch_unwind().await.is_err());

    footprint.await_gone().await
}
