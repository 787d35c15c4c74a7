//! The transactional outbox and its relay.
//!
//! The problem: a service must change its database *and* publish a message.
//! Doing the two separately loses messages (crash after the commit) or
//! publishes lies (crash after the publish, before the commit). There is no
//! distributed transaction between PostgreSQL and RabbitMQ.
//!
//! The pattern: write the message into an `outbox` table in the *same*
//! transaction as the business change ([`enqueue`]). A separate task, the
//! [`OutboxRelay`], reads committed rows in order, publishes them with
//! publisher confirms, and marks them published. A crash between publish and
//! mark publishes the row again later: consumers deduplicate by `message_id`.
//!
//! ```text
//!   handler ──tx──▶ orders + outbox rows ──commit──▶ NOTIFY outbox
//!                                                     │
//!   relay ◀──────────────── wakes ────────────────────┘
//!     │ take the lease (advisory lock), SELECT oldest unpublished rows
//!     │ publish batch, await confirms   (meanwhile: mark the batch before,
//!     │                                  read the batch after)
//!     └ UPDATE outbox SET published_at = now(); COMMIT
//! ```

use std::{sync::Arc, time::Duration};

use signalbox_messages::Envelope;
use sqlx::{postgres::PgListener, types::Json, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::{
    chain::Chain,
    publisher::{ConfirmedPublisher, Outgoing, PublishError},
    trace_context, Broker,
};

/// The PostgreSQL notification channel a commit with outbox rows signals on.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// Writes `message` into the outbox as part of the caller's transaction, and
/// asks PostgreSQL to wake the relay when that transaction commits
/// (notifications are delivered on commit, and dropped on rollback).
///
/// The row's envelope carries the current span's trace context
/// (`traceparent`, see [`crate::trace_context`]): the message is published
/// later, by another task, perhaps by another instance, and continues the
/// trace of the operation that wrote it.
pub async fn enqueue(conn: &mut PgConnection, message: &Outgoing) -> Result<(), sqlx::Error> {
    let payload: serde_json::Value =
        serde_json::from_slice(&message.payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // The caller's context, taken before the insert's own span is entered.
    let mut envelope = message.envelope.clone();
    trace_context::stamp(&mut envelope);
    insert(conn, message, &envelope, payload).await
}

#[tracing::instrument(
    name = "outbox insert",
    skip_all,
    fields(
        otel.name = "INSERT outbox",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "outbox",
        messaging.destination.name = %message.exchange,
        messaging.message.id = %envelope.message_id,
    )
)]
async fn insert(
    conn: &mut PgConnection,
    message: &Outgoing,
    envelope: &Envelope,
    payload: serde_json::Value,
) -> Result<(), sqlx::Error> {
    // The row and the notification in one statement: one round trip, not
    // two, inside a transaction that may be holding locks (catalog's
    // reservation holds its products' rows until the commit).
    sqlx::query(
        "WITH written AS (
             INSERT INTO outbox (message_id, exchange, routing_key, envelope, payload)
             VALUES ($1, $2, $3, $4, $5)
         )
         SELECT pg_notify($6, '')",
    )
    .bind(envelope.message_id)
    .bind(&message.exchange)
    .bind(&message.routing_key)
    .bind(Json(envelope))
    .bind(Json(payload))
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

/// Key of the transaction-scoped advisory lock that makes one relay per
/// database the publisher of a batch (any constant; it names the lease).
const RELAY_LEASE: i64 = 0x5167_6e61_6c62_6f78; // "Signalbox"

/// Publishes committed outbox rows, oldest first.
///
/// Several instances of a service may run a relay each. A batch is published
/// only while holding a transaction-scoped advisory lock (a lease): the
/// others skip that round instead of publishing rows out of order. So the
/// outbox's order (and with it the order of each aggregate's messages) is the
/// order on the broker, whichever instance publishes.
pub struct OutboxRelay {
    pool: PgPool,
    broker: Arc<Broker>,
    batch_size: i64,
    poll_interval: Duration,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    seq: i64,
    exchange: String,
    routing_key: String,
    envelope: Json<Envelope>,
    /// The JSON body as PostgreSQL prints it, sent as it is: parsing it only
    /// to serialize it again would cost the relay per message and could
    /// only make a number less exact.
    payload: String,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, broker: Arc<Broker>) -> Self {
        Self {
            pool,
            broker,
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Runs until `shutdown` is cancelled. Failures (broker or database gone)
    /// are logged and retried on the next wake-up: unpublished rows simply
    /// stay in the table, so nothing is lost while a dependency is down.
    pub async fn run(self, shutdown: CancellationToken) {
        // The listener is a dedicated connection subscribed to NOTIFY_CHANNEL.
        let mut listener = match self.listen().await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "outbox listen failed; polling only");
                None
            }
        };
        // The confirm-mode channel of the current broker session; dropped
        // after any publish failure and opened again on the next round.
        let mut publisher: Option<ConfirmedPublisher> = None;
        loop {
            if let Err(error) = self.drain(&mut publisher, &shutdown).await {
                metrics::counter!("outbox_relay_failures_total").increment(1);
                tracing::warn!(error = %Chain(&error), "outbox relay failed; will retry");
                publisher = None;
            }
            // What is left behind, for `/metrics`: a growing backlog or an
            // old oldest row means the relay cannot keep up or publish.
            if let Err(error) = self.measure_backlog().await {
                tracing::debug!(%error, "outbox backlog not measured");
            }
            tokio::select! {
                // Stop between batches, never in the middle of one.
                _ = shutdown.cancelled() => {
                    if let Some(publisher) = publisher {
                        publisher.close().await;
                    }
                    return;
                }
                // A transaction that wrote outbox rows committed: publish now.
                notified = recv(&mut listener) => {
                    if let Err(error) = notified {
                        tracing::debug!(%error, "outbox listener interrupted");
                    }
                }
                // Poll as well: a notification sent while the listener was
                // reconnecting is lost, and the broker may have come back.
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    /// Sets `outbox_rows_waiting` and `outbox_oldest_waiting_age_seconds`
    /// (one query on the index of unpublished rows).
    async fn measure_backlog(&self) -> Result<(), sqlx::Error> {
        let (waiting, oldest): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*),
                    EXTRACT(EPOCH FROM now() - min(created_at))::float8
             FROM outbox
             WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        metrics::gauge!("outbox_rows_waiting").set(waiting as f64);
        metrics::gauge!("outbox_oldest_waiting_age_seconds").set(oldest.unwrap_or(0.0));
        Ok(())
    }

    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok(listener)
    }

    /// Publishes rounds until the outbox has no unpublished rows (or
    /// another relay holds the lease).
    async fn drain(
        &self,
        publisher: &mut Option<ConfirmedPublisher>,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        loop {
            // Open the channel before the transaction: waiting for a broker
            // reconnect must not hold a database transaction open.
            let current = tokio::select! {
                biased;
                // Shutdown first, so the relay stops between rounds even
                // with rows still waiting (they stay in the table for the
                // next start), and while the broker is away. Were it
                // second, a backlog would drain before it is seen: an
                // open channel is ready at once.
                _ = shutdown.cancelled() => return Ok(()),
                // The open channel at once, or a new one once the broker
                // is back.
                current = ConfirmedPublisher::reuse_or_open(publisher, &self.broker) => current?,
            };
            if !self.publish_round(current).await? {
                return Ok(());
            }
        }
    }

    /// One round, in one transaction: take the lease, then publish batches
    /// of the oldest unpublished rows, each batch's confirms awaited before
    /// the next is sent, and mark them; commit. `true` when the round
    /// stopped at [`BATCHES_PER_ROUND`] with rows perhaps still waiting.
    ///
    /// The database's work is done *while* a batch is on its way to the
    /// broker, not between batches:
    ///
    /// ```text
    ///   database:  read 1 │ read 2                │ mark 1, read 3        │ mark 2, read 4
    ///   broker:           │ publish 1 … confirms  │ publish 2 … confirms  │ publish 3 …
    /// ```
    ///
    /// A batch is read ahead (`seq` after the last one read) while the one
    /// before it is published, and a batch is marked only after its confirms,
    /// so nothing is marked that the broker does not have, and batches reach
    /// the broker in outbox order. A row that commits with a `seq` lower than
    /// one read ahead (its transaction was slower) is left to the next round,
    /// which reads from the oldest unpublished row again. If anything fails,
    /// the transaction rolls back and every row of the round is published
    /// again next time (consumers deduplicate).
    #[tracing::instrument(skip_all)]
    async fn publish_round(&self, publisher: &ConfirmedPublisher) -> Result<bool, RelayError> {
        let mut tx = self.pool.begin().await?;
        // This transaction only marks rows as published, so its commit need
        // not wait for the WAL to reach the disk (`synchronous_commit` off,
        // for this transaction alone). If the database crashes before the
        // WAL is flushed, the marks are lost and the rows are published
        // again: a duplicate, which consumers deduplicate, never a loss,
        // since the messages were confirmed before the marks were written.
        let leader: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock($1)
             FROM set_config('synchronous_commit', 'off', true)",
        )
        .bind(RELAY_LEASE)
        .fetch_one(&mut *tx)
        .await?;
        if !leader {
            return Ok(false); // another instance is publishing; it drains for us
        }

        // The spans of every message of the round: they end when dropped,
        // after the commit that makes their marks visible.
        let mut sends: Vec<tracing::Span> = Vec::new();
        // Published and confirmed, not yet marked.
        let mut confirmed: Vec<i64> = Vec::new();
        let mut next = self.read(&mut tx, None).await?;
        let mut batches = 0;
        while !next.is_empty() && batches < BATCHES_PER_ROUND {
            batches += 1;
            let full = next.len() as i64 == self.batch_size;
            let (seqs, messages) = prepare(std::mem::take(&mut next), &mut sends);
            let last = seqs.last().copied();
            metrics::counter!("outbox_relay_published_total").increment(messages.len() as u64);
            // Both arms at once: the broker takes this batch while the
            // database marks the batch before it and, if this one was full
            // and the round goes on, reads the one after it.
            let (sent, read) = tokio::join!(publisher.publish_all(&messages), async {
                mark(&mut tx, &std::mem::take(&mut confirmed)).await?;
                if full && batches < BATCHES_PER_ROUND {
                    self.read(&mut tx, last).await
                } else {
                    Ok(Vec::new())
                }
            });
            sent?;
            metrics::counter!("outbox_relay_confirmed_total").increment(messages.len() as u64);
            confirmed = seqs;
            next = read?;
        }
        mark(&mut tx, &confirmed).await?;
        tx.commit().await?;
        tracing::debug!(count = sends.len(), batches, "outbox round published");
        Ok(batches == BATCHES_PER_ROUND)
    }

    /// The next batch of unpublished rows, oldest first; only those after
    /// `after` when reading ahead.
    async fn read(
        &self,
        tx: &mut PgConnection,
        after: Option<i64>,
    ) -> Result<Vec<OutboxRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT seq, exchange, routing_key, envelope, payload::text AS payload
             FROM outbox
             WHERE published_at IS NULL AND ($1::bigint IS NULL OR seq > $1)
             ORDER BY seq
             LIMIT $2",
        )
        .bind(after)
        .bind(self.batch_size)
        .fetch_all(tx)
        .await
    }
}

/// Batches one round publishes before it commits its marks: a bound on how
/// long marks stay invisible to others, and on how much a failure sends
/// again.
const BATCHES_PER_ROUND: usize = 10;

/// The rows' messages, ready to publish, and their `seq`s.
///
/// One producer span per message, child of the context its row carries (the
/// operation that enqueued it); the published message carries the producer
/// span's context instead, so the consumer's span hangs below this hop. The
/// spans go to `sends`, to end after the commit.
fn prepare(rows: Vec<OutboxRow>, sends: &mut Vec<tracing::Span>) -> (Vec<i64>, Vec<Outgoing>) {
    rows.into_iter()
        .map(|row| {
            let mut envelope = row.envelope.0;
            let send = send_span(&row.exchange, &row.routing_key, &envelope);
            if let Some(traceparent) = trace_context::traceparent_of(&send) {
                envelope.traceparent = Some(traceparent);
            }
            sends.push(send);
            let message = Outgoing {
                exchange: row.exchange,
                routing_key: row.routing_key,
                envelope,
                payload: row.payload.into_bytes(),
            };
            (row.seq, message)
        })
        .unzip()
}

/// Marks confirmed rows as published (in the round's transaction).
async fn mark(tx: &mut PgConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
        .bind(seqs)
        .execute(tx)
        .await?;
    Ok(())
}

/// The producer span of one relayed message (OpenTelemetry's messaging
/// conventions: `send <destination>`, kind producer).
fn send_span(exchange: &str, routing_key: &str, envelope: &Envelope) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let destination = if exchange.is_empty() {
        routing_key // the default exchange routes by queue name
    } else {
        exchange
    };
    let span = tracing::info_span!(
        parent: None,
        "outbox send",
        otel.name = format!("send {destination}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = destination,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = %envelope.message_id,
        messaging.message.conversation_id = envelope.correlation_id.as_deref().unwrap_or_default(),
    );
    // Before the span starts: its parent is the row's context.
    let _ = span.set_parent(trace_context::context_of(envelope));
    span
}

/// Waits for the next notification, or forever when there is no listener.
///
/// Every commit with outbox rows notifies, and one round publishes every
/// row committed before it starts: the notifications already buffered
/// behind the first are dropped here, since the round that follows covers
/// their rows. Without this, a busy writer's N commits cost the relay N
/// rounds, most of them finding nothing (a lease, a SELECT and the backlog
/// query each), while the rows committed meanwhile wait behind them.
async fn recv(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => {
            listener.recv().await?;
            while listener.next_buffered().is_some() {}
            Ok(())
        }
        None => std::future::pending().await,
    }
}
