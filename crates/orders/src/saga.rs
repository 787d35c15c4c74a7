//! The order-approval saga, orders' side.
//!
//! An orchestrated saga of two steps, run by orders:
//!
//! ```text
//! CreateOrder ──tx──▶ order PENDING + outbox[order.created, catalog.reserve_stock]
//!                                      │ relay
//!                                      ▼
//!                     catalog reserves (or not) ──tx──▶ outbox[reply]
//!                                      │ relay, to `orders.replies`
//!                                      ▼
//! ReplyHandler  ──tx──▶ order APPROVED | REJECTED + outbox[order.approved | order.rejected]
//! ```
//!
//! Every arrow is at-least-once; every handler is idempotent (a
//! `processed_messages` claim plus a state check), so duplicates change
//! nothing. The command and the events are built here so the transaction that
//! changes the order is the one that writes them.

use signalbox_messages::{
    catalog::{ReleaseStock, ReservationOutcome, ReserveStock, ReserveStockReply},
    channels::Namespace,
    decode,
    orders::{LineItem, OrderApproved, OrderCancelled, OrderCreated, OrderRejected},
    Envelope,
};
use signalbox_messaging::{outbox, processed, HandleError, Handler, Incoming, Outgoing};
use sqlx::{PgConnection, PgPool};

use crate::{
    domain::OrderState,
    repo::{self, Order, OrderRow},
};

/// The consumer name under which processed replies are recorded.
pub const CONSUMER: &str = "orders.replies";

/// Writes the first step's messages: the event that announces the order and
/// the command that asks catalog to reserve its stock, replying to our reply
/// channel with the order id as correlation id.
pub async fn start(
    conn: &mut PgConnection,
    ns: &Namespace,
    order: &Order,
) -> Result<(), sqlx::Error> {
    let row = &order.row;
    let items: Vec<LineItem> = order
        .items
        .iter()
        .map(|item| LineItem {
            product_id: item.product_id,
            quantity: item.quantity,
        })
        .collect();

    let created = OrderCreated {
        order_id: row.id,
        user_id: row.user_id.clone(),
        state: OrderState::Pending.as_str().to_owned(),
        items: items.clone(),
        total_cents: row.total_cents,
        currency: row.currency.clone(),
    };
    let envelope = Envelope::new::<OrderCreated>()
        .with_correlation_id(row.id.to_string())
        .with_user_id(&row.user_id);
    let cause = envelope.clone();
    outbox::enqueue(conn, &Outgoing::event(ns, envelope, &created)).await?;

    let command = ReserveStock {
        order_id: row.id,
        items,
    };
    let envelope =
        Envelope::caused_by::<ReserveStock>(&cause).with_reply_to(ns.orders_replies_queue());
    outbox::enqueue(conn, &Outgoing::command(ns, envelope, &command)).await?;
    Ok(())
}

/// Cancels an order and, when stock may be held for it, asks catalog to
/// release it (the saga's compensating command).
pub async fn cancel(
    conn: &mut PgConnection,
    ns: &Namespace,
    row: &OrderRow,
) -> Result<OrderRow, sqlx::Error> {
    let was = row.state();
    let row = repo::set_state(conn, row.id, OrderState::Cancelled, None).await?;
    let envelope = Envelope::new::<OrderCancelled>()
        .with_correlation_id(row.id.to_string())
        .with_user_id(&row.user_id);
    let cause = envelope.clone();
    let event = OrderCancelled {
        order_id: row.id,
        user_id: row.user_id.clone(),
        state: OrderState::Cancelled.as_str().to_owned(),
    };
    outbox::enqueue(conn, &Outgoing::event(ns, envelope, &event)).await?;
    // A pending order's reservation may be in flight; the reply handler
    // releases it when it arrives. An approved order holds stock now.
    if was == OrderState::Approved {
        release(conn, ns, &cause, row.id).await?;
    }
    Ok(row)
}

async fn release(
    conn: &mut PgConnection,
    ns: &Namespace,
    cause: &Envelope,
    order_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    let envelope = Envelope::caused_by::<ReleaseStock>(cause);
    outbox::enqueue(
        conn,
        &Outgoing::command(ns, envelope, &ReleaseStock { order_id }),
    )
    .await
}

/// Consumes `orders.replies`: catalog's answers to `reserve_stock`.
pub struct ReplyHandler {
    pool: PgPool,
    ns: Namespace,
}

impl ReplyHandler {
    pub fn new(pool: PgPool, ns: Namespace) -> Self {
        Self { pool, ns }
    }
}

impl Handler for ReplyHandler {
    #[tracing::instrument(skip_all, fields(message_id = %message.envelope.message_id, correlation_id = ?message.envelope.correlation_id))]
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let reply: ReserveStockReply = decode(&message.envelope, &message.body)?;
        let mut tx = self.pool.begin().await?;
        if !processed::claim(&mut tx, CONSUMER, message.envelope.message_id).await? {
            tracing::info!("duplicate reply; already handled");
            return Ok(());
        }
        let Some(order) = repo::lock_order(&mut tx, reply.order_id).await? else {
            // Not ours (or a foreign namespace's): nothing to correlate with.
            return Err(HandleError::Reject(format!(
                "unknown order {}",
                reply.order_id
            )));
        };

        match (order.state(), reply.outcome) {
            (OrderState::Pending, ReservationOutcome::Reserved) => {
                let row = repo::set_state(&mut tx, order.id, OrderState::Approved, None).await?;
                let event = OrderApproved {
                    order_id: row.id,
                    user_id: row.user_id.clone(),
                    state: OrderState::Approved.as_str().to_owned(),
                };
                let envelope = Envelope::caused_by::<OrderApproved>(&message.envelope)
                    .with_user_id(&row.user_id);
                outbox::enqueue(&mut tx, &Outgoing::event(&self.ns, envelope, &event)).await?;
                tracing::info!(order_id = %row.id, "order approved");
            }
            (OrderState::Pending, ReservationOutcome::Rejected { reason }) => {
                let row =
                    repo::set_state(&mut tx, order.id, OrderState::Rejected, Some(&reason)).await?;
                let event = OrderRejected {
                    order_id: row.id,
                    user_id: row.user_id.clone(),
                    state: OrderState::Rejected.as_str().to_owned(),
                    reason,
                };
                let envelope = Envelope::caused_by::<OrderRejected>(&message.envelope)
                    .with_user_id(&row.user_id);
                outbox::enqueue(&mut tx, &Outgoing::event(&self.ns, envelope, &event)).await?;
                tracing::info!(order_id = %row.id, "order rejected");
            }
            // Cancelled while the reservation was in flight: give the stock back.
            (OrderState::Cancelled, ReservationOutcome::Reserved) => {
                release(&mut tx, &self.ns, &message.envelope, order.id).await?;
                tracing::info!(order_id = %order.id, "late reservation released");
            }
            (state, outcome) => {
                tracing::info!(order_id = %order.id, state = state.as_str(), ?outcome, "reply after decision; ignored");
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
