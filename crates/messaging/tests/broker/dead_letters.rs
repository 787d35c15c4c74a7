//! The dead-letter tooling lists without consuming and replays without
//! losing: against the real broker, with dead letters made by the real
//! consumer. (What `signalbox dlq` prints for them is proven in
//! `crates/cli/tests/cli/dlq.rs`.)

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeleteOptions};
use signalbox_messages::{orders::OrderCancelled, Envelope};
use signalbox_messaging::{
    amqp, consumer::ConsumeError, dead_letters, headers, ConfirmedPublisher, Consumer, HandleError,
    Handler, Incoming, Outgoing, Source, WorkQueue,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{await_depth, Fixture, DEADLINE};

/// Rejects every message while `broken` is set (as a handler does while a
/// bug or missing data makes a message unhandleable); handles and reports
/// `(message id, attempt)` once it is cleared.
struct Switchable {
    broken: Arc<AtomicBool>,
    handled: mpsc::UnboundedSender<(Uuid, u32)>,
}

impl Handler for Switchable {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(HandleError::Reject("product does not exist".into()));
        }
        let _ = self
            .handled
            .send((message.envelope.message_id, message.attempt));
        Ok(())
    }
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ConsumeError>>,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

async fn consume(
    fx: &Fixture,
    work: &WorkQueue,
    broken: &Arc<AtomicBool>,
    handled: &mpsc::UnboundedSender<(Uuid, u32)>,
) -> anyhow::Result<Running> {
    let mut consumer = Consumer::new(fx.broker.clone(), Source::Work(work.clone()), "test");
    consumer.attach().await?;
    let handler = Switchable {
        broken: broken.clone(),
        handled: handled.clone(),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run(handler, shutdown.clone()));
    Ok(Running { shutdown, task })
}

fn cancelled(fx: &Fixture) -> Outgoing {
    let payload = OrderCancelled {
        order_id: Uuid::now_v7(),
        user_id: "u1".into(),
        state: "CANCELLED".into(),
    };
    Outgoing::event(&fx.ns, Envelope::new::<OrderCancelled>(), &payload)
}

/// A work queue on `order.*` and `count` messages dead-lettered from it by
/// the real consumer (rejected), oldest first.
async fn dead_lettered(
    fx: &mut Fixture,
    count: usize,
) -> anyhow::Result<(WorkQueue, Vec<Outgoing>)> {
    let work = WorkQueue::new(fx.ns.queue("work")).bind(fx.ns.events_exchange(), "order.*");
    fx.declare(&work).await?;
    let broken = Arc::new(AtomicBool::new(true));
    let (handled, _) = mpsc::unbounded_channel();
    let running = consume(fx, &work, &broken, &handled).await?;
    let messages: Vec<Outgoing> = (0..count).map(|_| cancelled(fx)).collect();
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish_all(&messages)
        .await?;
    let channel = fx.broker.channel().await?;
    await_depth(&channel, &format!("{}.dlq", work.name), count as u32).await?;
    running.stop().await?;
    Ok((work, messages))
}

fn ids(messages: &[Outgoing]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.envelope.message_id.to_string())
        .collect()
}

#[tokio::test]
async fn listing_shows_each_dead_letter_with_its_reason_and_leaves_the_queue_unchanged(
) -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let (work, messages) = dead_lettered(&mut fx, 3).await?;

    let channel = fx.broker.channel().await?;
    let letters = dead_letters::list(&channel, &work.name, None).await?;

    let listed: Vec<String> = letters
        .iter()
        .map(|l| l.message_id.clone().unwrap_or_default())
        .collect();
    assert_eq!(listed, ids(&messages), "oldest first, all of them");
    for letter in &letters {
        assert_eq!(letter.message_type.as_deref(), Some("order.cancelled"));
        assert_eq!(
            letter.failure_reason.as_deref(),
            Some("product does not exist")
        );
        assert_eq!(letter.original_queue.as_deref(), Some(work.name.as_str()));
        assert_eq!(letter.retry_count, 0);
        assert!(letter.failed_at.is_some());
        assert!(letter.body_preview.contains("\"state\":\"CANCELLED\""));
    }
    // Nothing was consumed: same messages, same order, also by the DLQ's
    // own name; and a limit shows only the oldest. (The depth is awaited:
    // the broker may answer a depth query before it has put back what the
    // listing returned.)
    let dlq = format!("{}.dlq", work.name);
    await_depth(&channel, &dlq, 3).await?;
    let again = dead_letters::list(&channel, &dlq, None).await?;
    assert_eq!(again, letters);
    let oldest = dead_letters::list(&channel, &dlq, Some(1)).await?;
    assert_eq!(oldest, letters[..1]);
    await_depth(&channel, &dlq, 3).await?;
    fx.cleanup().await
}

#[tokio::test]
async fn replay_moves_dead_letters_back_and_the_fixed_consumer_handles_them() -> anyhow::Result<()>
{
    let mut fx = Fixture::new().await?;
    let (work, messages) = dead_lettered(&mut fx, 3).await?;
    let dlq = format!("{}.dlq", work.name);
    let channel = fx.broker.channel().await?;

    // A limit moves the oldest only.
    let moved = dead_letters::replay(&fx.broker.channel().await?, &work.name, Some(2)).await?;
    assert_eq!(moved, 2);
    await_depth(&channel, &dlq, 1).await?;
    let moved = dead_letters::replay(&fx.broker.channel().await?, &work.name, None).await?;
    assert_eq!(moved, 1);
    await_depth(&channel, &dlq, 0).await?;
    await_depth(&channel, &work.name, 3).await?;

    // The copy starts afresh and says it was replayed.
    let peek = fx.broker.channel().await?;
    let first = peek
        .basic_get(work.name.as_str().into(), BasicGetOptions { no_ack: false })
        .await?
        .ok_or_else(|| anyhow::anyhow!("work queue empty"))?;
    let headers = first.delivery.properties.headers();
    assert!(amqp::header_str(headers, headers::REPLAYED_AT).is_some());
    assert_eq!(
        amqp::from_properties(&first.delivery.properties)?.message_id,
        messages[0].envelope.message_id
    );
    peek.basic_nack(
        first.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            ..Default::default()
        },
    )
    .await?;

    // The bug is fixed: the consumer handles all three, oldest first, as
    // first attempts.
    let broken = Arc::new(AtomicBool::new(false));
    let (handled_tx, mut handled) = mpsc::unbounded_channel();
    let running = consume(&fx, &work, &broken, &handled_tx).await?;
    for message in &messages {
        let (id, attempt) = tokio::time::timeout(DEADLINE, handled.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("handler gone"))?;
        assert_eq!(id, message.envelope.message_id);
        assert_eq!(attempt, 0);
    }
    running.stop().await?;
    await_depth(&channel, &dlq, 0).await?;
    fx.cleanup().await
}

#[tokio::test]
async fn replaying_an_empty_dead_letter_queue_moves_nothing() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let queue = fx.queue("quiet", "order.*").await?;

    let channel = fx.broker.channel().await?;
    assert_eq!(dead_letters::replay(&channel, &queue, None).await?, 0);
    assert!(dead_letters::list(&channel, &queue, None).await?.is_empty());
    await_depth(&channel, &queue, 0).await?;
    fx.cleanup().await
}

#[tokio::test]
async fn replay_without_its_work_queue_takes_nothing_from_the_dead_letter_queue(
) -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let (work, _) = dead_lettered(&mut fx, 1).await?;
    let channel = fx.broker.channel().await?;
    channel
        .queue_delete(work.name.as_str().into(), QueueDeleteOptions::default())
        .await?;

    let failed = dead_letters::replay(&fx.broker.channel().await?, &work.name, None).await;
    assert!(
        matches!(failed, Err(dead_letters::DeadLetterError::NoQueue { ref queue, .. }) if *queue == work.name),
        "{failed:?}"
    );
    await_depth(&channel, &format!("{}.dlq", work.name), 1).await?;
    fx.cleanup().await
}
