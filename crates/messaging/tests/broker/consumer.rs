//! The consumer loop acks after the handler's commit, dead-letters what
//! cannot be handled, and the processed-messages claim makes duplicates
//! harmless.

use lapin::options::BasicPublishOptions;
use signalbox_messages::{orders::OrderCancelled, Envelope};
use signalbox_messaging::{
    amqp, consumer, processed, ConfirmedPublisher, HandleError, Handler, Incoming, Outgoing,
};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{Fixture, Tap};

/// Records one effect per message id in a scratch `effects` table (guarded
/// by the processed-messages claim) and reports every call, duplicates
/// included, on `calls`.
struct CountingHandler {
    pool: PgPool,
    calls: mpsc::UnboundedSender<Uuid>,
    /// Fail the first attempt of every message with a transient error.
    fail_first: bool,
}

impl Handler for CountingHandler {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let id = message.envelope.message_id;
        let _ = self.calls.send(id);
        if self.fail_first && !message.redelivered {
            return Err(HandleError::Transient("simulated outage".into()));
        }
        let mut tx = self.pool.begin().await?;
        if processed::claim(&mut tx, "test", id).await? {
            sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn effects(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await?)
}

async fn setup(fx: &Fixture) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE effects (message_id UUID NOT NULL)")
        .execute(&fx.pool)
        .await?;
    Ok(())
}

fn event(fx: &Fixture) -> Outgoing {
    let payload = OrderCancelled {
        order_id: Uuid::now_v7(),
        user_id: "u1".into(),
        state: "CANCELLED".into(),
    };
    Outgoing::event(&fx.ns, Envelope::new::<OrderCancelled>(), &payload)
}

#[tokio::test]
async fn a_message_delivered_twice_has_one_effect() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    setup(&fx).await?;
    let queue = fx.queue("work", "order.*").await?;
    let (calls, mut called) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let handler = CountingHandler {
        pool: fx.pool.clone(),
        calls,
        fail_first: false,
    };
    let consumer = tokio::spawn(consumer::run(
        fx.broker.channel().await?,
        queue,
        "test",
        handler,
        shutdown.clone(),
    ));

    // The same message (same id) published twice, as a relay does when it
    // crashes between publishing and marking the row.
    let message = event(&fx);
    let publisher = ConfirmedPublisher::new(&fx.broker).await?;
    publisher.publish(&message).await?;
    publisher.publish(&message).await?;

    for _ in 0..2 {
        let id = tokio::time::timeout(crate::helpers::DEADLINE, called.recv())
            .await?
            .expect("handler alive");
        assert_eq!(id, message.envelope.message_id);
    }
    // Handled twice, effective once. Stopping the consumer waits for the
    // second handling to finish (it runs inline in the loop).
    shutdown.cancel();
    consumer.await??;
    assert_eq!(effects(&fx.pool).await?, 1);
    fx.cleanup().await
}

#[tokio::test]
async fn a_failed_handling_is_requeued_and_succeeds_on_redelivery() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    setup(&fx).await?;
    let queue = fx.queue("work", "order.*").await?;
    let (calls, mut called) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let handler = CountingHandler {
        pool: fx.pool.clone(),
        calls,
        fail_first: true,
    };
    let consumer = tokio::spawn(consumer::run(
        fx.broker.channel().await?,
        queue,
        "test",
        handler,
        shutdown.clone(),
    ));

    let message = event(&fx);
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish(&message)
        .await?;

    // First attempt fails (not acked, requeued), the redelivery succeeds.
    for _ in 0..2 {
        tokio::time::timeout(crate::helpers::DEADLINE, called.recv()).await?;
    }
    shutdown.cancel();
    consumer.await??;
    assert_eq!(effects(&fx.pool).await?, 1);
    fx.cleanup().await
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_does_not_block_the_queue() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    setup(&fx).await?;
    let queue = fx.queue("work", "order.*").await?;
    let observer = fx.broker.channel().await?;
    let mut dead_letters = Tap::open(&observer, &format!("{queue}.dlq")).await?;
    let (calls, mut called) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let handler = CountingHandler {
        pool: fx.pool.clone(),
        calls,
        fail_first: false,
    };
    let consumer = tokio::spawn(consumer::run(
        fx.broker.channel().await?,
        queue,
        "test",
        handler,
        shutdown.clone(),
    ));

    // Poison: no message id, so no envelope can be built from it.
    let channel = fx.broker.channel().await?;
    channel
        .basic_publish(
            &fx.ns.events_exchange(),
            "order.cancelled",
            BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default(),
        )
        .await?;
    let good = event(&fx);
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish(&good)
        .await?;

    // The good message behind the poison one is handled...
    let handled = tokio::time::timeout(crate::helpers::DEADLINE, called.recv()).await?;
    assert_eq!(handled, Some(good.envelope.message_id));
    // ...and the poison one sits in the dead-letter queue, with the reason.
    let dead = dead_letters.next().await?;
    assert_eq!(dead.data, b"{}");
    assert!(amqp::header_str(dead.properties.headers(), "x-first-death-reason").is_some());

    shutdown.cancel();
    consumer.await??;
    fx.cleanup().await
}
