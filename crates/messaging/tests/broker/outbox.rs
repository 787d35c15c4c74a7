//! The outbox relay publishes what committed, in order, and nothing else.

use signalbox_messages::{orders::OrderCancelled, Envelope};
use signalbox_messaging::{amqp, outbox, ConfirmedPublisher, OutboxRelay, Outgoing};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use signalbox_testkit::probe;

use crate::helpers::{Fixture, Tap, DEADLINE};

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
    relays_committed_rows(3).await
}

/// More rows than two rounds hold (a round is ten batches of 100): the
/// relay reads each batch ahead while the one before it is on its way to
/// the broker, and marks a batch while the next is; none may be lost,
/// reordered or sent twice for it.
#[tokio::test]
async fn rows_of_several_rounds_arrive_once_in_order_and_are_marked() -> anyhow::Result<()> {
    relays_committed_rows(2_350).await
}

/// Commits `rows` outbox rows in one transaction, runs a relay, and checks
/// that every row arrives once, in outbox order, with its envelope and its
/// payload as written, and is marked published.
async fn relays_committed_rows(rows: usize) -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let queue = fx.queue("observer", "order.*").await?;
    let channel = fx.broker.channel().await?;
    let mut tap = Tap::open(&channel, &queue).await?;

    let messages: Vec<Outgoing> = (0..rows).map(|_| cancelled(&fx.ns)).collect();
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
        let sent: serde_json::Value = serde_json::from_slice(&delivery.data)?;
        let written: serde_json::Value = serde_json::from_slice(&message.payload)?;
        assert_eq!(sent, written);
    }
    shutdown.cancel();
    relay.await?;
    // Nothing after the last: no row was published twice. Every message the
    // relay sent was confirmed, so it is in the queue before a sentinel
    // published now; the sentinel must be the next delivery.
    let sentinel = cancelled(&fx.ns);
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish(&sentinel)
        .await?;
    let next = amqp::from_properties(&tap.next().await?.properties)?;
    assert_eq!(next.message_id, sentinel.envelope.message_id);

    // The relay marks a batch only after its confirms, so once it stopped
    // every delivered row is marked.
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&fx.pool)
            .await?;
    assert_eq!(unpublished, 0);
    fx.cleanup().await
}

/// A relay with a backlog stops between rounds when told to, and leaves
/// what it has not published in the table, instead of draining the whole
/// outbox first (a service's shutdown would wait for it).
#[tokio::test]
async fn a_relay_told_to_stop_stops_between_rounds_with_rows_still_waiting() -> anyhow::Result<()> {
    let fx = Fixture::new().await?;
    // Thirty rounds' worth of rows: one written as a service writes it,
    // copied in one statement (each copy its own message id).
    let mut tx = fx.pool.begin().await?;
    outbox::enqueue(&mut tx, &cancelled(&fx.ns)).await?;
    sqlx::query(
        "INSERT INTO outbox (message_id, exchange, routing_key, envelope, payload)
         SELECT gen_random_uuid(), exchange, routing_key, envelope, payload
         FROM outbox, generate_series(2, 30000)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(fx.pool.clone(), fx.broker.clone());
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    probe::until("a first round published", DEADLINE, || async {
        let published: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
                .fetch_one(&fx.pool)
                .await?;
        Ok(if published > 0 {
            Ok(())
        } else {
            Err("nothing yet".to_owned())
        })
    })
    .await?;

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, relay).await??;
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&fx.pool)
            .await?;
    assert!(
        unpublished > 0,
        "the relay drained the outbox before stopping"
    );
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

#[tokio::test]
async fn several_relays_publish_in_outbox_order_without_duplicates() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let queue = fx.queue("observer", "order.*").await?;
    let channel = fx.broker.channel().await?;
    let mut tap = Tap::open(&channel, &queue).await?;

    // Three relays, each with its own connection, as three service
    // instances would have, all racing for the same outbox.
    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for instance in 0..3 {
        let broker = signalbox_messaging::Broker::connect(
            &signalbox_testkit::broker::amqp_url(),
            fx.ns.clone(),
            &format!("relay-{instance}"),
            crate::helpers::DEADLINE,
        )
        .await?;
        let relay = OutboxRelay::new(fx.pool.clone(), broker);
        relays.push(tokio::spawn(relay.run(shutdown.clone())));
    }

    // One writer, many small transactions: every commit wakes every relay.
    let messages: Vec<Outgoing> = (0..150).map(|_| cancelled(&fx.ns)).collect();
    for chunk in messages.chunks(3) {
        let mut tx = fx.pool.begin().await?;
        for message in chunk {
            outbox::enqueue(&mut tx, message).await?;
        }
        tx.commit().await?;
    }

    // The broker sees exactly the outbox order: the lease lets one relay
    // publish at a time.
    for (index, message) in messages.iter().enumerate() {
        let envelope = amqp::from_properties(&tap.next().await?.properties)?;
        assert_eq!(
            envelope.message_id, message.envelope.message_id,
            "message {index} out of order"
        );
    }
    shutdown.cancel();
    for relay in relays {
        relay.await?;
    }
    fx.cleanup().await
}

#[tokio::test]
async fn retention_purges_old_published_rows_and_old_processed_ids_only() -> anyhow::Result<()> {
    use signalbox_messaging::retention::{purge, Retention};
    use std::time::Duration;

    let fx = Fixture::new().await?;
    let mut tx = fx.pool.begin().await?;
    let (old, recent, pending) = (cancelled(&fx.ns), cancelled(&fx.ns), cancelled(&fx.ns));
    for message in [&old, &recent, &pending] {
        outbox::enqueue(&mut tx, message).await?;
    }
    tx.commit().await?;
    sqlx::query(
        "UPDATE outbox SET published_at = now() - interval '2 days' WHERE message_id = $1;",
    )
    .bind(old.envelope.message_id)
    .execute(&fx.pool)
    .await?;
    sqlx::query("UPDATE outbox SET published_at = now() WHERE message_id = $1")
        .bind(recent.envelope.message_id)
        .execute(&fx.pool)
        .await?;
    sqlx::query(
        "INSERT INTO processed_messages (consumer, message_id, processed_at)
         VALUES ('test', $1, now() - interval '2 days'), ('test', $2, now())",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .execute(&fx.pool)
    .await?;

    let day = Duration::from_secs(24 * 3600);
    let purged = purge(
        &fx.pool,
        &Retention {
            outbox: day,
            processed: day,
            interval: day,
        },
    )
    .await?;

    assert_eq!((purged.outbox, purged.processed), (1, 1));
    // The unpublished row is never purged, however old.
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT message_id FROM outbox ORDER BY seq")
        .fetch_all(&fx.pool)
        .await?;
    assert_eq!(
        left,
        vec![recent.envelope.message_id, pending.envelope.message_id]
    );
    fx.cleanup().await
}
