//! `ReviseOrder`: the revision step of the saga, with the test answering
//! for catalog. Only the owner's PENDING or APPROVED order can be revised;
//! the revision is its own command on the order's shard; the order takes
//! the new items when catalog reserved the difference and stays as it was
//! otherwise; a revision and a cancellation racing each other have one
//! winner.

use signalbox_messages::{
    catalog::{ReservationOutcome, ReviseStockReply},
    channels::{commands, events},
    Envelope,
};
use signalbox_messaging::{ConfirmedPublisher, Outgoing};
use signalbox_proto::orders::v1::{
    CancelOrderRequest, LineItem, Order, OrderState, ReviseOrderRequest,
};
use signalbox_testkit::probe;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{
    distant_deadline, spawn_app, with_token, TestApp, DEADLINE, UNIT_PRICE_CENTS,
};

const USER: &str = "user-1";

/// An order of `USER`, approved by a `reserved` reply; returns it.
async fn approved_order(app: &mut TestApp) -> anyhow::Result<Order> {
    let order = app.place_order(USER).await?;
    let id = Uuid::parse_str(&order.id)?;
    app.reply(id, ReservationOutcome::Reserved).await?;
    let (_, approved) = app.events.next_of(events::ORDER_APPROVED).await?;
    assert_eq!(approved["order_id"], order.id);
    app.commands.next_of(commands::RESERVE_STOCK).await?;
    app.get_order(USER, &order.id).await
}

fn revision(order_id: &str, product_id: &str, quantity: i64) -> ReviseOrderRequest {
    ReviseOrderRequest {
        order_id: order_id.to_owned(),
        items: vec![LineItem {
            product_id: product_id.to_owned(),
            quantity,
        }],
    }
}

async fn revise(
    app: &TestApp,
    user: &str,
    request: ReviseOrderRequest,
) -> Result<Order, tonic::Status> {
    let request = with_token(request, &app.token_for(user));
    app.orders
        .clone()
        .revise_order(request)
        .await
        .map(|r| r.into_inner())
}

async fn cancel(app: &TestApp, order_id: &str) -> Result<Order, tonic::Status> {
    let request = with_token(
        CancelOrderRequest {
            order_id: order_id.to_owned(),
        },
        &app.token_for(USER),
    );
    app.orders
        .clone()
        .cancel_order(request)
        .await
        .map(|r| r.into_inner())
}

/// Publishes catalog's answer to a revision onto the orders reply channel;
/// returns its message id.
async fn answer_revision(
    app: &TestApp,
    order_id: Uuid,
    revision_id: Uuid,
    outcome: ReservationOutcome,
) -> anyhow::Result<Uuid> {
    let envelope = Envelope::new::<ReviseStockReply>().with_correlation_id(order_id.to_string());
    let reply = ReviseStockReply {
        order_id,
        revision_id,
        outcome,
    };
    let message_id = envelope.message_id;
    let message = Outgoing::reply(&app.ns.orders_replies_queue(), envelope, &reply);
    let publisher = ConfirmedPublisher::new(&app.broker()).await?;
    publisher.publish(&message).await?;
    publisher.close().await;
    Ok(message_id)
}

/// Waits until orders has handled (and committed) the reply `message_id`.
async fn handled(app: &TestApp, message_id: Uuid) -> anyhow::Result<()> {
    probe::until("the reply is handled", DEADLINE, || async {
        let claimed: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM processed_messages WHERE message_id = $1")
                .bind(message_id)
                .fetch_optional(&app.pool)
                .await?;
        Ok(claimed.map(|_| ()).ok_or_else(|| "not yet".to_owned()))
    })
    .await
}

#[tokio::test]
async fn a_revision_catalog_reserves_leaves_the_order_approved_with_the_new_items(
) -> anyhow::Result<()> {
    let mut app = spawn_app(distant_deadline()).await?;
    let order = approved_order(&mut app).await?;
    let id = Uuid::parse_str(&order.id)?;
    let kept = order.items[0].product_id.clone();
    let added = Uuid::now_v7().to_string();

    let accepted = revise(
        &app,
        USER,
        ReviseOrderRequest {
            order_id: order.id.clone(),
            items: vec![
                LineItem {
                    product_id: kept.clone(),
                    quantity: 5,
                },
                LineItem {
                    product_id: added.clone(),
                    quantity: 1,
                },
            ],
        },
    )
    .await?;
    let (envelope, revised) = app.events.next_of(events::ORDER_REVISED).await?;
    let (command_envelope, command) = app.commands.next_of(commands::REVISE_STOCK).await?;

    assert_eq!(
        accepted.state,
        OrderState::Approved as i32,
        "unchanged until catalog answers"
    );
    assert_eq!(accepted.items, order.items);
    assert_eq!(revised["order_id"], order.id);
    assert_eq!(
        envelope.user_id.as_deref(),
        Some(USER),
        "pushed to the owner"
    );
    assert_eq!(command["order_id"], order.id);
    assert_eq!(command["revision_id"], revised["revision_id"]);
    assert_eq!(command["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        command_envelope.reply_to.as_deref(),
        Some(app.ns.orders_replies_queue().as_str())
    );

    let revision_id = Uuid::parse_str(revised["revision_id"].as_str().unwrap())?;
    answer_revision(&app, id, revision_id, ReservationOutcome::Reserved).await?;
    let (_, approved) = app.events.next_of(events::ORDER_APPROVED).await?;
    let now = app.get_order(USER, &order.id).await?;

    assert_eq!(approved["order_id"], order.id);
    assert_eq!(now.state, OrderState::Approved as i32);
    let quantities: Vec<(String, i64)> = now
        .items
        .iter()
        .map(|i| (i.product_id.clone(), i.quantity))
        .collect();
    let mut expected = vec![(kept, 5), (added, 1)];
    expected.sort();
    assert_eq!(quantities, expected);
    assert_eq!(now.total_cents, 6 * UNIT_PRICE_CENTS);
    app.cleanup().await
}

#[tokio::test]
async fn a_revision_catalog_rejects_leaves_the_order_as_it_was_with_the_reason(
) -> anyhow::Result<()> {
    let mut app = spawn_app(distant_deadline()).await?;
    let order = approved_order(&mut app).await?;
    let id = Uuid::parse_str(&order.id)?;

    revise(
        &app,
        USER,
        revision(&order.id, &order.items[0].product_id, 900),
    )
    .await?;
    let (_, revised) = app.events.next_of(events::ORDER_REVISED).await?;
    let revision_id = Uuid::parse_str(revised["revision_id"].as_str().unwrap())?;
    let reason = "insufficient stock: 900 requested, 10 available".to_owned();
    answer_revision(
        &app,
        id,
        revision_id,
        ReservationOutcome::Rejected {
            reason: reason.clone(),
        },
    )
    .await?;
    let (envelope, rejected) = app.events.next_of(events::ORDER_REVISION_REJECTED).await?;
    let now = app.get_order(USER, &order.id).await?;

    assert_eq!(rejected["order_id"], order.id);
    assert_eq!(rejected["reason"], reason.as_str());
    assert_eq!(rejected["state"], "APPROVED");
    assert_eq!(envelope.user_id.as_deref(), Some(USER));
    assert_eq!(now.state, OrderState::Approved as i32);
    assert_eq!(now.items, order.items);
    assert_eq!(now.total_cents, order.total_cents);
    // Decided: the order can be cancelled again.
    assert_eq!(
        cancel(&app, &order.id).await?.state,
        OrderState::Cancelled as i32
    );
    app.cleanup().await
}

#[tokio::test]
async fn a_duplicate_revision_reply_changes_nothing() -> anyhow::Result<()> {
    let mut app = spawn_app(distant_deadline()).await?;
    let order = approved_order(&mut app).await?;
    let id = Uuid::parse_str(&order.id)?;
    revise(
        &app,
        USER,
        revision(&order.id, &order.items[0].product_id, 3),
    )
    .await?;
    let (_, revised) = app.events.next_of(events::ORDER_REVISED).await?;
    let revision_id = Uuid::parse_str(revised["revision_id"].as_str().unwrap())?;

    answer_revision(&app, id, revision_id, ReservationOutcome::Reserved).await?;
    app.events.next_of(events::ORDER_APPROVED).await?;
    // Another answer for the same revision (a new message id): it is
    // decided already, so it neither rejects nor publishes anything.
    let duplicate = answer_revision(
        &app,
        id,
        revision_id,
        ReservationOutcome::Rejected {
            reason: "late".into(),
        },
    )
    .await?;
    handled(&app, duplicate).await?;
    // A marker after it: the next event must be the marker's, not a
    // `revision_rejected` for the duplicate.
    cancel(&app, &order.id).await?;
    let (next, _) = app.events.next().await?;
    let now = app.get_order(USER, &order.id).await?;

    assert_eq!(next.message_type, events::ORDER_CANCELLED);
    assert_eq!(now.items[0].quantity, 3, "the applied revision stands");
    app.cleanup().await
}

#[tokio::test]
async fn another_users_order_cannot_be_revised_and_is_not_found() -> anyhow::Result<()> {
    let mut app = spawn_app(distant_deadline()).await?;
    let order = approved_order(&mut app).await?;

    let refused = revise(
        &app,
        "someone-else",
        revision(&order.id, &order.items[0].product_id, 1),
    )
    .await
    .unwrap_err();

    assert_eq!(refused.code(), Code::NotFound);
    assert_eq!(app.get_order(USER, &order.id).await?.items, order.items);
    app.cleanup().await
}

#[tokio::test]
async fn a_cancelled_order_cannot_be_revised_nor_an_order_under_revision_cancelled(
) -> anyhow::Result<()> {
    let mut app = spawn_app(distant_deadline()).await?;
    let first = approved_order(&mut app).await?;
    let second = approved_order(&mut app).await?;
    let product = first.items[0].product_id.clone();

    cancel(&app, &first.id).await?;
    let late_revision = revise(&app, USER, revision(&first.id, &product, 1))
        .await
        .unwrap_err();
    revise(&app, USER, revision(&second.id, &product, 1)).await?;
    let late_cancel = cancel(&app, &second.id).await.unwrap_err();
    let second_revision = revise(&app, USER, revision(&second.id, &product, 2))
        .await
        .unwrap_err();

    assert_eq!(late_revision.code(), Code::Aborted);
    assert_eq!(late_cancel.code(), Code::Aborted);
    assert_eq!(second_revision.code(), Code::Aborted);
    assert_eq!(
        app.get_order(USER, &second.id).await?.state,
        OrderState::Approved as i32
    );
    app.cleanup().await
}

#[tokio::test]
async fn a_revision_racing_a_cancellation_has_one_winner() -> anyhow::Result<()> {
    let mut app = spawn_app(distant_deadline()).await?;
    for _ in 0..5 {
        let order = approved_order(&mut app).await?;
        let product = order.items[0].product_id.clone();

        let (revised, cancelled) = tokio::join!(
            revise(&app, USER, revision(&order.id, &product, 4)),
            cancel(&app, &order.id)
        );

        let outcomes = (revised.is_ok(), cancelled.is_ok());
        assert!(
            outcomes == (true, false) || outcomes == (false, true),
            "one winner: {revised:?} / {cancelled:?}"
        );
        let loser = revised.err().or(cancelled.err()).unwrap();
        assert_eq!(loser.code(), Code::Aborted);
        let now = app.get_order(USER, &order.id).await?;
        let expected = if outcomes.0 {
            OrderState::Approved
        } else {
            OrderState::Cancelled
        };
        assert_eq!(now.state, expected as i32);
        // Drain what the winner published, so the next round's waits see
        // only their own order's events.
        let winner_event = if outcomes.0 {
            events::ORDER_REVISED
        } else {
            events::ORDER_CANCELLED
        };
        app.events.next_of(winner_event).await?;
    }
    app.cleanup().await
}

#[tokio::test]
async fn a_rejected_order_cannot_be_revised() -> anyhow::Result<()> {
    let mut app = spawn_app(distant_deadline()).await?;
    let order = app.place_order(USER).await?;
    app.reply(
        Uuid::parse_str(&order.id)?,
        ReservationOutcome::Rejected {
            reason: "none left".into(),
        },
    )
    .await?;
    app.events.next_of(events::ORDER_REJECTED).await?;

    let refused = revise(
        &app,
        USER,
        revision(&order.id, &order.items[0].product_id, 1),
    )
    .await
    .unwrap_err();

    assert_eq!(refused.code(), Code::FailedPrecondition);
    app.cleanup().await
}
