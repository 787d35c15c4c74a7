//! B3, the outbox relay against a raw lapin publisher (see
//! `signalbox_loadgen::relay` for its shape and `docs/benchmarks.md` for
//! its figures).
//!
//! ```text
//! relay [--quick | --smoke] [--rows N] [--repetitions R] [--half-secs S]
//!       [--writers W] [--json FILE] [--doc docs/benchmarks.md]
//! ```
//!
//! Needs PostgreSQL (`SIGNALBOX_TEST_DATABASE_URL`, default the local
//! server) and RabbitMQ (`SIGNALBOX_TEST_AMQP_URL`).

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use signalbox_loadgen::{
    proc,
    relay::{self, Plan},
    report,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // First: the relay's spans are how a row's mark is seen.
    let marks = relay::install_marks()?;
    let mut size = "full";
    let (mut rows, mut repetitions, mut half, mut writers) = (None, None, None, None);
    let (mut json, mut doc) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("a value after {arg}"));
        match arg.as_str() {
            "--quick" => size = "quick",
            "--smoke" => size = "smoke",
            "--rows" => rows = Some(value()?.parse()?),
            "--repetitions" => repetitions = Some(value()?.parse()?),
            "--half-secs" => half = Some(value()?.parse::<f64>()?),
            "--writers" => writers = Some(value()?.parse()?),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--doc" => doc = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("see the module documentation of crates/loadgen/src/bin/relay.rs");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let (default_rows, default_reps, default_half) = match size {
        "smoke" => (300, 1, 1.0),
        "quick" => (5_000, 3, 4.0),
        _ => (20_000, 5, 10.0),
    };
    let plan = Plan {
        rows: rows.unwrap_or(default_rows),
        repetitions: repetitions.unwrap_or(default_reps),
        half_step: Duration::from_secs_f64(half.unwrap_or(default_half)),
        writers: writers.unwrap_or(8),
        grace: Duration::from_secs(10),
    };
    let load_before = proc::load_average();
    let started = chrono::Utc::now();
    println!(
        "relay ({size}): {} rows per highest-rate run, {} repetition(s), {:.0} s at half load, load {load_before}",
        plan.rows,
        plan.repetitions,
        plan.half_step.as_secs_f64()
    );
    let runs = relay::run_plan(&plan, &marks, |r| {
        println!(
            "  {} {:<5} {:<7} {:>6} msgs {:>9.0} msgs/s  p50 {:>7.1} ms  p99 {:>7.1} ms  to the consumer p99 {:>7.1} ms{}",
            r.repetition + 1,
            r.system,
            r.phase,
            r.messages,
            r.per_sec,
            r.p50_ms,
            r.p99_ms,
            r.delivered_p99_ms,
            r.error.as_ref().map(|e| format!("  FAILED: {e}")).unwrap_or_default()
        );
    })
    .await;
    let figures = relay::figures(&plan, &runs);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
    let header = format!(
        "Run of {} UTC, `{size}`, commit `{commit}`, {} cores, load average {load_before} before and {} after.",
        started.format("%Y-%m-%d %H:%M"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        proc::load_average(),
    );
    let section = relay::markdown(&plan, &figures, &runs, &header);
    println!("{section}");
    if let Some(path) = json {
        let document = serde_json::json!({
            "benchmark": "relay",
            "header": header,
            "plan": plan,
            "figures": figures,
            "runs": runs,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results: {}", path.display());
    }
    if let Some(path) = doc {
        let (begin, end) = report::markers("relay");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(
            &path,
            report::splice_between(&current, &begin, &end, &section),
        )?;
        eprintln!("tables: {}", path.display());
    }
    if runs.iter().any(|r| r.error.is_some()) {
        bail!("some runs failed (see above)");
    }
    Ok(())
}
