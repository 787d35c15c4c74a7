//! The outbox relay publishes what committed, in order, and nothing else.

use signalbox_messages::{orders::OrderCancelled, Envelope};
use signalbox_messaging::{amqp, outbox, OutboxRelay, Outgoing};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{Fixture, Tap};

fn cancelled(ns: &signalbox_messages::channels::Namespace) -> Outgoing {
    let order_id = Uuid::now_v7();
    let event = OrderCancelled {
        order_id,
        user_id: "u1".into(),
        state: "CANCELLED".into(),
    };
    Outgoing::event(
        ns,
        Envelope::new::<OrderCancelled>().with_user_id("u1"),
        &event,
    )
}

#[tokio::test]
async fn committed_rows_are_published_in_order_and_marked() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let queue = fx.queue("observer", "order.*").await?;
    let channel = fx.broker.channel().await?;
    let mut tap = Tap::open(&channel, &queue).await?;

    let messages: Vec<Outgoing> = (0..3).map(|_| cancelled(&fx.ns)).collect();
    let mut tx = fx.pool.begin().await?;
    for message in &messages {
        outbox::enqueue(&mut tx, message).await?;
    }
    tx.commit().await?;

    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(fx.pool.clone(), fx.broker.clone());
    let relay = tokio::spawn(relay.run(shutdown.clone()));

    for message in &messages {
        let delivery = tap.next().await?;
        let envelope = amqp::from_properties(&delivery.properties)?;
        assert_eq!(envelope.message_id, message.envelope.message_id);
        assert_eq!(envelope.user_id.as_deref(), Some("u1"));
    }
    shutdown.cancel();
    relay.await?;

    // The relay marks a batch only after its confirms, so once it stopped
    // every delivered row is marked.
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&fx.pool)
            .await?;
    assert_eq!(unpublished, 0);
    fx.cleanup().await
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let queue = fx.queue("observer", "order.*").await?;
    let channel = fx.broker.channel().await?;
    let mut tap = Tap::open(&channel, &queue).await?;

    let ghost = cancelled(&fx.ns);
    let mut tx = fx.pool.begin().await?;
    outbox::enqueue(&mut tx, &ghost).await?;
    tx.rollback().await?;
    let real = cancelled(&fx.ns);
    let mut tx = fx.pool.begin().await?;
    outbox::enqueue(&mut tx, &real).await?;
    tx.commit().await?;

    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(fx.pool.clone(), fx.broker.clone());
    let relay = tokio::spawn(relay.run(shutdown.clone()));

    // The relay publishes in insertion order: had the rolled-back row been
    // stored, it would arrive first.
    let first = amqp::from_properties(&tap.next().await?.properties)?;
    assert_eq!(first.message_id, real.envelope.message_id);
    shutdown.cancel();
    relay.await?;
    fx.cleanup().await
}
