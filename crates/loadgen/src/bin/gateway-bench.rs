//! B2, the gateway benchmark: what the edge's REST → gRPC hop costs, next to
//! what a plain reverse-proxy hop (nginx) costs, measured in one run.
//!
//! ```text
//! gateway-bench [--quick | --smoke] [--repetitions N] [--seconds S]
//!               [--catalog-rate R] [--orders-rate R] [--concurrency C]
//!               [--bin target/release] [--nginx nginx]
//!               [--json FILE] [--doc docs/benchmarks.md] [--profile FILE]
//! ```
//!
//! Auth, catalog, orders and the gateway run as release processes
//! (`signalbox_loadgen::services`) with the edge's rate limits lifted and
//! catalog's stock raised so that every order is accepted; a user is
//! registered and logged in through the gateway, and its access token is
//! sent on every order (the gateway and orders each verify it against
//! auth's JWKS). nginx runs as a process of this run with a generated
//! configuration (one worker, keep-alive to the gateway). The cases:
//!
//! | case | request | path |
//! |---|---|---|
//! | `catalog-gateway` | `GET /api/catalog/products` | client → gateway → catalog (gRPC) |
//! | `catalog-direct` | `CatalogService/ListProducts` | client → catalog |
//! | `orders-gateway` | `POST /api/orders` (Bearer) | client → gateway → orders → catalog |
//! | `orders-direct` | `OrderService/CreateOrder` (token in metadata) | client → orders → catalog |
//! | `catalog-nginx` | `GET /api/catalog/products` | client → nginx → gateway → catalog |
//!
//! Every repetition runs every case, in an order rotated by one per
//! repetition, twice: in an open loop at a fixed rate (p50/p99 from the
//! intended send time) and in a closed loop at a fixed concurrency (highest
//! throughput, and the server's CPU time over it). Before each measurement
//! the system is left to settle (the sagas of the last orders finish) and
//! the same load runs for a warm-up that is not counted. `--profile FILE`
//! records the gateway with `perf` during the first closed-loop
//! `catalog-gateway` measurement and writes its top symbols to FILE.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;
use signalbox_loadgen::{
    fanout::median,
    grpc, http,
    load::Outcome,
    proc, report,
    services::{self, Binaries, Services},
};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Case {
    CatalogGateway,
    CatalogDirect,
    OrdersGateway,
    OrdersDirect,
    CatalogNginx,
}

const CASES: [Case; 5] = [
    Case::CatalogGateway,
    Case::CatalogDirect,
    Case::OrdersGateway,
    Case::OrdersDirect,
    Case::CatalogNginx,
];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Self::CatalogGateway => "catalog-gateway",
            Self::CatalogDirect => "catalog-direct",
            Self::OrdersGateway => "orders-gateway",
            Self::OrdersDirect => "orders-direct",
            Self::CatalogNginx => "catalog-nginx",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::CatalogGateway => "GET /api/catalog/products via the gateway",
            Self::CatalogDirect => "ListProducts on catalog directly",
            Self::OrdersGateway => "POST /api/orders via the gateway",
            Self::OrdersDirect => "CreateOrder on orders directly",
            Self::CatalogNginx => "GET /api/catalog/products via nginx → gateway",
        }
    }

    /// The process whose CPU time a request of this case is charged to: the
    /// hop under test (the gateway, nginx's worker), or for a direct call
    /// the service that answers it.
    fn server(self) -> &'static str {
        match self {
            Self::CatalogGateway | Self::OrdersGateway => "gateway",
            Self::CatalogDirect => "catalog",
            Self::OrdersDirect => "orders",
            Self::CatalogNginx => "nginx",
        }
    }

    fn orders(self) -> bool {
        matches!(self, Self::OrdersGateway | Self::OrdersDirect)
    }
}

#[derive(Debug, Clone, Serialize)]
struct Plan {
    size: String,
    repetitions: usize,
    seconds: f64,
    warmup_seconds: f64,
    catalog_rate: f64,
    orders_rate: f64,
    /// Requests out at once at most, in the open loop.
    max_in_flight: usize,
    concurrency: usize,
}

/// One measurement: a case, in one loop, in one repetition.
#[derive(Debug, Clone, Serialize)]
struct Measurement {
    repetition: usize,
    case: Case,
    /// `open` or `closed`.
    schedule: &'static str,
    outcome: Outcome,
    /// CPU seconds of each process over the measured window.
    cpu_seconds: BTreeMap<String, f64>,
    /// Successful requests per CPU-second of the case's server.
    per_server_cpu_sec: f64,
}

/// The medians of one case over the repetitions.
#[derive(Debug, Clone, Serialize)]
struct Figures {
    case: Case,
    server: &'static str,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    closed_per_sec: f64,
    closed_p99_ms: f64,
    per_server_cpu_sec: f64,
    errors: u64,
    requests: u64,
}

/// Latency a hop adds (via − direct, per repetition, then the median).
#[derive(Debug, Clone, Serialize)]
struct Added {
    hop: &'static str,
    via: Case,
    direct: Case,
    p50_ms: f64,
    p99_ms: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut size = "full".to_owned();
    let mut repetitions = None;
    let mut seconds = None;
    let mut catalog_rate = None;
    let mut orders_rate = None;
    let mut concurrency = None;
    let mut bin = PathBuf::from("target/release");
    let mut nginx = PathBuf::from("nginx");
    let (mut json, mut doc, mut profile) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("a value after {arg}"));
        match arg.as_str() {
            "--quick" => size = "quick".to_owned(),
            "--smoke" => size = "smoke".to_owned(),
            "--repetitions" => repetitions = Some(value()?.parse()?),
            "--seconds" => seconds = Some(value()?.parse::<f64>()?),
            "--catalog-rate" => catalog_rate = Some(value()?.parse::<f64>()?),
            "--orders-rate" => orders_rate = Some(value()?.parse::<f64>()?),
            "--concurrency" => concurrency = Some(value()?.parse()?),
            "--bin" => bin = value()?.into(),
            "--nginx" => nginx = value()?.into(),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--doc" => doc = Some(PathBuf::from(value()?)),
            "--profile" => profile = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("see the module documentation of crates/loadgen/src/bin/gateway-bench.rs");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    // (repetitions, seconds, warm-up, catalog rate, orders rate, concurrency)
    let defaults = match size.as_str() {
        "smoke" => (1, 0.5, 0.2, 50.0, 20.0, 4),
        "quick" => (2, 2.0, 0.5, 500.0, 100.0, 32),
        _ => (5, 10.0, 2.0, 500.0, 100.0, 32),
    };
    let plan = Plan {
        size: size.clone(),
        repetitions: repetitions.unwrap_or(defaults.0),
        seconds: seconds.unwrap_or(defaults.1),
        warmup_seconds: defaults.2,
        catalog_rate: catalog_rate.unwrap_or(defaults.3),
        orders_rate: orders_rate.unwrap_or(defaults.4),
        max_in_flight: 256,
        concurrency: concurrency.unwrap_or(defaults.5),
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
    let result = measure(&plan, &system, &nginx, profile.as_deref(), &say).await;
    say("stopping".to_owned());
    let stopped = system.stop().await;
    let (measurements, nginx_version) = result?;
    stopped?;

    let figures = figures(&plan, &measurements);
    let added = added(&measurements);
    let header = format!(
        "Run of {} UTC, `{size}`, commit `{}`, {} cores ({}), load average {load_before} before and {} after; {nginx_version}.",
        started.format("%Y-%m-%d %H:%M"),
        report::commit(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        report::cpu_model(),
        proc::load_average(),
    );
    let section = markdown(&plan, &figures, &added, &header);
    println!("{section}");
    if let Some(path) = json {
        let document = serde_json::json!({
            "benchmark": "gateway",
            "header": header,
            "plan": plan,
            "figures": figures,
            "added": added,
            "measurements": measurements,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results: {}", path.display());
    }
    if let Some(path) = doc {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        let (begin, end) = report::markers("gateway");
        std::fs::write(
            &path,
            report::splice_between(&current, &begin, &end, &section),
        )?;
        eprintln!("tables: {}", path.display());
    }
    Ok(())
}

/// Everything between a started system and its stop: the token, the stock,
/// nginx, and the interleaved measurements.
async fn measure(
    plan: &Plan,
    system: &Services,
    nginx_bin: &Path,
    profile: Option<&Path>,
    say: &dyn Fn(String),
) -> anyhow::Result<(Vec<Measurement>, String)> {
    // Enough stock that no order of the run is refused for want of it.
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&system.database_url("catalog"))
        .await
        .context("connect to catalog's database")?;
    sqlx::query("UPDATE products SET stock = 1000000000")
        .execute(&mut db)
        .await?;
    <sqlx::PgConnection as sqlx::Connection>::close(db).await?;

    let gateway = system.gateway_url();
    let user = signalbox_system_tests::Api::new(gateway.clone())
        .new_user()
        .await
        .context("register and log in through the gateway")?;
    let order = r#"{"items":[{"product_id":"PRODUCT","quantity":1}]}"#
        .replace("PRODUCT", signalbox_system_tests::products::LAMP);

    let nginx = Nginx::start(nginx_bin, system.process("gateway").http_port).await?;
    let version = nginx.version.clone();
    let result = async {
        let client = http::client(plan.max_in_flight.max(plan.concurrency))?;
        let catalog_channel = grpc::connect(&system.grpc_url("catalog")).await?;
        let orders_channel = grpc::connect(&system.grpc_url("orders")).await?;
        let list = grpc::Call::list_products(catalog_channel);
        let create = grpc::Call::create_order(
            orders_channel,
            &user.access_token,
            signalbox_system_tests::products::LAMP,
            1,
        )?;
        let products = http::Target::get(format!("{gateway}/api/catalog/products"));
        let via_nginx = http::Target::get(format!(
            "http://127.0.0.1:{}/api/catalog/products",
            nginx.port
        ));
        let place = http::Target::post_json(format!("{gateway}/api/orders"), order)
            .bearer(&user.access_token);

        let mut pids: Vec<(String, u32)> = system
            .processes
            .iter()
            .map(|p| (p.name.to_owned(), p.pid))
            .collect();
        pids.push(("nginx".to_owned(), nginx.worker));

        let mut measurements = Vec::new();
        let mut profiled = profile.is_none();
        let total = plan.repetitions * CASES.len() * 2;
        for repetition in 0..plan.repetitions {
            let mut order: Vec<Case> = CASES.to_vec();
            order.rotate_left(repetition % CASES.len());
            for case in order {
                let rate = if case.orders() {
                    plan.orders_rate
                } else {
                    plan.catalog_rate
                };
                for schedule in ["open", "closed"] {
                    say(format!(
                        "{}/{total}: repetition {}/{}, {} ({}), {}",
                        measurements.len() + 1,
                        repetition + 1,
                        plan.repetitions,
                        case.name(),
                        case.describe(),
                        if schedule == "open" {
                            format!("open loop at {rate:.0}/s")
                        } else {
                            format!("closed loop, {} at once", plan.concurrency)
                        }
                    ));
                    let run = |seconds: f64| {
                        let duration = Duration::from_secs_f64(seconds);
                        let (client, list, create) = (&client, &list, &create);
                        let target = match case {
                            Case::CatalogGateway => Some(&products),
                            Case::CatalogNginx => Some(&via_nginx),
                            Case::OrdersGateway => Some(&place),
                            Case::CatalogDirect | Case::OrdersDirect => None,
                        };
                        let call = if case == Case::CatalogDirect {
                            list
                        } else {
                            create
                        };
                        async move {
                            match (target, schedule) {
                                (Some(target), "open") => {
                                    http::open_loop(
                                        client,
                                        target,
                                        rate,
                                        duration,
                                        plan.max_in_flight,
                                    )
                                    .await
                                }
                                (Some(target), _) => {
                                    http::closed_loop(client, target, plan.concurrency, duration)
                                        .await
                                }
                                (None, "open") => {
                                    grpc::open_loop(call, rate, duration, plan.max_in_flight).await
                                }
                                (None, _) => {
                                    grpc::closed_loop(call, plan.concurrency, duration).await
                                }
                            }
                        }
                    };
                    system.settle(Duration::from_secs(5)).await;
                    run(plan.warmup_seconds).await;
                    let before = cpu(&pids);
                    let perf = if !profiled && case == Case::CatalogGateway && schedule == "closed"
                    {
                        profiled = true;
                        Some(Perf::start(system.process("gateway").pid, plan.seconds)?)
                    } else {
                        None
                    };
                    let outcome = run(plan.seconds).await;
                    let after = cpu(&pids);
                    if let (Some(perf), Some(path)) = (perf, profile) {
                        perf.finish(path).await?;
                        say(format!("profile: {}", path.display()));
                    }
                    let cpu_seconds: BTreeMap<String, f64> = after
                        .iter()
                        .map(|(name, t)| (name.clone(), t - before.get(name).copied().unwrap_or(0.0)))
                        .collect();
                    let server_cpu = cpu_seconds.get(case.server()).copied().unwrap_or(f64::NAN);
                    let per_server_cpu_sec = outcome.ok as f64 / server_cpu;
                    say(format!(
                        "    {} ok of {} in {:.1} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, {} CPU {:.2} s ({:.0} per CPU-s){}",
                        outcome.ok,
                        outcome.sent,
                        outcome.seconds,
                        outcome.per_sec,
                        outcome.p50_ms,
                        outcome.p99_ms,
                        case.server(),
                        server_cpu,
                        per_server_cpu_sec,
                        if outcome.errors() > 0 {
                            format!(", {} errors {:?} {:?}", outcome.errors(), outcome.codes, outcome.failures)
                        } else {
                            String::new()
                        }
                    ));
                    measurements.push(Measurement {
                        repetition,
                        case,
                        schedule,
                        outcome,
                        cpu_seconds,
                        per_server_cpu_sec,
                    });
                }
            }
        }
        anyhow::Ok(measurements)
    }
    .await;
    nginx.stop().await?;
    Ok((result?, version))
}

/// CPU seconds used so far by each named process.
fn cpu(pids: &[(String, u32)]) -> BTreeMap<String, f64> {
    pids.iter()
        .filter_map(|(name, pid)| Some((name.clone(), proc::cpu_time(*pid).ok()?.as_secs_f64())))
        .collect()
}

fn figures(plan: &Plan, measurements: &[Measurement]) -> Vec<Figures> {
    CASES
        .iter()
        .map(|&case| {
            let of = |schedule: &str| -> Vec<&Measurement> {
                measurements
                    .iter()
                    .filter(|m| m.case == case && m.schedule == schedule)
                    .collect()
            };
            let (open, closed) = (of("open"), of("closed"));
            let med = |ms: &[&Measurement], f: fn(&Measurement) -> f64| {
                median(ms.iter().map(|m| f(m)).collect())
            };
            Figures {
                case,
                server: case.server(),
                rate: if case.orders() {
                    plan.orders_rate
                } else {
                    plan.catalog_rate
                },
                p50_ms: med(&open, |m| m.outcome.p50_ms),
                p99_ms: med(&open, |m| m.outcome.p99_ms),
                closed_per_sec: med(&closed, |m| m.outcome.per_sec),
                closed_p99_ms: med(&closed, |m| m.outcome.p99_ms),
                per_server_cpu_sec: med(&closed, |m| m.per_server_cpu_sec),
                errors: open.iter().chain(&closed).map(|m| m.outcome.errors()).sum(),
                requests: open.iter().chain(&closed).map(|m| m.outcome.sent).sum(),
            }
        })
        .collect()
}

/// The three hops: the gateway on each route, and nginx in front of it.
fn added(measurements: &[Measurement]) -> Vec<Added> {
    [
        (
            "gateway (GET products → ListProducts)",
            Case::CatalogGateway,
            Case::CatalogDirect,
        ),
        (
            "gateway (POST orders → CreateOrder)",
            Case::OrdersGateway,
            Case::OrdersDirect,
        ),
        (
            "nginx in front of the gateway (GET products)",
            Case::CatalogNginx,
            Case::CatalogGateway,
        ),
    ]
    .into_iter()
    .map(|(hop, via, direct)| {
        let diff = |f: fn(&Outcome) -> f64| {
            let open = |case: Case| {
                measurements
                    .iter()
                    .filter(move |m| m.case == case && m.schedule == "open")
            };
            median(
                open(via)
                    .filter_map(|v| {
                        let d = open(direct).find(|d| d.repetition == v.repetition)?;
                        Some(f(&v.outcome) - f(&d.outcome))
                    })
                    .collect(),
            )
        };
        Added {
            hop,
            via,
            direct,
            p50_ms: diff(|o| o.p50_ms),
            p99_ms: diff(|o| o.p99_ms),
        }
    })
    .collect()
}

fn markdown(plan: &Plan, figures: &[Figures], added: &[Added], header: &str) -> String {
    let n = report::number;
    let (begin, end) = report::markers("gateway");
    let mut out = String::new();
    let _ = writeln!(out, "{begin}");
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(
        out,
        "Medians of {} repetition(s); open loop for {} s at the fixed rate, closed loop for {} s with {} requests at once:\n",
        plan.repetitions, plan.seconds, plan.seconds, plan.concurrency
    );
    let _ = writeln!(
        out,
        "| case | what | fixed rate /s | p50 ms | p99 ms | closed loop req/s | closed p99 ms | req per server CPU-s | server | errors |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|---:|");
    for f in figures {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {}/{} |",
            f.case.name(),
            f.case.describe(),
            f.rate,
            n(f.p50_ms),
            n(f.p99_ms),
            n(f.closed_per_sec),
            n(f.closed_p99_ms),
            n(f.per_server_cpu_sec),
            f.server,
            f.errors,
            f.requests
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| hop | added p50 ms | added p99 ms |");
    let _ = writeln!(out, "|---|---:|---:|");
    for a in added {
        let _ = writeln!(
            out,
            "| {} (`{}` − `{}`) | {} | {} |",
            a.hop,
            a.via.name(),
            a.direct.name(),
            n(a.p50_ms),
            n(a.p99_ms)
        );
    }
    let _ = writeln!(out);
    let nginx_p99 = added[2].p99_ms;
    let per_cpu = |case: Case| {
        figures
            .iter()
            .find(|f| f.case == case)
            .map_or(f64::NAN, |f| f.per_server_cpu_sec)
    };
    let _ = writeln!(out, "| goal | measured | met |");
    let _ = writeln!(out, "|---|---:|---|");
    for a in &added[..2] {
        let ratio = a.p99_ms / nginx_p99;
        let _ = writeln!(
            out,
            "| added p99, {} ÷ nginx's: ≤ 1 | {} | {} |",
            a.hop,
            ratio_text(ratio),
            met(a.p99_ms <= nginx_p99)
        );
    }
    for case in [Case::CatalogGateway, Case::OrdersGateway] {
        let ratio = per_cpu(case) / per_cpu(Case::CatalogNginx);
        let _ = writeln!(
            out,
            "| requests per CPU-s, gateway on `{}` ÷ nginx's worker: ≥ 0.8 | {} | {} |",
            case.name(),
            ratio_text(ratio),
            met(ratio >= 0.8)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{end}");
    out
}

/// A ratio; a negative one (the hop's added p99 below zero, i.e. within
/// the noise) is printed as it is.
fn ratio_text(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}×")
    } else {
        "–".to_owned()
    }
}

fn met(yes: bool) -> &'static str {
    if yes {
        "yes"
    } else {
        "**no**"
    }
}

/// nginx as a process of this run: a generated configuration in a
/// temporary directory (one worker, no access log, HTTP/1.1 keep-alive to
/// the gateway), in the foreground (`daemon off`).
struct Nginx {
    master: Child,
    master_pid: u32,
    worker: u32,
    port: u16,
    dir: PathBuf,
    version: String,
}

/// The configuration; `{DIR}`, `{PORT}` and `{UPSTREAM}` are filled in.
const NGINX_CONF: &str = r#"# Generated by gateway-bench for one run.
worker_processes 1;
error_log {DIR}/error.log warn;
pid {DIR}/nginx.pid;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path {DIR}/body;
    proxy_temp_path {DIR}/proxy;
    fastcgi_temp_path {DIR}/fastcgi;
    uwsgi_temp_path {DIR}/uwsgi;
    scgi_temp_path {DIR}/scgi;
    keepalive_requests 1000000;
    upstream gateway {
        server 127.0.0.1:{UPSTREAM};
        # Idle connections kept open to the gateway, reused request after
        # request (HTTP/1.1 with the Connection header cleared, below).
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:{PORT};
        location / {
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
    }
}
"#;

impl Nginx {
    async fn start(binary: &Path, upstream: u16) -> anyhow::Result<Self> {
        let version = std::process::Command::new(binary)
            .arg("-v")
            .output()
            .with_context(|| {
                format!(
                    "run {} -v (install Debian's nginx: apt-get install nginx)",
                    binary.display()
                )
            })?;
        // nginx prints its version on stderr.
        let version = String::from_utf8_lossy(&version.stderr)
            .trim()
            .trim_start_matches("nginx version: ")
            .to_owned();
        let dir = std::env::temp_dir().join(format!(
            "signalbox-bench-nginx-{}",
            signalbox_testkit::broker::random_namespace()
        ));
        std::fs::create_dir_all(&dir)?;
        let port = services::free_port()?;
        let conf = NGINX_CONF
            .replace("{DIR}", &dir.display().to_string())
            .replace("{PORT}", &port.to_string())
            .replace("{UPSTREAM}", &upstream.to_string());
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let master = Command::new(binary)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(&dir)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let master_pid = master.id().context("nginx's pid")?;
        let mut nginx = Self {
            master,
            master_pid,
            worker: 0,
            port,
            dir,
            version,
        };
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/health/ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = nginx.master.try_wait()? {
                bail!("nginx exited with {status}; see {}", nginx.dir.display());
            }
            if let Ok(answer) = client.get(&url).send().await {
                if answer.status().is_success() {
                    break;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "nginx did not answer within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let workers = services::children_of(master_pid);
        anyhow::ensure!(workers.len() == 1, "nginx workers: {workers:?}");
        nginx.worker = workers[0];
        Ok(nginx)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        // SIGQUIT: nginx's graceful shutdown.
        services::signal(self.master_pid, "QUIT")?;
        if tokio::time::timeout(Duration::from_secs(10), self.master.wait())
            .await
            .is_err()
        {
            self.master.start_kill()?;
            self.master.wait().await?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// `perf record` of one process for a while (cpu-clock: the VM has no
/// hardware counters), in the background.
struct Perf {
    child: Child,
    data: PathBuf,
}

impl Perf {
    fn start(pid: u32, seconds: f64) -> anyhow::Result<Self> {
        let data = std::env::temp_dir().join(format!("gateway-bench-{pid}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-g", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .args(["--", "sleep"])
            .arg(format!("{seconds}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start perf (apt-get install linux-perf)")?;
        Ok(Self { child, data })
    }

    /// Waits for the recording, and writes its top symbols (self time) to
    /// `path`.
    async fn finish(mut self, path: &Path) -> anyhow::Result<()> {
        self.child.wait().await?;
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "dso,symbol",
                "-g",
                "none",
                "--percent-limit",
                "0.5",
                "-i",
            ])
            .arg(&self.data)
            .output()
            .await
            .context("perf report")?;
        let text = String::from_utf8_lossy(&report.stdout);
        let top: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .take(120)
            .collect();
        std::fs::write(
            path,
            format!(
                "# perf record -e cpu-clock -g -p <gateway pid> during a closed-loop GET /api/catalog/products run\n# perf report --stdio --no-children --sort dso,symbol -g none --percent-limit 0.5\n{}\n",
                top.join("\n")
            ),
        )?;
        let _ = std::fs::remove_file(&self.data);
        Ok(())
    }
}
