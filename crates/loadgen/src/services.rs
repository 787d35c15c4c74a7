//! The system behind the gateway as separate processes, for benchmarks that
//! measure one service's CPU time apart from the others': auth, catalog,
//! orders and the gateway, the release binaries started as `scripts/up`
//! starts them (`APP__…` settings), each on its own free ports, against
//! fresh databases on the local PostgreSQL (`<ns>_auth`, `<ns>_catalog`,
//! `<ns>_orders`, as the system tests name theirs) and a fresh namespace on
//! RabbitMQ. [`Services::stop`] stops them with `SIGTERM` and removes the
//! databases and the namespace's exchanges and durable queues.
//!
//! Discovery is `dns` (the configured addresses, one instance each), logs
//! are at `warn` (no line per request) and OpenTelemetry makes its spans
//! but exports them nowhere, as with `OTEL_EXPORTER_OTLP_ENDPOINT` unset.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use signalbox_messages::channels::Namespace;
use signalbox_system_tests::infra;
use tokio::process::{Child, Command};

/// Where the service binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A service process.
pub struct Process {
    pub name: &'static str,
    pub child: Child,
    pub pid: u32,
    pub http_port: u16,
    pub grpc_port: u16,
    log: PathBuf,
}

/// The running system.
pub struct Services {
    pub namespace: Namespace,
    pub processes: Vec<Process>,
    databases: Vec<String>,
    /// The services' logs (kept when a service fails to start).
    pub dir: PathBuf,
}

/// A free TCP port on loopback (the OS's pick; free again once the probe
/// listener is dropped, taken by the service a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Rate limits lifted at the edge, as `signalbox_system_tests::lift_rate_limits`
/// lifts them in process: one address sends far more than the edge lets one
/// client send, and what is measured is not the limits.
pub fn lifted_rate_limits() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for class in ["CREDENTIALS", "READS", "WRITES", "ADMIN"] {
        for who in ["PER_IP", "PER_USER"] {
            env.push((
                format!("APP__LIMITS__{class}__{who}__BURST"),
                "1000000".into(),
            ));
            env.push((
                format!("APP__LIMITS__{class}__{who}__PER_MINUTE"),
                "60000000".into(),
            ));
        }
    }
    env
}

impl Services {
    /// Starts auth, catalog, orders and the gateway and waits until each is
    /// ready; `gateway_env` adds to (or overrides) the gateway's settings.
    pub async fn start(
        binaries: &Binaries,
        gateway_env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let prefix = infra::random_namespace();
        let dir = std::env::temp_dir().join(format!("signalbox-bench-{prefix}"));
        std::fs::create_dir_all(&dir)?;
        let mut services = Self {
            namespace: Namespace::new(prefix.clone()),
            processes: Vec::new(),
            databases: Vec::new(),
            dir,
        };
        match services.start_all(binaries, &prefix, gateway_env).await {
            Ok(()) => Ok(services),
            Err(error) => {
                for process in &services.processes {
                    if let Ok(log) = std::fs::read_to_string(&process.log) {
                        let tail: Vec<&str> = log.lines().rev().take(20).collect();
                        eprintln!("--- {} (last lines)", process.name);
                        for line in tail.into_iter().rev() {
                            eprintln!("{line}");
                        }
                    }
                }
                let _ = services.stop().await;
                Err(error)
            }
        }
    }

    async fn start_all(
        &mut self,
        binaries: &Binaries,
        prefix: &str,
        gateway_env: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let server = infra::database_server_url();
        let mut urls = Vec::new();
        for service in ["auth", "catalog", "orders"] {
            let name = format!("{prefix}_{service}");
            urls.push(infra::create_database(&server, &name).await?);
            self.databases.push(name);
        }
        let amqp = vec![
            ("APP__AMQP__URL".to_owned(), infra::amqp_url()),
            ("APP__AMQP__NAMESPACE".to_owned(), prefix.to_owned()),
        ];

        let auth = self
            .spawn(
                binaries,
                "auth",
                vec![
                    ("APP__DATABASE__URL".into(), urls[0].clone()),
                    // Long enough for a whole run on one login.
                    ("APP__TOKENS__ACCESS_TTL_SECS".into(), "7200".into()),
                ],
            )
            .await?;
        let jwks = format!("http://127.0.0.1:{}/.well-known/jwks.json", auth.0);
        let auth_grpc = format!("http://127.0.0.1:{}", auth.1);

        let mut env = vec![
            ("APP__DATABASE__URL".into(), urls[1].clone()),
            ("APP__TOKENS__JWKS_URL".into(), jwks.clone()),
        ];
        env.extend(amqp.iter().cloned());
        let catalog = self.spawn(binaries, "catalog", env).await?;
        let catalog_grpc = format!("http://127.0.0.1:{}", catalog.1);

        let mut env = vec![
            ("APP__DATABASE__URL".into(), urls[2].clone()),
            ("APP__TOKENS__JWKS_URL".into(), jwks.clone()),
            ("APP__UPSTREAMS__CATALOG".into(), catalog_grpc.clone()),
        ];
        env.extend(amqp.iter().cloned());
        let orders = self.spawn(binaries, "orders", env).await?;
        let orders_grpc = format!("http://127.0.0.1:{}", orders.1);

        let mut env = vec![
            ("APP__TOKENS__JWKS_URL".into(), jwks),
            ("APP__UPSTREAMS__AUTH".into(), auth_grpc),
            ("APP__UPSTREAMS__CATALOG".into(), catalog_grpc),
            ("APP__UPSTREAMS__ORDERS".into(), orders_grpc),
        ];
        env.extend(amqp);
        env.extend(gateway_env);
        self.spawn(binaries, "gateway", env).await?;
        Ok(())
    }

    /// Starts one service on free ports with `env`, and waits until its
    /// `/health/ready` answers 200. Returns its HTTP and gRPC ports.
    async fn spawn(
        &mut self,
        binaries: &Binaries,
        name: &'static str,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<(u16, u16)> {
        let (http_port, grpc_port) = (free_port()?, free_port()?);
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let path = binaries.path(name);
        let child = Command::new(&path)
            // No configuration file: the defaults and these variables only.
            .env("APP_CONFIG_DIR", self.dir.join("no-config"))
            .env("RUST_LOG", "warn")
            .env("APP__HTTP__HOST", "127.0.0.1")
            .env("APP__HTTP__PORT", http_port.to_string())
            .env("APP__GRPC__HOST", "127.0.0.1")
            .env("APP__GRPC__PORT", grpc_port.to_string())
            .env("APP__DISCOVERY__MODE", "dns")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", path.display()))?;
        let pid = child.id().context("the service's pid")?;
        self.processes.push(Process {
            name,
            child,
            pid,
            http_port,
            grpc_port,
            log,
        });
        // Ready as the system tests await it: `/health/ready` answering 200.
        signalbox_system_tests::system::await_status(
            &format!("http://127.0.0.1:{http_port}/health/ready"),
            reqwest::StatusCode::OK,
        )
        .await
        .with_context(|| format!("{name} did not become ready"))?;
        Ok((http_port, grpc_port))
    }

    pub fn process(&self, name: &str) -> &Process {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .expect("a started service")
    }

    /// The database URL of `service` (`auth`, `catalog`, `orders`).
    pub fn database_url(&self, service: &str) -> String {
        format!(
            "{}/{}_{service}",
            infra::database_server_url(),
            self.namespace.prefix()
        )
    }

    /// `http://127.0.0.1:<port>` of the gateway.
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.process("gateway").http_port)
    }

    /// `http://127.0.0.1:<grpc port>` of a service.
    pub fn grpc_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.process(name).grpc_port)
    }

    /// Waits until every service has been nearly idle (under 5 % of a core,
    /// together) for half a second, or `limit` passed: what one measurement
    /// left running (an order's saga, the outbox relay) should not be
    /// charged to the next.
    pub async fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut quiet = 0;
        let mut last = self.cpu_total();
        while Instant::now() < deadline && quiet < 5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.cpu_total();
            quiet = if now.saturating_sub(last) <= Duration::from_millis(5) {
                quiet + 1
            } else {
                0
            };
            last = now;
        }
    }

    fn cpu_total(&self) -> Duration {
        self.processes
            .iter()
            .filter_map(|p| crate::proc::cpu_time(p.pid).ok())
            .sum()
    }

    /// Stops every service (`SIGTERM`, then `SIGKILL` after 15 s), newest
    /// first, and removes the databases and the broker objects.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        while let Some(mut process) = self.processes.pop() {
            if let Err(error) = terminate(&mut process.child, process.pid).await {
                failures.push(format!("{}: {error:#}", process.name));
            }
        }
        for name in &self.databases {
            if let Err(error) = infra::drop_database(name).await {
                failures.push(format!("drop database {name}: {error:#}"));
            }
        }
        if let Err(error) = infra::delete_broker_objects(&self.namespace).await {
            failures.push(format!("broker cleanup: {error:#}"));
        }
        anyhow::ensure!(failures.is_empty(), "cleanup: {failures:?}");
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Sends `SIGTERM` and waits for the exit; `SIGKILL` after 15 s.
pub async fn terminate(child: &mut Child, pid: u32) -> anyhow::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    signal(pid, "TERM")?;
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        child.start_kill()?;
        child.wait().await?;
        anyhow::bail!("did not stop within 15 s of SIGTERM (killed)");
    }
    Ok(())
}

/// `kill -<name> <pid>`: the standard library has no other signal than
/// `SIGKILL`, and this crate has no `unsafe`.
pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("run kill")?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// The pids of the children of `parent` (nginx's worker under its master),
/// from `/proc/<pid>/stat`'s fourth field.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(')')?.1.to_owned();
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}
