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
//! A revision of a PENDING or APPROVED order is a step of its own, on the
//! same channels:
//!
//! ```text
//! ReviseOrder ──tx──▶ revision PENDING + outbox[order.revised, catalog.revise_stock]
//!                                      │ relay, on the order's shard
//!                                      ▼
//!                     catalog reserves / releases the difference ──tx──▶ outbox[reply]
//!                                      ▼
//! ReplyHandler ──tx──▶ order APPROVED with the new items + outbox[order.approved]
//!                   or order unchanged + outbox[order.revision_rejected {reason}]
//! ```
//!
//! While a revision waits for catalog the order takes no other change
//! (another revision, a cancellation): those are refused as conflicts
//! under the order's row lock, so a revision and a cancellation racing each
//! other have exactly one winner.
//!
//! Every arrow is at-least-once; every handler is idempotent (a
//! `processed_messages` claim plus a state check), so duplicates change
//! nothing. The command and the events are built here so the transaction that
//! changes the order is the one that writes them.

use signalbox_messages::{
    catalog::{
        ReleaseStock, ReservationOutcome, ReserveStock, ReserveStockReply, ReviseStock,
        ReviseStockReply,
    },
    channels::{commands, Namespace},
    decode,
    orders::{
        LineItem, OrderApproved, OrderCancelled, OrderCreated, OrderRejected, OrderRevised,
        OrderRevisionRejected,
    },
    Envelope, Message,
};
use signalbox_messaging::{outbox, processed, HandleError, Handler, Incoming, Outgoing, Shards};
use signalbox_platform::faults;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    domain::{OrderState, PricedItem},
    error::OrdersError,
    repo::{self, Order, OrderRow, RevisionRow},
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
    outbox::enqueue(conn, &to_catalog(ns, row.id, envelope, &command)).await?;
    Ok(())
}

/// A command to catalog, routed to the shard of its order.
///
/// Catalog's command channel is sharded by order id (see
/// `signalbox_messaging::sharding`): `reserve_stock` and `release_stock` of
/// one order share a shard queue, which one catalog instance at a time
/// consumes in order, so a release can never overtake the reservation it
/// undoes. The outbox relay publishes in commit order, so that order is the
/// order this saga wrote them in.
fn to_catalog<M: Message>(
    ns: &Namespace,
    order_id: Uuid,
    envelope: Envelope,
    payload: &M,
) -> Outgoing {
    let shards = Shards::new(commands::CATALOG_SHARDS);
    let routing_key = shards.routing_key(M::TYPE, order_id.to_string());
    Outgoing::command_to(ns, routing_key, envelope, payload)
}

/// Writes the revision step's messages for `row` (locked by the caller,
/// PENDING or APPROVED, with no revision in flight): the revision itself,
/// `order.revised` for the order's owner, and the command that asks catalog
/// to make the order's reservation match `items`, on the order's shard and
/// replying to our reply channel.
pub async fn revise(
    conn: &mut PgConnection,
    ns: &Namespace,
    row: &OrderRow,
    items: &[PricedItem],
    total_cents: i64,
) -> Result<Uuid, sqlx::Error> {
    let revision_id = Uuid::now_v7();
    repo::insert_revision(conn, revision_id, row.id, items, total_cents).await?;
    let lines: Vec<LineItem> = items
        .iter()
        .map(|item| LineItem {
            product_id: item.product_id,
            quantity: item.quantity,
        })
        .collect();
    let event = OrderRevised {
        order_id: row.id,
        user_id: row.user_id.clone(),
        state: row.state().as_str().to_owned(),
        revision_id,
        items: lines.clone(),
    };
    let envelope = Envelope::new::<OrderRevised>()
        .with_correlation_id(row.id.to_string())
        .with_user_id(&row.user_id);
    let cause = envelope.clone();
    outbox::enqueue(conn, &Outgoing::event(ns, envelope, &event)).await?;
    let command = ReviseStock {
        order_id: row.id,
        revision_id,
        items: lines,
    };
    let envelope =
        Envelope::caused_by::<ReviseStock>(&cause).with_reply_to(ns.orders_replies_queue());
    outbox::enqueue(conn, &to_catalog(ns, row.id, envelope, &command)).await?;
    Ok(revision_id)
}

/// Cancels an order (locked by the caller) and, when stock may be held for
/// it, asks catalog to release it (the saga's compensating command). An
/// order whose revision still waits for catalog is not cancelled: that is a
/// conflict, answered as such, and the revision's outcome decides first.
pub async fn cancel(
    conn: &mut PgConnection,
    ns: &Namespace,
    row: &OrderRow,
) -> Result<OrderRow, OrdersError> {
    if repo::pending_revision(conn, row.id).await?.is_some() {
        return Err(OrdersError::Conflict(format!(
            "order {} has a revision in progress; cancel it once that is decided",
            row.id
        )));
    }
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
    // One-way: catalog sends no reply to a release.
    let envelope = Envelope::caused_by::<ReleaseStock>(cause);
    outbox::enqueue(
        conn,
        &to_catalog(ns, order_id, envelope, &ReleaseStock { order_id }),
    )
    .await
}

/// Writes `order.rejected` for `row`, just rejected with `reason`. Both ways
/// a reservation fails end here: catalog's refusal (the reply handler) and
/// the saga's deadline (`saga_timeouts`). The event goes to the order's
/// owner (realtime routes it to `user:<id>`).
pub(crate) async fn announce_rejection(
    conn: &mut PgConnection,
    ns: &Namespace,
    row: &OrderRow,
    reason: String,
    envelope: Envelope,
) -> Result<(), sqlx::Error> {
    let event = OrderRejected {
        order_id: row.id,
        user_id: row.user_id.clone(),
        state: OrderState::Rejected.as_str().to_owned(),
        reason,
    };
    let envelope = envelope.with_user_id(&row.user_id);
    outbox::enqueue(conn, &Outgoing::event(ns, envelope, &event)).await
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
        if message.envelope.message_type == ReviseStockReply::TYPE {
            return self.handle_revision(message).await;
        }
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
                let envelope = Envelope::caused_by::<OrderRejected>(&message.envelope);
                announce_rejection(&mut tx, &self.ns, &row, reason, envelope).await?;
                tracing::info!(order_id = %row.id, "order rejected");
            }
            // Cancelled while the reservation was in flight: give the stock back.
            (OrderState::Cancelled, ReservationOutcome::Reserved) => {
                release(&mut tx, &self.ns, &message.envelope, order.id).await?;
                tracing::info!(order_id = %order.id, "late reservation released");
            }
            // Rejected by the saga's deadline (see `saga_timeouts`), and
            // catalog reserved after all: the same compensation. Only for a
            // timeout: an order catalog itself rejected holds no stock.
            (OrderState::Rejected, ReservationOutcome::Reserved) if order.reservation_timed_out => {
                release(&mut tx, &self.ns, &message.envelope, order.id).await?;
                tracing::info!(order_id = %order.id, "reservation after the deadline released");
            }
            (state, outcome) => {
                tracing::info!(order_id = %order.id, state = state.as_str(), ?outcome, "reply after decision; ignored");
            }
        }
        tx.commit().await?;
        // Test-only: where a crash test kills orders (committed, not acked,
        // the event not yet published by the relay).
        faults::point(faults::points::ORDERS_REPLY_COMMITTED);
        Ok(())
    }
}

impl ReplyHandler {
    /// Catalog's answer to a revision: the order takes the revised items
    /// and is APPROVED, or stays as it was and its owner learns why. The
    /// claim, the decision and the event commit together.
    async fn handle_revision(&self, message: Incoming) -> Result<(), HandleError> {
        let reply: ReviseStockReply = decode(&message.envelope, &message.body)?;
        let mut tx = self.pool.begin().await?;
        if !processed::claim(&mut tx, CONSUMER, message.envelope.message_id).await? {
            tracing::info!("duplicate revision reply; already handled");
            return Ok(());
        }
        // The order first, as every other change to it does: one lock order.
        let Some(order) = repo::lock_order(&mut tx, reply.order_id).await? else {
            return Err(HandleError::Reject(format!(
                "unknown order {}",
                reply.order_id
            )));
        };
        let revision = match repo::lock_revision(&mut tx, reply.revision_id).await? {
            Some(revision) if revision.order_id == order.id => revision,
            _ => {
                return Err(HandleError::Reject(format!(
                    "unknown revision {} of order {}",
                    reply.revision_id, order.id
                )))
            }
        };
        if revision.state != "PENDING" {
            tracing::info!(revision_id = %revision.id, state = %revision.state, "revision already decided; ignored");
            tx.commit().await?;
            return Ok(());
        }
        decide_revision(
            &mut tx,
            &self.ns,
            &message.envelope,
            &order,
            &revision,
            reply.outcome,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn decide_revision(
    conn: &mut PgConnection,
    ns: &Namespace,
    cause: &Envelope,
    order: &OrderRow,
    revision: &RevisionRow,
    outcome: ReservationOutcome,
) -> Result<(), sqlx::Error> {
    let state = order.state();
    match outcome {
        // Catalog holds the revised items now. A PENDING order whose first
        // reservation was still unanswered is approved by this: catalog
        // only revises a reservation it holds.
        ReservationOutcome::Reserved if state.can_revise() => {
            let row = repo::apply_revision(conn, revision).await?;
            repo::decide_revision(conn, revision.id, "APPLIED", None).await?;
            let event = OrderApproved {
                order_id: row.id,
                user_id: row.user_id.clone(),
                state: OrderState::Approved.as_str().to_owned(),
            };
            let envelope = Envelope::caused_by::<OrderApproved>(cause).with_user_id(&row.user_id);
            outbox::enqueue(conn, &Outgoing::event(ns, envelope, &event)).await?;
            tracing::info!(order_id = %row.id, revision_id = %revision.id, "revision applied");
        }
        ReservationOutcome::Rejected { reason } if state.can_revise() => {
            repo::decide_revision(conn, revision.id, "REJECTED", Some(&reason)).await?;
            let event = OrderRevisionRejected {
                order_id: order.id,
                user_id: order.user_id.clone(),
                state: state.as_str().to_owned(),
                revision_id: revision.id,
                reason,
            };
            let envelope =
                Envelope::caused_by::<OrderRevisionRejected>(cause).with_user_id(&order.user_id);
            outbox::enqueue(conn, &Outgoing::event(ns, envelope, &event)).await?;
            tracing::info!(order_id = %order.id, revision_id = %revision.id, "revision rejected");
        }
        // Decided otherwise meanwhile (catalog rejected the first
        // reservation, or the saga's deadline did). Whatever catalog holds
        // for the order is given back by the release that decision sends,
        // which travels behind this revision on the order's shard.
        outcome => {
            repo::decide_revision(conn, revision.id, "SUPERSEDED", None).await?;
            tracing::info!(order_id = %order.id, state = state.as_str(), ?outcome, "revision after decision; superseded");
        }
    }
    Ok(())
}

#[cfg(test)]
mod shard_routing_tests {
    use super::*;

    #[test]
    fn reserve_and_release_of_one_order_go_to_the_same_catalog_shard() {
        let ns = Namespace::new("t1");
        let order_id = Uuid::parse_str("0193a4c0-0000-7000-8000-000000000004").unwrap();
        let reserve = to_catalog(
            &ns,
            order_id,
            Envelope::new::<ReserveStock>(),
            &ReserveStock {
                order_id,
                items: Vec::new(),
            },
        );
        let release = to_catalog(
            &ns,
            order_id,
            Envelope::new::<ReleaseStock>(),
            &ReleaseStock { order_id },
        );
        assert_eq!(reserve.exchange, "t1.commands");
        assert_eq!(reserve.routing_key, "catalog.reserve_stock.3");
        assert_eq!(release.routing_key, "catalog.release_stock.3");
        let revise = to_catalog(
            &ns,
            order_id,
            Envelope::new::<ReviseStock>(),
            &ReviseStock {
                order_id,
                revision_id: Uuid::nil(),
                items: Vec::new(),
            },
        );
        assert_eq!(revise.routing_key, "catalog.revise_stock.3");
    }
}
