//! B1, fan-out: how many events a push server delivers to its sockets, at
//! what CPU and memory cost, against its peers in the same run.
//!
//! A *system* is a server process and the feed that publishes to it:
//!
//! | system | server | feed |
//! |---|---|---|
//! | `realtime` | the realtime service's binary | events on RabbitMQ (`<ns>.events`), as the outbox relay publishes them |
//! | `socketio` | Socket.IO 4.8 + `@socket.io/redis-adapter` (`bench/socketio/server.js`) | `@socket.io/redis-emitter` on the local Redis (`bench/socketio/emitter.js`) |
//! | `ceiling` | the minimal tokio-tungstenite broadcast server (`src/bin/ceiling.rs`) | events on RabbitMQ, as for realtime |
//!
//! One *run* is one system at one size (N sockets) in one mode (`public`:
//! all N on the `catalog` channel, one event reaching N sockets; `user`:
//! each socket on its own `user:<id>` channel, one event reaching one). A
//! run starts the server, opens the N sockets (authenticated with an EdDSA
//! access token each, and subscribed), reads the server's resident memory
//! before and after (the idle cost per socket), then climbs a ladder of
//! delivery rates, and measures publish → receive latency at half of the
//! highest rate it sustained. The server's CPU time comes from
//! `/proc/<pid>/stat`, its memory from `/proc/<pid>/status`; the client and
//! the feed are other processes.
//!
//! A *step* publishes at a constant rate (in deliveries per second: events
//! per second times the sockets each reaches) for the step's duration. It
//! is *sustained* when at least 99.5 % of the deliveries it asked for have
//! arrived within a second after its last publish and no socket was lost.
//! The ladder multiplies the rate by its factor (1.5; 2 in a quick run)
//! until a step is not sustained (a failed step is tried once more before
//! the ladder stops, since the machine is shared), then tries one rate
//! between the last two. Each mode has its own ladder ([`Ladder`]): a
//! user-mode event reaches one socket, so its rates start lower.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use futures::{stream, StreamExt};
use lapin::{options::BasicPublishOptions, Connection, ConnectionProperties};
use serde::Serialize;
use serde_json::json;
use signalbox_messages::{
    catalog::PriceChanged, channels::Namespace, orders::OrderApproved, Envelope, Message as _,
};
use signalbox_platform::tokens::{now_secs, AccessClaims};
use signalbox_testkit::tokens::{self, TestKey};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, ChildStdin, Command},
};

use crate::{
    proc,
    socket::{self, Protocol, Subscribed, Tally},
};

/// Sockets opening at the same time.
const CONNECTING: usize = 64;
/// How long the deliveries of a step may lag behind its last publish.
const GRACE: Duration = Duration::from_secs(1);
/// The share of a step's deliveries that must arrive for it to count.
const SUSTAINED: f64 = 0.995;
/// How often the feed publishes what is due.
const TICK: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// N sockets on one public channel.
    Public,
    /// N sockets, each on its own user channel.
    User,
}

impl Mode {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "public" => Ok(Self::Public),
            "user" => Ok(Self::User),
            other => bail!("unknown mode {other} (public, user)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::User => "user",
        }
    }
}

/// A server under test and how to start it.
#[derive(Debug, Clone, Serialize)]
pub struct System {
    /// Its name in the results (`realtime`, `socketio`, `ceiling`, or any
    /// other for a second realtime binary, e.g. `realtime-before`).
    pub name: String,
    pub kind: Kind,
    /// The binary (realtime, ceiling) or `bench/socketio` (Socket.IO).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Realtime,
    SocketIo,
    Ceiling,
}

/// What a whole benchmark does.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub systems: Vec<System>,
    pub sizes: Vec<usize>,
    pub modes: Vec<Mode>,
    pub repetitions: usize,
    /// How the runs of the public mode climb.
    pub public: Ladder,
    /// How the runs of the user mode climb: each event reaches one socket,
    /// so its rates are events per second, bounded by the feed and the
    /// broker rather than by the fan-out, and start lower.
    pub user: Ladder,
    /// The rate no ladder goes above.
    pub last_rate: f64,
    /// A fixed rate, the same for every system, at which latency is
    /// measured once more: at half of the highest rate the machine is busy,
    /// so this one shows the path itself.
    pub fixed_rate: f64,
    pub amqp_url: String,
    pub redis_url: String,
}

/// How a run climbs: from which rate, by what factor, and how long each
/// step publishes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ladder {
    /// The first rate, in deliveries per second.
    pub first_rate: f64,
    /// What each sustained step multiplies the rate by.
    pub factor: f64,
    /// How long each step of the ladder publishes.
    #[serde(with = "secs")]
    pub step: Duration,
    /// How long the latency steps (at half the highest rate, and at the
    /// fixed rate) publish.
    #[serde(with = "secs")]
    pub latency_step: Duration,
}

impl Plan {
    /// The ladder of `mode`'s runs.
    pub fn ladder(&self, mode: Mode) -> Ladder {
        match mode {
            Mode::Public => self.public,
            Mode::User => self.user,
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// One step's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The rate asked for, deliveries per second.
    pub rate: f64,
    pub expected: u64,
    pub delivered: u64,
    /// Delivered over the step's duration.
    pub delivered_per_sec: f64,
    /// Server CPU seconds from the step's start to its last delivery.
    pub cpu_secs: f64,
    pub per_cpu_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub lost_sockets: u64,
    pub sustained: bool,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub system: String,
    pub size: usize,
    pub mode: Mode,
    pub repetition: usize,
    pub load_average: String,
    pub connect_errors: usize,
    /// Resident memory of the server per idle, authenticated, subscribed
    /// socket, in KiB.
    pub rss_per_socket_kib: f64,
    pub steps: Vec<Step>,
    /// The highest sustained step (its delivered rate and CPU efficiency).
    pub highest: Option<Step>,
    /// The step at half of `highest`'s rate (its latencies).
    pub half: Option<Step>,
    /// The step at the plan's fixed rate.
    pub fixed: Option<Step>,
    pub error: Option<String>,
}

/// Progress lines go to stderr with the time since the benchmark started.
pub struct Progress {
    started: Instant,
    total: usize,
    done: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self {
            started: Instant::now(),
            total,
            done: 0,
        }
    }

    pub fn say(&self, what: impl std::fmt::Display) {
        let elapsed = self.started.elapsed().as_secs();
        eprintln!(
            "[{:02}:{:02} run {}/{}] {what}",
            elapsed / 60,
            elapsed % 60,
            (self.done + 1).min(self.total),
            self.total
        );
    }
}

/// Runs the whole plan: every repetition runs every size, mode and system,
/// the systems' order rotating by one each repetition, so that a change in
/// the machine's load falls on all of them.
pub async fn run_plan(plan: &Plan) -> anyhow::Result<Vec<Run>> {
    let key = TestKey::generate();
    let jwks = key.jwks();
    let stop = tokio_util::sync::CancellationToken::new();
    let jwks_url = tokens::serve_jwks(jwks.clone(), stop.clone()).await?;
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    // One token per user, signed once for the whole benchmark.
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..largest)
            .map(|i| {
                let claims = AccessClaims {
                    exp: now_secs() + 6 * 3600,
                    scope: String::new(),
                    ..tokens::claims(&user(i))
                };
                key.sign(&claims)
            })
            .collect(),
    );
    let context = RunContext {
        plan: plan.clone(),
        jwks: jwks.to_string(),
        jwks_url,
        tokens,
    };

    let total = plan.repetitions * plan.sizes.len() * plan.modes.len() * plan.systems.len();
    let mut progress = Progress::new(total);
    let mut runs = Vec::new();
    for repetition in 0..plan.repetitions {
        let mut systems = plan.systems.clone();
        let turn = repetition % systems.len().max(1);
        systems.rotate_left(turn);
        for &size in &plan.sizes {
            for &mode in &plan.modes {
                for system in &systems {
                    let label = format!(
                        "{} N={size} {} (repetition {}/{})",
                        system.name,
                        mode.name(),
                        repetition + 1,
                        plan.repetitions
                    );
                    progress.say(format!("{label}: starting, load {}", proc::load_average()));
                    let run = context.run(system, size, mode, repetition, &progress).await;
                    progress.say(format!("{label}: {}", summary(&run)));
                    progress.done += 1;
                    runs.push(run);
                }
            }
        }
    }
    stop.cancel();
    Ok(runs)
}

fn summary(run: &Run) -> String {
    if let Some(error) = &run.error {
        return format!("failed: {error}");
    }
    let highest = run.highest.as_ref();
    format!(
        "highest {:.0}/s, {:.0} per CPU-s, p99 {:.1} ms at half, {:.1} KiB per idle socket",
        highest.map_or(0.0, |s| s.delivered_per_sec),
        highest.map_or(0.0, |s| s.per_cpu_sec),
        run.half.as_ref().map_or(f64::NAN, |s| s.p99_ms),
        run.rss_per_socket_kib
    )
}

pub fn user(i: usize) -> String {
    format!("u{i}")
}

struct RunContext {
    plan: Plan,
    jwks: String,
    jwks_url: String,
    tokens: Arc<Vec<String>>,
}

impl RunContext {
    async fn run(
        &self,
        system: &System,
        size: usize,
        mode: Mode,
        repetition: usize,
        progress: &Progress,
    ) -> Run {
        let mut run = Run {
            system: system.name.clone(),
            size,
            mode,
            repetition,
            load_average: proc::load_average(),
            connect_errors: 0,
            rss_per_socket_kib: f64::NAN,
            steps: Vec::new(),
            highest: None,
            half: None,
            fixed: None,
            error: None,
        };
        if let Err(error) = self.measure(system, size, mode, progress, &mut run).await {
            run.error = Some(format!("{error:#}"));
        }
        run
    }

    async fn measure(
        &self,
        system: &System,
        size: usize,
        mode: Mode,
        progress: &Progress,
        run: &mut Run,
    ) -> anyhow::Result<()> {
        let mut server = Server::start(system, self).await?;
        let (tally, sockets) = self
            .open_sockets(&server, size, mode, progress, run)
            .await?;
        run.rss_per_socket_kib = server.idle_rss_per_socket(sockets.len()).await?;

        let fanout = match mode {
            Mode::Public => size as f64,
            Mode::User => 1.0,
        };
        let ladder = self.plan.ladder(mode);
        let mut rate = ladder.first_rate;
        let mut best: Option<Step> = None;
        let mut failed: Option<f64> = None;
        let mut retried = false;
        while rate <= self.plan.last_rate {
            let step = server
                .step(&tally, rate, fanout, size, mode, ladder.step)
                .await?;
            progress.say(describe(&step));
            let sustained = step.sustained;
            run.steps.push(step.clone());
            if sustained {
                best = Some(step);
                retried = false;
                rate *= ladder.factor;
            } else if !retried && tally.closed() == 0 {
                retried = true;
            } else {
                failed = Some(rate);
                break;
            }
        }
        // One rate between the last sustained and the first that was not.
        if let (Some(good), Some(bad)) = (best.clone(), failed) {
            if tally.closed() == 0 {
                let between = (good.rate * bad).sqrt();
                let step = server
                    .step(&tally, between, fanout, size, mode, ladder.step)
                    .await?;
                progress.say(describe(&step));
                run.steps.push(step.clone());
                if step.sustained {
                    best = Some(step);
                }
            }
        }
        let Some(best) = best else {
            bail!(
                "not even the first rate ({:.0}/s) was sustained",
                ladder.first_rate
            );
        };
        // Latency at half of the highest rate, on a fresh server when the
        // ladder cost sockets.
        let (tally, sockets) = if tally.closed() > 0 {
            drop(sockets);
            server.stop().await;
            server = Server::start(system, self).await?;
            self.open_sockets(&server, size, mode, progress, run)
                .await?
        } else {
            (tally, sockets)
        };
        let half = server
            .step(
                &tally,
                best.delivered_per_sec / 2.0,
                fanout,
                size,
                mode,
                ladder.latency_step,
            )
            .await?;
        progress.say(format!("half: {}", describe(&half)));
        run.half = Some(half);
        run.fixed = self
            .fixed_step(&mut server, &tally, fanout, size, mode, progress)
            .await?;
        drop(sockets);
        run.highest = Some(best);
        server.stop().await;
        Ok(())
    }

    /// The latency step at the plan's fixed rate, if it is above zero.
    async fn fixed_step(
        &self,
        server: &mut Server,
        tally: &Tally,
        fanout: f64,
        size: usize,
        mode: Mode,
        progress: &Progress,
    ) -> anyhow::Result<Option<Step>> {
        if self.plan.fixed_rate <= 0.0 {
            return Ok(None);
        }
        let step = server
            .step(
                tally,
                self.plan.fixed_rate,
                fanout,
                size,
                mode,
                self.plan.ladder(mode).latency_step,
            )
            .await?;
        progress.say(format!("fixed: {}", describe(&step)));
        Ok(Some(step))
    }

    async fn open_sockets(
        &self,
        server: &Server,
        size: usize,
        mode: Mode,
        progress: &Progress,
        run: &mut Run,
    ) -> anyhow::Result<(Arc<Tally>, Vec<Subscribed>)> {
        let tally = Arc::new(Tally::default());
        let started = Instant::now();
        let results: Vec<anyhow::Result<Subscribed>> = stream::iter(0..size)
            .map(|i| {
                let channel = match mode {
                    Mode::Public => "catalog".to_owned(),
                    Mode::User => format!("user:{}", user(i)),
                };
                let token = self.tokens[i].clone();
                let tally = Arc::clone(&tally);
                let (protocol, port) = (server.protocol, server.port);
                async move { socket::subscribe(protocol, port, i, &token, &channel, tally).await }
            })
            .buffer_unordered(CONNECTING)
            .collect()
            .await;
        let mut sockets = Vec::with_capacity(size);
        let mut first_error = None;
        for result in results {
            match result {
                Ok(socket) => sockets.push(socket),
                Err(error) => {
                    run.connect_errors += 1;
                    first_error.get_or_insert(error);
                }
            }
        }
        progress.say(format!(
            "{} sockets subscribed in {:.1} s, {} refused",
            sockets.len(),
            started.elapsed().as_secs_f64(),
            run.connect_errors
        ));
        if let Some(error) = first_error {
            bail!(
                "{} of {size} sockets failed to open: {error:#}",
                run.connect_errors
            );
        }
        Ok((tally, sockets))
    }
}

fn describe(step: &Step) -> String {
    format!(
        "{:>9.0}/s asked: {:>5.1} % delivered, {:.0} per CPU-s, p50 {:.1} ms, p99 {:.1} ms{}",
        step.rate,
        100.0 * step.delivered as f64 / step.expected.max(1) as f64,
        step.per_cpu_sec,
        step.p50_ms,
        step.p99_ms,
        if step.sustained {
            ""
        } else {
            "  (not sustained)"
        }
    )
}

/// A running server, its helpers and its feed.
struct Server {
    pid: u32,
    port: u16,
    protocol: Protocol,
    /// The server first; the emitter after it, for Socket.IO.
    children: Vec<Child>,
    feed: Feed,
    /// Resident memory before any socket opened, in KiB.
    rss_before: u64,
    /// The AMQP namespace to delete afterwards (realtime, ceiling).
    namespace: Option<Namespace>,
}

// One feed per run: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Feed {
    Amqp {
        _connection: Connection,
        channel: lapin::Channel,
        exchange: String,
    },
    Emitter {
        stdin: ChildStdin,
    },
}

impl Server {
    async fn start(system: &System, context: &RunContext) -> anyhow::Result<Self> {
        let namespace = signalbox_testkit::broker::random_namespace();
        match system.kind {
            Kind::Realtime => {
                let port = free_port()?;
                let child = Command::new(&system.path)
                    .env("APP_CONFIG_DIR", "/nonexistent")
                    .env("APP__HTTP__HOST", "127.0.0.1")
                    .env("APP__HTTP__PORT", port.to_string())
                    .env("APP__AMQP__URL", &context.plan.amqp_url)
                    .env("APP__AMQP__NAMESPACE", &namespace)
                    .env("APP__TOKENS__JWKS_URL", &context.jwks_url)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("start {}", system.path.display()))?;
                let pid = child.id().context("the server's pid")?;
                let mut server = Self {
                    pid,
                    port,
                    protocol: Protocol::Signalbox,
                    children: vec![child],
                    feed: Feed::amqp(&context.plan.amqp_url, &namespace).await?,
                    rss_before: 0,
                    namespace: Some(Namespace::new(namespace)),
                };
                server.wait_ready().await?;
                Ok(server)
            }
            Kind::Ceiling => {
                let mut child = Command::new(&system.path)
                    .args(["--namespace", &namespace, "--amqp", &context.plan.amqp_url])
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("start {}", system.path.display()))?;
                let port = listening(&mut child).await?;
                let pid = child.id().context("the server's pid")?;
                let mut server = Self {
                    pid,
                    port,
                    protocol: Protocol::Signalbox,
                    children: vec![child],
                    feed: Feed::amqp(&context.plan.amqp_url, &namespace).await?,
                    rss_before: 0,
                    namespace: Some(Namespace::new(namespace)),
                };
                server.settle().await?;
                Ok(server)
            }
            Kind::SocketIo => {
                let mut child = Command::new("node")
                    .arg(system.path.join("server.js"))
                    .env("PORT", "0")
                    .env("REDIS_URL", &context.plan.redis_url)
                    .env("KEY", &namespace)
                    .env("JWKS", &context.jwks)
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .context("start node (is Node.js installed?)")?;
                let port = listening(&mut child).await?;
                let pid = child.id().context("the server's pid")?;
                let mut emitter = Command::new("node")
                    .arg(system.path.join("emitter.js"))
                    .env("REDIS_URL", &context.plan.redis_url)
                    .env("KEY", &namespace)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .context("start the emitter")?;
                let ready = first_line(&mut emitter).await?;
                if ready != "ready" {
                    bail!("the emitter said {ready:?}");
                }
                let stdin = emitter.stdin.take().context("the emitter's stdin")?;
                let mut server = Self {
                    pid,
                    port,
                    protocol: Protocol::SocketIo,
                    children: vec![child, emitter],
                    feed: Feed::Emitter { stdin },
                    rss_before: 0,
                    namespace: None,
                };
                server.settle().await?;
                Ok(server)
            }
        }
    }

    /// Realtime is ready when `/health/ready` answers 200.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(true) = http_ok(self.port, "/health/ready").await {
                break;
            }
            if let Ok(Some(status)) = self.children[0].try_wait() {
                bail!("the server exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("the server did not become ready within a minute");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.settle().await
    }

    /// Lets start-up allocations settle, then notes the memory baseline.
    async fn settle(&mut self) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.rss_before = proc::rss_kib(self.pid)?;
        Ok(())
    }

    async fn idle_rss_per_socket(&self, sockets: usize) -> anyhow::Result<f64> {
        // Let the handshakes' garbage go (Node collects lazily).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = proc::rss_kib(self.pid)?;
        Ok(after.saturating_sub(self.rss_before) as f64 / sockets.max(1) as f64)
    }

    /// One step: publish at `rate` deliveries per second for `duration`,
    /// then wait for the deliveries, at most [`GRACE`] more.
    async fn step(
        &mut self,
        tally: &Tally,
        rate: f64,
        fanout: f64,
        size: usize,
        mode: Mode,
        duration: Duration,
    ) -> anyhow::Result<Step> {
        quiesce(tally).await;
        let events_per_sec = rate / fanout;
        let events = (events_per_sec * duration.as_secs_f64()).round().max(1.0) as u64;
        let expected = (events as f64 * fanout) as u64;
        let closed_before = tally.closed();
        let _ = tally.latency.take();
        let delivered_before = tally.delivered();
        let cpu_before = proc::cpu_time(self.pid)?;
        let started = Instant::now();

        let mut sent = 0u64;
        let mut next_user = 0usize;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while sent < events {
            ticker.tick().await;
            let due =
                ((started.elapsed().as_secs_f64() * events_per_sec).floor() as u64).min(events);
            while sent < due {
                let target = match mode {
                    Mode::Public => None,
                    Mode::User => {
                        next_user = (next_user + 1) % size;
                        Some(next_user)
                    }
                };
                self.feed.push(target).await?;
                sent += 1;
            }
            self.feed.flush().await?;
        }
        let published = started.elapsed();
        let deadline = Instant::now() + GRACE;
        while tally.delivered() - delivered_before < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let cpu = proc::cpu_time(self.pid)?
            .saturating_sub(cpu_before)
            .as_secs_f64();
        let delivered = tally.delivered() - delivered_before;
        let latency = tally.latency.take();
        let lost = tally.closed() - closed_before;
        let window = published.as_secs_f64().max(duration.as_secs_f64());
        Ok(Step {
            rate,
            expected,
            delivered,
            delivered_per_sec: delivered as f64 / window,
            cpu_secs: cpu,
            per_cpu_sec: if cpu > 0.0 {
                delivered as f64 / cpu
            } else {
                f64::NAN
            },
            p50_ms: latency.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: latency.max() as f64 / 1000.0,
            lost_sockets: lost,
            sustained: lost == 0 && delivered as f64 >= SUSTAINED * expected as f64,
        })
    }

    async fn stop(mut self) {
        if let Feed::Emitter { stdin } = &mut self.feed {
            let _ = stdin.shutdown().await;
        }
        for child in &mut self.children {
            if let Some(pid) = child.id() {
                // SIGTERM first, for a clean exit (realtime closes its
                // sockets, Node its Redis clients).
                let _ = std::process::Command::new("kill")
                    .arg(pid.to_string())
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        if let Some(ns) = self.namespace.take() {
            let stream = signalbox_realtime::recovery::stream_queue(
                &ns,
                &signalbox_realtime::config::RecoverySettings::default(),
            )
            .name;
            let queues = [signalbox_messaging::stream::epoch_queue(&stream), stream];
            if let Err(error) = signalbox_testkit::broker::delete_namespace(&ns, &queues).await {
                eprintln!("could not delete the namespace {}: {error:#}", ns.prefix());
            }
        }
    }
}

impl Feed {
    async fn amqp(url: &str, namespace: &str) -> anyhow::Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let ns = Namespace::new(namespace);
        signalbox_messaging::topology::declare_exchanges(&channel, &ns).await?;
        Ok(Self::Amqp {
            _connection: connection,
            channel,
            exchange: ns.events_exchange(),
        })
    }

    /// Publishes one event: to the `catalog` channel, or to user `target`'s.
    /// The payload carries its publish time as `ts` (µs since the epoch).
    async fn push(&mut self, target: Option<usize>) -> anyhow::Result<()> {
        let ts = crate::latency::now_micros();
        let (envelope, routing_key, payload, room) = match target {
            None => (
                Envelope::new::<PriceChanged>(),
                PriceChanged::TYPE,
                json!({"product_id": "0190b7f4-3c2e-7a59-9d3a-5f6b7c8d9e0f",
                       "price_cents": 1999, "currency": "EUR", "ts": ts}),
                "catalog".to_owned(),
            ),
            Some(i) => {
                let user = user(i);
                (
                    Envelope::new::<OrderApproved>().with_user_id(&user),
                    OrderApproved::TYPE,
                    json!({"order_id": "0190b7f4-3c2e-7a59-9d3a-5f6b7c8d9e0f",
                           "user_id": user, "state": "APPROVED", "ts": ts}),
                    format!("user:{user}"),
                )
            }
        };
        match self {
            Self::Amqp {
                channel, exchange, ..
            } => {
                // No publisher confirms: the feed must not be what limits
                // the rate. The broker's flow control still pushes back.
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &serde_json::to_vec(&payload)?,
                        signalbox_messaging::amqp::to_properties(&envelope),
                    )
                    .await?;
            }
            Self::Emitter { stdin } => {
                // The same data as realtime's `event` frame carries: the
                // payload and its type.
                let mut data = payload;
                data["type"] = json!(routing_key);
                let line = format!("{}\n", json!({"room": room, "data": data}));
                stdin.write_all(line.as_bytes()).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if let Self::Emitter { stdin } = self {
            stdin.flush().await?;
        }
        Ok(())
    }
}

/// Waits until no delivery has arrived for 300 ms (at most 10 s), so that
/// a step does not count the tail of the one before.
async fn quiesce(tally: &Tally) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = tally.delivered();
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = tally.delivered();
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

async fn first_line(child: &mut Child) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("no answer within a minute")??
        .context("the child exited")?;
    // Drain the rest, so that the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(line)
}

/// The port of a child that prints `listening <port>`.
async fn listening(child: &mut Child) -> anyhow::Result<u16> {
    let line = first_line(child).await?;
    line.strip_prefix("listening ")
        .and_then(|port| port.trim().parse().ok())
        .with_context(|| format!("expected `listening <port>`, got {line:?}"))
}

async fn http_ok(port: u16, path: &str) -> anyhow::Result<bool> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    Ok(answer.starts_with(b"HTTP/1.1 200"))
}

/// The median of some figures (`NaN`s left out).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The medians over repetitions of one system at one size and mode.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub system: String,
    pub size: usize,
    pub mode: Mode,
    pub runs: usize,
    pub failed: usize,
    pub highest_per_sec: f64,
    pub per_cpu_sec: f64,
    pub p50_ms_at_half: f64,
    pub p99_ms_at_half: f64,
    pub p50_ms_at_fixed: f64,
    pub p99_ms_at_fixed: f64,
    pub rss_per_socket_kib: f64,
    pub connect_errors: usize,
    /// Above saturation: the first step of the ladder that was not
    /// sustained, as a share of what it asked for that was delivered (the
    /// rest shed or late), its p99, and the sockets it cost.
    pub over_delivered_share: f64,
    pub over_p99_ms: f64,
    pub over_lost_sockets: f64,
}

/// Medians per (size, mode, system), in the plan's order of systems.
pub fn figures(plan: &Plan, runs: &[Run]) -> Vec<Figures> {
    let mut groups: BTreeMap<(usize, Mode, usize), Vec<&Run>> = BTreeMap::new();
    for run in runs {
        let order = plan
            .systems
            .iter()
            .position(|s| s.name == run.system)
            .unwrap_or(usize::MAX);
        groups
            .entry((run.size, run.mode, order))
            .or_default()
            .push(run);
    }
    groups
        .into_iter()
        .map(|((size, mode, _), runs)| {
            let ok: Vec<&&Run> = runs.iter().filter(|r| r.error.is_none()).collect();
            let of =
                |f: &dyn Fn(&Run) -> Option<f64>| median(ok.iter().filter_map(|r| f(r)).collect());
            Figures {
                system: runs[0].system.clone(),
                size,
                mode,
                runs: runs.len(),
                failed: runs.len() - ok.len(),
                highest_per_sec: of(&|r| r.highest.as_ref().map(|s| s.delivered_per_sec)),
                per_cpu_sec: of(&|r| r.highest.as_ref().map(|s| s.per_cpu_sec)),
                p50_ms_at_half: of(&|r| r.half.as_ref().map(|s| s.p50_ms)),
                p99_ms_at_half: of(&|r| r.half.as_ref().map(|s| s.p99_ms)),
                p50_ms_at_fixed: of(&|r| r.fixed.as_ref().map(|s| s.p50_ms)),
                p99_ms_at_fixed: of(&|r| r.fixed.as_ref().map(|s| s.p99_ms)),
                rss_per_socket_kib: of(&|r| Some(r.rss_per_socket_kib)),
                connect_errors: runs.iter().map(|r| r.connect_errors).sum(),
                over_delivered_share: of(&|r| {
                    first_unsustained(r).map(|s| s.delivered as f64 / s.expected.max(1) as f64)
                }),
                over_p99_ms: of(&|r| first_unsustained(r).map(|s| s.p99_ms)),
                over_lost_sockets: of(&|r| first_unsustained(r).map(|s| s.lost_sockets as f64)),
            }
        })
        .collect()
}

/// The first step of a run's ladder that was not sustained: the system
/// just above its saturation.
fn first_unsustained(run: &Run) -> Option<&Step> {
    run.steps.iter().find(|s| !s.sustained)
}
