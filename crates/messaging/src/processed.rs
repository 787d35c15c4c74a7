//! The idempotent consumer's memory: the `processed_messages` table.
//!
//! At-least-once delivery means a consumer *will* see some messages twice: the
//! relay republishes after a crash, the broker redelivers when an ack was lost.
//! The handler therefore starts its transaction by claiming the message id
//! for its consumer name. The primary key `(consumer, message_id)` makes the
//! claim atomic: a second delivery, even a concurrent one, cannot claim it
//! again, and the handler skips the effect and just acks.

use sqlx::PgConnection;
use uuid::Uuid;

/// Claims `message_id` for `consumer` inside the caller's transaction.
///
/// Returns `false` when it was processed before: the caller must then do
/// nothing but commit and ack. The claim commits (or rolls back) with the
/// handler's effects, so "processed" and "effect happened" never disagree.
pub async fn claim(
    conn: &mut PgConnection,
    consumer: &str,
    message_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO processed_messages (consumer, message_id)
         VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(message_id)
    .execute(conn)
    .await?;
    let claimed = inserted.rows_affected() == 1;
    if !claimed {
        metrics::counter!("messaging_consumer_duplicates_total", "consumer" => consumer.to_owned())
            .increment(1);
    }
    Ok(claimed)
}
