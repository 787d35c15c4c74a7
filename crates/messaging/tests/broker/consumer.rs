//! The consumer acks after the handler's commit, retries transient failures
//! through delay queues, dead-letters what cannot be handled (with the
//! reason), and the processed-messages claim makes duplicates harmless.

use std::{sync::Arc, time::Duration};

use lapin::options::BasicPublishOptions;
use signalbox_messages::{orders::OrderCancelled, Envelope};
use signalbox_messaging::{
    amqp,
    headers::{FAILURE_REASON, ORIGINAL_QUEUE},
    processed, Broker, ConfirmedPublisher, Consumer, HandleError, Handler, Incoming, Outgoing,
    RetryPolicy, Source, WorkQueue,
};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{amqp_url, Fixture, Tap, DEADLINE};

/// What the test handler does on a given attempt.
#[derive(Clone, Copy)]
enum Behaviour {
    Succeed,
    /// Fail transiently on the first attempt only.
    FailFirst,
    /// Fail transiently every time.
    AlwaysFail,
    /// Commit the effect, then lose the broker connection before the ack
    /// (the first time only): a crash between commit and ack.
    LoseConnectionAfterCommit,
}

/// Records one effect per message id in a scratch `effects` table (guarded
/// by the processed-messages claim) and reports every call, duplicates
/// included, as `(message id, attempt)` on `calls`.
struct TestHandler {
    pool: PgPool,
    broker: Arc<Broker>,
    calls: mpsc::UnboundedSender<(Uuid, u32)>,
    behaviour: Behaviour,
}

impl Handler for TestHandler {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let id = message.envelope.message_id;
        let _ = self.calls.send((id, message.attempt));
        match self.behaviour {
            Behaviour::FailFirst if message.attempt == 0 => {
                return Err(HandleError::Transient("simulated outage".into()))
            }
            Behaviour::AlwaysFail => return Err(HandleError::Transient("still broken".into())),
            _ => {}
        }
        let mut tx = self.pool.begin().await?;
        if processed::claim(&mut tx, "test", id).await? {
            sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if matches!(self.behaviour, Behaviour::LoseConnectionAfterCommit) && !message.redelivered {
            // The effect is committed; the ack that follows will fail.
            self.broker.close().await;
        }
        Ok(())
    }
}

struct Running {
    calls: mpsc::UnboundedReceiver<(Uuid, u32)>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), signalbox_messaging::consumer::ConsumeError>>,
}

impl Running {
    async fn next_call(&mut self) -> anyhow::Result<(Uuid, u32)> {
        tokio::time::timeout(DEADLINE, self.calls.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("handler gone"))
    }

    /// Waits for a call handling `id`, skipping others (redeliveries of
    /// earlier messages are allowed: they are what at-least-once means).
    async fn call_for(&mut self, id: Uuid) -> anyhow::Result<u32> {
        loop {
            let (handled, attempt) = self.next_call().await?;
            if handled == id {
                return Ok(attempt);
            }
        }
    }

    /// Stops the consumer; the handling in progress finishes first (it runs
    /// inline in the consumer loop).
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// Fast retries, so tests are quick: two retries 100 ms and 200 ms later.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        delays: vec![Duration::from_millis(100), Duration::from_millis(200)],
    }
}

async fn start(fx: &mut Fixture, behaviour: Behaviour) -> anyhow::Result<(String, Running)> {
    sqlx::query("CREATE TABLE IF NOT EXISTS effects (message_id UUID NOT NULL)")
        .execute(&fx.pool)
        .await?;
    let work = WorkQueue::new(fx.ns.queue("work"))
        .bind(fx.ns.events_exchange(), "order.*")
        .retry(quick_retries());
    fx.declare(&work).await?;
    let queue = work.name.clone();
    let (calls, received) = mpsc::unbounded_channel();
    let handler = TestHandler {
        pool: fx.pool.clone(),
        broker: fx.broker.clone(),
        calls,
        behaviour,
    };
    let shutdown = CancellationToken::new();
    let mut consumer = Consumer::new(fx.broker.clone(), Source::Work(work), "test");
    consumer.attach().await?;
    let task = tokio::spawn(consumer.run(handler, shutdown.clone()));
    Ok((
        queue,
        Running {
            calls: received,
            shutdown,
            task,
        },
    ))
}

async fn effects(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await?)
}

fn event(fx: &Fixture) -> Outgoing {
    let payload = OrderCancelled {
        order_id: Uuid::now_v7(),
        user_id: "u1".into(),
        state: "CANCELLED".into(),
    };
    Outgoing::event(&fx.ns, Envelope::new::<OrderCancelled>(), &payload)
}

async fn publish(fx: &Fixture, message: &Outgoing) -> anyhow::Result<()> {
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish(message)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_message_delivered_twice_has_one_effect() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let (_, mut running) = start(&mut fx, Behaviour::Succeed).await?;

    // The same message (same id) published twice, as a relay does when it
    // crashes between publishing and marking the row.
    let message = event(&fx);
    publish(&fx, &message).await?;
    publish(&fx, &message).await?;

    for _ in 0..2 {
        let (id, _) = running.next_call().await?;
        assert_eq!(id, message.envelope.message_id);
    }
    running.stop().await?;
    assert_eq!(effects(&fx.pool).await?, 1, "handled twice, effective once");
    fx.cleanup().await
}

#[tokio::test]
async fn a_handler_interrupted_between_commit_and_ack_has_one_effect() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let (_, mut running) = start(&mut fx, Behaviour::LoseConnectionAfterCommit).await?;

    // Published over a connection of its own: the handler closes the
    // fixture's connection, which may happen before this publish's confirm
    // comes back.
    let message = event(&fx);
    let publisher = Broker::connect(&amqp_url(), fx.ns.clone(), "publisher", DEADLINE).await?;
    ConfirmedPublisher::new(&publisher)
        .await?
        .publish(&message)
        .await?;
    publisher.close().await;

    // First delivery: effect committed, connection lost before the ack.
    assert_eq!(running.next_call().await?.0, message.envelope.message_id);
    // The consumer reconnects on its own and the broker redelivers the
    // unacked message; the claim recognises it.
    assert_eq!(running.next_call().await?.0, message.envelope.message_id);
    running.stop().await?;
    assert_eq!(effects(&fx.pool).await?, 1);
    fx.cleanup().await
}

#[tokio::test]
async fn a_transient_failure_is_retried_after_a_delay_and_then_succeeds() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let (_, mut running) = start(&mut fx, Behaviour::FailFirst).await?;

    let message = event(&fx);
    publish(&fx, &message).await?;

    let first = running.next_call().await?;
    let retried = running.next_call().await?;
    assert_eq!(first, (message.envelope.message_id, 0));
    assert_eq!(
        retried,
        (message.envelope.message_id, 1),
        "the retry knows its attempt"
    );
    running.stop().await?;
    assert_eq!(effects(&fx.pool).await?, 1);
    fx.cleanup().await
}

#[tokio::test]
async fn retries_are_bounded_then_the_message_is_dead_lettered_with_its_reason(
) -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let (queue, mut running) = start(&mut fx, Behaviour::AlwaysFail).await?;
    let observer = fx.broker.channel().await?;
    let mut dead_letters = Tap::open(&observer, &format!("{queue}.dlq")).await?;

    let message = event(&fx);
    publish(&fx, &message).await?;

    // The first attempt and the two retries of the policy.
    for attempt in 0..3 {
        assert_eq!(
            running.next_call().await?,
            (message.envelope.message_id, attempt)
        );
    }
    let dead = dead_letters.next().await?;
    let envelope = amqp::from_properties(&dead.properties)?;
    assert_eq!(envelope.message_id, message.envelope.message_id);
    let reason = amqp::header_str(dead.properties.headers(), FAILURE_REASON).unwrap_or_default();
    assert!(
        reason.contains("gave up after 2 retries: still broken"),
        "{reason}"
    );
    assert_eq!(
        amqp::header_str(dead.properties.headers(), ORIGINAL_QUEUE).as_deref(),
        Some(queue.as_str())
    );
    running.stop().await?;
    assert_eq!(effects(&fx.pool).await?, 0);
    fx.cleanup().await
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_does_not_block_the_queue() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let (queue, mut running) = start(&mut fx, Behaviour::Succeed).await?;
    let observer = fx.broker.channel().await?;
    let mut dead_letters = Tap::open(&observer, &format!("{queue}.dlq")).await?;

    // Poison: no message id, so no envelope can be built from it.
    let channel = fx.broker.channel().await?;
    channel
        .basic_publish(
            fx.ns.events_exchange().into(),
            "order.cancelled".into(),
            BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default(),
        )
        .await?;
    let good = event(&fx);
    publish(&fx, &good).await?;

    // The good message behind the poison one is handled...
    assert_eq!(running.next_call().await?.0, good.envelope.message_id);
    // ...and the poison one sits in the dead-letter queue, with the reason.
    let dead = dead_letters.next().await?;
    assert_eq!(dead.data, b"{}");
    let reason = amqp::header_str(dead.properties.headers(), FAILURE_REASON).unwrap_or_default();
    assert!(reason.contains("missing property `message_id`"), "{reason}");

    running.stop().await?;
    fx.cleanup().await
}

#[tokio::test]
async fn the_consumer_and_the_relay_resume_after_the_connection_is_lost() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let (_, mut running) = start(&mut fx, Behaviour::Succeed).await?;
    let shutdown = CancellationToken::new();
    let relay = signalbox_messaging::OutboxRelay::new(fx.pool.clone(), fx.broker.clone());
    let relay = tokio::spawn(relay.run(shutdown.clone()));

    let before = event(&fx);
    let mut tx = fx.pool.begin().await?;
    signalbox_messaging::outbox::enqueue(&mut tx, &before).await?;
    tx.commit().await?;
    assert_eq!(running.next_call().await?.0, before.envelope.message_id);

    // Lose the connection: readiness reports it at once. (If this races the
    // ack of `before`, `before` is redelivered and deduplicated.)
    fx.broker.close().await;
    assert!(!fx.broker.is_connected());

    // A message committed while disconnected is published and handled once
    // both sides have reconnected by themselves.
    let after = event(&fx);
    let mut tx = fx.pool.begin().await?;
    signalbox_messaging::outbox::enqueue(&mut tx, &after).await?;
    tx.commit().await?;
    running.call_for(after.envelope.message_id).await?;
    assert!(fx.broker.is_connected());

    shutdown.cancel();
    relay.await?;
    running.stop().await?;
    assert_eq!(effects(&fx.pool).await?, 2);
    fx.cleanup().await
}

#[tokio::test]
async fn a_retry_queue_deleted_by_hand_loses_nothing() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let (queue, mut running) = start(&mut fx, Behaviour::FailFirst).await?;
    // An operator deletes the first retry queue while the consumer runs.
    fx.broker
        .channel()
        .await?
        .queue_delete(
            signalbox_messaging::topology::retry_queue(&queue, 0).into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await?;

    let message = event(&fx);
    publish(&fx, &message).await?;

    // The copy for the retry finds no queue: the broker returns it, the
    // original is not acked, and the next session declares the retry queue
    // again before the message comes back; it then retries and succeeds.
    let attempt = running.call_for(message.envelope.message_id).await?;
    assert_eq!(attempt, 0);
    loop {
        if running.call_for(message.envelope.message_id).await? == 1 {
            break;
        }
    }
    running.stop().await?;
    assert_eq!(effects(&fx.pool).await?, 1);
    fx.cleanup().await
}
