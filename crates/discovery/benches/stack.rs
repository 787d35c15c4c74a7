//! What the guarded client stack costs a call, and how fast an open breaker
//! refuses one: the figures of `docs/benchmarks.md`, run by `scripts/bench`.
//!
//! A real gRPC server (the standard health service) on 127.0.0.1 answers
//! unary `Check` calls. The same calls go two ways, alternating in rounds so
//! that a change in the machine's load falls on both:
//!
//! ```text
//!   bare    HealthClient ──► Channel ─────────────────────────────────────────────────► server
//!   stack   HealthClient ──► Deadline ─► Bulkhead ─► Retry ─► upstream_with (dns, IP URL):
//!                            Buffer ─► FailFast ─► p2c ─► Endpoint ─► CircuitBreaker ─► Channel ─► server
//! ```
//!
//! — `signalbox_resilience::guard`, the stack every client builds, with its
//! default policy — first one call at a time, then with `--concurrency`
//! calls in flight. Then the server answers `Unavailable` until the
//! endpoint's breaker opens, and each further call is a rejection: its
//! latency is timed, and the server's count of calls must not move.
//!
//! Usage: `cargo bench -p signalbox-discovery --bench stack -- [--quick]
//! [--calls N] [--concurrency C]`. Not a test: it asserts nothing about
//! speed, only that a rejection reached no server.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use signalbox_discovery::{upstream_with, DiscoverySettings, Mode};
use signalbox_resilience::{BreakerSettings, CallPolicy, ClientService, Rejection};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::interceptor::InterceptedService, transport::Channel, Request, Status};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The method called, listed as a read so that the retry layer treats it
/// as the gateway treats catalog's reads.
const CHECK: &str = "/grpc.health.v1.Health/Check";

struct Options {
    /// Calls per path per mode, and rejections timed.
    calls: usize,
    /// Calls in flight in the concurrent mode.
    concurrency: usize,
    /// Bare and stack take turns this many times per mode.
    rounds: usize,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            calls: 20_000,
            concurrency: 32,
            rounds: 4,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.calls = 2_000,
                "--calls" => options.calls = next_number(&mut args, "--calls")?,
                "--concurrency" => {
                    options.concurrency = next_number(&mut args, "--concurrency")?.max(1)
                }
                // What `cargo bench` passes to every bench binary.
                "--bench" => {}
                other => anyhow::bail!("unknown argument `{other}`"),
            }
        }
        options.calls = options.calls.max(options.rounds * options.concurrency);
        Ok(options)
    }
}

fn next_number(args: &mut impl Iterator<Item = String>, flag: &str) -> anyhow::Result<usize> {
    let value = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("{flag} needs a number"))?;
    Ok(value.parse()?)
}

/// What the server lets the benchmark see and steer.
#[derive(Default)]
struct Tap {
    /// Calls that reached the server, answered or refused.
    calls: AtomicUsize,
    /// While set, every call is answered `Unavailable`.
    failing: AtomicBool,
}

/// Starts the health server on its own runtime and thread (one worker), so
/// that client and server each have about one of the machine's cores.
fn start_server() -> anyhow::Result<(SocketAddr, Arc<Tap>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let tap = Arc::new(Tap::default());
    let seen = tap.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let (_reporter, health) = tonic_health::server::health_reporter();
            // Counts every call, and fails it while asked to. Relaxed: plain
            // counters and a flag, read after the calls they count ended.
            let health = InterceptedService::new(health, move |request: Request<()>| {
                seen.calls.fetch_add(1, Ordering::Relaxed);
                if seen.failing.load(Ordering::Relaxed) {
                    Err(Status::unavailable("failing on purpose"))
                } else {
                    Ok(request)
                }
            });
            // Every accepted connection with `TCP_NODELAY`, as the services
            // serve (`signalbox_platform::serve`): without it an answer that
            // follows another within a few milliseconds waits for the
            // client's delayed acknowledgement, up to 40 ms, which is what
            // the p99 with 32 in flight measured before.
            let incoming = TcpListenerStream::new(listener).map(|accepted| {
                let tcp = accepted?;
                tcp.set_nodelay(true)?;
                Ok::<_, std::io::Error>(tcp)
            });
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
                .expect("server");
        });
    });
    Ok((address, tap))
}

/// The guarded stack over the server at `url`, as the gateway builds it
/// for each upstream (`signalbox_resilience::guard`), with the
/// default policy, except that an open breaker stays open for the whole
/// rejection measurement.
fn guarded(url: &str) -> anyhow::Result<HealthClient<ClientService>> {
    let policy = CallPolicy::default();
    let breaker = BreakerSettings {
        open_base: Duration::from_secs(600),
        open_max: Duration::from_secs(600),
        ..BreakerSettings::from(&policy.breaker)
    };
    let discovery = DiscoverySettings {
        mode: Mode::Dns,
        connect_timeout_ms: 2_000,
        ..DiscoverySettings::default()
    };
    let (endpoints, _view) = upstream_with("bench", url, &discovery, breaker)?;
    // The stack every client builds, with the gateway's per-call deadline
    // (`timeouts.upstream_secs`).
    let (stack, _bulkhead) = signalbox_resilience::guard(
        endpoints,
        Duration::from_secs(5),
        &policy,
        &[CHECK.to_owned()],
    );
    Ok(HealthClient::new(ClientService::new(stack)))
}

#[derive(Clone)]
enum Client {
    Bare(HealthClient<Channel>),
    Stack(HealthClient<ClientService>),
}

impl Client {
    async fn check(&mut self) -> Result<(), Status> {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match self {
            Self::Bare(client) => client.check(request).await.map(drop),
            Self::Stack(client) => client.check(request).await.map(drop),
        }
    }
}

/// Latencies of a set of calls, and the wall time they took.
#[derive(Default)]
struct Sample {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        self.wall += other.wall;
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn mean(&self) -> Duration {
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }

    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

/// `calls` calls, `in_flight` at a time, each timed.
async fn run(client: &Client, calls: usize, in_flight: usize) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let mut client = client.clone();
        let share = calls / in_flight;
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for _ in 0..share {
                let call = Instant::now();
                client.check().await?;
                latencies.push(call.elapsed());
            }
            Ok::<_, Status>(latencies)
        });
    }
    let mut sample = Sample::default();
    while let Some(latencies) = tasks.join_next().await {
        sample.latencies.extend(latencies??);
    }
    sample.wall = started.elapsed();
    Ok(sample)
}

/// Bare and stack, `rounds` turns each, after a warm-up of both.
async fn compare(
    bare: &Client,
    stack: &Client,
    options: &Options,
    in_flight: usize,
) -> anyhow::Result<(Sample, Sample)> {
    let warm_up = (options.calls / 10).max(in_flight);
    run(bare, warm_up, in_flight).await?;
    run(stack, warm_up, in_flight).await?;
    let (mut bare_sample, mut stack_sample) = (Sample::default(), Sample::default());
    let per_round = options.calls / options.rounds;
    for _ in 0..options.rounds {
        bare_sample.add(run(bare, per_round, in_flight).await?);
        stack_sample.add(run(stack, per_round, in_flight).await?);
    }
    Ok((bare_sample, stack_sample))
}

/// Fails the server until the stack's breaker opens, then times `calls`
/// rejections. Returns them and the calls the server saw meanwhile.
async fn rejections(stack: &Client, tap: &Tap, calls: usize) -> anyhow::Result<(Sample, usize)> {
    tap.failing.store(true, Ordering::Relaxed);
    let mut client = stack.clone();
    let tripped = Instant::now();
    loop {
        let status = client.check().await.expect_err("the server is failing");
        if matches!(Rejection::of(&status), Some(Rejection::Open { .. })) {
            break;
        }
        anyhow::ensure!(
            tripped.elapsed() < Duration::from_secs(30),
            "the breaker did not open"
        );
    }
    let seen_before = tap.calls.load(Ordering::Relaxed);
    let mut sample = Sample::default();
    let started = Instant::now();
    for _ in 0..calls {
        let call = Instant::now();
        let status = client.check().await.expect_err("the breaker is open");
        sample.latencies.push(call.elapsed());
        anyhow::ensure!(
            matches!(Rejection::of(&status), Some(Rejection::Open { .. })),
            "not a rejection of an open breaker: {status:?}"
        );
    }
    sample.wall = started.elapsed();
    Ok((sample, tap.calls.load(Ordering::Relaxed) - seen_before))
}

fn micros(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e6)
}

fn row(path: &str, mode: &str, sample: &Sample) {
    println!(
        "| {path} | {mode} | {} | {} | {} | {} | {:.0} |",
        sample.latencies.len(),
        micros(sample.percentile(0.50)),
        micros(sample.percentile(0.99)),
        micros(sample.mean()),
        sample.per_second(),
    );
}

fn ratio(mode: &str, bare: &Sample, stack: &Sample) {
    let of = |f: fn(&Sample) -> Duration| f(stack).as_secs_f64() / f(bare).as_secs_f64();
    println!(
        "| {mode} | {:.2} | {:.2} | {:.2} | {:.2} |",
        of(|s| s.percentile(0.50)),
        of(|s| s.percentile(0.99)),
        of(Sample::mean),
        bare.per_second() / stack.per_second(),
    );
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let (address, tap) = start_server()?;
    let url = format!("http://{address}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The calls are made from a task on the runtime's one worker, as a
    // service's handler makes them, not from `block_on`'s own thread:
    // there, each call would cross to the worker (where the channel's and
    // the balancer's buffer tasks run) and back, and after some thousands
    // of calls the worker parks between them, which timed that hand-off
    // (about 60 µs a call) instead of the stack.
    runtime.block_on(runtime.spawn(async move {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await?;
        let bare = Client::Bare(HealthClient::new(channel));
        let stack = Client::Stack(guarded(&url)?);
        let sequential = compare(&bare, &stack, &options, 1).await?;
        let concurrent = compare(&bare, &stack, &options, options.concurrency).await?;
        let (rejected, reached) = rejections(&stack, &tap, options.calls).await?;

        let in_flight = format!("{} in flight", options.concurrency);
        println!("| path | mode | calls | p50 µs | p99 µs | mean µs | calls/s |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        row("bare channel", "sequential", &sequential.0);
        row("guarded stack", "sequential", &sequential.1);
        row("bare channel", &in_flight, &concurrent.0);
        row("guarded stack", &in_flight, &concurrent.1);
        row("open breaker: rejection", "sequential", &rejected);
        println!();
        println!("| stack / bare | p50 | p99 | mean | time per call (1 / throughput) |");
        println!("|---|---:|---:|---:|---:|");
        ratio("sequential", &sequential.0, &sequential.1);
        ratio(&in_flight, &concurrent.0, &concurrent.1);
        println!();
        println!(
            "calls that reached the server during the {} rejections: {reached}",
            rejected.latencies.len()
        );
        anyhow::ensure!(reached == 0, "a rejected call reached the server");
        Ok(())
    }))?
}
