//! Keeping the messaging tables small.
//!
//! Published outbox rows are only needed for inspection, and a processed
//! message id only while a duplicate of it can still arrive. Both are purged
//! after a retention period; the processed-messages retention must exceed the
//! longest time a message can stay in flight (retries, a long broker outage),
//! or a very late duplicate would be handled again.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Retention {
    /// How long published outbox rows are kept.
    pub outbox: Duration,
    /// How long processed message ids are remembered.
    pub processed: Duration,
    /// How often the purge runs.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            outbox: Duration::from_secs(24 * 3600),
            processed: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(600),
        }
    }
}

/// Purged row counts of one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub outbox: u64,
    pub processed: u64,
}

/// Deletes what is past retention, once.
pub async fn purge(pool: &PgPool, retention: &Retention) -> Result<Purged, sqlx::Error> {
    let outbox = sqlx::query(
        "DELETE FROM outbox
         WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.outbox.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    let processed = sqlx::query(
        "DELETE FROM processed_messages WHERE processed_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.processed.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(Purged { outbox, processed })
}

/// Purges every `interval` until shutdown.
pub async fn run(pool: PgPool, retention: Retention, shutdown: CancellationToken) {
    loop {
        match purge(&pool, &retention).await {
            Ok(purged) if purged.outbox + purged.processed > 0 => {
                tracing::info!(
                    outbox = purged.outbox,
                    processed = purged.processed,
                    "purged messaging tables"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "messaging purge failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(retention.interval) => {}
        }
    }
}
