//! B5, logins: how many `POST /api/auth/login` the system answers per
//! second through the gateway, and their p99, with the argon2id parameters
//! auth runs with (`signalbox_auth::passwords`); and, as the reference, what
//! one core does with those parameters alone.
//!
//! ```text
//! logins [--quick | --smoke] [--repetitions N] [--seconds S]
//!        [--concurrency 1,2,4,8] [--bin target/release]
//!        [--json FILE] [--doc docs/benchmarks.md]
//! ```
//!
//! Auth, catalog, orders and the gateway run as release processes
//! (`signalbox_loadgen::services`) with the edge's rate limits lifted (a
//! benchmark's logins all come from one address). One user per caller is
//! registered first; then each repetition runs, in an order rotated by one
//! per repetition, a closed loop of logins at each concurrency (each caller
//! logs in as its own user, with the right password: every login verifies
//! one argon2id hash, issues an access token and stores a refresh token),
//! after a warm-up that is not counted; and it times argon2id verifications
//! of one hash with the same parameters on one thread of this process for
//! the same duration (nothing else of the benchmark runs meanwhile).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use argon2::{
    password_hash::{phc::PasswordHash, PasswordHasher as _, PasswordVerifier as _},
    Algorithm, Argon2, Params, Version,
};
use serde::Serialize;
use signalbox_auth::passwords::{M_COST, P_COST, T_COST};
use signalbox_loadgen::{
    fanout::median,
    http,
    load::{self, Outcome},
    proc, report,
    services::{self, Binaries, Services},
};

const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone, Serialize)]
struct Plan {
    size: String,
    repetitions: usize,
    seconds: f64,
    warmup_seconds: f64,
    concurrency: Vec<usize>,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    /// How many hashes auth runs at once (its semaphore: the machine's
    /// available parallelism, read the same way).
    auth_hashes_at_once: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Measurement {
    repetition: usize,
    concurrency: usize,
    outcome: Outcome,
    cpu_seconds: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
struct HashTiming {
    repetition: usize,
    hashes: u64,
    seconds: f64,
    per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Figures {
    concurrency: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    auth_cpu_ms_per_login: f64,
    gateway_cpu_ms_per_login: f64,
    errors: u64,
    requests: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut size = "full".to_owned();
    let (mut repetitions, mut seconds, mut concurrency) = (None, None, None);
    let mut bin = PathBuf::from("target/release");
    let (mut json, mut doc) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("a value after {arg}"));
        match arg.as_str() {
            "--quick" => size = "quick".to_owned(),
            "--smoke" => size = "smoke".to_owned(),
            "--repetitions" => repetitions = Some(value()?.parse()?),
            "--seconds" => seconds = Some(value()?.parse::<f64>()?),
            "--concurrency" => {
                concurrency = Some(
                    value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<Vec<usize>, _>>()?,
                )
            }
            "--bin" => bin = value()?.into(),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--doc" => doc = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("see the module documentation of crates/loadgen/src/bin/logins.rs");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let defaults = match size.as_str() {
        "smoke" => (1, 0.5, 0.2, vec![1, 2]),
        "quick" => (2, 3.0, 0.5, vec![1, 2, 4]),
        _ => (3, 10.0, 2.0, vec![1, 2, 4, 8, 16]),
    };
    let plan = Plan {
        size: size.clone(),
        repetitions: repetitions.unwrap_or(defaults.0),
        seconds: seconds.unwrap_or(defaults.1),
        warmup_seconds: defaults.2,
        concurrency: concurrency.unwrap_or(defaults.3),
        m_cost_kib: M_COST,
        t_cost: T_COST,
        p_cost: P_COST,
        auth_hashes_at_once: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };

    let load_before = proc::load_average();
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let say = |what: String| {
        let s = clock.elapsed().as_secs();
        eprintln!("[{:02}:{:02}] {what}", s / 60, s % 60);
    };
    say(format!(
        "starting auth, catalog, orders, gateway from {}",
        bin.display()
    ));
    let system = Services::start(
        &Binaries { dir: bin.clone() },
        services::lifted_rate_limits(),
    )
    .await
    .context("start the system")?;
    let result = measure(&plan, &system, &say).await;
    say("stopping".to_owned());
    let stopped = system.stop().await;
    let (measurements, hashing) = result?;
    stopped?;

    let figures = figures(&plan, &measurements);
    let hash_per_sec = median(hashing.iter().map(|h| h.per_sec).collect());
    let header = format!(
        "Run of {} UTC, `{size}`, commit `{}`, {} cores ({}), load average {load_before} before and {} after.",
        started.format("%Y-%m-%d %H:%M"),
        report::commit(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        report::cpu_model(),
        proc::load_average(),
    );
    let section = markdown(&plan, &figures, hash_per_sec, &header);
    println!("{section}");
    if let Some(path) = json {
        let document = serde_json::json!({
            "benchmark": "logins",
            "header": header,
            "plan": plan,
            "figures": figures,
            "argon2id_verifications_per_sec_one_thread": hash_per_sec,
            "hashing": hashing,
            "measurements": measurements,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results: {}", path.display());
    }
    if let Some(path) = doc {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        let (begin, end) = report::markers("logins");
        std::fs::write(
            &path,
            report::splice_between(&current, &begin, &end, &section),
        )?;
        eprintln!("tables: {}", path.display());
    }
    Ok(())
}

async fn measure(
    plan: &Plan,
    system: &Services,
    say: &dyn Fn(String),
) -> anyhow::Result<(Vec<Measurement>, Vec<HashTiming>)> {
    let gateway = system.gateway_url();
    let users = plan.concurrency.iter().copied().max().unwrap_or(1);
    let client = http::client(users)?;
    let mut logins = Vec::new();
    say(format!("registering {users} user(s) through the gateway"));
    for i in 0..users {
        let email = format!("bench-{i}-{}@example.com", system.namespace.prefix());
        let body = serde_json::json!({ "email": email, "password": PASSWORD }).to_string();
        let registered = client
            .post(format!("{gateway}/api/auth/register"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        anyhow::ensure!(
            registered.status() == reqwest::StatusCode::CREATED,
            "register answered {}",
            registered.status()
        );
        logins.push(http::Target::post_json(
            format!("{gateway}/api/auth/login"),
            body,
        ));
    }
    let logins = Arc::new(logins);
    let pids: Vec<(String, u32)> = system
        .processes
        .iter()
        .map(|p| (p.name.to_owned(), p.pid))
        .collect();

    let mut measurements = Vec::new();
    let mut hashing = Vec::new();
    let total = plan.repetitions * (plan.concurrency.len() + 1);
    let mut step = 0;
    for repetition in 0..plan.repetitions {
        let mut order = plan.concurrency.clone();
        let turn = repetition % order.len().max(1);
        order.rotate_left(turn);
        for concurrency in order {
            step += 1;
            say(format!(
                "{step}/{total}: repetition {}/{}, logins, closed loop, {concurrency} at once",
                repetition + 1,
                plan.repetitions
            ));
            let run = |seconds: f64| {
                // Caller after caller takes the next user in turn; with as
                // many users as callers, each has its own most of the time.
                let next = Arc::new(AtomicUsize::new(0));
                let (client, logins) = (client.clone(), Arc::clone(&logins));
                load::closed_loop(
                    move || {
                        let (client, logins) = (client.clone(), Arc::clone(&logins));
                        // Relaxed: only spreads the logins over the users.
                        let i = next.fetch_add(1, Ordering::Relaxed) % logins.len();
                        async move { http::send(&client, &logins[i]).await }
                    },
                    concurrency,
                    Duration::from_secs_f64(seconds),
                )
            };
            system.settle(Duration::from_secs(3)).await;
            run(plan.warmup_seconds).await;
            let before = cpu(&pids);
            let outcome = run(plan.seconds).await;
            let after = cpu(&pids);
            let cpu_seconds: BTreeMap<String, f64> = after
                .iter()
                .map(|(name, t)| (name.clone(), t - before.get(name).copied().unwrap_or(0.0)))
                .collect();
            say(format!(
                "    {} logins in {:.1} s ({:.1}/s), p50 {:.1} ms, p99 {:.1} ms, auth CPU {:.2} s{}",
                outcome.ok,
                outcome.seconds,
                outcome.per_sec,
                outcome.p50_ms,
                outcome.p99_ms,
                cpu_seconds.get("auth").copied().unwrap_or(f64::NAN),
                if outcome.errors() > 0 {
                    format!(
                        ", {} errors {:?} {:?}",
                        outcome.errors(),
                        outcome.codes,
                        outcome.failures
                    )
                } else {
                    String::new()
                }
            ));
            measurements.push(Measurement {
                repetition,
                concurrency,
                outcome,
                cpu_seconds,
            });
        }
        step += 1;
        say(format!(
            "{step}/{total}: repetition {}/{}, argon2id verifications on one thread",
            repetition + 1,
            plan.repetitions
        ));
        system.settle(Duration::from_secs(3)).await;
        let seconds = plan.seconds;
        let (hashes, took) = tokio::task::spawn_blocking(move || verify_for(seconds)).await??;
        let timing = HashTiming {
            repetition,
            hashes,
            seconds: took,
            per_sec: hashes as f64 / took,
        };
        say(format!(
            "    {} verifications in {:.1} s: {:.1}/s, {:.1} ms each",
            timing.hashes,
            timing.seconds,
            timing.per_sec,
            1000.0 / timing.per_sec
        ));
        hashing.push(timing);
    }
    Ok((measurements, hashing))
}

/// Verifies the right password against one argon2id hash made with auth's
/// parameters, again and again for `seconds` (at least once), as a login
/// does; returns how many and how long they took.
fn verify_for(seconds: f64) -> anyhow::Result<(u64, f64)> {
    let params = Params::new(M_COST, T_COST, P_COST, None).map_err(anyhow::Error::msg)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let phc = argon2
        .hash_password(PASSWORD.as_bytes())
        .map_err(anyhow::Error::msg)?
        .to_string();
    let hash = PasswordHash::new(&phc).map_err(anyhow::Error::msg)?;
    let start = Instant::now();
    let mut count = 0;
    while count == 0 || start.elapsed().as_secs_f64() < seconds {
        argon2
            .verify_password(PASSWORD.as_bytes(), &hash)
            .map_err(anyhow::Error::msg)?;
        count += 1;
    }
    Ok((count, start.elapsed().as_secs_f64()))
}

fn cpu(pids: &[(String, u32)]) -> BTreeMap<String, f64> {
    pids.iter()
        .filter_map(|(name, pid)| Some((name.clone(), proc::cpu_time(*pid).ok()?.as_secs_f64())))
        .collect()
}

fn figures(plan: &Plan, measurements: &[Measurement]) -> Vec<Figures> {
    plan.concurrency
        .iter()
        .map(|&concurrency| {
            let ms: Vec<&Measurement> = measurements
                .iter()
                .filter(|m| m.concurrency == concurrency)
                .collect();
            let med = |f: &dyn Fn(&Measurement) -> f64| median(ms.iter().map(|m| f(m)).collect());
            let per_login = |name: &'static str| {
                move |m: &Measurement| {
                    1000.0 * m.cpu_seconds.get(name).copied().unwrap_or(f64::NAN)
                        / m.outcome.ok as f64
                }
            };
            Figures {
                concurrency,
                per_sec: med(&|m| m.outcome.per_sec),
                p50_ms: med(&|m| m.outcome.p50_ms),
                p99_ms: med(&|m| m.outcome.p99_ms),
                auth_cpu_ms_per_login: med(&per_login("auth")),
                gateway_cpu_ms_per_login: med(&per_login("gateway")),
                errors: ms.iter().map(|m| m.outcome.errors()).sum(),
                requests: ms.iter().map(|m| m.outcome.sent).sum(),
            }
        })
        .collect()
}

fn markdown(plan: &Plan, figures: &[Figures], hash_per_sec: f64, header: &str) -> String {
    let n = report::number;
    let (begin, end) = report::markers("logins");
    let mut out = String::new();
    let _ = writeln!(out, "{begin}");
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(
        out,
        "argon2id parameters in force (`crates/auth/src/passwords.rs`): m = {} KiB, t = {}, p = {}; auth runs at most {} hashes at once. Medians of {} repetition(s) of {} s each:\n",
        plan.m_cost_kib, plan.t_cost, plan.p_cost, plan.auth_hashes_at_once, plan.repetitions, plan.seconds
    );
    let _ = writeln!(
        out,
        "| logins at once | logins/s | p50 ms | p99 ms | auth CPU ms per login | gateway CPU ms per login | errors |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    for f in figures {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}/{} |",
            f.concurrency,
            n(f.per_sec),
            n(f.p50_ms),
            n(f.p99_ms),
            n(f.auth_cpu_ms_per_login),
            n(f.gateway_cpu_ms_per_login),
            f.errors,
            f.requests
        );
    }
    let _ = writeln!(out);
    let best = figures
        .iter()
        .map(|f| f.per_sec)
        .filter(|v| v.is_finite())
        .fold(f64::NAN, f64::max);
    let ceiling = hash_per_sec * plan.auth_hashes_at_once as f64;
    let _ = writeln!(
        out,
        "Reference, same run: one thread of the load client verifies {} argon2id hashes per second with these parameters ({} ms each); {} at once would be {}/s. The most logins/s above is {} of that.\n",
        n(hash_per_sec),
        n(1000.0 / hash_per_sec),
        plan.auth_hashes_at_once,
        n(ceiling),
        if best.is_finite() && ceiling > 0.0 {
            format!("{:.0} %", 100.0 * best / ceiling)
        } else {
            "–".to_owned()
        }
    );
    let _ = writeln!(out, "{end}");
    out
}
