//! The catalog's side of the order saga: handling stock commands.
//!
//! Three commands, two styles of point-to-point messaging:
//!
//! - `catalog.reserve_stock` is **request-reply**: the saga cannot go on
//!   without the answer, so the command names a `reply_to` queue and catalog
//!   answers there (through its outbox) with `catalog.reserve_stock.reply`.
//! - `catalog.release_stock` is a **one-way notification** (a command that
//!   expects no reply): the saga's compensation. The saga has already
//!   decided (the order is cancelled) and has nothing to wait for; catalog
//!   just gives the stock back. It sends no reply, even when the command
//!   carries a `reply_to`. Being one-way, it must be safe to receive twice,
//!   or before the reservation it undoes (see [`repo::release`]).
//! - `catalog.revise_stock` is **request-reply** again: an order's items
//!   changed, and catalog reserves what the revision adds and releases what
//!   it removes, all or nothing, answering `catalog.revise_stock.reply`. It
//!   carries the order's new items, not a difference: catalog computes the
//!   difference from what it holds, so the answer is right whatever it held.
//!
//! Each command is handled in one transaction that (1) claims the message id
//! in `processed_messages`, (2) changes stock, and (3) for a reservation or
//! a revision, writes the reply into the outbox. The consumer loop acks only after the
//! commit. A redelivered command therefore finds its claim and does nothing,
//! and a reply is never sent for a reservation that did not commit.
//!
//! Both commands arrive on shard queues keyed by order id, one active
//! consumer per shard, so one order's commands are handled in the order the
//! saga sent them (see `signalbox_messaging::sharding`).

use std::collections::BTreeMap;

use signalbox_messages::{
    catalog::{
        ReleaseStock, ReservationOutcome, ReserveStock, ReserveStockReply, ReviseStock,
        ReviseStockReply,
    },
    decode,
    orders::LineItem,
    Envelope, Message,
};
use signalbox_messaging::{outbox, processed, HandleError, Handler, Incoming, Outgoing};
use signalbox_platform::faults;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{domain, repo};

/// The consumer name under which processed message ids are recorded.
pub const CONSUMER: &str = "catalog.commands";

pub struct CommandHandler {
    pool: PgPool,
}

impl CommandHandler {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl Handler for CommandHandler {
    #[tracing::instrument(skip_all, fields(message_id = %message.envelope.message_id, message_type = %message.envelope.message_type))]
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let mut tx = self.pool.begin().await?;
        if !processed::claim(&mut tx, CONSUMER, message.envelope.message_id).await? {
            tracing::info!("duplicate command; already handled");
            return Ok(());
        }
        match message.envelope.message_type.as_str() {
            ReserveStock::TYPE => {
                let command: ReserveStock = decode(&message.envelope, &message.body)?;
                reserve(&mut tx, &message.envelope, command).await?;
            }
            ReviseStock::TYPE => {
                let command: ReviseStock = decode(&message.envelope, &message.body)?;
                revise(&mut tx, &message.envelope, command).await?;
            }
            // One-way: no reply is written, whatever the envelope says.
            ReleaseStock::TYPE => {
                let command: ReleaseStock = decode(&message.envelope, &message.body)?;
                let released = repo::release(&mut tx, command.order_id).await?;
                tracing::info!(order_id = %command.order_id, released, "stock release");
            }
            other => return Err(HandleError::Reject(format!("unknown command `{other}`"))),
        }
        tx.commit().await?;
        // Test-only: where a crash test kills catalog (committed, not acked).
        faults::point(faults::points::CATALOG_COMMAND_COMMITTED);
        Ok(())
    }
}

async fn reserve(
    conn: &mut PgConnection,
    envelope: &Envelope,
    command: ReserveStock,
) -> Result<(), HandleError> {
    let reply_to = envelope
        .reply_to
        .as_deref()
        .ok_or_else(|| HandleError::Reject("reserve_stock without reply_to".to_owned()))?;

    let outcome = match repo::reservation_state(conn, command.order_id).await? {
        // A different message for an order already handled (the saga retried
        // with a new id): answer again, change nothing.
        Some(state) if state == "RESERVED" => ReservationOutcome::Reserved,
        Some(_) => ReservationOutcome::Rejected {
            reason: "the reservation was released".to_owned(),
        },
        None => {
            // From here to the commit the products' rows are locked, and
            // every other reservation of them waits: what follows is two
            // statements (the reservation, the reply) and the commit.
            let ids: Vec<_> = command.items.iter().map(|i| i.product_id).collect();
            let stock = repo::lock_stock(conn, &ids).await?;
            match domain::check_reservation(&command.items, &stock) {
                Ok(()) => {
                    repo::reserve(conn, command.order_id, &command.items).await?;
                    ReservationOutcome::Reserved
                }
                Err(reason) => ReservationOutcome::Rejected { reason },
            }
        }
    };
    tracing::info!(order_id = %command.order_id, ?outcome, "reservation decided");

    let reply = ReserveStockReply {
        order_id: command.order_id,
        outcome,
    };
    let envelope = Envelope::caused_by::<ReserveStockReply>(envelope);
    outbox::enqueue(conn, &Outgoing::reply(reply_to, envelope, &reply)).await?;
    Ok(())
}

async fn revise(
    conn: &mut PgConnection,
    envelope: &Envelope,
    command: ReviseStock,
) -> Result<(), HandleError> {
    let reply_to = envelope
        .reply_to
        .as_deref()
        .ok_or_else(|| HandleError::Reject("revise_stock without reply_to".to_owned()))?;

    // The reservation row is locked first, as a release locks it, so a
    // revision and a release of one order cannot interleave.
    let outcome = match repo::reservation_state(conn, command.order_id).await? {
        Some(state) if state == "RESERVED" => {
            let held = held_items(conn, command.order_id).await?;
            let wanted: BTreeMap<Uuid, i64> = command
                .items
                .iter()
                .map(|item| (item.product_id, item.quantity))
                .collect();
            let changes = differences(&held, &wanted);
            // Only what the revision adds needs stock; what it removes goes
            // back. Both kinds of rows are locked, in id order.
            let ids: Vec<Uuid> = changes.iter().map(|(id, _)| *id).collect();
            let stock = repo::lock_stock(conn, &ids).await?;
            let added: Vec<LineItem> = changes
                .iter()
                .filter(|(_, delta)| *delta > 0)
                .map(|(product_id, delta)| LineItem {
                    product_id: *product_id,
                    quantity: *delta,
                })
                .collect();
            // A revision that only removes needs no stock (and an empty
            // list is not a reservation `check_reservation` accepts).
            let checked = if added.is_empty() {
                Ok(())
            } else {
                domain::check_reservation(&added, &stock)
            };
            match checked {
                Ok(()) => {
                    apply_differences(conn, command.order_id, &changes, &wanted).await?;
                    ReservationOutcome::Reserved
                }
                Err(reason) => ReservationOutcome::Rejected { reason },
            }
        }
        Some(_) => ReservationOutcome::Rejected {
            reason: "the reservation was released".to_owned(),
        },
        None => ReservationOutcome::Rejected {
            reason: "the order holds no reservation".to_owned(),
        },
    };
    tracing::info!(order_id = %command.order_id, revision_id = %command.revision_id, ?outcome, "revision decided");

    let reply = ReviseStockReply {
        order_id: command.order_id,
        revision_id: command.revision_id,
        outcome,
    };
    let envelope = Envelope::caused_by::<ReviseStockReply>(envelope);
    outbox::enqueue(conn, &Outgoing::reply(reply_to, envelope, &reply)).await?;
    Ok(())
}

/// What catalog holds for `order_id`, per product.
async fn held_items(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<BTreeMap<Uuid, i64>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT product_id, quantity FROM reservation_items WHERE order_id = $1")
            .bind(order_id)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Per product, how many more units the revision wants than are held
/// (negative: fewer), for every product whose quantity changes, in id order.
fn differences(held: &BTreeMap<Uuid, i64>, wanted: &BTreeMap<Uuid, i64>) -> Vec<(Uuid, i64)> {
    let mut ids: Vec<Uuid> = held.keys().chain(wanted.keys()).copied().collect();
    ids.sort();
    ids.dedup();
    ids.into_iter()
        .map(|id| {
            let delta = wanted.get(&id).copied().unwrap_or(0) - held.get(&id).copied().unwrap_or(0);
            (id, delta)
        })
        .filter(|(_, delta)| *delta != 0)
        .collect()
}

/// Takes the added units out of stock, puts the removed ones back, and
/// makes the reservation's items the revised ones. The caller checked the
/// added units under [`repo::lock_stock`].
async fn apply_differences(
    conn: &mut PgConnection,
    order_id: Uuid,
    changes: &[(Uuid, i64)],
    wanted: &BTreeMap<Uuid, i64>,
) -> Result<(), sqlx::Error> {
    for (product_id, delta) in changes {
        sqlx::query("UPDATE products SET stock = stock - $2, updated_at = now() WHERE id = $1")
            .bind(product_id)
            .bind(delta)
            .execute(&mut *conn)
            .await?;
        match wanted.get(product_id) {
            Some(quantity) => {
                sqlx::query(
                    "INSERT INTO reservation_items (order_id, product_id, quantity)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (order_id, product_id) DO UPDATE SET quantity = EXCLUDED.quantity",
                )
                .bind(order_id)
                .bind(product_id)
                .bind(quantity)
                .execute(&mut *conn)
                .await?;
            }
            None => {
                sqlx::query(
                    "DELETE FROM reservation_items WHERE order_id = $1 AND product_id = $2",
                )
                .bind(order_id)
                .bind(product_id)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    sqlx::query("UPDATE reservations SET updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_reserves_what_it_adds_and_releases_what_it_removes() {
        let (kept, grown, dropped, added) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let held = BTreeMap::from([(kept, 2), (grown, 1), (dropped, 5)]);
        let wanted = BTreeMap::from([(kept, 2), (grown, 4), (added, 1)]);

        assert_eq!(
            differences(&held, &wanted),
            vec![(grown, 3), (dropped, -5), (added, 1)]
        );
    }
}
