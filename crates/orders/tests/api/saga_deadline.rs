//! The saga's deadline: an order whose reservation has no reply in time is
//! rejected, and a reply that comes after that is handled safely.

use std::time::Duration;

use signalbox_messages::{
    catalog::ReservationOutcome,
    channels::{commands, events},
};
use signalbox_orders::saga_timeouts::{self, TIMEOUT_REASON};
use signalbox_proto::orders::v1::OrderState;
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{distant_deadline, quick_deadline, spawn_app, TestApp};

const USER: &str = "user-1";

/// Places an order and waits until the sweeper rejected it for want of a
/// reservation reply; returns its id.
async fn order_rejected_by_timeout(app: &mut TestApp) -> anyhow::Result<Uuid> {
    let order = app.place_order(USER).await?;
    let id = Uuid::parse_str(&order.id)?;
    let (_, rejected) = app.events.next_of(events::ORDER_REJECTED).await?;
    assert_eq!(rejected["order_id"], order.id);
    // The command went out: it simply got no answer.
    let (_, command) = app.commands.next_of(commands::RESERVE_STOCK).await?;
    assert_eq!(command["order_id"], order.id);
    Ok(id)
}

#[tokio::test]
async fn an_order_without_a_reservation_reply_is_rejected_when_its_deadline_passes(
) -> anyhow::Result<()> {
    let mut app = spawn_app(quick_deadline()).await?;

    let placed_at = Instant::now();
    let order = app.place_order(USER).await?;
    assert_eq!(order.state, OrderState::Pending as i32);

    let (_, created) = app.events.next_of(events::ORDER_CREATED).await?;
    assert_eq!(created["order_id"], order.id);
    let (envelope, rejected) = app.events.next_of(events::ORDER_REJECTED).await?;
    assert!(
        placed_at.elapsed() >= Duration::from_secs(1),
        "not before the deadline"
    );
    assert_eq!(rejected["order_id"], order.id);
    assert_eq!(rejected["state"], "REJECTED");
    assert_eq!(rejected["reason"], TIMEOUT_REASON);
    assert_eq!(
        envelope.user_id.as_deref(),
        Some(USER),
        "pushed to the user"
    );

    let stored = app.get_order(USER, &order.id).await?;
    assert_eq!(stored.state, OrderState::Rejected as i32);
    assert_eq!(stored.rejection_reason, TIMEOUT_REASON);
    app.cleanup().await
}

#[tokio::test]
async fn a_reserved_reply_after_the_deadline_releases_the_stock() -> anyhow::Result<()> {
    let mut app = spawn_app(quick_deadline()).await?;
    let order_id = order_rejected_by_timeout(&mut app).await?;

    // Catalog reserved after all, too late.
    app.reply(order_id, ReservationOutcome::Reserved).await?;

    // The compensation: the stock goes back.
    let (_, release) = app.commands.next_of(commands::RELEASE_STOCK).await?;
    assert_eq!(release["order_id"], order_id.to_string());
    let stored = app.get_order(USER, &order_id.to_string()).await?;
    assert_eq!(stored.state, OrderState::Rejected as i32, "still rejected");
    assert_eq!(stored.rejection_reason, TIMEOUT_REASON);
    app.cleanup().await
}

#[tokio::test]
async fn a_rejected_reply_after_the_deadline_is_ignored() -> anyhow::Result<()> {
    let mut app = spawn_app(quick_deadline()).await?;
    let order_id = order_rejected_by_timeout(&mut app).await?;

    let late = app
        .reply(
            order_id,
            ReservationOutcome::Rejected {
                reason: "insufficient stock".into(),
            },
        )
        .await?;
    // A marker behind it on the same queue: the reply consumer handles in
    // order, so once the marker's effect shows, the rejection was handled.
    app.reply(order_id, ReservationOutcome::Reserved).await?;
    let (next_command, _) = app.commands.next().await?;

    // The first command after the reservation is the marker's release:
    // the late rejection sent nothing...
    assert_eq!(next_command.message_type, commands::RELEASE_STOCK);
    // ...changed nothing...
    let stored = app.get_order(USER, &order_id.to_string()).await?;
    assert_eq!(stored.rejection_reason, TIMEOUT_REASON);
    // ...and was handled (acked), not dead-lettered.
    let handled: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM processed_messages WHERE message_id = $1)",
    )
    .bind(late.message_id)
    .fetch_one(&app.pool)
    .await?;
    assert!(handled);
    assert_eq!(app.dead_replies().await?, 0);
    app.cleanup().await
}

#[tokio::test]
async fn the_sweep_rejects_only_pending_orders_older_than_the_deadline() -> anyhow::Result<()> {
    let mut app = spawn_app(distant_deadline()).await?;
    // One order answered in time...
    let approved = app.place_order(USER).await?;
    let approved_id = Uuid::parse_str(&approved.id)?;
    app.reply(approved_id, ReservationOutcome::Reserved).await?;
    let (_, event) = app.events.next_of(events::ORDER_APPROVED).await?;
    assert_eq!(event["order_id"], approved.id);
    // ...and one still waiting.
    let pending = app.place_order(USER).await?;

    // Within its deadline, the waiting order is left alone.
    let rejected = saga_timeouts::sweep(&app.pool, &app.ns, Duration::from_secs(3600)).await?;
    assert_eq!(rejected, 0);
    assert_eq!(
        app.get_order(USER, &pending.id).await?.state,
        OrderState::Pending as i32
    );

    // Past it (a zero deadline), only the PENDING one is rejected.
    let rejected = saga_timeouts::sweep(&app.pool, &app.ns, Duration::ZERO).await?;
    assert_eq!(rejected, 1);
    assert_eq!(
        app.get_order(USER, &pending.id).await?.state,
        OrderState::Rejected as i32
    );
    assert_eq!(
        app.get_order(USER, &approved.id).await?.state,
        OrderState::Approved as i32
    );
    let (_, event) = app.events.next_of(events::ORDER_REJECTED).await?;
    assert_eq!(event["order_id"], pending.id);
    app.cleanup().await
}

#[tokio::test]
async fn concurrent_sweepers_reject_each_overdue_order_exactly_once() -> anyhow::Result<()> {
    let app = spawn_app(distant_deadline()).await?;
    for _ in 0..6 {
        app.place_order(USER).await?;
    }

    // Four instances sweep at the same moment.
    let sweeps: Vec<_> = (0..4)
        .map(|_| {
            let (pool, ns) = (app.pool.clone(), app.ns.clone());
            tokio::spawn(async move { saga_timeouts::sweep(&pool, &ns, Duration::ZERO).await })
        })
        .collect();
    let mut total = 0;
    for sweep in sweeps {
        total += sweep.await??;
    }

    assert_eq!(total, 6, "every order rejected once, by one sweeper");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE routing_key = $1")
        .bind(events::ORDER_REJECTED)
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(events, 6, "one order.rejected per order");
    let flagged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE state = 'REJECTED' AND reservation_timed_out",
    )
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(flagged, 6);
    app.cleanup().await
}
