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
//!     │ publish batch, await confirms
//!     └ UPDATE outbox SET published_at = now()
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
    sqlx::query(
        "INSERT INTO outbox (message_id, exchange, routing_key, envelope, payload)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(envelope.message_id)
    .bind(&message.exchange)
    .bind(&message.routing_key)
    .bind(Json(envelope))
    .bind(Json(payload))
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
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
    payload: Json<serde_json::Value>,
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

    /// Publishes batches until the outbox has no unpublished rows (or
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
                // The open channel at once, or a new one once the broker
                // is back.
                current = ConfirmedPublisher::reuse_or_open(publisher, &self.broker) => current?,
                // Shutdown wins over a broker that never returns.
                _ = shutdown.cancelled() => return Ok(()),
            };
            if self.publish_batch(current).await? < self.batch_size as usize {
                return Ok(());
            }
        }
    }

    /// One batch, in one transaction: take the lease, read the oldest
    /// unpublished rows, publish them, await every confirm, mark them. If
    /// anything fails the transaction rolls back and the rows are published
    /// again next time (consumers deduplicate).
    #[tracing::instrument(skip_all)]
    async fn publish_batch(&self, publisher: &ConfirmedPublisher) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LEASE)
            .fetch_one(&mut *tx)
            .await?;
        if !leader {
            return Ok(0); // another instance is publishing; it drains for us
        }
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT seq, exchange, routing_key, envelope, payload
             FROM outbox
             WHERE published_at IS NULL
             ORDER BY seq
             LIMIT $1",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }

        // One producer span per message, child of the context its row
        // carries (the operation that enqueued it); the published message
        // carries the producer span's context instead, so the consumer's
        // span hangs below this hop. The spans end when they are dropped,
        // after the batch's confirms.
        let (messages, _sends): (Vec<Outgoing>, Vec<tracing::Span>) = rows
            .iter()
            .map(|row| {
                let mut envelope = row.envelope.0.clone();
                let send = send_span(&row.exchange, &row.routing_key, &envelope);
                if let Some(traceparent) = trace_context::traceparent_of(&send) {
                    envelope.traceparent = Some(traceparent);
                }
                let message = Outgoing {
                    exchange: row.exchange.clone(),
                    routing_key: row.routing_key.clone(),
                    envelope,
                    payload: serde_json::to_vec(&row.payload.0).expect("JSON values serialize"),
                };
                (message, send)
            })
            .unzip();
        metrics::counter!("outbox_relay_published_total").increment(messages.len() as u64);
        publisher.publish_all(&messages).await?;
        metrics::counter!("outbox_relay_confirmed_total").increment(messages.len() as u64);

        let seqs: Vec<i64> = rows.iter().map(|row| row.seq).collect();
        sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(count = rows.len(), "outbox batch published");
        Ok(rows.len())
    }
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
