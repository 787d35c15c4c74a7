//! A rolling restart loses nothing and refuses cleanly.
//!
//! Every service runs twice, each instance in a child process of its own
//! (`signalbox_system_tests::child`): auth, catalog, orders, realtime and
//! the gateway, with self-registration and client-side discovery in etcd
//! (discovery mode `registry`, under a random key prefix), as `scripts/up`
//! runs them. Two watchers hold a socket each, one on each realtime
//! instance, and a load places orders continuously and logs users in
//! through both gateways, choosing between them as a load balancer would
//! (`steady_load::Load::balanced`: health checks; a refused connection or
//! a 503 goes to the other gateway).
//!
//! Then every instance is restarted, one at a time, as an orchestrator's
//! rolling update does: `SIGTERM`; the process must drain and exit by
//! itself with status 0 within the supervisor's grace period (no
//! `SIGKILL`), and its registration must be gone at once (revoked, not
//! left to expire); it is started again on the same ports; the next
//! instance waits until this one is ready again (`/health/ready` answers
//! 200 and, for the gRPC services, its address is registered in etcd
//! again) and until three more orders were decided.
//!
//! Afterwards: every order answered 202 is APPROVED or REJECTED, stock is
//! the initial stock minus exactly the approved quantities, one
//! reservation per approved order, both outboxes drained, no dead letters;
//! every request was answered (none broke after it was sent), and every
//! answer other than 202 (orders) or 200 (logins) was a 503
//! `application/problem+json` document; each watcher's socket on a
//! restarted realtime instance was closed with 1001 and reconnected to the
//! other instance, `recover` answered `recovered: true`, and the watcher
//! saw every one of its orders decided, with events on every socket it
//! reconnected.
//!
//! What the load balancer is here: the load driver itself, which knows both
//! gateways' addresses, checks their readiness every 100 ms as HAProxy's
//! health checks would, sends each request to a ready one and fails over
//! per request. A stopping gateway drains first
//! (`signalbox_gateway::drain`): for one second it still serves, answers
//! readiness 503 and closes each connection after its answer, then stops
//! accepting; the balancer has stopped sending to it by then.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use reqwest::StatusCode;
use serde_json::{json, Value};
use signalbox_system_tests::{
    api::User,
    child::{ChildService, GRACE},
    infra,
    socket::Received,
    system::await_status,
    tokens::TokenFactory,
    Api, Socket, DEADLINE,
};
use signalbox_testkit::{probe, Sandbox};
use tokio_util::sync::CancellationToken;

use crate::steady_load::{Books, Load};

/// How long the whole system may take to settle after the last restart.
const SETTLE: Duration = Duration::from_secs(90);
/// Two instances of each service.
const INSTANCES: usize = 2;

/// The shared etcd (`scripts/services --etcd`), or `SIGNALBOX_TEST_ETCD_URL`.
fn etcd_url() -> String {
    std::env::var("SIGNALBOX_TEST_ETCD_URL").unwrap_or_else(|_| "http://127.0.0.1:2379".into())
}

/// A test's own key prefix in the shared etcd, read and deleted through
/// etcd's JSON gateway (`/v3/kv/…`, keys in base64), so that the test needs
/// no etcd client of its own; deleted on drop, also after a failure.
struct EtcdPrefix {
    url: String,
    prefix: String,
    http: reqwest::Client,
}

impl EtcdPrefix {
    fn new() -> Self {
        Self {
            url: etcd_url(),
            prefix: format!("/signalbox-test/{}/", uuid::Uuid::new_v4().simple()),
            http: reqwest::Client::new(),
        }
    }

    /// `key` and the end of the range of keys that start with it.
    fn range(key: &str) -> Value {
        let mut end = key.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        json!({"key": STANDARD.encode(key), "range_end": STANDARD.encode(end)})
    }

    /// The URLs registered for `service` now.
    async fn registered(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let body: Value = self
            .http
            .post(format!("{}/v3/kv/range", self.url))
            .json(&Self::range(&format!("{}{service}/", self.prefix)))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let empty = Vec::new();
        body["kvs"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|kv| {
                let value = STANDARD.decode(kv["value"].as_str().unwrap_or_default())?;
                Ok(String::from_utf8(value)?)
            })
            .collect()
    }

    async fn delete(url: &str, prefix: &str) -> anyhow::Result<()> {
        reqwest::Client::new()
            .post(format!("{url}/v3/kv/deleterange"))
            .json(&Self::range(prefix))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

impl Drop for EtcdPrefix {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        if let Err(error) =
            signalbox_testkit::block_on_thread(async move { Self::delete(&url, &prefix).await })
        {
            eprintln!("could not remove {}: {error:#}", self.prefix);
        }
    }
}

/// One service's instances, and what readiness means for it.
struct Service {
    name: &'static str,
    instances: Vec<ChildService>,
    /// Whether it registers its gRPC address (auth, catalog, orders).
    registers: bool,
}

impl Service {
    fn grpc_url(child: &ChildService) -> String {
        format!("http://127.0.0.1:{}", child.grpc_port)
    }

    /// Waits until instance `i` is ready: `/health/ready` answers 200 and,
    /// for a registering service, its address is in the registry.
    async fn await_ready(&self, i: usize, etcd: &EtcdPrefix) -> anyhow::Result<()> {
        let child = &self.instances[i];
        await_status(
            &format!("http://127.0.0.1:{}/health/ready", child.http_port),
            StatusCode::OK,
        )
        .await?;
        if self.registers {
            let url = Self::grpc_url(child);
            probe::until(
                &format!("{}-{} registered at {url}", self.name, i + 1),
                DEADLINE,
                || async {
                    let registered = etcd.registered(self.name).await?;
                    Ok(if registered.contains(&url) {
                        Ok(())
                    } else {
                        Err(format!("registered: {registered:?}"))
                    })
                },
            )
            .await?;
        }
        Ok(())
    }
}

/// Every service twice, in child processes, and what they share. Field
/// order is drop order: the children go (killed, when a failure left them
/// running) before their databases, queues and registry keys.
struct Fleet {
    services: Vec<Service>,
    /// The URLs of the orders and catalog databases, for the books.
    orders_db: String,
    catalog_db: String,
    etcd: EtcdPrefix,
    sandbox: Sandbox,
}

impl Fleet {
    async fn start() -> anyhow::Result<Self> {
        let mut sandbox = Sandbox::new();
        let etcd = EtcdPrefix::new();
        let namespace = sandbox.namespace().clone();
        sandbox.queues(infra::durable_queues(&namespace));
        let auth_db = sandbox.database("auth").await?.url;
        let catalog_db = sandbox.database("catalog").await?.url;
        let orders_db = sandbox.database("orders").await?.url;
        let mut fleet = Self {
            services: Vec::new(),
            orders_db: orders_db.clone(),
            catalog_db: catalog_db.clone(),
            etcd,
            sandbox,
        };

        // What every instance of every service shares: loopback on ports
        // of the OS's choosing (kept across restarts), the broker
        // namespace, and the registry.
        let common: Vec<(String, String)> = vec![
            ("APP__HTTP__HOST".into(), "127.0.0.1".into()),
            ("APP__HTTP__PORT".into(), "0".into()),
            ("APP__GRPC__HOST".into(), "127.0.0.1".into()),
            ("APP__GRPC__PORT".into(), "0".into()),
            ("APP__AMQP__URL".into(), infra::amqp_url()),
            ("APP__AMQP__NAMESPACE".into(), namespace.prefix().to_owned()),
            ("APP__AMQP__CONNECT_TIMEOUT_SECS".into(), "10".into()),
            ("APP__DISCOVERY__MODE".into(), "registry".into()),
            (
                "APP__DISCOVERY__ETCD_ENDPOINTS".into(),
                fleet.etcd.url.clone(),
            ),
            ("APP__DISCOVERY__PREFIX".into(), fleet.etcd.prefix.clone()),
        ];
        let with = |extra: Vec<(&str, String)>| {
            let mut env = common.clone();
            env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
            env
        };
        let exe = |name: &str| std::path::PathBuf::from(name);

        // auth: both instances sign with the same key (what replicas must
        // do), so a token from either verifies against either's JWKS.
        let key = TokenFactory::generate("rolling-restart").pem();
        let mut auth = Vec::new();
        for _ in 0..INSTANCES {
            auth.push(
                ChildService::auth(
                    &exe(env!("CARGO_BIN_EXE_auth-child")),
                    with(vec![
                        ("APP__DATABASE__URL", auth_db.clone()),
                        ("APP__DATABASE__MAX_CONNECTIONS", "4".into()),
                        ("APP__TOKENS__SIGNING_KEY_PEM", key.clone()),
                        ("APP__TOKENS__SIGNING_KID", "rolling-restart".into()),
                        // Longer than the test: no socket meets its
                        // token's expiry (4001) in the middle of it.
                        ("APP__TOKENS__ACCESS_TTL_SECS", "1800".into()),
                    ]),
                )
                .await?,
            );
        }
        let jwks = format!(
            "http://127.0.0.1:{}/.well-known/jwks.json",
            auth[0].http_port
        );
        let auth_url = Service::grpc_url(&auth[0]);
        fleet.services.push(Service {
            name: "auth",
            instances: auth,
            registers: true,
        });

        let mut catalog = Vec::new();
        for _ in 0..INSTANCES {
            catalog.push(
                ChildService::catalog(
                    &exe(env!("CARGO_BIN_EXE_catalog-child")),
                    with(vec![
                        ("APP__DATABASE__URL", catalog_db.clone()),
                        ("APP__DATABASE__MAX_CONNECTIONS", "4".into()),
                        ("APP__TOKENS__JWKS_URL", jwks.clone()),
                    ]),
                )
                .await?,
            );
        }
        let catalog_url = Service::grpc_url(&catalog[0]);
        fleet.services.push(Service {
            name: "catalog",
            instances: catalog,
            registers: true,
        });

        let mut orders = Vec::new();
        for _ in 0..INSTANCES {
            orders.push(
                ChildService::orders(
                    &exe(env!("CARGO_BIN_EXE_orders-child")),
                    with(vec![
                        ("APP__DATABASE__URL", orders_db.clone()),
                        ("APP__DATABASE__MAX_CONNECTIONS", "4".into()),
                        ("APP__TOKENS__JWKS_URL", jwks.clone()),
                        // In `registry` mode the address is only a name:
                        // the instances are the registered ones.
                        ("APP__UPSTREAMS__CATALOG", catalog_url.clone()),
                    ]),
                )
                .await?,
            );
        }
        let orders_url = Service::grpc_url(&orders[0]);
        fleet.services.push(Service {
            name: "orders",
            instances: orders,
            registers: true,
        });

        let mut realtime = Vec::new();
        for _ in 0..INSTANCES {
            realtime.push(
                ChildService::realtime(
                    &exe(env!("CARGO_BIN_EXE_realtime-child")),
                    with(vec![("APP__TOKENS__JWKS_URL", jwks.clone())]),
                )
                .await?,
            );
        }
        fleet.services.push(Service {
            name: "realtime",
            instances: realtime,
            registers: false,
        });

        // The gateway, with the edge's limits lifted: the load comes from
        // one address, and this test is about restarts, not limits.
        let mut gateway_env = vec![
            ("APP__TOKENS__JWKS_URL", jwks.clone()),
            ("APP__UPSTREAMS__AUTH", auth_url),
            ("APP__UPSTREAMS__CATALOG", catalog_url),
            ("APP__UPSTREAMS__ORDERS", orders_url),
        ];
        for class in ["CREDENTIALS", "READS", "WRITES", "ADMIN"] {
            for who in ["PER_IP", "PER_USER"] {
                gateway_env.push((
                    leak(format!("APP__LIMITS__{class}__{who}__BURST")),
                    "1000000".into(),
                ));
                gateway_env.push((
                    leak(format!("APP__LIMITS__{class}__{who}__PER_MINUTE")),
                    "60000000".into(),
                ));
            }
        }
        let mut gateway = Vec::new();
        for _ in 0..INSTANCES {
            gateway.push(
                ChildService::gateway(
                    &exe(env!("CARGO_BIN_EXE_gateway-child")),
                    with(gateway_env.clone()),
                )
                .await?,
            );
        }
        fleet.services.push(Service {
            name: "gateway",
            instances: gateway,
            registers: false,
        });

        for service in &fleet.services {
            for i in 0..service.instances.len() {
                service.await_ready(i, &fleet.etcd).await?;
            }
        }
        Ok(fleet)
    }

    fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|service| service.name == name)
            .expect("a service of the fleet")
    }

    /// Each gateway, as a client of the public API.
    fn gateways(&self) -> Vec<Api> {
        self.service("gateway")
            .instances
            .iter()
            .map(|child| Api::new(format!("http://127.0.0.1:{}", child.http_port)))
            .collect()
    }

    fn realtime_urls(&self) -> Vec<String> {
        self.service("realtime")
            .instances
            .iter()
            .map(|child| format!("ws://127.0.0.1:{}/ws", child.http_port))
            .collect()
    }

    /// Stops every instance (each must exit with status 0), then removes
    /// the databases, the broker objects and the registry keys.
    async fn stop(mut self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        // The edge first, the services behind it after, as an operator
        // would take a system down.
        for service in self.services.drain(..).rev() {
            for child in service.instances {
                if let Err(error) = child.stop().await {
                    failures.push(format!("{error:#}"));
                }
            }
        }
        self.sandbox.remove().await?;
        anyhow::ensure!(
            failures.is_empty(),
            "instances failed to stop: {failures:?}"
        );
        Ok(())
    }
}

/// An environment variable's name built at run time, as the `&'static str`
/// the settings list takes (a handful, once per test).
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// One socket a watcher held.
#[derive(Debug, Clone)]
struct Session {
    /// Which realtime instance it was on.
    instance: usize,
    /// `recovered` of the `subscribed` answer, when it asked to recover.
    recovered: Option<bool>,
    /// Events it received (live or replayed).
    events: usize,
    /// How it ended: the close code, `None` while it is open.
    closed: Option<Option<u16>>,
}

/// What a watcher saw: its sockets, in order, and every order state.
#[derive(Debug, Default)]
struct Watched {
    sessions: Vec<Session>,
    seen: HashMap<String, HashSet<String>>,
    /// The position of the last event, for `recover`.
    last: Option<Value>,
    /// Why it stopped watching before it was told to, if it did.
    failed: Option<String>,
}

type Shared = Arc<Mutex<Watched>>;

fn lock(watched: &Shared) -> std::sync::MutexGuard<'_, Watched> {
    watched.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A watcher as a real client behaves: one socket on `urls[first]`,
/// subscribed to its user's channel; when the server closes it, it opens
/// one on the other instance and subscribes with `recover` from the last
/// event it saw. Runs until `stop` (or a failure, kept in `failed`).
async fn watch(
    urls: Vec<String>,
    first: usize,
    user: User,
    watched: Shared,
    stop: CancellationToken,
) {
    let channel = format!("user:{}", user.id);
    let mut instance = first;
    loop {
        let from = lock(&watched).last.clone();
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = open(&urls[instance], &user, &channel, from) => opened,
        };
        let (mut socket, recovered) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                lock(&watched).failed = Some(format!("open on {}: {error:#}", urls[instance]));
                return;
            }
        };
        lock(&watched).sessions.push(Session {
            instance,
            recovered,
            events: 0,
            closed: None,
        });
        let closed = loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                received = socket.receive(Duration::from_secs(3600)) => received,
            };
            match received {
                Ok(Received::Frame(frame)) if frame["type"] == "event" => {
                    let mut watched = lock(&watched);
                    let data = &frame["data"];
                    if let (Some(id), Some(state)) =
                        (data["order_id"].as_str(), data["state"].as_str())
                    {
                        watched
                            .seen
                            .entry(id.to_owned())
                            .or_default()
                            .insert(state.to_owned());
                    }
                    watched.last =
                        Some(json!({"epoch": frame["epoch"], "offset": frame["offset"]}));
                    if let Some(session) = watched.sessions.last_mut() {
                        session.events += 1;
                    }
                }
                Ok(Received::Frame(_)) => {}
                Ok(Received::Closed(code)) => break code,
                Err(error) => {
                    lock(&watched).failed =
                        Some(format!("socket on {}: {error:#}", urls[instance]));
                    return;
                }
            }
        };
        if let Some(session) = lock(&watched).sessions.last_mut() {
            session.closed = Some(closed);
        }
        // To the other instance, as a client that reconnects elsewhere.
        instance = (instance + 1) % urls.len();
    }
}

/// Opens a socket, waits for `welcome`, subscribes (recovering from `from`
/// when given) and returns the socket with the `recovered` answer.
async fn open(
    url: &str,
    user: &User,
    channel: &str,
    from: Option<Value>,
) -> anyhow::Result<(Socket, Option<bool>)> {
    let mut socket = Socket::connect(url, Some(&user.access_token)).await?;
    socket.expect("welcome", DEADLINE).await?;
    let mut subscribe = json!({"type": "subscribe", "channel": channel});
    if let Some(from) = &from {
        subscribe["recover"] = from.clone();
    }
    socket.send(subscribe).await?;
    let answer = socket
        .wait_for(DEADLINE, |f| {
            f["type"] == "subscribed" || f["type"] == "error"
        })
        .await?;
    anyhow::ensure!(
        answer["type"] == "subscribed",
        "subscribe answered {answer}"
    );
    let recovered = from.map(|_| answer["recovered"] == true);
    Ok((socket, recovered))
}

/// Waits until every watcher holds an open, subscribed socket.
async fn await_watching(watchers: &[Shared]) -> anyhow::Result<()> {
    probe::until("every watcher subscribed again", DEADLINE, || async {
        for watched in watchers {
            let watched = lock(watched);
            if let Some(failed) = &watched.failed {
                anyhow::bail!("a watcher failed: {failed}");
            }
            if watched.sessions.last().is_none_or(|s| s.closed.is_some()) {
                return Ok(Err(format!("sessions: {:?}", watched.sessions)));
            }
        }
        Ok(Ok(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_nothing_and_refuses_cleanly() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let gateways = fleet.gateways();
    let api = gateways[0].clone();
    let namespace = fleet.sandbox.namespace().clone();
    let books = Books::open(&api, &fleet.orders_db, &fleet.catalog_db).await?;
    let users = Arc::new(vec![
        api.new_user().await?,
        api.new_user().await?,
        api.new_user().await?,
    ]);

    // Two watchers, one socket on each realtime instance.
    let urls = fleet.realtime_urls();
    let stop_watching = CancellationToken::new();
    let mut watchers = Vec::new();
    let mut watching = Vec::new();
    for (first, user) in users.iter().take(INSTANCES).enumerate() {
        let watched = Shared::default();
        watching.push(tokio::spawn(watch(
            urls.clone(),
            first,
            user.clone(),
            watched.clone(),
            stop_watching.clone(),
        )));
        watchers.push(watched);
    }
    await_watching(&watchers).await?;

    let load = Load::balanced(gateways.clone(), &users);
    books
        .await_progress("orders decided before the restarts")
        .await?;

    // The rolling restart: each service in turn, one instance at a time.
    let names: Vec<&'static str> = fleet.services.iter().map(|s| s.name).collect();
    for (s, name) in names.iter().enumerate() {
        for i in 0..INSTANCES {
            let service = &mut fleet.services[s];
            let child = &mut service.instances[i];
            let pid = child.pid();
            let grpc = Service::grpc_url(child);
            println!(
                "rolling_restart: SIGTERM to {name}-{} (pid {pid}, port {})",
                i + 1,
                child.http_port
            );
            let status = child.terminate().await?;
            assert!(
                status.success(),
                "{name}-{} (pid {pid}) drained and exited by itself within {GRACE:?} of SIGTERM, with status 0: {status}",
                i + 1
            );
            if service.registers {
                let registered = fleet.etcd.registered(name).await?;
                assert!(
                    !registered.contains(&grpc),
                    "{name}-{} withdrew its registration on the way out: {registered:?}",
                    i + 1
                );
            }
            child.restart(|_| {}).await?;
            println!(
                "rolling_restart: {name}-{} (pid {pid}) exited with {status}; started again as pid {}",
                i + 1,
                child.pid()
            );
            fleet.services[s].await_ready(i, &fleet.etcd).await?;
            if *name == "realtime" {
                // Its sockets moved to the other instance before the next
                // one goes.
                await_watching(&watchers).await?;
            }
            books
                .await_progress(&format!("orders decided after {name}-{} restarted", i + 1))
                .await?;
        }
    }

    let outcome = load.finish().await?;
    println!(
        "rolling_restart: {} orders accepted, {} logins, {} other answers, {} failed over to the other gateway, {} unanswered",
        outcome.accepted.len(),
        outcome.logins,
        outcome.refused.len(),
        outcome.failed_over,
        outcome.unanswered
    );

    for (status, content_type, code) in &outcome.refused {
        println!("rolling_restart: answered {status} ({content_type}, {code:?})");
    }
    for broken in &outcome.broken {
        println!("rolling_restart: unanswered: {broken}");
    }
    // Every request was answered, and every refusal was a clean 503.
    assert_eq!(outcome.unanswered, 0, "a request's connection broke");
    for (status, content_type, code) in &outcome.refused {
        assert_eq!(
            status.as_u16(),
            503,
            "answered {status} ({content_type}, {code})"
        );
        assert_eq!(
            content_type, "application/problem+json",
            "a 503 without a problem document ({code})"
        );
    }
    assert!(
        outcome.logins > 0,
        "logins went through during the restarts"
    );
    assert!(
        outcome.accepted.len() >= 20,
        "the load kept going: {}",
        outcome.accepted.len()
    );

    // The books balance.
    books.settle(SETTLE).await?;
    let tally = books.check(&api, &outcome.accepted, &namespace).await?;

    // Each watcher's socket on a restarted instance was closed with 1001
    // and reconnected to the other instance, which recovered what it
    // missed. Watcher 1 started on realtime-1: moved to realtime-2 when
    // realtime-1 restarted, and back when realtime-2 did; watcher 2
    // started on realtime-2 and moved once.
    let expected: [&[usize]; INSTANCES] = [&[0, 1, 0], &[1, 0]];
    for (w, watched) in watchers.iter().enumerate() {
        let watched = lock(watched);
        assert_eq!(watched.failed, None, "watcher {}", w + 1);
        let instances: Vec<usize> = watched.sessions.iter().map(|s| s.instance).collect();
        assert_eq!(
            instances,
            expected[w],
            "watcher {}: {:?}",
            w + 1,
            watched.sessions
        );
        let (current, ended) = watched.sessions.split_last().expect("a session");
        for session in ended {
            assert_eq!(
                session.closed,
                Some(Some(1001)),
                "watcher {}: going away: {:?}",
                w + 1,
                watched.sessions
            );
        }
        assert_eq!(
            current.closed,
            None,
            "watcher {}: the last socket stays open",
            w + 1
        );
        for session in &watched.sessions[1..] {
            assert_eq!(
                session.recovered,
                Some(true),
                "watcher {}: {:?}",
                w + 1,
                watched.sessions
            );
            assert!(
                session.events > 0,
                "watcher {}: events after the reconnect: {:?}",
                w + 1,
                watched.sessions
            );
        }
    }
    for (w, watched) in watchers.iter().enumerate() {
        let decisions: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, state FROM orders WHERE user_id = $1")
                .bind(&users[w].id)
                .fetch_all(&books.orders)
                .await?;
        probe::until(
            &format!("watcher {} saw every decision", w + 1),
            DEADLINE,
            || async {
                let watched = lock(watched);
                let missing = decisions
                    .iter()
                    .filter(|(id, state)| {
                        !watched
                            .seen
                            .get(&id.to_string())
                            .is_some_and(|s| s.contains(state))
                    })
                    .count();
                Ok(if missing == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "{missing} of {} decisions not seen",
                        decisions.len()
                    ))
                })
            },
        )
        .await?;
    }
    stop_watching.cancel();
    for task in watching {
        task.await?;
    }
    println!(
        "rolling_restart: {} orders, {} approved; every instance restarted with status 0",
        tally.orders, tally.approved
    );

    books.close().await;
    fleet.stop().await
}
