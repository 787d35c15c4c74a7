//! Wiring: bind listeners, connect to PostgreSQL and RabbitMQ, then serve
//! gRPC and consume the stock commands until shutdown, besides what every
//! service with an outbox runs (`signalbox_servicekit::OutboxService`):
//! health, the outbox relay, the retention purge and the census.

use std::{sync::Arc, time::Duration};

use signalbox_discovery::DiscoverySettings;
use signalbox_messages::channels::commands;
use signalbox_messaging::{Broker, ShardConsumers, Shards};
use signalbox_platform::{health::Health, serve, tokens::TokenVerifier};
use signalbox_proto::catalog::v1::catalog_service_server::CatalogServiceServer;
use signalbox_servicekit::{connect_broker, OutboxService};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{grpc::CatalogGrpc, reservations::CommandHandler, Settings};

pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    pool: PgPool,
    broker: Arc<Broker>,
    consumers: ShardConsumers,
    /// Verifies the operator tokens of `UpdateProduct` calls.
    verifier: Arc<TokenVerifier>,
    discovery: DiscoverySettings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let grpc_listener = serve::bind(&settings.grpc).await?;
        let http_listener = serve::bind(&settings.http).await?;

        let pool = serve::database(&settings.database).await?;
        sqlx::migrate!("../../migrations/catalog")
            .run(&pool)
            .await?;

        let broker = connect_broker(&settings.amqp, "catalog").await?;
        // The catalog's commands arrive on a sharded channel: the saga
        // routes every command about one order to the same shard queue
        // (by a hash of the order id), so a `release_stock` can never
        // overtake its `reserve_stock`. Every instance registers a consumer
        // on every shard; each shard queue is single-active-consumer, so one
        // instance handles a shard at a time and the others stand by for
        // it (see `signalbox_messaging::sharding`). Declared and registered
        // now, before anything can send to them; each consumer declares its
        // queue again whenever it reconnects.
        let ns = broker.namespace();
        let shards = Shards::new(commands::CATALOG_SHARDS);
        let queues = shards.work_queues(
            &ns.catalog_commands_queue(),
            &ns.commands_exchange(),
            &commands::CATALOG_COMMANDS,
        );
        // A random first shard per instance, so instances starting together
        // become active on different shards.
        let start = uuid::Uuid::new_v4().as_u128() as usize % shards.count;
        let rebalance = match settings.commands.rebalance_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let mut consumers = ShardConsumers::new(broker.clone(), queues, "catalog")
            .start_at(start)
            .rebalance_every(rebalance);
        consumers.attach().await?;

        // Keys are fetched on the first call, so catalog starts without auth.
        let verifier = Arc::new(TokenVerifier::new(settings.tokens.clone()));
        Ok(Self {
            grpc_listener,
            http_listener,
            pool,
            broker,
            consumers,
            verifier,
            discovery: settings.discovery,
        })
    }

    pub fn grpc_port(&self) -> u16 {
        serve::port(&self.grpc_listener)
    }

    pub fn http_port(&self) -> u16 {
        serve::port(&self.http_listener)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let grpc_port = self.grpc_port();
        let Self {
            grpc_listener,
            http_listener,
            pool,
            broker,
            consumers,
            verifier,
            discovery,
        } = self;

        // Ready only while every shard has this instance's consumer.
        let checks = Health::new().flag("commands", consumers.attached().probe());
        let grpc = serve::grpc(
            grpc_listener,
            CatalogServiceServer::new(CatalogGrpc::new(
                pool.clone(),
                broker.namespace().clone(),
                verifier,
            )),
            signalbox_proto::FILE_DESCRIPTOR_SET,
            OutboxService::readiness(checks.clone(), &pool, &broker),
            shutdown.clone(),
        );
        // One consumer task per shard queue, all with the same handler.
        let commands = consumers.run(
            Arc::new(CommandHandler::new(pool.clone())),
            shutdown.clone(),
        );

        OutboxService {
            name: "catalog",
            version: env!("CARGO_PKG_VERSION"),
            pool,
            broker,
            http: http_listener,
            grpc_port,
            discovery,
        }
        .run(
            checks,
            vec![serve::task("grpc", grpc), serve::task("commands", commands)],
            shutdown,
        )
        .await
    }
}
