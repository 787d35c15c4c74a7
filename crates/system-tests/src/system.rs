//! Starting and stopping all five services against fresh infrastructure.

use std::time::Duration;

use signalbox_messages::channels::Namespace;
use signalbox_platform::config::{
    AmqpSettings, DatabaseSettings, ListenSettings, VerifierSettings,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{child::ChildService, infra, Api};

/// How many realtime instances a test system runs (fan-out needs two).
pub const REALTIME_INSTANCES: usize = 2;

pub struct TestSystem {
    pub namespace: Namespace,
    pub api: Api,
    /// `ws://127.0.0.1:<port>/ws` of each realtime instance.
    pub realtime: Vec<String>,
    databases: Vec<String>,
    /// The server they are on (a URL without a database).
    database_server: String,
    /// Whether that is a test's private server (`Options::database_server`):
    /// its databases go with it, nothing to drop.
    private_database_server: bool,
    /// Every service's name and HTTP port, for `/health/ready`.
    health: Vec<(&'static str, u16)>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Catalog, when it runs in a child process (`Options::catalog_process`).
    pub catalog_process: Option<ChildService>,
    /// The first orders instance (the one the gateway calls), when it runs
    /// in a child process (`Options::orders_process`).
    pub orders_process: Option<ChildService>,
    /// The first realtime instance (`realtime[0]`), when it runs in a child
    /// process (`Options::realtime_process`).
    pub realtime_process: Option<ChildService>,
    cleaned: bool,
}

/// Changes a service's settings before it is built.
pub type Configure<S> = Box<dyn FnOnce(&mut S) + Send>;

/// Changes the settings of every instance of a service before it is built.
pub type ConfigureEach<S> = Box<dyn Fn(&mut S) + Send>;

/// Adjustments to the settings of a test system's services, applied after
/// the harness filled in ports, databases and namespace.
#[derive(Default)]
pub struct Options {
    /// For the auth service (e.g. a known signing key, a throttle).
    pub auth: Option<Configure<signalbox_auth::Settings>>,
    /// For the gateway (e.g. its rate limit or header limit).
    pub gateway: Option<Configure<signalbox_gateway::Settings>>,
    /// How many orders instances run (competing consumers); 0 means one.
    pub orders_instances: usize,
    /// Runs catalog in a child process of its own
    /// ([`TestSystem::catalog_process`]), so that a test can freeze it: the
    /// path of the `catalog-child` binary
    /// (`env!("CARGO_BIN_EXE_catalog-child")` in an integration test).
    pub catalog_process: Option<std::path::PathBuf>,
    /// The PostgreSQL server for the services' databases (a URL without a
    /// database), such as a test's
    /// [`PrivateServer`](signalbox_testkit::pg_server::PrivateServer) that
    /// the test restarts; default the shared server. The databases on it
    /// are not dropped at the end: they go with the server.
    pub database_server: Option<String>,
    /// Runs the first orders instance in a child process of its own
    /// ([`TestSystem::orders_process`]), so that a test can kill it: the
    /// path of the `orders-child` binary
    /// (`env!("CARGO_BIN_EXE_orders-child")` in an integration test).
    pub orders_process: Option<std::path::PathBuf>,
    /// More environment for the catalog and orders children (a fault point
    /// armed with [`crate::child::ABORT_AT`], for example).
    pub child_env: Vec<(String, String)>,
    /// Runs the first realtime instance (`realtime[0]`) in a child process
    /// of its own ([`TestSystem::realtime_process`]), so that a test can
    /// freeze it: the path of the `realtime-child` binary
    /// (`env!("CARGO_BIN_EXE_realtime-child")` in an integration test).
    pub realtime_process: Option<std::path::PathBuf>,
    /// More `APP__…` settings for that child (its bounds, for example).
    pub realtime_process_env: Vec<(String, String)>,
    /// For every realtime instance that runs in this process.
    pub realtime: Option<ConfigureEach<signalbox_realtime::Settings>>,
}

impl TestSystem {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Like [`Self::start`], with service settings adjusted by `options`.
    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        signalbox_platform::telemetry::init_for_tests();
        let prefix = infra::random_namespace();
        let namespace = Namespace::new(prefix.clone());
        let shutdown = CancellationToken::new();
        let mut system = Self {
            namespace: namespace.clone(),
            api: Api::new(String::new()),
            realtime: Vec::new(),
            databases: Vec::new(),
            database_server: options
                .database_server
                .clone()
                .unwrap_or_else(infra::database_server_url),
            private_database_server: options.database_server.is_some(),
            health: Vec::new(),
            shutdown: shutdown.clone(),
            tasks: Vec::new(),
            catalog_process: None,
            orders_process: None,
            realtime_process: None,
            cleaned: false,
        };
        // From here on, a failure still cleans up (Drop).
        let database = |url: String| DatabaseSettings::new(url, 4);
        let amqp = AmqpSettings {
            namespace: prefix.clone(),
            url: infra::amqp_url().into(),
            connect_timeout_secs: 10,
        };

        let mut urls = Vec::new();
        for service in ["auth", "catalog", "orders"] {
            let name = format!("{prefix}_{service}");
            urls.push(infra::create_database(&system.database_server, &name).await?);
            system.databases.push(name);
        }
        let [auth_db, catalog_db, orders_db] =
            <[String; 3]>::try_from(urls).map_err(|_| anyhow::anyhow!("three databases"))?;

        // auth
        let mut settings = signalbox_auth::Settings {
            grpc: ListenSettings::ephemeral(),
            http: ListenSettings::ephemeral(),
            database: database(auth_db),
            ..Default::default()
        };
        if let Some(configure) = options.auth {
            configure(&mut settings);
        }
        let auth = signalbox_auth::Application::build(settings).await?;
        let auth_grpc = format!("http://127.0.0.1:{}", auth.grpc_port());
        let verifier = VerifierSettings {
            jwks_url: format!(
                "http://127.0.0.1:{}/.well-known/jwks.json",
                auth.http_port()
            ),
            ..VerifierSettings::default()
        };
        system.health.push(("auth", auth.http_port()));
        system.spawn(auth.run_until_stopped(shutdown.child_token()));

        // catalog: in this process, or in a child process of its own for a
        // scenario that freezes it (`Options::catalog_process`), with the
        // same settings as environment variables.
        let catalog_grpc = if let Some(exe) = &options.catalog_process {
            let child = ChildService::catalog(
                exe,
                vec![
                    ("APP__GRPC__HOST".into(), "127.0.0.1".into()),
                    ("APP__GRPC__PORT".into(), "0".into()),
                    ("APP__HTTP__HOST".into(), "127.0.0.1".into()),
                    ("APP__HTTP__PORT".into(), "0".into()),
                    ("APP__DATABASE__URL".into(), catalog_db.clone()),
                    ("APP__DATABASE__MAX_CONNECTIONS".into(), "4".into()),
                    ("APP__AMQP__URL".into(), infra::amqp_url()),
                    ("APP__AMQP__NAMESPACE".into(), prefix.clone()),
                    ("APP__AMQP__CONNECT_TIMEOUT_SECS".into(), "10".into()),
                    ("APP__TOKENS__JWKS_URL".into(), verifier.jwks_url.clone()),
                ]
                .into_iter()
                .chain(options.child_env.iter().cloned())
                .collect(),
            )
            .await?;
            system.health.push(("catalog", child.http_port));
            let url = format!("http://127.0.0.1:{}", child.grpc_port);
            system.catalog_process = Some(child);
            url
        } else {
            let settings = signalbox_catalog::Settings {
                grpc: ListenSettings::ephemeral(),
                http: ListenSettings::ephemeral(),
                database: database(catalog_db),
                amqp: amqp.clone(),
                // Catalog verifies the operator token of `UpdateProduct`.
                tokens: verifier.clone(),
                ..Default::default()
            };
            let catalog = signalbox_catalog::Application::build(settings).await?;
            let url = format!("http://127.0.0.1:{}", catalog.grpc_port());
            system.health.push(("catalog", catalog.http_port()));
            system.spawn(catalog.run_until_stopped(shutdown.child_token()));
            url
        };

        // orders
        let defaults = signalbox_orders::Settings::default();
        let settings = signalbox_orders::Settings {
            grpc: ListenSettings::ephemeral(),
            http: ListenSettings::ephemeral(),
            database: database(orders_db),
            amqp: amqp.clone(),
            upstreams: signalbox_orders::config::Upstreams {
                catalog: catalog_grpc.clone(),
                ..defaults.upstreams.clone()
            },
            // Orders verifies the token of every call, like the gateway.
            tokens: verifier.clone(),
            ..defaults
        };
        // The gateway calls the first instance; every instance consumes the
        // shared queues (saga replies, socket commands).
        let mut orders_grpc = String::new();
        // The first in a child process of its own for a scenario that kills
        // it (`Options::orders_process`), with the same settings.
        if let Some(exe) = &options.orders_process {
            let child = ChildService::orders(
                exe,
                vec![
                    ("APP__GRPC__HOST".into(), "127.0.0.1".into()),
                    ("APP__GRPC__PORT".into(), "0".into()),
                    ("APP__HTTP__HOST".into(), "127.0.0.1".into()),
                    ("APP__HTTP__PORT".into(), "0".into()),
                    (
                        "APP__DATABASE__URL".into(),
                        secrecy::ExposeSecret::expose_secret(&settings.database.url).to_owned(),
                    ),
                    ("APP__DATABASE__MAX_CONNECTIONS".into(), "4".into()),
                    ("APP__AMQP__URL".into(), infra::amqp_url()),
                    ("APP__AMQP__NAMESPACE".into(), prefix.clone()),
                    ("APP__AMQP__CONNECT_TIMEOUT_SECS".into(), "10".into()),
                    ("APP__UPSTREAMS__CATALOG".into(), catalog_grpc.clone()),
                    (
                        "APP__TOKENS__JWKS_URL".into(),
                        settings.tokens.jwks_url.clone(),
                    ),
                ]
                .into_iter()
                .chain(options.child_env.iter().cloned())
                .collect(),
            )
            .await?;
            orders_grpc = format!("http://127.0.0.1:{}", child.grpc_port);
            system.health.push(("orders", child.http_port));
            system.orders_process = Some(child);
        }
        let in_process =
            options.orders_instances.max(1) - usize::from(options.orders_process.is_some());
        for _ in 0..in_process {
            let orders = signalbox_orders::Application::build(settings.clone()).await?;
            if orders_grpc.is_empty() {
                orders_grpc = format!("http://127.0.0.1:{}", orders.grpc_port());
            }
            system.health.push(("orders", orders.http_port()));
            system.spawn(orders.run_until_stopped(shutdown.child_token()));
        }

        // realtime, twice: each instance reads the whole event log (fan-out);
        // the first in a child process of its own for a scenario that
        // freezes it (`Options::realtime_process`).
        for instance in 0..REALTIME_INSTANCES {
            if let (0, Some(exe)) = (instance, &options.realtime_process) {
                let mut env: Vec<(String, String)> = vec![
                    ("APP__HTTP__HOST".into(), "127.0.0.1".into()),
                    ("APP__HTTP__PORT".into(), "0".into()),
                    ("APP__AMQP__URL".into(), infra::amqp_url()),
                    ("APP__AMQP__NAMESPACE".into(), prefix.clone()),
                    ("APP__AMQP__CONNECT_TIMEOUT_SECS".into(), "10".into()),
                    ("APP__TOKENS__JWKS_URL".into(), verifier.jwks_url.clone()),
                ];
                env.extend(options.realtime_process_env.iter().cloned());
                let child = ChildService::realtime(exe, env).await?;
                system
                    .realtime
                    .push(format!("ws://127.0.0.1:{}/ws", child.http_port));
                system.health.push(("realtime", child.http_port));
                system.realtime_process = Some(child);
                continue;
            }
            let mut settings = signalbox_realtime::Settings {
                http: ListenSettings::ephemeral(),
                amqp: amqp.clone(),
                tokens: verifier.clone(),
                ..Default::default()
            };
            if let Some(configure) = &options.realtime {
                configure(&mut settings);
            }
            let realtime = signalbox_realtime::Application::build(settings).await?;
            system
                .realtime
                .push(format!("ws://127.0.0.1:{}/ws", realtime.http_port()));
            system.health.push(("realtime", realtime.http_port()));
            system.spawn(realtime.run_until_stopped(shutdown.child_token()));
        }

        // gateway
        let mut settings = signalbox_gateway::Settings {
            http: ListenSettings::ephemeral(),
            upstreams: signalbox_gateway::config::Upstreams {
                auth: auth_grpc,
                orders: orders_grpc,
                catalog: catalog_grpc,
            },
            tokens: verifier,
            // The census asks this system's services, not the default namespace.
            amqp: Some(amqp.clone()),
            // The live page opens its socket on this system's realtime.
            page: signalbox_gateway::config::PageSettings {
                realtime_urls: system.realtime.clone(),
            },
            ..Default::default()
        };
        if let Some(configure) = options.gateway {
            configure(&mut settings);
        }
        let gateway = signalbox_gateway::Application::build(settings).await?;
        system.api = Api::new(format!("http://127.0.0.1:{}", gateway.http_port()));
        system.health.push(("gateway", gateway.http_port()));
        system.spawn(gateway.run_until_stopped(shutdown.child_token()));

        system.wait_until_ready().await?;
        Ok(system)
    }

    /// Waits until every service answers `/health/ready` with 200, as a
    /// load balancer would before sending traffic.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        for (_, port) in &self.health {
            let url = format!("http://127.0.0.1:{port}/health/ready");
            await_status(&url, reqwest::StatusCode::OK).await?;
        }
        Ok(())
    }

    /// The URL of a service's database (`auth`, `orders`, `catalog`), for
    /// tests that prepare or inspect state directly.
    pub fn database_url(&self, service: &str) -> Option<String> {
        let name = format!("{}_{service}", self.namespace.prefix());
        self.databases
            .contains(&name)
            .then(|| format!("{}/{name}", self.database_server))
    }

    /// The readiness URL of the (first) instance of `service`.
    pub fn ready_url(&self, service: &str) -> Option<String> {
        self.health
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, port)| format!("http://127.0.0.1:{port}/health/ready"))
    }

    fn spawn<F>(&mut self, service: F)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.push(tokio::spawn(service));
    }

    /// Stops every service gracefully, then removes the databases and the
    /// broker objects of this system. Fails if a service failed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut failures = Vec::new();
        if let Some(catalog) = self.catalog_process.take() {
            if let Err(error) = catalog.stop().await {
                failures.push(format!("{error:#}"));
            }
        }
        if let Some(orders) = self.orders_process.take() {
            if let Err(error) = orders.stop().await {
                failures.push(format!("{error:#}"));
            }
        }
        if let Some(realtime) = self.realtime_process.take() {
            if let Err(error) = realtime.stop().await {
                failures.push(format!("{error:#}"));
            }
        }
        for task in std::mem::take(&mut self.tasks) {
            match tokio::time::timeout(Duration::from_secs(15), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => failures.push(format!("{error:#}")),
                Ok(Err(join)) => failures.push(format!("service panicked: {join}")),
                Err(_) => failures.push("a service did not stop within 15 s".to_owned()),
            }
        }
        self.cleanup().await?;
        anyhow::ensure!(failures.is_empty(), "services failed: {failures:?}");
        Ok(())
    }

    async fn cleanup(&mut self) -> anyhow::Result<()> {
        self.cleaned = true;
        if self.private_database_server {
            self.databases.clear();
        }
        for name in &self.databases {
            infra::drop_database(name).await?;
        }
        infra::delete_broker_objects(&self.namespace).await
    }
}

/// A test that panicked never reached `stop`: cancel the services and clean
/// up on a separate thread (Drop cannot be async, and the test's runtime may
/// be shutting down).
impl Drop for TestSystem {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.shutdown.cancel();
        let namespace = self.namespace.clone();
        let mut databases = std::mem::take(&mut self.databases);
        if self.private_database_server {
            databases.clear();
        }
        let cleanup = signalbox_testkit::block_on_thread(async move {
            for name in &databases {
                infra::drop_database(name).await?;
            }
            infra::delete_broker_objects(&namespace).await
        });
        if let Err(error) = cleanup {
            eprintln!("test system cleanup failed: {error:#}");
        }
    }
}

/// Waits until `url` answers with `status` (probing it, with a deadline, as
/// a load balancer's health check does).
pub async fn await_status(url: &str, status: reqwest::StatusCode) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    signalbox_testkit::probe::until(
        &format!("{url} answering {status}"),
        crate::DEADLINE,
        || {
            let request = http.get(url).send();
            async move {
                Ok(match request.await {
                    Ok(response) if response.status() == status => Ok(()),
                    Ok(response) => Err(format!("answered {}", response.status())),
                    Err(error) => Err(error.to_string()),
                })
            }
        },
    )
    .await
}
