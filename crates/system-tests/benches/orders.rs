//! B4, end to end: orders placed over REST at a constant rate until
//! APPROVED is pushed on the placing user's socket — p50/p99 at fixed
//! rates, and the highest sustained rate.
//!
//! ```text
//! cargo bench -p signalbox-system-tests --bench orders -- [--quick|--smoke]
//!     [--rates 50,100,200] [--secs S] [--repetitions R] [--users U]
//!     [--json FILE] [--doc docs/benchmarks.md]
//! ```
//!
//! Each repetition is a process of its own (this binary with `--child`),
//! set up from the standard variables as a service is, which starts the
//! whole system in it (`TestSystem`: auth, the gateway, orders, catalog,
//! two realtime instances, on fresh databases and a fresh broker namespace,
//! the edge's rate limits lifted and stock for every order), opens `U`
//! users' sockets, each subscribed to its user's channel, and then drives
//! it **open loop**: order `i` of a step is due at `start + i / rate`, and
//! is sent then, by a task of its own, whatever became of the ones before
//! (the next user in turn places it). Its latency runs from that intended
//! time to the APPROVED frame on its user's socket, so a system that falls
//! behind is charged for the wait, not spared it (no coordinated
//! omission).
//!
//! A step lasts `S` seconds. It is *sustained* when no request failed
//! (every `POST /api/orders` answered 202) and ≥ 99 % of its orders were
//! APPROVED within the grace period (5 s) after the step's last send.
//! After the fixed rates, a ladder goes on from the highest of them by
//! ×1.5 while steps are sustained; when the highest fixed rate was not
//! sustained, it tries the rate halfway down to the one below instead.
//! Between steps the system is given time to finish what is still in
//! flight, so a step does not inherit the last one's backlog.

mod harness;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{bail, Context};
use harness::{median, percentile};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use signalbox_platform::telemetry::{self, LogFormat};
use signalbox_system_tests::{products, socket::Received, TestSystem};
use tokio::{task::JoinSet, time::Instant};

/// How long after a step's last send its orders may still be approved.
const GRACE: Duration = Duration::from_secs(5);
/// The share of a step's orders that must be approved in time.
const SUSTAINED_SHARE: f64 = 0.99;
/// Steps of the ladder above the fixed rates, at most.
const LADDER_STEPS: usize = 6;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plan {
    rates: Vec<f64>,
    secs: f64,
    repetitions: usize,
    users: usize,
    ladder: bool,
}

/// One step: a constant rate for a while.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    rate: f64,
    /// Orders due in the step.
    orders: usize,
    /// Requests that did not answer 202 (or failed in transport).
    errors: usize,
    /// Orders approved within the grace period.
    approved: usize,
    /// Intended send time → APPROVED on the socket, of those approved.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    sustained: bool,
    /// Whether the step is one of the plan's fixed rates.
    fixed: bool,
}

/// What one child (one repetition) measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Repetition {
    steps: Vec<Step>,
    /// The highest sustained rate among its steps (0 when none was).
    highest_sustained: f64,
}

fn main() -> anyhow::Result<()> {
    let args = harness::args();
    if let [flag, plan, out] = args.as_slice() {
        if flag == "--child" {
            return child(&serde_json::from_str(plan)?, Path::new(out));
        }
    }
    let mut size = "full";
    let (mut rates, mut secs, mut repetitions, mut users) = (None, None, None, None);
    let (mut json, mut doc) = (None, None);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().context("a value after the option");
        match arg.as_str() {
            "--quick" => size = "quick",
            "--smoke" => size = "smoke",
            "--rates" => {
                rates = Some(
                    value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<Vec<f64>, _>>()?,
                )
            }
            "--secs" => secs = Some(value()?.parse()?),
            "--repetitions" => repetitions = Some(value()?.parse()?),
            "--users" => users = Some(value()?.parse()?),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--doc" => doc = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other}"),
        }
    }
    let plan = match size {
        "smoke" => Plan {
            rates: vec![5.0, 10.0],
            secs: 1.0,
            repetitions: 1,
            users: 2,
            ladder: false,
        },
        "quick" => Plan {
            rates: vec![50.0, 100.0, 200.0],
            secs: 5.0,
            repetitions: 1,
            users: 20,
            ladder: true,
        },
        _ => Plan {
            rates: vec![50.0, 100.0, 200.0],
            secs: 10.0,
            repetitions: 3,
            users: 20,
            ladder: true,
        },
    };
    let plan = Plan {
        rates: rates.unwrap_or(plan.rates),
        secs: secs.unwrap_or(plan.secs),
        repetitions: repetitions.unwrap_or(plan.repetitions),
        users: users.unwrap_or(plan.users),
        ..plan
    };
    parent(&plan, size, json.as_deref(), doc.as_deref())
}

fn parent(plan: &Plan, size: &str, json: Option<&Path>, doc: Option<&Path>) -> anyhow::Result<()> {
    let load_before = harness::load();
    let started = chrono::Utc::now();
    println!(
        "orders ({size}): rates {:?}/s, {} s per step, {} users, {} repetition(s), load {load_before}",
        plan.rates, plan.secs, plan.users, plan.repetitions
    );
    let exe = std::env::current_exe()?;
    let mut repetitions = Vec::new();
    for repetition in 0..plan.repetitions {
        let out = std::env::temp_dir().join(format!(
            "signalbox-bench-orders-{}-{repetition}.json",
            std::process::id()
        ));
        let mut command = std::process::Command::new(&exe);
        command
            .arg("--child")
            .arg(serde_json::to_string(plan)?)
            .arg(&out)
            // As deployed: the services' default filter and OpenTelemetry
            // settings (no exporter configured).
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_SDK_DISABLED");
        // The child prints a line per step to its log; the parent prints
        // them when the repetition is over.
        let run: Repetition = harness::run_child(command, &out, "orders")?;
        for step in &run.steps {
            println!(
                "  {}/{} {:>6.0}/s: {:>5} orders, {:>5} approved in time, {} errors, p50 {:>7.1} ms, p99 {:>7.1} ms{}",
                repetition + 1,
                plan.repetitions,
                step.rate,
                step.orders,
                step.approved,
                step.errors,
                step.p50_ms,
                step.p99_ms,
                if step.sustained { "" } else { "  (not sustained)" }
            );
        }
        println!("  highest sustained: {:.0} orders/s", run.highest_sustained);
        repetitions.push(run);
    }

    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
    let header = format!(
        "Run of {} UTC, `{size}`, commit `{commit}`, {} cores, load average {} before and {} after.",
        started.format("%Y-%m-%d %H:%M"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before.split(' ').take(3).collect::<Vec<_>>().join(" "),
        harness::load().split(' ').take(3).collect::<Vec<_>>().join(" "),
    );
    let section = markdown(plan, &repetitions, &header);
    println!("{section}");
    if let Some(path) = json {
        let document = serde_json::json!({
            "benchmark": "orders",
            "header": header,
            "plan": plan,
            "repetitions": repetitions,
        });
        std::fs::write(path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results: {}", path.display());
    }
    if let Some(path) = doc {
        let current = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, splice(&current, &section))?;
        eprintln!("tables: {}", path.display());
    }
    Ok(())
}

const BEGIN: &str = "<!-- orders:begin -->";
const END: &str = "<!-- orders:end -->";

/// Replaces the generated section of `doc` (markers included) with
/// `section`; appends it when the markers are missing.
fn splice(doc: &str, section: &str) -> String {
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(from), Some(to)) if to > from => {
            let after = &doc[to + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{}{}", &doc[..from], section, after)
        }
        _ => format!("{doc}\n{section}"),
    }
}

fn markdown(plan: &Plan, repetitions: &[Repetition], header: &str) -> String {
    use std::fmt::Write as _;
    let fmt = |v: f64| {
        if !v.is_finite() {
            "–".to_owned()
        } else if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}\n{header}\n");
    let _ = writeln!(
        out,
        "Medians of {} repetition(s), {} s per step, {} users:\n",
        repetitions.len(),
        plan.secs,
        plan.users
    );
    let _ = writeln!(
        out,
        "| orders/s | p50 ms | p99 ms | max ms | approved within {} s | errors | sustained |",
        GRACE.as_secs()
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---|");
    for rate in &plan.rates {
        let steps: Vec<&Step> = repetitions
            .iter()
            .flat_map(|r| r.steps.iter())
            .filter(|s| s.fixed && s.rate == *rate)
            .collect();
        let share = median(
            steps
                .iter()
                .map(|s| s.approved as f64 / s.orders.max(1) as f64),
        );
        let _ = writeln!(
            out,
            "| {rate:.0} | {} | {} | {} | {:.1} % | {} | {}/{} |",
            fmt(median(steps.iter().map(|s| s.p50_ms))),
            fmt(median(steps.iter().map(|s| s.p99_ms))),
            fmt(median(steps.iter().map(|s| s.max_ms))),
            share * 100.0,
            steps.iter().map(|s| s.errors).sum::<usize>(),
            steps.iter().filter(|s| s.sustained).count(),
            steps.len()
        );
    }
    let highest = median(repetitions.iter().map(|r| r.highest_sustained));
    let ladder: Vec<String> = repetitions
        .iter()
        .map(|r| {
            r.steps
                .iter()
                .map(|s| format!("{:.0}{}", s.rate, if s.sustained { "✓" } else { "✗" }))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let _ = writeln!(
        out,
        "\nHighest sustained rate: **{} orders/s** (median; steps per repetition: {}).",
        fmt(highest),
        ladder.join("; ")
    );
    if let Some(p99) = plan.rates.iter().position(|r| *r == 100.0).map(|_| {
        median(
            repetitions
                .iter()
                .flat_map(|r| r.steps.iter())
                .filter(|s| s.fixed && s.rate == 100.0)
                .map(|s| s.p99_ms),
        )
    }) {
        let _ = writeln!(
            out,
            "p99 at 100 orders/s: **{} ms** (goal ≤ 50 ms).",
            fmt(p99)
        );
    }
    let _ = writeln!(out, "{END}");
    out
}

/// One repetition: the system, its users, the fixed steps and the ladder.
fn child(plan: &Plan, out: &Path) -> anyhow::Result<()> {
    let runtime = harness::child_runtime()?;
    // Before the system starts, so that its own (test) set-up finds it
    // installed and the `OTEL_*` variables decide, as in a service.
    let _entered = runtime.enter();
    telemetry::init("bench-orders", LogFormat::Json);
    let run = runtime.block_on(async {
        let system = harness::start_system().await?;
        let result = measure(plan, &system).await;
        system.stop().await?;
        result
    })?;
    std::fs::write(out, serde_json::to_vec(&run)?)?;
    Ok(())
}

/// When each order's APPROVED reached its user's socket, by order id.
type Approvals = Arc<Mutex<HashMap<String, Instant>>>;

async fn measure(plan: &Plan, system: &TestSystem) -> anyhow::Result<Repetition> {
    let clients = harness::open_clients(system, plan.users).await?;
    let approvals: Approvals = Arc::default();
    let mut users = Vec::new();
    let mut readers = JoinSet::new();
    for (user, mut socket) in clients {
        users.push(user);
        let approvals = approvals.clone();
        // Reads the user's socket for the whole run and notes every
        // APPROVED as it arrives (it may arrive before the POST's answer
        // has told the sender the order's id).
        readers.spawn(async move {
            loop {
                match socket.receive(Duration::from_secs(3600)).await? {
                    Received::Frame(frame) => {
                        if frame["type"] == "event" && frame["data"]["state"] == "APPROVED" {
                            if let Some(id) = frame["data"]["order_id"].as_str() {
                                approvals
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .insert(id.to_owned(), Instant::now());
                            }
                        }
                    }
                    Received::Closed(code) => bail!("a socket closed ({code:?})"),
                }
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        });
    }
    let users = Arc::new(users);
    let mut steps = Vec::new();
    for rate in &plan.rates {
        let step = step(system, &users, &approvals, *rate, plan.secs, true).await?;
        eprintln!("step {rate}/s: {step:?}");
        steps.push(step);
    }
    if plan.ladder {
        let last = steps.last().cloned().context("no fixed rate")?;
        if last.sustained {
            let mut rate = last.rate;
            for _ in 0..LADDER_STEPS {
                rate *= 1.5;
                let step = step(system, &users, &approvals, rate, plan.secs, false).await?;
                let sustained = step.sustained;
                steps.push(step);
                if !sustained {
                    break;
                }
            }
        } else if let Some(below) = steps.iter().rev().nth(1).filter(|s| s.sustained) {
            let between = (below.rate + last.rate) / 2.0;
            let step = step(system, &users, &approvals, between, plan.secs, false).await?;
            steps.push(step);
        }
    }
    readers.abort_all();
    let highest_sustained = steps
        .iter()
        .filter(|s| s.sustained)
        .map(|s| s.rate)
        .fold(0.0, f64::max);
    Ok(Repetition {
        steps,
        highest_sustained,
    })
}

/// Places `rate × secs` orders open loop and waits for their approvals.
async fn step(
    system: &TestSystem,
    users: &Arc<Vec<signalbox_system_tests::api::User>>,
    approvals: &Approvals,
    rate: f64,
    secs: f64,
    fixed: bool,
) -> anyhow::Result<Step> {
    let n = (rate * secs).round().max(1.0) as usize;
    let api = Arc::new(system.api.clone());
    let start = Instant::now() + Duration::from_millis(100);
    let due = |i: usize| start + Duration::from_secs_f64(i as f64 / rate);
    // The schedule: one tick per order at its intended time; a tick missed
    // while the runtime was busy fires at once (`Burst`), keeping its time.
    let mut schedule = tokio::time::interval_at(start, Duration::from_secs_f64(1.0 / rate));
    schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut senders = JoinSet::new();
    for i in 0..n {
        let intended = schedule.tick().await;
        let (api, users) = (api.clone(), users.clone());
        // One order, sent now whatever became of the ones before: its
        // id and intended time, or why it failed.
        senders.spawn(async move {
            let user = &users[i % users.len()];
            let placed = api.place_order(user, &[(products::LAMP, 1)]).await?;
            if placed.status() != StatusCode::ACCEPTED {
                bail!("POST /api/orders answered {}", placed.status());
            }
            let body: Value = placed.json().await?;
            let id = body["order_id"].as_str().context("order_id")?.to_owned();
            anyhow::Ok((id, intended))
        });
    }
    let last_due = due(n - 1);
    let mut placed = HashMap::with_capacity(n);
    let mut errors = 0;
    while let Some(joined) = senders.join_next().await {
        match joined? {
            Ok((id, intended)) => {
                placed.insert(id, intended);
            }
            Err(error) => {
                if errors == 0 {
                    eprintln!("order failed: {error:#}");
                }
                errors += 1;
            }
        }
    }
    // Wait for the approvals until the grace period is over, then a while
    // longer for the stragglers (not counted), so the next step starts on
    // a quiet system.
    let in_time = last_due + GRACE;
    let quiet = in_time + GRACE * 2;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let all = {
            let approvals = approvals.lock().unwrap_or_else(PoisonError::into_inner);
            placed.keys().all(|id| approvals.contains_key(id))
        };
        if all || Instant::now() >= quiet {
            break;
        }
        tick.tick().await;
    }
    let latencies: Vec<f64> = {
        let mut approvals = approvals.lock().unwrap_or_else(PoisonError::into_inner);
        placed
            .iter()
            .filter_map(|(id, intended)| {
                approvals
                    .remove(id)
                    .filter(|at| *at <= in_time)
                    .map(|at| (at - *intended).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    let approved = latencies.len();
    Ok(Step {
        rate,
        orders: n,
        errors,
        approved,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: percentile(&latencies, 1.0),
        sustained: errors == 0 && approved as f64 >= SUSTAINED_SHARE * n as f64,
        fixed,
    })
}
