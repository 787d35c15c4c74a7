//! Catalog's command channel: sharded by order, `reserve_stock` answered,
//! `release_stock` one-way, both safe to receive twice.

use lapin::{options::QueueDeclareOptions, types::FieldTable};
use signalbox_messages::catalog::ReservationOutcome;
use uuid::Uuid;

use crate::helpers::{published_shards, spawn_app, LAMP, TABLET};

#[tokio::test]
async fn release_stock_is_one_way_and_gives_the_reserved_stock_back() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = Uuid::now_v7();
    let before = app.stock(LAMP).await?;

    // Request-reply: the reservation is answered on our reply queue.
    app.reserve(order, LAMP, 3).await?;
    let reply = app.next_reply().await?;
    assert_eq!(reply.order_id, order);
    assert_eq!(reply.outcome, ReservationOutcome::Reserved);
    assert_eq!(app.stock(LAMP).await?, before - 3);

    // One-way: the release gives the stock back...
    let release = app.release(order).await?;
    app.await_stock(LAMP, before).await?;
    app.await_handled(release).await?;

    // ...and answers nothing, although it named our queue as `reply_to`.
    // Catalog's outbox publishes in commit order, so had the release
    // replied, that reply would come before the answer to this later
    // reservation.
    let later = Uuid::now_v7();
    app.reserve(later, LAMP, 1).await?;
    let next = app.next_reply().await?;
    assert_eq!(next.order_id, later, "the release sent a reply");
    app.cleanup().await
}

#[tokio::test]
async fn releasing_an_order_twice_gives_its_stock_back_once() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = Uuid::now_v7();
    let before = app.stock(TABLET).await?;
    app.reserve(order, TABLET, 4).await?;
    assert_eq!(
        app.next_reply().await?.outcome,
        ReservationOutcome::Reserved
    );

    app.release(order).await?;
    app.await_stock(TABLET, before).await?;
    // A second release, as a new message (the saga compensating twice, or
    // an operator replaying it): not deduplicated by its id, so it is
    // handled, and changes nothing.
    let again = app.release(order).await?;
    app.await_handled(again).await?;
    assert_eq!(app.stock(TABLET).await?, before);
    app.cleanup().await
}

#[tokio::test]
async fn a_reservation_arriving_after_its_release_holds_no_stock() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let order = Uuid::now_v7();
    let before = app.stock(LAMP).await?;

    // Out of order on purpose (sharding prevents this; a replayed dead
    // letter could still do it): the release comes first...
    let release = app.release(order).await?;
    app.await_handled(release).await?;
    // ...so the reservation for the cancelled order is refused.
    app.reserve(order, LAMP, 2).await?;
    let reply = app.next_reply().await?;
    assert!(
        matches!(reply.outcome, ReservationOutcome::Rejected { .. }),
        "{reply:?}"
    );
    assert_eq!(app.stock(LAMP).await?, before);
    app.cleanup().await
}

#[tokio::test]
async fn a_reservation_short_on_one_product_takes_none_of_the_others() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let (lamps, tablets) = (app.stock(LAMP).await?, app.stock(TABLET).await?);

    // Enough lamps, one tablet too many: all or nothing.
    let order = Uuid::now_v7();
    app.reserve_items(order, &[(LAMP, 2), (TABLET, tablets + 1)])
        .await?;
    let reply = app.next_reply().await?;
    match &reply.outcome {
        ReservationOutcome::Rejected { reason } => assert!(
            reason.contains("insufficient stock") && reason.contains(&TABLET.to_string()),
            "{reason}"
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(app.stock(LAMP).await?, lamps);
    assert_eq!(app.stock(TABLET).await?, tablets);
    app.cleanup().await
}

#[tokio::test]
async fn an_order_naming_a_product_twice_takes_and_gives_back_the_sum() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    let before = app.stock(LAMP).await?;
    let order = Uuid::now_v7();
    app.reserve_items(order, &[(LAMP, 2), (TABLET, 1), (LAMP, 3)])
        .await?;
    assert_eq!(
        app.next_reply().await?.outcome,
        ReservationOutcome::Reserved
    );
    assert_eq!(app.stock(LAMP).await?, before - 5);

    app.release(order).await?;
    app.await_stock(LAMP, before).await?;
    app.cleanup().await
}

#[tokio::test]
async fn concurrent_reservations_never_take_more_than_the_stock() -> anyhow::Result<()> {
    let mut app = spawn_app().await?;
    // Overselling can only happen as the stock runs out, when two
    // reservations decide on the same last units: so the stock runs out
    // several times, each time with orders for four times what is left,
    // sent all at once (not each after the last one's confirm) so that
    // every shard's consumer has orders waiting at the same time.
    for round in 0..5 {
        app.set_stock(LAMP, 3).await?;
        let orders: Vec<Uuid> = (0..12).map(|_| Uuid::now_v7()).collect();
        futures::future::try_join_all(orders.iter().map(|&order| app.reserve(order, LAMP, 1)))
            .await?;
        let mut reserved = 0;
        for _ in &orders {
            match app.next_reply().await?.outcome {
                ReservationOutcome::Reserved => reserved += 1,
                ReservationOutcome::Rejected { reason } => {
                    assert!(reason.contains("insufficient stock"), "{reason}")
                }
            }
        }
        assert_eq!(reserved, 3, "round {round}");
        assert_eq!(app.stock(LAMP).await?, 0, "round {round}");
    }
    app.cleanup().await
}

#[tokio::test]
async fn catalog_consumes_every_shard_queue_and_no_unsharded_queue() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let base = app.ns.catalog_commands_queue();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };

    // Every shard queue the publishers route to has catalog's consumer.
    let channel = app.channel().await?;
    for queue in published_shards().queues(&base) {
        let declared = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await?;
        assert_eq!(declared.consumer_count(), 1, "{queue}");
    }
    // A passive declare of a missing queue fails (and closes the channel).
    let unsharded = app
        .channel()
        .await?
        .queue_declare(base.as_str().into(), passive, FieldTable::default())
        .await;
    assert!(unsharded.is_err(), "{base} exists");
    app.cleanup().await
}
