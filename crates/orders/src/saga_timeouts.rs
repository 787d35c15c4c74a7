//! The saga's deadline: an order does not stay PENDING forever.
//!
//! The saga sends `catalog.reserve_stock` and waits for the reply on
//! `orders.replies`. Usually it comes within milliseconds; but catalog may be
//! down, its queue may be backed up, the command may sit in a dead-letter
//! queue. A user should not watch a spinner for ever, so the saga has a
//! business deadline: an order still PENDING `reservation_timeout_secs` after
//! it was placed is REJECTED with the reason [`TIMEOUT_REASON`], and
//! `order.rejected` goes out through the outbox, in the same transaction.
//!
//! ```text
//!  CreateOrder ──▶ PENDING ──reply in time──▶ APPROVED | REJECTED  (saga.rs)
//!                     │
//!                     └─deadline passed──▶ REJECTED, reservation_timed_out  (here)
//!                                              │ late reply:
//!                                              ├─ reserved ─▶ release_stock (compensation)
//!                                              └─ rejected ─▶ ignored
//! ```
//!
//! Unlike the [`Requester`](signalbox_messaging::Requester)'s deadline,
//! nothing waits in memory: the deadline is *data* (`created_at`), checked by
//! a sweeper that every orders instance runs every few seconds. The sweep
//! locks overdue rows with `FOR UPDATE SKIP LOCKED`, so instances share the
//! work without deciding an order twice, and the state check (`state =
//! 'PENDING'`) makes the rejection idempotent with the reply handler: whoever
//! locks the order first decides it, the other finds it decided.
//!
//! A timeout is not a "no" from catalog: the reservation may still happen
//! (the command is still on its way). So the rejection is marked
//! (`reservation_timed_out`), and the reply handler releases the stock of a
//! `reserved` reply that arrives for such an order (the compensating command
//! of the saga, the same one cancelling an approved order sends).

use std::time::Duration;

use signalbox_messages::{channels::Namespace, orders::OrderRejected, Envelope};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{config::SagaSettings, repo, saga};

/// The rejection reason of an order whose reservation had no reply in time.
pub const TIMEOUT_REASON: &str = "stock reservation timed out";

/// Most orders one sweep transaction rejects; a sweep repeats until fewer
/// were overdue, so a backlog is worked off in short transactions.
const BATCH: i64 = 100;

/// Rejects overdue PENDING orders every `interval` until shutdown.
pub struct DeadlineSweeper {
    pool: PgPool,
    ns: Namespace,
    /// How long an order may wait for its reservation reply.
    deadline: Duration,
    interval: Duration,
}

impl DeadlineSweeper {
    pub fn new(pool: PgPool, ns: Namespace, settings: &SagaSettings) -> Self {
        Self {
            pool,
            ns,
            deadline: Duration::from_secs(settings.reservation_timeout_secs),
            interval: Duration::from_millis(settings.sweep_interval_ms.max(1)),
        }
    }

    /// Sweeps until `shutdown`. A failed sweep (database down) is logged and
    /// tried again next round: overdue orders stay overdue, nothing is lost.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match sweep(&self.pool, &self.ns, self.deadline).await {
                Ok(0) => {}
                Ok(rejected) => tracing::info!(rejected, "overdue orders rejected"),
                Err(error) => tracing::warn!(%error, "deadline sweep failed; will retry"),
            }
            tokio::select! {
                // Stop between sweeps, never inside one.
                _ = shutdown.cancelled() => return,
                // The next round.
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

/// Rejects every order that has been PENDING for longer than `deadline`,
/// in batches, each batch one transaction. Returns how many it rejected.
///
/// Safe to run from several instances at once (`SKIP LOCKED`), and
/// idempotent: an order is rejected only while it is still PENDING.
#[tracing::instrument(skip_all, fields(deadline = ?deadline))]
pub async fn sweep(pool: &PgPool, ns: &Namespace, deadline: Duration) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let overdue = repo::lock_overdue(&mut tx, deadline, BATCH).await?;
        for order in &overdue {
            // The row is locked and was PENDING when locked: this update
            // cannot miss. (`None` would mean it was decided meanwhile.)
            let Some(row) = repo::reject_timed_out(&mut tx, order.id, TIMEOUT_REASON).await? else {
                continue;
            };
            // No message caused this one: the order id, the saga's
            // correlation id, ties it to the rest.
            let envelope = Envelope::new::<OrderRejected>().with_correlation_id(row.id.to_string());
            saga::announce_rejection(&mut tx, ns, &row, TIMEOUT_REASON.to_owned(), envelope)
                .await?;
            tracing::info!(order_id = %row.id, "order rejected: reservation timed out");
            total += 1;
        }
        tx.commit().await?;
        if (overdue.len() as i64) < BATCH {
            return Ok(total);
        }
    }
}
