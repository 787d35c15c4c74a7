//! A service in a process of its own, for scenarios that must freeze one
//! service (`SIGSTOP`) while the rest of the system runs in the test's
//! process, or stop it with a real `SIGTERM` and read what it logged.
//!
//! The child is one of this package's binaries: `catalog-child`
//! (`src/bin/catalog-child.rs`), `orders-child`, `realtime-child`,
//! `auth-child` or `gateway-child`, which cargo builds with the package's
//! integration tests, from the same code, and names in
//! `CARGO_BIN_EXE_<name>`: a test passes that path in
//! [`Options::catalog_process`](crate::Options::catalog_process) or
//! [`Options::realtime_process`](crate::Options::realtime_process), or to
//! [`ChildService::realtime`] directly.
//!
//! The child reads its settings from `APP__…` variables like the real
//! binary, prints one line with its ports when it listens, and stops when
//! its stdin closes (the parent went away, also by a panic) or on
//! `SIGTERM`. Every line it writes to stdout (the realtime child's logs) is
//! kept, for [`ChildService::output`].

use std::{
    io::Read,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio_util::sync::CancellationToken;

/// The line a child prints once it listens.
const READY: &str = "signalbox-child-ready";

/// How long a child may take to drain and exit after `SIGTERM`: the grace
/// period `scripts/up`'s supervisor gives a service before it kills it
/// (`SUPERVISE_GRACE_SECS`).
pub const GRACE: Duration = Duration::from_secs(15);

/// A service running in a child process.
pub struct ChildService {
    child: Child,
    /// `catalog`, `orders`, `realtime`, `auth` or `gateway`, for messages.
    name: &'static str,
    pub grpc_port: u16,
    pub http_port: u16,
    /// Every line the child wrote to stdout so far. A `std` mutex: the
    /// reader task appends a line, a test copies them, never across an
    /// `.await`.
    output: Arc<Mutex<Vec<String>>>,
    /// Turns `true` when the child's stdout has ended (every line kept).
    stdout_closed: tokio::sync::watch::Receiver<bool>,
    /// The child's stdin, held apart from `child`: its end tells the child
    /// to stop (`watch_parent`), and `Child::wait` would close it first, so
    /// that awaiting a crash would stop the child gracefully instead.
    _stdin: Option<tokio::process::ChildStdin>,
    /// How it was started, for [`Self::restart`].
    exe: std::path::PathBuf,
    env: Vec<(String, String)>,
}

/// The variable that arms a fault point in a child: `<point>` or
/// `<point>@<n>` makes the child abort (`SIGABRT`) the `n`th time (default:
/// the first) it reaches that point (`signalbox_platform::faults::points`).
/// Read by the child binaries only, never by a service.
pub const ABORT_AT: &str = "SIGNALBOX_TEST_ABORT_AT";

impl ChildService {
    /// Starts catalog in a child process with `env` (its `APP__…`
    /// settings), and waits until it listens.
    pub async fn catalog(exe: &Path, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let mut service = Self::start(exe, env, "catalog").await?;
        service.grpc_port = service.port("grpc=")?;
        Ok(service)
    }

    /// Starts orders in a child process with `env` (its `APP__…`
    /// settings), and waits until it listens.
    pub async fn orders(exe: &Path, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let mut service = Self::start(exe, env, "orders").await?;
        service.grpc_port = service.port("grpc=")?;
        Ok(service)
    }

    /// Starts auth in a child process with `env` (its `APP__…` settings),
    /// and waits until it listens.
    pub async fn auth(exe: &Path, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let mut service = Self::start(exe, env, "auth").await?;
        service.grpc_port = service.port("grpc=")?;
        Ok(service)
    }

    /// Starts the gateway in a child process with `env` (its `APP__…`
    /// settings), and waits until it listens.
    pub async fn gateway(exe: &Path, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        Self::start(exe, env, "gateway").await
    }

    /// Starts the process again after it died (or was killed with
    /// [`Self::kill`], or stopped with [`Self::terminate`]), as a
    /// supervisor would: the same binary and settings,
    /// on the same ports (so that its callers find it where it was), with
    /// `env` changed by `adjust` (e.g. a fault point armed or disarmed).
    /// Waits until it listens.
    pub async fn restart(
        &mut self,
        adjust: impl FnOnce(&mut Vec<(String, String)>),
    ) -> anyhow::Result<()> {
        let mut env = self.env.clone();
        adjust(&mut env);
        env.retain(|(key, _)| key != "APP__HTTP__PORT" && key != "APP__GRPC__PORT");
        env.push(("APP__HTTP__PORT".into(), self.http_port.to_string()));
        if self.grpc_port != 0 {
            env.push(("APP__GRPC__PORT".into(), self.grpc_port.to_string()));
        }
        let mut next = Self::start(&self.exe, env, self.name).await?;
        next.grpc_port = self.grpc_port;
        // The new process keeps the settings the first one had, the fault
        // point as `adjust` left it.
        *self = next;
        Ok(())
    }

    /// Kills the process (`SIGKILL`: no drain, no goodbye) and waits until
    /// it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.thaw()?;
        self.signal("KILL")?;
        self.exited().await.map(drop)
    }

    /// Asks the process to stop as an orchestrator does in a rolling
    /// restart (`SIGTERM`, thawed first), and waits up to [`GRACE`] for it
    /// to drain and exit by itself. Returns its exit status, whatever it
    /// is: the caller judges it. Never escalates to `SIGKILL`; a process
    /// still running after the grace period is an error here (and killed
    /// when its handle is dropped).
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.thaw()?;
        self.signal("TERM")?;
        tokio::time::timeout(GRACE, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "the {} child did not exit within {GRACE:?} of SIGTERM",
                    self.name
                )
            })?
            .with_context(|| format!("wait for the {} child", self.name))
    }

    /// Waits (within [`crate::DEADLINE`]) until the process has exited, by
    /// a kill or by itself (an armed fault point aborts it).
    pub async fn exited(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        tokio::time::timeout(crate::DEADLINE, self.child.wait())
            .await
            .with_context(|| format!("the {} child did not exit in time", self.name))?
            .with_context(|| format!("wait for the {} child", self.name))
    }

    /// Starts realtime in a child process with `env` (its `APP__…`
    /// settings; its logs are JSON lines on stdout), and waits until it
    /// listens.
    pub async fn realtime(exe: &Path, mut env: Vec<(String, String)>) -> anyhow::Result<Self> {
        env.push(("APP__TELEMETRY__FORMAT".into(), "json".into()));
        Self::start(exe, env, "realtime").await
    }

    async fn start(
        exe: &Path,
        env: Vec<(String, String)>,
        name: &'static str,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .envs(env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // A child that was not stopped (the test failed) is killed when
            // its handle goes, also when frozen.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start the {name} child process"))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let stdin = child.stdin.take();
        // A task reads the child's stdout: it hands over the ready line,
        // then keeps draining (and keeping every line), so that the child
        // never blocks on a full pipe.
        let (ready, ports) = tokio::sync::oneshot::channel();
        let output = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&output);
        let (closed, stdout_closed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut ready = Some(ready);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let rest = line.strip_prefix(READY).map(str::to_owned);
                // Kept before the ready line is handed over: whoever awaits
                // it reads the ports from the kept lines.
                kept.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
                if let Some(rest) = rest {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(rest);
                    }
                }
            }
            let _ = closed.send(true);
        });
        let mut service = Self {
            child,
            name,
            grpc_port: 0,
            http_port: 0,
            output,
            stdout_closed,
            _stdin: stdin,
            exe: exe.to_owned(),
            env,
        };
        tokio::time::timeout(crate::DEADLINE, ports)
            .await
            .with_context(|| format!("the {name} child did not start in time"))?
            .with_context(|| format!("the {name} child exited before it listened"))?;
        service.http_port = service.port("http=")?;
        Ok(service)
    }

    /// A port named in the ready line (`key` is `http=` or `grpc=`).
    fn port(&self, key: &str) -> anyhow::Result<u16> {
        let lines = self.output();
        let line = lines
            .iter()
            .find_map(|line| line.strip_prefix(READY))
            .context("the ready line")?;
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .with_context(|| format!("{key} in the ready line"))?
            .parse()
            .context("a port number")
    }

    /// Every line the child wrote to stdout so far (also after
    /// [`Self::stop`] returned: the handle is shared).
    pub fn output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A handle on the child's stdout lines that outlives [`Self::stop`].
    pub fn output_handle(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.output)
    }

    /// The child's pid (0 once it has been reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Freezes the process (`SIGSTOP`): its sockets stay open, the kernel
    /// still accepts connections, and nothing answers.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Lets a frozen process run again (`SIGCONT`).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// Stops the child gracefully ([`Self::terminate`]), and fails unless
    /// it exited with status 0.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate().await?;
        anyhow::ensure!(
            status.success(),
            "the {} child exited with {status}",
            self.name
        );
        // The process is gone; its last lines are still in the pipe.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.stdout_closed.wait_for(|closed| *closed),
        )
        .await;
        Ok(())
    }
}

/// The child's side: runs catalog from its `APP__…` settings until stdin
/// closes or `SIGTERM` (or an armed fault point, [`ABORT_AT`]).
pub fn catalog_main() {
    arm_fault_point();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let settings: signalbox_catalog::Settings = signalbox_platform::config::load("catalog")?;
        let app = signalbox_catalog::Application::build(settings).await?;
        println!("{READY} grpc={} http={}", app.grpc_port(), app.http_port());
        let shutdown = signalbox_platform::shutdown::on_signal();
        watch_parent(shutdown.clone());
        app.run_until_stopped(shutdown).await
    });
    result.expect("the catalog child");
}

/// The child's side: runs orders from its `APP__…` settings until stdin
/// closes or `SIGTERM` (or an armed fault point, [`ABORT_AT`]).
pub fn orders_main() {
    arm_fault_point();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let settings: signalbox_orders::Settings = signalbox_platform::config::load("orders")?;
        let app = signalbox_orders::Application::build(settings).await?;
        println!("{READY} grpc={} http={}", app.grpc_port(), app.http_port());
        let shutdown = signalbox_platform::shutdown::on_signal();
        watch_parent(shutdown.clone());
        app.run_until_stopped(shutdown).await
    });
    result.expect("the orders child");
}

/// The child's side: runs auth from its `APP__…` settings until stdin
/// closes or `SIGTERM`.
pub fn auth_main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let settings: signalbox_auth::Settings = signalbox_platform::config::load("auth")?;
        let app = signalbox_auth::Application::build(settings).await?;
        println!("{READY} grpc={} http={}", app.grpc_port(), app.http_port());
        let shutdown = signalbox_platform::shutdown::on_signal();
        watch_parent(shutdown.clone());
        app.run_until_stopped(shutdown).await
    });
    result.expect("the auth child");
}

/// The child's side: runs the gateway from its `APP__…` settings until
/// stdin closes or `SIGTERM`.
pub fn gateway_main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let settings: signalbox_gateway::Settings = signalbox_platform::config::load("gateway")?;
        let app = signalbox_gateway::Application::build(settings).await?;
        println!("{READY} http={}", app.http_port());
        let shutdown = signalbox_platform::shutdown::on_signal();
        watch_parent(shutdown.clone());
        app.run_until_stopped(shutdown).await
    });
    result.expect("the gateway child");
}

/// The fault point [`ABORT_AT`] names, and how many more hits until it fires.
static ARMED: std::sync::OnceLock<(String, std::sync::atomic::AtomicUsize)> =
    std::sync::OnceLock::new();

/// Reads [`ABORT_AT`] and, when it is set, installs the fault hook that
/// aborts this process at that point: the crash lands exactly there, after
/// the commit and before the ack or the publish, not wherever a timer says.
fn arm_fault_point() {
    let Ok(spec) = std::env::var(ABORT_AT) else {
        return;
    };
    let (point, nth) = match spec.split_once('@') {
        Some((point, nth)) => (point.to_owned(), nth.parse().expect("a count after @")),
        None => (spec, 1),
    };
    ARMED.get_or_init(|| (point, std::sync::atomic::AtomicUsize::new(nth)));
    signalbox_platform::faults::install(|name| {
        let Some((point, left)) = ARMED.get() else {
            return;
        };
        // SeqCst: hits come from several tasks; exactly one sees 1.
        if name == point && left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            eprintln!("fault point {name} reached: aborting");
            std::process::abort();
        }
    });
}

/// The child's side: runs realtime from its `APP__…` settings, with its
/// logs on stdout, until stdin closes or `SIGTERM`. Like the `realtime`
/// binary, the runtime is dropped right after `run_until_stopped` returns:
/// whatever the service left running at that point shows up here.
pub fn realtime_main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let settings: signalbox_realtime::Settings = signalbox_platform::config::load("realtime")?;
        signalbox_platform::telemetry::init("realtime", settings.telemetry.format);
        let app = signalbox_realtime::Application::build(settings).await?;
        println!("{READY} http={}", app.http_port());
        let shutdown = signalbox_platform::shutdown::on_signal();
        watch_parent(shutdown.clone());
        app.run_until_stopped(shutdown).await
    });
    drop(runtime);
    result.expect("the realtime child");
}

/// Cancels `shutdown` when stdin reaches its end: the parent closed it or
/// died. A thread, because reading stdin blocks.
fn watch_parent(shutdown: CancellationToken) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock().by_ref(), &mut std::io::sink());
        shutdown.cancel();
    });
}
