//! What tracing costs an order, end to end: orders placed over REST until
//! APPROVED is pushed on the socket, with every span exported over OTLP at
//! sampling ratio 1.0, against the same run with OpenTelemetry switched off.
//!
//! ```text
//! cargo bench -p signalbox-system-tests --bench tracing -- [--quick|--smoke]
//!     [--orders N] [--rounds R] [--concurrency C]
//! ```
//!
//! Each measurement is a process of its own (this binary with `--child
//! off|on`), because tracing is set up once per process from the standard
//! variables, exactly as in a service:
//!
//! - `off`: `OTEL_SDK_DISABLED=true` — no spans, no ids, nothing propagated;
//! - `on`: `OTEL_EXPORTER_OTLP_ENDPOINT` (gRPC) pointing at an OTLP receiver
//!   in this parent process (the test kit's, which decodes and keeps every
//!   span, as a collector would), `OTEL_TRACES_SAMPLER=traceidratio` with
//!   `OTEL_TRACES_SAMPLER_ARG=1.0`, the default batch delay.
//!
//! A child starts the whole system in-process on fresh databases and a
//! fresh broker namespace (`TestSystem`, the edge's rate limits lifted and
//! stock raised so that every order is approved), opens one socket per
//! client on the user's channel, and runs `C` clients in a closed loop: place
//! an order, wait for its APPROVED on the socket, place the next. Latency is
//! placed → APPROVED received; throughput is orders over the wall time of
//! the loop. The modes take turns (off, on, on, off, …) for `R` rounds and
//! the medians are reported with their ratio, because this machine's load
//! moves under any one run.

mod harness;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use harness::{median, percentile};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use signalbox_platform::telemetry::{self, LogFormat};
use signalbox_system_tests::{products, TestSystem, DEADLINE};
use signalbox_testkit::otlp::OtlpReceiver;
use tokio::task::JoinSet;

/// What one child measured.
#[derive(Debug, Serialize, Deserialize)]
struct Run {
    mode: String,
    orders: usize,
    seconds: f64,
    orders_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

struct Size {
    orders: usize,
    rounds: usize,
    concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    let args = harness::args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let [flag, mode, orders, concurrency, out] = args.as_slice() {
        if *flag == "--child" {
            return child(mode, orders.parse()?, concurrency.parse()?, Path::new(out));
        }
    }
    let mut size = Size {
        orders: 300,
        rounds: 5,
        concurrency: 8,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || -> anyhow::Result<usize> {
            Ok(rest.next().context("a number after the option")?.parse()?)
        };
        match *arg {
            "--quick" => (size.orders, size.rounds) = (150, 3),
            "--smoke" => (size.orders, size.rounds, size.concurrency) = (10, 1, 2),
            "--orders" => size.orders = value()?,
            "--rounds" => size.rounds = value()?,
            "--concurrency" => size.concurrency = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    parent(&size)
}

/// Runs the children in turns and reports the medians.
fn parent(size: &Size) -> anyhow::Result<()> {
    let receiver = OtlpReceiver::shared();
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir();
    let mut off = Vec::new();
    let mut on = Vec::new();
    println!(
        "tracing: {} orders per run, {} clients, {} round(s), load {}",
        size.orders,
        size.concurrency,
        size.rounds,
        harness::load()
    );
    for round in 0..size.rounds {
        // Alternate which mode goes first, so a drift in the machine's load
        // falls on both.
        let order: [&str; 2] = if round % 2 == 0 {
            ["off", "on"]
        } else {
            ["on", "off"]
        };
        for mode in order {
            let out = dir.join(format!(
                "signalbox-bench-tracing-{}-{mode}.json",
                std::process::id()
            ));
            let run = run_child(&exe, mode, size, &out, &receiver.grpc_endpoint())?;
            println!(
                "  round {}/{} {:>3}: {:7.1} orders/s, p50 {:6.1} ms, p99 {:6.1} ms",
                round + 1,
                size.rounds,
                mode,
                run.orders_per_second,
                run.p50_ms,
                run.p99_ms
            );
            if mode == "on" {
                on.push(run)
            } else {
                off.push(run)
            }
        }
    }
    let spans = receiver.spans().len();
    let median = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f));
    let (off_tput, on_tput) = (
        median(&off, |r| r.orders_per_second),
        median(&on, |r| r.orders_per_second),
    );
    let (off_p99, on_p99) = (median(&off, |r| r.p99_ms), median(&on, |r| r.p99_ms));
    println!("tracing (medians)        off        on   on/off");
    println!(
        "  orders/s          {off_tput:8.1}  {on_tput:8.1}   {:5.2}",
        on_tput / off_tput
    );
    println!(
        "  p99 ms            {off_p99:8.1}  {on_p99:8.1}   {:5.2}",
        on_p99 / off_p99
    );
    println!("  spans received by the OTLP receiver: {spans}");
    if spans == 0 {
        bail!("the traced runs exported no span: the measurement would not be of tracing");
    }
    Ok(())
}

fn run_child(
    exe: &Path,
    mode: &str,
    size: &Size,
    out: &PathBuf,
    endpoint: &str,
) -> anyhow::Result<Run> {
    let mut command = std::process::Command::new(exe);
    command
        .args(["--child", mode])
        .arg(size.orders.to_string())
        .arg(size.concurrency.to_string())
        .arg(out)
        // The services' default filter, as deployed, in both modes: it
        // decides which spans exist at all, so it must not be narrowed.
        .env_remove("RUST_LOG");
    for var in [
        "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
    ] {
        command.env_remove(var);
    }
    if mode == "on" {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_SERVICE_NAME", "bench-e2e")
            .env("OTEL_TRACES_SAMPLER", "traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", "1.0");
    } else {
        command.env("OTEL_SDK_DISABLED", "true");
    }
    harness::run_child(command, out, mode)
}

/// One measurement: the system, `orders` orders by `concurrency` clients.
fn child(mode: &str, orders: usize, concurrency: usize, out: &Path) -> anyhow::Result<()> {
    let runtime = harness::child_runtime()?;
    // Before the system starts, so that its own (test) set-up finds it
    // installed and the `OTEL_*` variables decide, as in a service; on the
    // runtime, whose reactor the OTLP/gRPC exporter's channel uses.
    let _entered = runtime.enter();
    telemetry::init("bench-e2e", LogFormat::Json);
    let run = runtime.block_on(measure(mode, orders, concurrency))?;
    telemetry::flush();
    std::fs::write(out, serde_json::to_vec(&run)?)?;
    Ok(())
}

async fn measure(mode: &str, orders: usize, concurrency: usize) -> anyhow::Result<Run> {
    let system = harness::start_system().await?;
    let result = load(&system, orders, concurrency).await;
    system.stop().await?;
    let (seconds, latencies) = result?;
    let ms: Vec<f64> = latencies.iter().map(|l| l.as_secs_f64() * 1000.0).collect();
    Ok(Run {
        mode: mode.to_owned(),
        orders: latencies.len(),
        seconds,
        orders_per_second: latencies.len() as f64 / seconds,
        p50_ms: percentile(&ms, 0.50),
        p99_ms: percentile(&ms, 0.99),
    })
}

/// The closed loop; returns its wall time and every order's latency.
async fn load(
    system: &TestSystem,
    orders: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let api = Arc::new(system.api.clone());
    let clients = harness::open_clients(system, concurrency).await?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (n, (user, mut socket)) in clients.into_iter().enumerate() {
        let api = api.clone();
        // The orders shared out over the clients, the remainder to the first.
        let share = orders / concurrency + usize::from(n < orders % concurrency);
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for _ in 0..share {
                let placed_at = Instant::now();
                let placed = api.place_order(&user, &[(products::LAMP, 1)]).await?;
                if placed.status() != StatusCode::ACCEPTED {
                    bail!("POST /api/orders answered {}", placed.status());
                }
                let body: Value = placed.json().await?;
                let order_id = body["order_id"].as_str().context("order_id")?.to_owned();
                socket
                    .wait_for(DEADLINE, |frame| {
                        frame["type"] == "event"
                            && frame["data"]["order_id"] == order_id.as_str()
                            && frame["data"]["state"] == "APPROVED"
                    })
                    .await?;
                latencies.push(placed_at.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(orders);
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    Ok((started.elapsed().as_secs_f64(), latencies))
}
