//! What the end-to-end benchmarks (`tracing`, `orders`) share: each
//! measurement in a child process of its own (this binary run again with
//! `--child …`), the whole system started in it with the edge's rate limits
//! lifted and stock for every order, users with their sockets subscribed to
//! their own channel, and the percentiles and medians of what they measured.

use std::{path::Path, process::Stdio};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use signalbox_system_tests::{api::User, Options, Socket, TestSystem, DEADLINE};

/// The arguments after the binary's name, without the `--bench` that
/// `cargo bench` passes (nothing else of its is ours).
pub fn args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect()
}

/// The machine's load averages, as `/proc/loadavg` prints them.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Runs `command` (this binary as a child, its arguments and environment
/// set by the caller) with its output in a log file beside `out`, and reads
/// the JSON it wrote to `out`. The log is kept when the child fails.
pub fn run_child<T: DeserializeOwned>(
    mut command: std::process::Command,
    out: &Path,
    what: &str,
) -> anyhow::Result<T> {
    let log = out.with_extension("log");
    command.stdout(Stdio::from(std::fs::File::create(&log)?));
    let status = command.status()?;
    if !status.success() {
        bail!(
            "the {what} run failed ({status}); its log: {}",
            log.display()
        );
    }
    let run = serde_json::from_slice(&std::fs::read(out)?)?;
    std::fs::remove_file(out)?;
    std::fs::remove_file(&log)?;
    Ok(run)
}

/// The child's runtime: two worker threads, as many as the machine has
/// cores, shared by the services and the load they are under.
pub fn child_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The whole system on fresh databases and a fresh namespace, the edge's
/// rate limits lifted (the load comes from one address), and enough stock
/// for every order, so that each one takes the whole saga (reserve,
/// approve) rather than a quick rejection.
pub async fn start_system() -> anyhow::Result<TestSystem> {
    let system = TestSystem::start_with(Options {
        gateway: Some(Box::new(signalbox_system_tests::lift_rate_limits)),
        ..Options::default()
    })
    .await?;
    let catalog = system
        .database_url("catalog")
        .context("the catalog database")?;
    let pool = sqlx::PgPool::connect(&catalog).await?;
    sqlx::query("UPDATE products SET stock = 100000000")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(system)
}

/// `n` fresh users, each logged in with its socket (on the realtime
/// instances in turn) subscribed to its own channel.
pub async fn open_clients(system: &TestSystem, n: usize) -> anyhow::Result<Vec<(User, Socket)>> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let user = system.api.new_user().await?;
        let url = &system.realtime[i % system.realtime.len()];
        let mut socket = Socket::connect(url, Some(&user.access_token)).await?;
        socket.expect("welcome", DEADLINE).await?;
        let subscribed = socket
            .subscribe(&format!("user:{}", user.id), DEADLINE)
            .await?;
        if subscribed["type"] != "subscribed" {
            bail!("subscribe answered {subscribed}");
        }
        clients.push((user, socket));
    }
    Ok(clients)
}

/// The `p` quantile (nearest rank) of `values`, sorted here; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The median; of an even number, the mean of the middle two. NaN when
/// empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
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
