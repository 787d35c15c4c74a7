//! Wiring: bind listeners, connect to PostgreSQL and RabbitMQ, then serve
//! gRPC, the reply consumer, the socket-command consumer and the saga's
//! deadline sweeper until shutdown,
//! besides what every service with an outbox runs
//! (`signalbox_servicekit::OutboxService`): health, the outbox relay, the
//! retention purge and the census.

use std::sync::Arc;

use signalbox_messaging::{Broker, Consumer, Source, WorkQueue};
use signalbox_platform::{health::Health, serve, tokens::TokenVerifier};
use signalbox_proto::orders::v1::order_service_server::OrderServiceServer;
use signalbox_servicekit::{connect_broker, OutboxService};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::CatalogClient,
    grpc::OrdersGrpc,
    inbound::{self, InboundHandler},
    saga::ReplyHandler,
    saga_timeouts::DeadlineSweeper,
    Settings,
};

pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    pool: PgPool,
    broker: Arc<Broker>,
    consumer: Consumer,
    /// Consumes `<ns>.orders.inbound`, the commands sockets send.
    inbound: Consumer,
    catalog: CatalogClient,
    /// Verifies the access token every gRPC call carries.
    verifier: Arc<TokenVerifier>,
    /// Rejects orders whose reservation had no reply in time.
    sweeper: DeadlineSweeper,
    /// How this instance announces its gRPC address (registry mode).
    discovery: signalbox_discovery::DiscoverySettings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let grpc_listener = serve::bind(&settings.grpc).await?;
        let http_listener = serve::bind(&settings.http).await?;

        let pool = serve::database(&settings.database).await?;
        sqlx::migrate!("../../migrations/orders").run(&pool).await?;

        let broker = connect_broker(&settings.amqp, "orders").await?;
        // The reply channel of the saga: catalog answers `reserve_stock` here
        // (through the default exchange, addressed by queue name). Durable,
        // so replies wait while orders is down; declared before orders can
        // send its first command, and again on every reconnect.
        let ns = broker.namespace();
        let replies = WorkQueue::new(ns.orders_replies_queue());
        let mut consumer = Consumer::new(broker.clone(), Source::Work(replies), "orders");
        consumer.attach().await?;
        // Commands from sockets (`order.place`, `order.cancel`): one durable
        // work queue on the inbound exchange that every instance consumes.
        let inbound_queue = inbound::work_queue(ns);
        let mut inbound = Consumer::new(
            broker.clone(),
            Source::Work(inbound_queue),
            inbound::CONSUMER_TAG,
        );
        inbound.attach().await?;

        // Pricing calls to catalog, balanced over its instances as
        // `discovery` finds them (DNS by default, etcd in registry mode).
        let catalog = CatalogClient::new(
            &settings.upstreams,
            &settings.resilience.catalog,
            &settings.discovery,
        )?;

        let sweeper = DeadlineSweeper::new(pool.clone(), ns.clone(), &settings.saga);
        // Keys are fetched on the first call, so orders starts without auth.
        let verifier = Arc::new(TokenVerifier::new(settings.tokens.clone()));

        Ok(Self {
            grpc_listener,
            http_listener,
            pool,
            broker,
            consumer,
            inbound,
            catalog,
            verifier,
            sweeper,
            discovery: settings.discovery.clone(),
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
            consumer,
            inbound,
            catalog,
            verifier,
            sweeper,
            discovery,
        } = self;

        // Ready only while the saga's reply consumer and the socket
        // commands' consumer are attached.
        let checks = Health::new()
            .flag("replies", consumer.attached().probe())
            .flag("inbound", inbound.attached().probe());
        let grpc = serve::grpc(
            grpc_listener,
            OrderServiceServer::new(OrdersGrpc::new(
                pool.clone(),
                catalog.clone(),
                broker.namespace().clone(),
                verifier,
            )),
            signalbox_proto::FILE_DESCRIPTOR_SET,
            OutboxService::readiness(checks.clone(), &pool, &broker),
            shutdown.clone(),
        );

        let replies = consumer.run(
            ReplyHandler::new(pool.clone(), broker.namespace().clone()),
            shutdown.clone(),
        );
        let deadlines = sweeper.run(shutdown.clone());
        let inbound = inbound.run(
            InboundHandler::new(pool.clone(), catalog, broker.clone()),
            shutdown.clone(),
        );

        OutboxService {
            name: "orders",
            version: env!("CARGO_PKG_VERSION"),
            pool,
            broker,
            http: http_listener,
            grpc_port,
            discovery,
        }
        .run(
            checks,
            vec![
                serve::task("grpc", grpc),
                serve::task("replies", replies),
                serve::task("inbound", inbound),
                serve::background("saga-deadlines", deadlines),
            ],
            shutdown,
        )
        .await
    }
}
