//! B3, the outbox relay: rows committed → published with confirms, against
//! a raw lapin publisher with confirms and the same batching.
//!
//! The relay under test is `signalbox_messaging::OutboxRelay` exactly as
//! every service runs it (`OutboxService::run`: `OutboxRelay::new(pool,
//! broker)`, batches of 100, woken by `pg_notify` on commit, polling every
//! second), on a fresh database migrated with orders' schema (every
//! service's schema carries the same `outbox` table) and a fresh broker
//! namespace, publishing to `<ns>.events`, where a durable queue bound to
//! `#` holds every message (persistent, so each confirm waits for the
//! broker's disk, as the services' events do).
//!
//! ```text
//!  writers ──tx: enqueue(row), commit──▶ outbox ──NOTIFY──▶ OutboxRelay
//!     │ commit time per row                              │ lease, SELECT 100,
//!     │                                                  │ publish, confirms,
//!     │                                                  │ UPDATE, COMMIT
//!     └───────────── commit → marked ◀── "outbox send" span closes (per row)
//!  raw: basic.publish × 100 on a confirm channel, await the 100 confirms, repeat
//! ```
//!
//! **When a row counts as done.** The relay marks a row published after
//! its batch's confirms, and its producer span (`outbox send`, one per row,
//! carrying the message id) ends when the batch's transaction has
//! committed that mark: a tracing layer in this process records the time
//! each of those spans closes ([`install_marks`]). So the latency reported
//! is *commit → confirmed and marked*: it contains the confirm and one
//! more round trip (the UPDATE's commit), and never less than the confirm.
//! Neither alternative is honest: `published_at` is `now()`, the *start* of
//! the relay's transaction, before its SELECT; and a consumer may receive
//! a message before the broker has confirmed it (the confirm waits for the
//! disk). The consumer of the bound queue is kept, to check that every
//! message arrived, and its commit → delivered is reported beside.
//!
//! **Phases**, each repetition on a fresh database and namespace, the two
//! systems taking turns (the order alternating per repetition):
//!
//! 1. *Highest rate.* Relay: with the relay running and idle, one
//!    transaction commits N rows (through `outbox::enqueue`, as a service
//!    writes them); rows/s = N over commit → the last row marked. Raw: N
//!    messages, the same envelope's properties and the same payload bytes,
//!    published 100 at a time, each batch's confirms awaited before the
//!    next; messages/s over the wall time, and publish → confirm latency.
//! 2. *Half load.* At half the median of the relay's highest rate, for D
//!    seconds: relay — writer tasks commit one row per transaction at the
//!    row's intended time (open loop); commit → marked per row. Raw — the
//!    same arrivals, published as the relay would: whatever has arrived (up
//!    to 100) in one batch, its confirms awaited; arrival → confirm.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    time::Duration,
};

use anyhow::Context as _;
use futures::{future::join_all, StreamExt};
use lapin::{
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
    Confirmation, Connection, ConnectionProperties,
};
use serde::Serialize;
use signalbox_messages::{orders::OrderCancelled, Envelope};
use signalbox_messaging::{amqp, outbox, topology, Broker, OutboxRelay, Outgoing, WorkQueue};
use signalbox_testkit::{broker::amqp_url, Sandbox, DEADLINE};
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The relay's batch size (`OutboxRelay::new`), which the raw publisher
/// uses too.
pub const BATCH: usize = 100;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Rows (messages) per highest-rate run.
    pub rows: usize,
    pub repetitions: usize,
    /// Length of a half-load run.
    #[serde(serialize_with = "seconds")]
    pub half_step: Duration,
    /// Concurrent writer tasks (one transaction per row) at half load.
    pub writers: usize,
    /// A half-load run is given this long after its last arrival for every
    /// row to be marked.
    #[serde(serialize_with = "seconds")]
    pub grace: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One run of one system.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `relay` or `raw`.
    pub system: &'static str,
    /// `highest` or `half`.
    pub phase: &'static str,
    pub repetition: usize,
    /// What was asked: rows/s at half load, none for the highest rate.
    pub rate: Option<f64>,
    pub messages: usize,
    /// Done (relay: marked; raw: confirmed) per second.
    pub per_sec: f64,
    /// Commit → marked (relay) or publish/arrival → confirm (raw).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Commit (or arrival) → received by the bound queue's consumer.
    pub delivered_p50_ms: f64,
    pub delivered_p99_ms: f64,
    /// Messages the consumer received (every one, or the run failed).
    pub delivered: usize,
    /// Half load: rows/s the writers actually committed.
    pub committed_per_sec: Option<f64>,
    pub error: Option<String>,
}

/// Medians of a system's runs in a phase.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub system: &'static str,
    pub highest_per_sec: f64,
    pub highest_p99_ms: f64,
    pub half_rate: f64,
    pub half_p50_ms: f64,
    pub half_p99_ms: f64,
    pub half_delivered_p99_ms: f64,
    pub failed: usize,
    pub runs: usize,
}

// ---------------------------------------------------------------------------
// The relay's marks, seen through its spans.

/// When each relayed message's `outbox send` span closed, by message id.
#[derive(Clone, Default)]
pub struct Marks(Arc<Mutex<Vec<(Uuid, std::time::Instant)>>>);

impl Marks {
    /// Everything recorded since the last call.
    fn take(&self) -> Vec<(Uuid, std::time::Instant)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

static MARKS: OnceLock<Marks> = OnceLock::new();

/// Installs this process's tracing subscriber: the messaging crate's spans
/// at info (the level the services record them at) and a layer that
/// notes when each `outbox send` span closes. Call once, first.
pub fn install_marks() -> anyhow::Result<Marks> {
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt};
    let marks = MARKS.get_or_init(Marks::default).clone();
    let subscriber = tracing_subscriber::registry()
        .with(Targets::new().with_target("signalbox_messaging", tracing::Level::INFO))
        .with(MarkLayer(marks.clone()));
    tracing::subscriber::set_global_default(subscriber)
        .context("a tracing subscriber was installed before")?;
    Ok(marks)
}

struct MarkLayer(Marks);

/// The message id an `outbox send` span carries, kept in its extensions.
struct MessageId(Uuid);

/// The name of the relay's per-message producer span (`outbox::send_span`).
const SEND_SPAN: &str = "outbox send";

impl<S> tracing_subscriber::Layer<S> for MarkLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() != SEND_SPAN {
            return;
        }
        let mut visitor = IdVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(message_id), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(MessageId(message_id));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let now = std::time::Instant::now();
        let message_id = span.extensions_mut().remove::<MessageId>();
        if let Some(MessageId(message_id)) = message_id {
            (self.0)
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((message_id, now));
        }
    }
}

struct IdVisitor(Option<Uuid>);

impl tracing::field::Visit for IdVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "messaging.message.id" {
            self.0 = format!("{value:?}").parse().ok();
        }
    }
}

// ---------------------------------------------------------------------------
// A run's world: database, namespace, the bound queue and its consumer.

struct Fixture {
    sandbox: Sandbox,
    pool: PgPool,
    broker: Arc<Broker>,
    /// What the bound queue's consumer received: message id → when.
    received: Arc<Mutex<HashMap<Uuid, std::time::Instant>>>,
    consumer: tokio::task::JoinHandle<()>,
    /// The consumer's own connection, closed at the end.
    connection: Connection,
}

impl Fixture {
    async fn new(writers: usize) -> anyhow::Result<Self> {
        let mut sandbox = Sandbox::new();
        let ns = sandbox.namespace().clone();
        let database = sandbox.database("relay").await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            // The writers, the relay's transaction, its listener and its
            // backlog query.
            .max_connections(u32::try_from(writers).unwrap_or(8) + 3)
            .connect(&database.url)
            .await?;
        sqlx::migrate!("../../migrations/orders").run(&pool).await?;
        let broker = Broker::connect(&amqp_url(), ns.clone(), "bench-relay", DEADLINE).await?;
        let queue = ns.queue("relay-bench");
        let work = WorkQueue::new(queue.clone()).bind(ns.events_exchange(), "#");
        topology::declare_work_queue(&broker.channel().await?, &ns, &work).await?;
        sandbox.queues(work.declared_queues());

        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let received = Arc::new(Mutex::new(HashMap::new()));
        let consumer = {
            let received = received.clone();
            // Notes when each message arrives, by its message id.
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = deliveries.next().await {
                    let now = std::time::Instant::now();
                    let id = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .and_then(|id| id.as_str().parse::<Uuid>().ok());
                    if let Some(id) = id {
                        received
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(id, now);
                    }
                }
            })
        };
        Ok(Self {
            sandbox,
            pool,
            broker,
            received,
            consumer,
            connection,
        })
    }

    /// Waits until the consumer has `n` messages, or `deadline` passed.
    async fn await_received(&self, n: usize, deadline: Duration) -> usize {
        let until = Instant::now() + deadline;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            let have = self
                .received
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            if have >= n || Instant::now() >= until {
                return have;
            }
            tick.tick().await;
        }
    }

    fn received(&self) -> HashMap<Uuid, std::time::Instant> {
        std::mem::take(&mut *self.received.lock().unwrap_or_else(PoisonError::into_inner))
    }

    async fn remove(mut self) -> anyhow::Result<()> {
        self.consumer.abort();
        let _ = self.connection.close(200, "done".into()).await;
        self.broker.close().await;
        self.pool.close().await;
        self.sandbox.remove().await
    }
}

/// The message every row and every raw publish carries: an order event as
/// orders writes it (its envelope's properties, a JSON payload of the same
/// size).
fn message(ns: &signalbox_messages::channels::Namespace) -> Outgoing {
    let user_id = format!("user-{}", Uuid::new_v4().simple());
    Outgoing::event(
        ns,
        Envelope::new::<OrderCancelled>().with_user_id(user_id.clone()),
        &OrderCancelled {
            order_id: Uuid::now_v7(),
            user_id,
            state: "CANCELLED".into(),
        },
    )
}

// ---------------------------------------------------------------------------
// The runs.

/// Runs the plan: the highest rates, then half load, each repetition on
/// fresh infrastructure, the systems alternating. `progress` is called with
/// a line per run.
pub async fn run_plan(plan: &Plan, marks: &Marks, progress: impl Fn(&Run)) -> Vec<Run> {
    let mut runs = Vec::new();
    for repetition in 0..plan.repetitions {
        for system in order(repetition) {
            let run = match system {
                "relay" => relay_highest(plan, marks, repetition).await,
                _ => raw_highest(plan, repetition).await,
            }
            .unwrap_or_else(|error| failed(system, "highest", repetition, None, &error));
            progress(&run);
            runs.push(run);
        }
    }
    let highest = median(
        runs.iter()
            .filter(|r| r.system == "relay" && r.error.is_none())
            .map(|r| r.per_sec),
    );
    if !highest.is_finite() {
        return runs;
    }
    let rate = highest / 2.0;
    for repetition in 0..plan.repetitions {
        for system in order(repetition) {
            let run = match system {
                "relay" => relay_half(plan, marks, repetition, rate).await,
                _ => raw_half(plan, repetition, rate).await,
            }
            .unwrap_or_else(|error| failed(system, "half", repetition, Some(rate), &error));
            progress(&run);
            runs.push(run);
        }
    }
    runs
}

fn order(repetition: usize) -> [&'static str; 2] {
    if repetition.is_multiple_of(2) {
        ["relay", "raw"]
    } else {
        ["raw", "relay"]
    }
}

fn failed(
    system: &'static str,
    phase: &'static str,
    repetition: usize,
    rate: Option<f64>,
    error: &anyhow::Error,
) -> Run {
    Run {
        system,
        phase,
        repetition,
        rate,
        messages: 0,
        per_sec: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
        delivered_p50_ms: f64::NAN,
        delivered_p99_ms: f64::NAN,
        delivered: 0,
        committed_per_sec: None,
        error: Some(format!("{error:#}")),
    }
}

/// The relay, idle, then N rows committed at once.
async fn relay_highest(plan: &Plan, marks: &Marks, repetition: usize) -> anyhow::Result<Run> {
    let fx = Fixture::new(1).await?;
    let shutdown = CancellationToken::new();
    let relay =
        tokio::spawn(OutboxRelay::new(fx.pool.clone(), fx.broker.clone()).run(shutdown.clone()));
    // The relay's first round (an empty outbox) is over once it is
    // listening; a row committed now wakes it.
    await_listening(&fx.pool).await?;
    marks.take();
    let ns = fx.broker.namespace().clone();
    let messages: Vec<Outgoing> = (0..plan.rows).map(|_| message(&ns)).collect();
    let mut tx = fx.pool.begin().await?;
    for message in &messages {
        outbox::enqueue(&mut tx, message).await?;
    }
    tx.commit().await?;
    let committed = std::time::Instant::now();
    let done = await_marks(marks, plan.rows, DEADLINE * 4).await;
    let marked = marks.take();
    shutdown.cancel();
    relay.await?;
    let delivered = fx.await_received(plan.rows, DEADLINE).await;
    let received = fx.received();
    fx.remove().await?;
    anyhow::ensure!(
        done >= plan.rows,
        "only {done} of {} rows marked",
        plan.rows
    );
    let last = marked.iter().map(|(_, at)| *at).max().context("no marks")?;
    let latency: Vec<f64> = marked.iter().map(|(_, at)| ms(*at - committed)).collect();
    let delivered_latency: Vec<f64> = received.values().map(|at| ms(*at - committed)).collect();
    Ok(Run {
        system: "relay",
        phase: "highest",
        repetition,
        rate: None,
        messages: plan.rows,
        per_sec: plan.rows as f64 / (last - committed).as_secs_f64(),
        p50_ms: percentile(&latency, 0.50),
        p99_ms: percentile(&latency, 0.99),
        max_ms: percentile(&latency, 1.0),
        delivered_p50_ms: percentile(&delivered_latency, 0.50),
        delivered_p99_ms: percentile(&delivered_latency, 0.99),
        delivered,
        committed_per_sec: None,
        error: check_delivered(delivered, plan.rows),
    })
}

/// N messages, 100 per batch, each batch's confirms awaited.
async fn raw_highest(plan: &Plan, repetition: usize) -> anyhow::Result<Run> {
    let fx = Fixture::new(1).await?;
    let ns = fx.broker.namespace().clone();
    let messages: Vec<Outgoing> = (0..plan.rows).map(|_| message(&ns)).collect();
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = std::time::Instant::now();
    let mut latency = Vec::with_capacity(plan.rows);
    let mut sent = HashMap::with_capacity(plan.rows);
    for batch in messages.chunks(BATCH) {
        let published: Vec<std::time::Instant> =
            batch.iter().map(|_| std::time::Instant::now()).collect();
        for (m, at) in batch.iter().zip(&published) {
            sent.insert(m.envelope.message_id, *at);
        }
        let confirmed = publish_batch(&channel, batch).await?;
        latency.extend(published.iter().zip(&confirmed).map(|(p, c)| ms(*c - *p)));
    }
    let elapsed = started.elapsed();
    let _ = connection.close(200, "done".into()).await;
    let delivered = fx.await_received(plan.rows, DEADLINE).await;
    let received = fx.received();
    fx.remove().await?;
    let delivered_latency = delivered_since(&sent, &received);
    Ok(Run {
        system: "raw",
        phase: "highest",
        repetition,
        rate: None,
        messages: plan.rows,
        per_sec: plan.rows as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latency, 0.50),
        p99_ms: percentile(&latency, 0.99),
        max_ms: percentile(&latency, 1.0),
        delivered_p50_ms: percentile(&delivered_latency, 0.50),
        delivered_p99_ms: percentile(&delivered_latency, 0.99),
        delivered,
        committed_per_sec: None,
        error: check_delivered(delivered, plan.rows),
    })
}

/// Publishes `batch` (pipelined), then awaits every confirm; the time each
/// confirm was seen, in the batch's order. A nack is an error.
async fn publish_batch(
    channel: &lapin::Channel,
    batch: &[Outgoing],
) -> anyhow::Result<Vec<std::time::Instant>> {
    let mut pending = Vec::with_capacity(batch.len());
    for m in batch {
        let confirm = channel
            .basic_publish(
                m.exchange.as_str().into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &m.payload,
                amqp::to_properties(&m.envelope),
            )
            .await?;
        pending.push(async move {
            let confirmation = confirm.await;
            (confirmation, std::time::Instant::now())
        });
    }
    let mut times = Vec::with_capacity(batch.len());
    for (confirmation, at) in join_all(pending).await {
        if let Confirmation::Nack(_) = confirmation? {
            anyhow::bail!("the broker nacked a publish");
        }
        times.push(at);
    }
    Ok(times)
}

/// Half load through the relay: writer tasks commit one row per
/// transaction at each row's intended time.
async fn relay_half(
    plan: &Plan,
    marks: &Marks,
    repetition: usize,
    rate: f64,
) -> anyhow::Result<Run> {
    let fx = Fixture::new(plan.writers).await?;
    let shutdown = CancellationToken::new();
    let relay =
        tokio::spawn(OutboxRelay::new(fx.pool.clone(), fx.broker.clone()).run(shutdown.clone()));
    await_listening(&fx.pool).await?;
    marks.take();
    let n = (rate * plan.half_step.as_secs_f64()).round().max(1.0) as usize;
    let ns = fx.broker.namespace().clone();
    let messages: Arc<Vec<Outgoing>> = Arc::new((0..n).map(|_| message(&ns)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..plan.writers {
        let (pool, messages, next) = (fx.pool.clone(), messages.clone(), next.clone());
        // A writer: takes the next row, waits for its intended time, commits
        // it in a transaction of its own, notes the commit time.
        writers.spawn(async move {
            let mut committed = Vec::new();
            loop {
                // Relaxed: the counter only hands out indexes; nothing else
                // is ordered by it.
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(message) = messages.get(i) else {
                    break;
                };
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                let mut tx = pool.begin().await?;
                outbox::enqueue(&mut tx, message).await?;
                tx.commit().await?;
                committed.push((message.envelope.message_id, std::time::Instant::now()));
            }
            anyhow::Ok(committed)
        });
    }
    let mut committed = HashMap::with_capacity(n);
    while let Some(joined) = writers.join_next().await {
        committed.extend(joined??);
    }
    let last_commit = committed.values().max().copied();
    let done = await_marks(marks, n, plan.grace).await;
    let marked = marks.take();
    shutdown.cancel();
    relay.await?;
    let delivered = fx.await_received(n, DEADLINE).await;
    let received = fx.received();
    fx.remove().await?;
    anyhow::ensure!(
        done >= n,
        "only {done} of {n} rows marked within the grace period"
    );
    let first_commit = committed.values().min().copied().context("no commits")?;
    let latency: Vec<f64> = marked
        .iter()
        .filter_map(|(id, at)| committed.get(id).map(|c| ms(*at - *c)))
        .collect();
    let last_mark = marked.iter().map(|(_, at)| *at).max().context("no marks")?;
    let delivered_latency = delivered_since(&committed, &received);
    let span = last_commit.map_or(0.0, |last| (last - first_commit).as_secs_f64());
    Ok(Run {
        system: "relay",
        phase: "half",
        repetition,
        rate: Some(rate),
        messages: n,
        per_sec: n as f64 / (last_mark - first_commit).as_secs_f64(),
        p50_ms: percentile(&latency, 0.50),
        p99_ms: percentile(&latency, 0.99),
        max_ms: percentile(&latency, 1.0),
        delivered_p50_ms: percentile(&delivered_latency, 0.50),
        delivered_p99_ms: percentile(&delivered_latency, 0.99),
        delivered,
        committed_per_sec: Some((n.saturating_sub(1)) as f64 / span.max(f64::MIN_POSITIVE)),
        error: check_delivered(delivered, n),
    })
}

/// Half load through the raw publisher: the same arrivals, published as
/// they come, up to 100 per batch, each batch's confirms awaited.
async fn raw_half(plan: &Plan, repetition: usize, rate: f64) -> anyhow::Result<Run> {
    let fx = Fixture::new(1).await?;
    let n = (rate * plan.half_step.as_secs_f64()).round().max(1.0) as usize;
    let ns = fx.broker.namespace().clone();
    let messages: Vec<Outgoing> = (0..n).map(|_| message(&ns)).collect();
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let start = Instant::now() + Duration::from_millis(50);
    let arrival = |i: usize| start + Duration::from_secs_f64(i as f64 / rate);
    let mut latency = Vec::with_capacity(n);
    let mut arrived = HashMap::with_capacity(n);
    let mut i = 0;
    while i < n {
        tokio::time::sleep_until(arrival(i)).await;
        let now = Instant::now();
        let mut end = i + 1;
        while end < n && end - i < BATCH && arrival(end) <= now {
            end += 1;
        }
        let batch = &messages[i..end];
        let confirmed = publish_batch(&channel, batch).await?;
        for (k, (m, at)) in batch.iter().zip(&confirmed).enumerate() {
            let intended = arrival(i + k).into_std();
            arrived.insert(m.envelope.message_id, intended);
            latency.push(ms(at.saturating_duration_since(intended)));
        }
        i = end;
    }
    let elapsed = (Instant::now() - start).as_secs_f64();
    let _ = connection.close(200, "done".into()).await;
    let delivered = fx.await_received(n, DEADLINE).await;
    let received = fx.received();
    fx.remove().await?;
    let delivered_latency = delivered_since(&arrived, &received);
    Ok(Run {
        system: "raw",
        phase: "half",
        repetition,
        rate: Some(rate),
        messages: n,
        per_sec: n as f64 / elapsed,
        p50_ms: percentile(&latency, 0.50),
        p99_ms: percentile(&latency, 0.99),
        max_ms: percentile(&latency, 1.0),
        delivered_p50_ms: percentile(&delivered_latency, 0.50),
        delivered_p99_ms: percentile(&delivered_latency, 0.99),
        delivered,
        committed_per_sec: None,
        error: check_delivered(delivered, n),
    })
}

/// Waits until the relay holds its `LISTEN` (its first round is over).
async fn await_listening(pool: &PgPool) -> anyhow::Result<()> {
    signalbox_testkit::probe::until("the relay listening", DEADLINE, || async {
        let listening: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE datname = current_database() AND query LIKE 'LISTEN%')",
        )
        .fetch_one(pool)
        .await?;
        Ok(if listening {
            Ok(())
        } else {
            Err("not yet".to_owned())
        })
    })
    .await
}

/// Waits until `n` rows are marked or `deadline` passed; how many are.
async fn await_marks(marks: &Marks, n: usize, deadline: Duration) -> usize {
    let until = Instant::now() + deadline;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        let have = marks.count();
        if have >= n || Instant::now() >= until {
            return have;
        }
        tick.tick().await;
    }
}

fn check_delivered(delivered: usize, expected: usize) -> Option<String> {
    (delivered < expected).then(|| format!("the consumer received {delivered} of {expected}"))
}

fn delivered_since(
    from: &HashMap<Uuid, std::time::Instant>,
    received: &HashMap<Uuid, std::time::Instant>,
) -> Vec<f64> {
    received
        .iter()
        .filter_map(|(id, at)| from.get(id).map(|f| ms(at.saturating_duration_since(*f))))
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile (nearest rank) of `values`; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The median (the mean of the middle two of an even count); NaN when empty.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
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

/// Medians per system over the runs that did not fail.
pub fn figures(plan: &Plan, runs: &[Run]) -> Vec<Figures> {
    ["relay", "raw"]
        .into_iter()
        .map(|system| {
            let of = |phase: &'static str| {
                runs.iter()
                    .filter(move |r| r.system == system && r.phase == phase && r.error.is_none())
            };
            Figures {
                system,
                highest_per_sec: median(of("highest").map(|r| r.per_sec)),
                highest_p99_ms: median(of("highest").map(|r| r.p99_ms)),
                half_rate: median(of("half").filter_map(|r| r.rate)),
                half_p50_ms: median(of("half").map(|r| r.p50_ms)),
                half_p99_ms: median(of("half").map(|r| r.p99_ms)),
                half_delivered_p99_ms: median(of("half").map(|r| r.delivered_p99_ms)),
                failed: runs
                    .iter()
                    .filter(|r| r.system == system && r.error.is_some())
                    .count(),
                runs: runs
                    .iter()
                    .filter(|r| r.system == system)
                    .count()
                    .max(plan.repetitions),
            }
        })
        .collect()
}

/// The generated section of `docs/benchmarks.md` (between
/// `<!-- relay:begin -->` and `<!-- relay:end -->`).
pub fn markdown(plan: &Plan, figures: &[Figures], runs: &[Run], header: &str) -> String {
    use std::fmt::Write as _;
    let (begin, end) = crate::report::markers("relay");
    let mut out = String::new();
    let _ = writeln!(out, "{begin}\n{header}\n");
    let _ = writeln!(
        out,
        "Medians of {} repetition(s); {} rows per highest-rate run, {} s at half load with {} writer(s), batches of {BATCH}:\n",
        plan.repetitions,
        plan.rows,
        plan.half_step.as_secs_f64(),
        plan.writers
    );
    let _ = writeln!(
        out,
        "| system | highest msgs/s | half load msgs/s | p50 ms at half | p99 ms at half | p99 ms to the consumer at half | failed runs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for f in figures {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}/{} |",
            match f.system {
                "relay" => "relay (commit → confirmed and marked)",
                _ => "raw lapin (arrival → confirm)",
            },
            fmt(f.highest_per_sec),
            fmt(f.half_rate),
            fmt(f.half_p50_ms),
            fmt(f.half_p99_ms),
            fmt(f.half_delivered_p99_ms),
            f.failed,
            f.runs
        );
    }
    if let [relay, raw] = figures {
        let _ = writeln!(
            out,
            "\nrelay ÷ raw: throughput **{:.2}** (goal ≥ 0.60); relay p99 commit → confirmed and marked at half load **{} ms** (goal ≤ 50 ms).",
            relay.highest_per_sec / raw.highest_per_sec,
            fmt(relay.half_p99_ms)
        );
    }
    let _ = writeln!(
        out,
        "\n| run | system | phase | msgs | msgs/s | p50 ms | p99 ms | max ms | error |"
    );
    let _ = writeln!(out, "|---:|---|---|---:|---:|---:|---:|---:|---|");
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.repetition + 1,
            r.system,
            r.phase,
            r.messages,
            fmt(r.per_sec),
            fmt(r.p50_ms),
            fmt(r.p99_ms),
            fmt(r.max_ms),
            r.error.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "{end}");
    out
}

fn fmt(value: f64) -> String {
    if !value.is_finite() {
        "–".to_owned()
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_medians_average_the_middle_two() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert_eq!(median([f64::NAN, 1.0].into_iter()), 1.0);
    }
}
