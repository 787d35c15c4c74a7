//! Test harness: an orders service on port 0 with a fresh database and a
//! random AMQP namespace, a fake catalog for pricing (gRPC), and NO catalog
//! consumer: nothing answers `reserve_stock` unless the test does.
//!
//! The test stands in for the auth service too: it holds a signing key,
//! serves its JWKS on port 0 for orders' verifier, and mints the access
//! tokens its calls carry ([`TestApp::token_for`]).
//!
//! The test watches the broker through two private queues declared before
//! the first order: one bound to the order events, one bound to the catalog
//! commands. The second also makes the saga's commands routable (the relay
//! publishes them `mandatory`), standing in for catalog's command queue.

use std::sync::Arc;

use lapin::{message::Delivery, options::QueueBindOptions, types::FieldTable, Channel};
use signalbox_messages::{
    catalog::{ReservationOutcome, ReserveStockReply},
    channels::{commands, Namespace},
    Envelope,
};
use signalbox_messaging::{
    amqp, topology, Broker, ConfirmedPublisher, Outgoing, Shards, WorkQueue,
};
use signalbox_orders::{
    config::{SagaSettings, Upstreams},
    Application, Settings,
};
use signalbox_platform::config::{ListenSettings, VerifierSettings};
use signalbox_proto::{
    catalog::v1::{
        catalog_service_server::{CatalogService, CatalogServiceServer},
        BatchGetProductsRequest, BatchGetProductsResponse, GetProductRequest, ListProductsRequest,
        ListProductsResponse, Product,
    },
    orders::v1::{
        order_service_client::OrderServiceClient, CreateOrderRequest, GetOrderRequest, LineItem,
        Order,
    },
};
use signalbox_testkit::{
    broker::{self, amqp_url, Tap},
    tokens::{claims, serve_jwks, TestKey, AUDIENCE, ISSUER},
    Sandbox,
};
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{transport::Channel as GrpcChannel, Request, Response, Status};
use uuid::Uuid;

/// The longest any awaited event may take.
pub use signalbox_testkit::DEADLINE;

/// The price the fake catalog quotes for every product.
pub const UNIT_PRICE_CENTS: i64 = 250;

/// Settings for a saga whose deadline passes quickly.
pub fn quick_deadline() -> SagaSettings {
    SagaSettings {
        reservation_timeout_secs: 1,
        sweep_interval_ms: 100,
    }
}

/// Settings for a saga whose deadline never passes during a test; tests
/// then call `saga_timeouts::sweep` themselves.
pub fn distant_deadline() -> SagaSettings {
    SagaSettings {
        reservation_timeout_secs: 3600,
        sweep_interval_ms: 100,
    }
}

pub struct TestApp {
    pub orders: OrderServiceClient<GrpcChannel>,
    /// The connection to orders' gRPC port, for clients of other shapes.
    pub grpc: GrpcChannel,
    /// The key orders' verifier trusts (through the JWKS the test serves).
    pub keys: TestKey,
    /// The orders database, for assertions and for running sweeps directly.
    pub pool: PgPool,
    pub ns: Namespace,
    /// Order events (`order.*`) as the broker routes them.
    pub events: Observer,
    /// Catalog commands (`reserve_stock`, `release_stock`).
    pub commands: Observer,
    /// The test's own connection (observers, replies it publishes).
    broker: Arc<Broker>,
    /// Keeps the observers' channel open.
    _channel: Channel,
    shutdown: CancellationToken,
    app: JoinHandle<anyhow::Result<()>>,
    /// The database, the durable queues and the exchanges of the test,
    /// removed by [`TestApp::cleanup`] or, when a test panicked, on drop.
    /// Declared last, so it is dropped after the test's own connections.
    sandbox: Sandbox,
}

pub async fn spawn_app(saga: SagaSettings) -> anyhow::Result<TestApp> {
    // Logs go through the test harness: shown for failing tests only.
    signalbox_platform::telemetry::init_for_tests();
    let mut sandbox = Sandbox::new();
    let ns = sandbox.namespace().clone();
    let database = sandbox.database("orders").await?;
    sandbox.queues(durable_queues(&ns));

    let shutdown = CancellationToken::new();
    sandbox.stops(shutdown.clone());
    let catalog = serve_fake_catalog(shutdown.clone()).await?;
    let keys = TestKey::generate();
    let jwks_url = serve_jwks(keys.jwks(), shutdown.clone()).await?;

    // The observers first: the saga's first command must find a queue.
    let broker = Broker::connect(&amqp_url(), ns.clone(), "orders-test", DEADLINE).await?;
    let channel = broker.channel().await?;
    let events_queue = topology::declare_instance_queue(&channel, &ns, &["order.*"]).await?;
    let commands_queue = topology::declare_instance_queue(&channel, &ns, &[]).await?;
    for key in command_keys() {
        channel
            .queue_bind(
                commands_queue.as_str().into(),
                ns.commands_exchange().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let events = Observer(Tap::open(&channel, &events_queue).await?);
    let commands = Observer(Tap::open(&channel, &commands_queue).await?);

    let settings = Settings {
        grpc: ListenSettings::ephemeral(),
        http: ListenSettings::ephemeral(),
        database: database.settings(5),
        amqp: broker::settings(&ns),
        upstreams: Upstreams {
            catalog,
            catalog_timeout_ms: 2_000,
        },
        tokens: VerifierSettings {
            jwks_url,
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            leeway_secs: 5,
        },
        saga,
        ..Settings::default()
    };
    let app = Application::build(settings).await?;
    let grpc_port = app.grpc_port();
    let app = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let grpc = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))?
        .connect()
        .await?;
    let orders = OrderServiceClient::new(grpc.clone());
    let pool = PgPool::connect(&database.url).await?;

    Ok(TestApp {
        orders,
        grpc,
        keys,
        pool,
        ns,
        events,
        commands,
        broker,
        _channel: channel,
        shutdown,
        app,
        sandbox,
    })
}

/// The durable queues orders declares in `ns`: its reply queue and its
/// inbound queue (commands from sockets), each with its retry and
/// dead-letter queues.
fn durable_queues(ns: &Namespace) -> Vec<String> {
    [
        WorkQueue::new(ns.orders_replies_queue()),
        signalbox_orders::inbound::work_queue(ns),
    ]
    .iter()
    .flat_map(WorkQueue::declared_queues)
    .collect()
}

/// Every routing key a catalog command carries: the saga routes each one to
/// the shard of its order (`<type>.<shard>`, see
/// `signalbox_messaging::sharding`), so the observer binds every shard's key.
fn command_keys() -> Vec<String> {
    let shards = Shards::new(commands::CATALOG_SHARDS);
    commands::CATALOG_COMMANDS
        .into_iter()
        .flat_map(|command| {
            (0..shards.count).map(move |shard| Shards::shard_routing_key(command, shard))
        })
        .collect()
}

impl TestApp {
    /// A valid access token of `user_id`, with a user's scopes.
    pub fn token_for(&self, user_id: &str) -> String {
        self.keys.sign(&claims(user_id))
    }

    /// Places an order of two units of one (fake) product for `user_id`,
    /// with a token of that user.
    pub async fn place_order(&self, user_id: &str) -> anyhow::Result<Order> {
        let request = CreateOrderRequest {
            items: vec![LineItem {
                product_id: Uuid::now_v7().to_string(),
                quantity: 2,
            }],
        };
        let request = with_token(request, &self.token_for(user_id));
        Ok(self
            .orders
            .clone()
            .create_order(request)
            .await?
            .into_inner())
    }

    /// Reads an order with a token of `user_id`.
    pub async fn get_order(&self, user_id: &str, order_id: &str) -> anyhow::Result<Order> {
        let request = GetOrderRequest {
            order_id: order_id.to_owned(),
        };
        let request = with_token(request, &self.token_for(user_id));
        Ok(self.orders.clone().get_order(request).await?.into_inner())
    }

    /// Publishes catalog's answer to the order's reservation onto the
    /// orders reply channel, as catalog's relay would.
    pub async fn reply(
        &self,
        order_id: Uuid,
        outcome: ReservationOutcome,
    ) -> anyhow::Result<Envelope> {
        let envelope =
            Envelope::new::<ReserveStockReply>().with_correlation_id(order_id.to_string());
        let reply = ReserveStockReply { order_id, outcome };
        let message = Outgoing::reply(&self.ns.orders_replies_queue(), envelope.clone(), &reply);
        let publisher = ConfirmedPublisher::new(&self.broker).await?;
        publisher.publish(&message).await?;
        publisher.close().await;
        Ok(envelope)
    }

    /// The test's own broker connection, in the service's namespace.
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Messages waiting in the dead-letter queue of the orders reply channel.
    pub async fn dead_replies(&self) -> anyhow::Result<u32> {
        let channel = self.broker.channel().await?;
        let dead_letters = Namespace::dead_letter_queue(&self.ns.orders_replies_queue());
        broker::queue_depth(&channel, &dead_letters).await
    }

    /// Stops the service (it must stop cleanly) and removes everything the
    /// test created.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        (&mut self.app).await??;
        self.broker.close().await;
        self.pool.close().await;
        self.sandbox.remove().await
    }
}

/// `message` as a call carrying `token`, the way the gateway makes it.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a signed token is visible ASCII"),
    );
    request
}

/// An observer of order events or catalog commands: a [`Tap`] that reads
/// each delivery's envelope.
pub struct Observer(Tap);

impl Observer {
    pub async fn next(&mut self) -> anyhow::Result<(Envelope, Delivery)> {
        let delivery = self.0.next().await?;
        Ok((amqp::from_properties(&delivery.properties)?, delivery))
    }

    /// The next message of type `message_type`, skipping others.
    pub async fn next_of(
        &mut self,
        message_type: &str,
    ) -> anyhow::Result<(Envelope, serde_json::Value)> {
        loop {
            let (envelope, delivery) = self.next().await?;
            if envelope.message_type == message_type {
                return Ok((envelope, serde_json::from_slice(&delivery.data)?));
            }
        }
    }
}

/// Serves a catalog that quotes every product it is asked about at
/// [`UNIT_PRICE_CENTS`]; returns its URL.
async fn serve_fake_catalog(shutdown: CancellationToken) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let incoming = signalbox_platform::serve::grpc_incoming(listener);
    let server = tonic::transport::Server::builder()
        .add_service(CatalogServiceServer::new(FakeCatalog))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
    // The fake catalog: answers pricing calls until the test ends.
    tokio::spawn(server);
    Ok(url)
}

struct FakeCatalog;

#[tonic::async_trait]
impl CatalogService for FakeCatalog {
    async fn get_product(
        &self,
        _request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        Err(Status::unimplemented("the fake catalog only prices"))
    }

    async fn list_products(
        &self,
        _request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        Ok(Response::new(ListProductsResponse::default()))
    }

    async fn batch_get_products(
        &self,
        request: Request<BatchGetProductsRequest>,
    ) -> Result<Response<BatchGetProductsResponse>, Status> {
        let products = request
            .into_inner()
            .ids
            .into_iter()
            .map(|id| Product {
                sku: format!("SKU-{id}"),
                name: "Thing".to_owned(),
                id,
                price_cents: UNIT_PRICE_CENTS,
                currency: "EUR".to_owned(),
                stock: 100,
            })
            .collect();
        Ok(Response::new(BatchGetProductsResponse {
            products,
            missing: Vec::new(),
        }))
    }
}

/// The harness itself: a test that fails half-way leaves nothing behind.
#[tokio::test]
async fn a_test_that_panics_leaves_no_database_queues_or_exchanges() -> anyhow::Result<()> {
    use std::panic::AssertUnwindSafe;

    use futures::FutureExt;

    let app = spawn_app(distant_deadline()).await?;
    let footprint = app.sandbox.footprint();
    let present = footprint.present().await?;
    for object in [
        format!("database {}_orders", app.ns.prefix()),
        format!("queue {}", app.ns.orders_replies_queue()),
        format!("exchange {}", app.ns.events_exchange()),
    ] {
        assert!(present.contains(&object), "{object} missing in {present:?}");
    }

    let test = AssertUnwindSafe(async move {
        let _app = app;
        panic!("a failed assertion");
    });
    assert!(test.catch_unwind().await.is_err());

    footprint.await_gone().await
}
