//! Wiring: bind listeners, connect to PostgreSQL and RabbitMQ, then serve
//! gRPC, health, the command consumer, the outbox relay and the retention
//! purge until shutdown.

use std::{sync::Arc, time::Duration};

use signalbox_messages::channels::{commands, Namespace};
use signalbox_messaging::{
    retention::{self, Retention},
    Broker, Consumer, OutboxRelay, Source, WorkQueue,
};
use signalbox_platform::{health::Health, serve};
use signalbox_proto::catalog::v1::catalog_service_server::CatalogServiceServer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{events::CommandHandler, grpc::CatalogGrpc, Settings};

pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    pool: PgPool,
    broker: Arc<Broker>,
    consumer: Consumer,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let grpc_listener = serve::bind(&settings.grpc).await?;
        let http_listener = serve::bind(&settings.http).await?;

        let pool = serve::database(&settings.database).await?;
        sqlx::migrate!("../../migrations/catalog")
            .run(&pool)
            .await?;

        let broker = Broker::connect(
            &settings.amqp.url,
            Namespace::new(&settings.amqp.namespace),
            "catalog",
            Duration::from_secs(settings.amqp.connect_timeout_secs),
        )
        .await?;
        // The catalog's command queue: point-to-point, one queue for every
        // catalog instance (competing consumers), retries and dead letters
        // beside it. Declared now, before anything can send to it; the
        // consumer declares it again whenever it reconnects.
        let ns = broker.namespace();
        let commands = WorkQueue::new(ns.catalog_commands_queue())
            .bind(ns.commands_exchange(), commands::RESERVE_STOCK)
            .bind(ns.commands_exchange(), commands::RELEASE_STOCK);
        let mut consumer = Consumer::new(broker.clone(), Source::Work(commands), "catalog");
        consumer.attach().await?;

        Ok(Self {
            grpc_listener,
            http_listener,
            pool,
            broker,
            consumer,
        })
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    pub fn http_port(&self) -> u16 {
        self.http_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            grpc_listener,
            http_listener,
            pool,
            broker,
            consumer,
        } = self;

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<CatalogServiceServer<CatalogGrpc>>()
            .await;
        let grpc = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(serve::reflection(signalbox_proto::FILE_DESCRIPTOR_SET)?)
            .add_service(CatalogServiceServer::new(CatalogGrpc::new(pool.clone())))
            .serve_with_incoming_shutdown(
                serve::grpc_incoming(grpc_listener),
                shutdown.clone().cancelled_owned(),
            );

        let attached = consumer.attached();
        let health = Health::new()
            .database(pool.clone())
            .flag("broker", {
                let broker = broker.clone();
                move || broker.is_connected()
            })
            .flag("commands", move || attached.get());
        let http = serve::http(http_listener, health.router(), shutdown.clone());
        let consuming = consumer.run(CommandHandler::new(pool.clone()), shutdown.clone());
        let relay = OutboxRelay::new(pool.clone(), broker.clone()).run(shutdown.clone());
        let purge = retention::run(pool.clone(), Retention::default(), shutdown.clone());

        let result = serve::run_all(
            shutdown.clone(),
            vec![
                serve::task("grpc", async move { Ok(grpc.await?) }),
                serve::task("http", async move { Ok(http.await?) }),
                serve::task("commands", async move { Ok(consuming.await?) }),
                serve::task("outbox-relay", async move {
                    relay.await;
                    Ok(())
                }),
                serve::task("retention", async move {
                    purge.await;
                    Ok(())
                }),
            ],
        )
        .await;
        broker.close().await;
        pool.close().await;
        result
    }
}
