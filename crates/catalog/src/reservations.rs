//! The catalog's side of the order saga: handling stock commands.
//!
//! Two commands, two styles of point-to-point messaging:
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
//!
//! Each command is handled in one transaction that (1) claims the message id
//! in `processed_messages`, (2) changes stock, and (3) for a reservation,
//! writes the reply into the outbox. The consumer loop acks only after the
//! commit. A redelivered command therefore finds its claim and does nothing,
//! and a reply is never sent for a reservation that did not commit.
//!
//! Both commands arrive on shard queues keyed by order id, one active
//! consumer per shard, so one order's commands are handled in the order the
//! saga sent them (see `signalbox_messaging::sharding`).

use signalbox_messages::{
    catalog::{ReleaseStock, ReservationOutcome, ReserveStock, ReserveStockReply},
    decode, Envelope, Message,
};
use signalbox_messaging::{outbox, processed, HandleError, Handler, Incoming, Outgoing};
use sqlx::{PgConnection, PgPool};

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
            // One-way: no reply is written, whatever the envelope says.
            ReleaseStock::TYPE => {
                let command: ReleaseStock = decode(&message.envelope, &message.body)?;
                let released = repo::release(&mut tx, command.order_id).await?;
                tracing::info!(order_id = %command.order_id, released, "stock release");
            }
            other => return Err(HandleError::Reject(format!("unknown command `{other}`"))),
        }
        tx.commit().await?;
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
