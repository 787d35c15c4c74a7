//! What every service with an outbox runs besides its own work.
//!
//! Orders and catalog differ in what they serve (gRPC) and what they consume
//! (replies, sharded commands), and in nothing else: both answer readiness
//! over HTTP, relay their outbox, purge old messaging rows, answer the
//! census, and keep their gRPC address registered (discovery mode
//! `registry`); both close the broker and the pool last. That common tail is
//! [`OutboxService::run`], so a new service with an outbox gets all of it by
//! construction, and a change to it is made once.

use std::sync::Arc;

use signalbox_discovery::DiscoverySettings;
use signalbox_messaging::{
    census,
    retention::{self, Retention},
    Broker, OutboxRelay,
};
use signalbox_platform::{
    health::Health,
    serve::{self, Task},
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The parts of a service with an outbox that the common tail uses.
pub struct OutboxService {
    /// The service's name in the census (`orders`, `catalog`).
    pub name: &'static str,
    /// The version it reports in the census (its `CARGO_PKG_VERSION`).
    pub version: &'static str,
    /// The service's database, holding the `outbox` and `processed_messages`
    /// tables.
    pub pool: PgPool,
    pub broker: Arc<Broker>,
    /// The bound listener for liveness and readiness.
    pub http: TcpListener,
    /// The port the service's gRPC listener is bound to, and how it is
    /// announced: in discovery mode `registry` this instance registers
    /// `name` at its advertised address (`signalbox_discovery::register`);
    /// in `dns` mode nothing is announced.
    pub grpc_port: u16,
    pub discovery: DiscoverySettings,
}

impl OutboxService {
    /// A service's readiness: its own `checks` (its consumers attached),
    /// plus its database and the broker. Without its database a service can
    /// neither serve nor commit what it consumes, and without the broker its
    /// outbox backs up and its consumers stop; either takes it out of the
    /// load balancer until it is back, without restarting it. The same
    /// checks answer `/health/ready` and drive the gRPC health protocol
    /// (`serve::grpc`).
    pub fn readiness(checks: Health, pool: &PgPool, broker: &Arc<Broker>) -> Health {
        checks.database(pool.clone()).flag("broker", broker.probe())
    }

    /// Runs the service's own `tasks` (its servers and consumers) and the
    /// common ones until all have stopped (see [`serve::run_all`]), then
    /// closes the broker connection and the pool. `checks` are the service's
    /// own readiness checks (its consumers attached); the database and the
    /// broker are added here.
    pub async fn run(
        self,
        checks: Health,
        mut tasks: Vec<(&'static str, Task)>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self {
            name,
            version,
            pool,
            broker,
            http,
            grpc_port,
            discovery,
        } = self;
        // First, so that a bad advertised address fails before anything
        // starts. Registering goes on in the background from here (the
        // listener is bound and everything the service needs is connected);
        // the `registration` task below withdraws it on shutdown.
        let registration = signalbox_discovery::register(name, grpc_port, &discovery)?;

        let health = Self::readiness(checks, &pool, &broker);
        tasks.push(serve::task(
            "http",
            serve::http(http, health.router(), shutdown.clone()),
        ));

        // The outbox relay: publishes the rows the service's transactions
        // committed, with publisher confirms, in commit order. It retries its
        // own failures (the rows wait in the table), so it cannot fail.
        tasks.push(serve::background(
            "outbox-relay",
            OutboxRelay::new(pool.clone(), broker.clone()).run(shutdown.clone()),
        ));

        // Retention: purges published outbox rows and old processed-message
        // ids, so the two tables stay small; a failed round waits for the
        // next.
        tasks.push(serve::background(
            "retention",
            retention::run(pool.clone(), Retention::default(), shutdown.clone()),
        ));

        // The census responder: answers "which instances are running?" (the
        // gateway's `/api/system/instances`) from this instance's private
        // queue; like every consumer it resumes after a broker failure.
        tasks.push(serve::task(
            "census",
            census::Responder::new(broker.clone(), name, version).run(shutdown.clone()),
        ));

        // Self-registration: keeps this instance's gRPC address in the
        // registry while it serves, and withdraws it as soon as shutdown
        // begins, so clients stop choosing it while in-flight calls drain.
        // It retries etcd on its own, so it cannot fail.
        tasks.push(serve::background(
            "registration",
            registration.hold_until(shutdown.clone()),
        ));

        let result = serve::run_all(shutdown, tasks).await;
        // Last, when nothing uses them any more: a polite close lets the
        // broker release this instance's exclusive queues at once.
        broker.close().await;
        pool.close().await;
        result
    }
}
