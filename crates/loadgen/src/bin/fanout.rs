//! B1, the fan-out benchmark (see `signalbox_loadgen::fanout` for its
//! shape and `docs/benchmarks.md` for its figures).
//!
//! ```text
//! fanout [--quick | --smoke] [--systems realtime,socketio,ceiling]
//!        [--sizes 1000,5000,10000] [--modes public,user] [--repetitions 3]
//!        [--realtime PATH] [--ceiling PATH] [--also NAME=PATH]
//!        [--json FILE] [--doc docs/benchmarks.md] [--charts docs/bench]
//! ```
//!
//! `--also NAME=PATH` adds another realtime binary as a system of its own
//! (to compare a build before a change with the one after, in one run).

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use signalbox_loadgen::{
    fanout::{self, Kind, Ladder, Mode, Plan, System},
    proc, report,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut size = "full";
    let mut systems = vec![
        "realtime".to_owned(),
        "socketio".to_owned(),
        "ceiling".to_owned(),
    ];
    let mut sizes: Option<Vec<usize>> = None;
    let mut modes: Option<Vec<Mode>> = None;
    let mut repetitions: Option<usize> = None;
    let mut realtime = PathBuf::from("target/release/realtime");
    let mut ceiling = PathBuf::from("target/release/ceiling");
    let mut also: Vec<(String, PathBuf)> = Vec::new();
    let (mut json, mut doc, mut charts) = (None, None, None);
    let mut header_note = String::new();

    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("a value after {arg}"));
        match arg.as_str() {
            "--quick" => size = "quick",
            "--smoke" => size = "smoke",
            "--systems" => systems = value()?.split(',').map(str::to_owned).collect(),
            "--sizes" => {
                sizes = Some(
                    value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?,
                )
            }
            "--modes" => {
                modes = Some(
                    value()?
                        .split(',')
                        .map(Mode::parse)
                        .collect::<Result<_, _>>()?,
                )
            }
            "--repetitions" => repetitions = Some(value()?.parse()?),
            "--realtime" => realtime = value()?.into(),
            "--ceiling" => ceiling = value()?.into(),
            "--also" => {
                let spec = value()?;
                let (name, path) = spec.split_once('=').context("--also NAME=PATH")?;
                also.push((name.to_owned(), path.into()));
            }
            "--json" => json = Some(PathBuf::from(value()?)),
            "--doc" => doc = Some(PathBuf::from(value()?)),
            "--charts" => charts = Some(PathBuf::from(value()?)),
            "--note" => header_note = value()?,
            "-h" | "--help" => {
                println!("see the module documentation of crates/loadgen/src/bin/fanout.rs");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }

    let mut plan_systems = Vec::new();
    for name in &systems {
        plan_systems.push(match name.as_str() {
            "realtime" => System {
                name: name.clone(),
                kind: Kind::Realtime,
                path: realtime.clone(),
            },
            "socketio" => System {
                name: name.clone(),
                kind: Kind::SocketIo,
                path: "bench/socketio".into(),
            },
            "ceiling" => System {
                name: name.clone(),
                kind: Kind::Ceiling,
                path: ceiling.clone(),
            },
            other => bail!("unknown system {other} (realtime, socketio, ceiling)"),
        });
    }
    for (name, path) in also {
        plan_systems.push(System {
            name,
            kind: Kind::Realtime,
            path,
        });
    }

    // The shape of each size of run (`docs/benchmarks.md` describes it):
    // sizes, modes, repetitions, and each mode's ladder.
    let ladder = |first_rate, factor, step, latency_step| Ladder {
        first_rate,
        factor,
        step: Duration::from_secs_f64(step),
        latency_step: Duration::from_secs_f64(latency_step),
    };
    let (default_sizes, default_modes, default_reps, public, user) = match size {
        "smoke" => (
            vec![20],
            vec![Mode::Public, Mode::User],
            1,
            ladder(200.0, 1.5, 1.0, 1.0),
            ladder(200.0, 1.5, 1.0, 1.0),
        ),
        // The two sizes the goals name, one repetition, steps of one
        // second (latency steps of two), doubling rates from where the
        // last runs' first failures were a few steps up; the user mode's
        // ladder starts lower and its latency steps are shorter.
        "quick" => (
            vec![1_000, 10_000],
            vec![Mode::Public, Mode::User],
            1,
            ladder(40_000.0, 2.0, 1.0, 2.0),
            ladder(5_000.0, 2.0, 1.0, 1.0),
        ),
        _ => (
            vec![1_000, 5_000, 10_000],
            vec![Mode::Public, Mode::User],
            3,
            ladder(10_000.0, 1.5, 3.0, 5.0),
            ladder(2_000.0, 1.5, 3.0, 5.0),
        ),
    };
    let plan = Plan {
        systems: plan_systems,
        sizes: sizes.unwrap_or(default_sizes),
        modes: modes.unwrap_or(default_modes),
        repetitions: repetitions.unwrap_or(default_reps),
        public,
        user,
        // Smoke runs check that everything works, not how fast: a few steps.
        last_rate: if size == "smoke" { 400.0 } else { 2_000_000.0 },
        fixed_rate: if size == "smoke" { 100.0 } else { 10_000.0 },
        amqp_url: std::env::var("SIGNALBOX_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
        redis_url: std::env::var("SIGNALBOX_BENCH_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
    };

    let load_before = proc::load_average();
    let started = chrono::Utc::now();
    let runs = fanout::run_plan(&plan).await?;
    let figures = fanout::figures(&plan, &runs);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let header = format!(
        "Run of {} UTC, `{size}`, commit `{commit}`, {} cores ({cpu}), load average {load_before} before and {} after.{}",
        started.format("%Y-%m-%d %H:%M"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        proc::load_average(),
        if header_note.is_empty() { String::new() } else { format!(" {header_note}") }
    );
    let section = report::markdown(&plan, &figures, &header);
    println!("{section}");

    if let Some(path) = json {
        let document = report::json(&plan, &runs, &figures, &header);
        std::fs::write(&path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results: {}", path.display());
    }
    if let Some(dir) = charts {
        for name in report::charts(&plan, &figures, &dir)? {
            eprintln!("chart: {}", dir.join(name).display());
        }
    }
    if let Some(path) = doc {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, report::splice(&current, &section))?;
        eprintln!("tables: {}", path.display());
    }
    if runs.iter().any(|r| r.error.is_some()) {
        bail!("some runs failed (see above)");
    }
    Ok(())
}
