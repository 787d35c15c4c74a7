//! What every discovery test needs: its own corner of the shared etcd, real
//! gRPC servers that can be killed or hung, and a client with a deadline.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use etcd_client::{Client, DeleteOptions, GetOptions};
use futures::future::{self, BoxFuture};
use hyper_util::rt::{TokioExecutor, TokioIo};
use signalbox_discovery::{
    register, BreakerSettings, DiscoverySettings, Mode, Registration, RegistrationState,
    UpstreamService, UpstreamView,
};
use signalbox_resilience::{Deadline, DeadlineLayer, State};
use signalbox_testkit::{probe, DEADLINE};
use tokio::{net::TcpListener, task::JoinSet};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tower::{Layer, Service};

/// The shared etcd (scripts/services --etcd starts it).
pub fn etcd_url() -> String {
    std::env::var("SIGNALBOX_TEST_ETCD_URL").unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
}

/// The deadline of every test call: longer than the endpoint breakers'
/// slow-call threshold, so a call abandoned at the deadline counts as a
/// failure of the endpoint it hung on.
pub const CALL_DEADLINE: Duration = Duration::from_millis(1500);

/// Per-endpoint breakers that open quickly and stay open for the rest of a
/// test (15–30 s, jittered): what a test then observes is the ejection,
/// not the next probe.
pub fn breaker() -> BreakerSettings {
    BreakerSettings {
        window_size: 10,
        minimum_calls: 3,
        failure_rate: 0.5,
        slow_call: Duration::from_millis(300),
        open_base: Duration::from_secs(30),
        open_max: Duration::from_secs(60),
        half_open_probes: 1,
        ..BreakerSettings::default()
    }
}

/// A test's own key prefix in an etcd, deleted with everything under it
/// when the test ends, passed or panicked.
pub struct Registry {
    pub settings: DiscoverySettings,
}

impl Registry {
    /// A random prefix in the shared etcd.
    pub fn new() -> Self {
        Self::at(&etcd_url())
    }

    /// A random prefix in the etcd at `url`.
    pub fn at(url: &str) -> Self {
        // The same random name a test's broker namespace has.
        let prefix = format!(
            "/signalbox-test/{}/",
            signalbox_testkit::broker::random_namespace()
        );
        Self {
            settings: DiscoverySettings {
                mode: Mode::Registry,
                etcd_endpoints: vec![url.to_owned()],
                prefix,
                // etcd's minimum: expiry tests stay short.
                lease_ttl_secs: 2,
                connect_timeout_ms: 500,
                ..DiscoverySettings::default()
            },
        }
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.settings.etcd_endpoints, None).await?)
    }

    /// Every (key, value) registered for `service`, by key.
    pub async fn entries(&self, service: &str) -> anyhow::Result<Vec<(String, String)>> {
        let prefix = self.settings.service_prefix(service);
        let listing = self
            .client()
            .await?
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        listing
            .kvs()
            .iter()
            .map(|kv| Ok((kv.key_str()?.to_owned(), kv.value_str()?.to_owned())))
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let endpoints = self.settings.etcd_endpoints.clone();
        let prefix = self.settings.prefix.clone();
        let removed = signalbox_testkit::block_on_thread(async move {
            let mut client = Client::connect(&endpoints, None).await?;
            let delete = client.delete(prefix, Some(DeleteOptions::new().with_prefix()));
            // A private etcd a test stopped is gone with its data anyway.
            let _ = tokio::time::timeout(Duration::from_secs(3), delete).await;
            Ok(())
        });
        if let Err(error) = removed {
            eprintln!("could not remove {}: {error:#}", self.settings.prefix);
        }
    }
}

/// A real gRPC server (the standard health service, answering SERVING)
/// that counts the calls it receives and can be hung or killed.
pub struct TestServer {
    pub addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    hung: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// On a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicUsize::new(0));
        let hung = Arc::new(AtomicBool::new(false));
        let (_reporter, health) = tonic_health::server::health_reporter();
        let service = Tap {
            inner: tonic::service::Routes::new(health),
            calls: calls.clone(),
            hung: hung.clone(),
        };
        let task = tokio::spawn(serve(listener, service));
        Ok(Self {
            addr,
            calls,
            hung,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Calls received so far, answered or not.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// From now on every call is accepted and never answered.
    pub fn hang(&self) {
        self.hung.store(true, Ordering::SeqCst);
    }

    /// Stops the server as a crash would: the listener and every open
    /// connection close.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The accept loop. Each connection is a task of this task's own set, so
/// aborting this task closes them all (tonic's own server would leave them
/// running on their own tasks).
async fn serve(listener: TcpListener, service: Tap) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A new client connection: serve it as HTTP/2 (gRPC).
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let service = hyper_util::service::TowerToHyperService::new(service.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap connections that ended, so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts every call, and hangs it when told to.
#[derive(Clone)]
struct Tap {
    inner: tonic::service::Routes,
    calls: Arc<AtomicUsize>,
    hung: Arc<AtomicBool>,
}

impl Service<http::Request<hyper::body::Incoming>> for Tap {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<hyper::body::Incoming>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hung.load(Ordering::SeqCst) {
            return Box::pin(future::pending());
        }
        Box::pin(self.inner.call(request))
    }
}

/// A generated gRPC client over a balanced upstream, each call with
/// [`CALL_DEADLINE`].
pub type TestClient = HealthClient<Deadline<UpstreamService>>;

pub fn client(service: UpstreamService) -> TestClient {
    HealthClient::new(DeadlineLayer::new(CALL_DEADLINE).layer(service))
}

/// One health check through the balancer.
pub async fn call(client: &TestClient) -> Result<(), tonic::Status> {
    let mut client = client.clone();
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

/// `n` calls, `concurrency` at a time; the failures, by message.
pub async fn calls(client: &TestClient, n: usize, concurrency: usize) -> Vec<String> {
    let mut failures = Vec::new();
    let mut left = n;
    while left > 0 {
        let batch = left.min(concurrency);
        left -= batch;
        let results = future::join_all((0..batch).map(|_| call(client))).await;
        failures.extend(
            results
                .into_iter()
                .filter_map(|r| r.err().map(|s| format!("{:?}: {}", s.code(), s.message()))),
        );
    }
    failures
}

/// Calls until `done` holds (failures allowed meanwhile: this is the
/// window being waited out), within [`DEADLINE`].
pub async fn call_until(
    what: &str,
    client: &TestClient,
    mut done: impl FnMut() -> Result<(), String>,
) -> anyhow::Result<()> {
    probe::until(what, DEADLINE, || {
        let ready = done();
        async move {
            if ready.is_err() {
                // Several at once, so a hung endpoint gathers its failures
                // in parallel rather than one deadline after another.
                let _ = calls(client, 4, 4).await;
            }
            Ok(ready)
        }
    })
    .await
}

/// Calls until `done` holds, within [`DEADLINE`]; every call must succeed
/// (one that fails ends the wait with its error).
pub async fn succeed_until(
    what: &str,
    client: &TestClient,
    mut done: impl FnMut() -> Result<(), String>,
) -> anyhow::Result<()> {
    probe::until(what, DEADLINE, || {
        let ready = done();
        async move {
            if ready.is_err() {
                let failures = calls(client, 2, 2).await;
                anyhow::ensure!(failures.is_empty(), "a call failed: {failures:?}");
            }
            Ok(ready)
        }
    })
    .await
}

/// The breaker state of the endpoint at `url`, if the balancer holds it.
pub fn state_of(view: &UpstreamView, url: &str) -> Option<State> {
    view.snapshot()
        .endpoints
        .into_iter()
        .find(|endpoint| endpoint.address == url)
        .map(|endpoint| endpoint.state)
}

/// `Ok` when the balancer holds exactly `urls`.
pub fn holds(view: &UpstreamView, urls: &[String]) -> Result<(), String> {
    let mut want = urls.to_vec();
    want.sort();
    let have = view.endpoints();
    if have == want {
        Ok(())
    } else {
        Err(format!("holds {have:?}"))
    }
}

/// A test server registered as an instance of `service`.
pub async fn registered_server(
    registry: &Registry,
    service: &str,
) -> anyhow::Result<(TestServer, Registration)> {
    let server = TestServer::start().await?;
    let registration = register(service, server.port(), &registry.settings)?;
    let mut state = registration.state();
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })),
    )
    .await??;
    Ok((server, registration))
}

/// An etcd of a test's own, on free ports, with its data in a temporary
/// directory: for the tests that stop etcd (never the shared one).
pub struct PrivateEtcd {
    pub url: String,
    peer: String,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl PrivateEtcd {
    pub async fn start() -> anyhow::Result<Self> {
        let mut etcd = Self::reserve().await?;
        etcd.resume().await?;
        Ok(etcd)
    }

    /// Its ports and directory, without starting it yet: an etcd that is
    /// down when its clients first try it.
    pub async fn reserve() -> anyhow::Result<Self> {
        let client_port = free_port().await?;
        let peer_port = free_port().await?;
        let dir = std::env::temp_dir().join(format!(
            "signalbox-etcd-{}",
            signalbox_testkit::broker::random_namespace()
        ));
        let etcd = Self {
            url: format!("http://127.0.0.1:{client_port}"),
            peer: format!("http://127.0.0.1:{peer_port}"),
            dir,
            child: None,
        };
        Ok(etcd)
    }

    /// Starts (again) on the same ports and data; returns once it answers.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let binary = std::env::var("SIGNALBOX_TEST_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
        let child = tokio::process::Command::new(&binary)
            .args(["--name", "private", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer])
            .args(["--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &format!("private={}", self.peer)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot run {binary} (scripts/services --etcd installs it): {e}")
            })?;
        self.child = Some(child);
        let url = self.url.clone();
        probe::until("the private etcd answers", DEADLINE, || {
            let url = url.clone();
            async move {
                let answer = async {
                    let mut client = Client::connect([url.as_str()], None).await?;
                    client.get("probe", None).await
                };
                Ok(
                    match tokio::time::timeout(Duration::from_secs(1), answer).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("no answer".to_owned()),
                    },
                )
            }
        })
        .await
    }

    /// Kills it (SIGKILL: no goodbye to its clients) and waits until it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
            // Its data directory can go only once it stopped writing to it:
            // wait for the exit (a SIGKILL takes milliseconds), up to 5 s.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port())
}
