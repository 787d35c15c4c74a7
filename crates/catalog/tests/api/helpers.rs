//! `spawn_app()`: a catalog on port 0 with a fresh database and a random
//! namespace, plus what a test needs to talk to it like the saga does.

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
use signalbox_messaging::{amqp, topology, Broker, ConfirmedPublisher, Outgoing, Shards};
use signalbox_platform::config::{AmqpSettings, DatabaseSettings, ListenSettings};
use signalbox_testkit::{
    broker::{self, amqp_url, Tap},
    db::TestDatabase,
    probe,
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
    /// The catalog's own database.
    pub pool: PgPool,
    /// The test's connection to the broker, in the app's namespace.
    pub broker: Arc<Broker>,
    pub shards: Shards,
    replies: Replies,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    database: TestDatabase,
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
    let prefix = broker::random_namespace();
    let database = TestDatabase::create(format!("{prefix}_catalog")).await?;

    let settings = Settings {
        grpc: ListenSettings::ephemeral(),
        http: ListenSettings::ephemeral(),
        database: DatabaseSettings {
            url: database.url.clone(),
            max_connections: 4,
        },
        amqp: AmqpSettings {
            url: amqp_url(),
            namespace: prefix.clone(),
            connect_timeout_secs: 10,
        },
        ..Settings::default()
    };
    let shards = Shards::new(commands::CATALOG_SHARDS);
    let app = Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let ns = Namespace::new(prefix);
    let broker = Broker::connect(&amqp_url(), ns.clone(), "catalog-test", DEADLINE).await?;
    let channel = broker.channel().await?;
    // Bound to nothing: replies come through the default exchange, by name.
    let name = topology::declare_instance_queue(&channel, &ns, &[]).await?;
    let tap = Tap::open(&channel, &name).await?;

    Ok(TestApp {
        ns,
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
        database,
    })
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
        let command = ReserveStock {
            order_id,
            items: vec![LineItem {
                product_id: product,
                quantity,
            }],
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

    /// Stops the app and removes its database, queues and exchanges.
    pub async fn cleanup(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        let queues: Vec<String> = self
            .shards
            .queues(&self.ns.catalog_commands_queue())
            .into_iter()
            .flat_map(|queue| [Namespace::dead_letter_queue(&queue), queue])
            .collect();
        broker::delete_namespace(&self.ns, &queues).await?;
        self.broker.close().await;
        self.pool.close().await;
        self.database.drop().await
    }
}

/// The catalog's command shard count, as the publishers use it.
pub fn published_shards() -> Shards {
    Shards::new(commands::CATALOG_SHARDS)
}
