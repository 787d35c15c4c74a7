//! The dead-letter tooling lists without consuming and replays without
//! losing: against the real broker, with dead letters made by the real
//! consumer. (What `signalbox dlq` prints for them is proven in
//! `crates/cli/tests/cli/dlq.rs`.)

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use lapin::{
    options::{
        BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeleteOptions,
    },
    BasicProperties, Confirmation,
};
use serde::{Deserialize, Serialize};
use signalbox_messages::{
    channels::Namespace, decode, orders::OrderCancelled, Envelope, Message, MessageKind,
};
use signalbox_messaging::{
    amqp, chain::Chain, consumer::ConsumeError, dead_letters, headers, processed, topology, Broker,
    ConfirmedPublisher, Consumer, HandleError, Handler, Incoming, Outgoing, RetryPolicy, Source,
    WorkQueue,
};
use sqlx::PgPool;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{amqp_url, await_depth, Fixture, DEADLINE};

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

/// The poison test's command: an item, which the handler refuses when told
/// to (as a handler refuses a command its business rules forbid).
#[derive(Debug, Serialize, Deserialize)]
struct Item {
    n: usize,
    refused: bool,
}

impl Message for Item {
    const TYPE: &'static str = "test.item";
    const KIND: MessageKind = MessageKind::Command;
}

/// The three ways a message is poison, one per reason the consumer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Poison {
    /// No `type` property: no envelope can be built; the consumer itself
    /// dead-letters it, before any handler sees it.
    BadEnvelope,
    /// A body that is not an `Item`: the handler's decode rejects it.
    Undecodable,
    /// A good item the handler refuses for good.
    Refused,
}

/// One call of [`Items::handle`]: the message, its attempt, whether the
/// broker delivered it before, and whether it had its effect.
#[derive(Debug)]
struct Call {
    id: Uuid,
    attempt: u32,
    redelivered: bool,
    effect: bool,
}

/// Handles items idempotently (the claim and an effect row in one
/// transaction) and rejects the refused ones permanently; reports every
/// call.
struct Items {
    pool: PgPool,
    calls: mpsc::UnboundedSender<Call>,
}

impl Handler for Items {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let id = message.envelope.message_id;
        let call = |effect| Call {
            id,
            attempt: message.attempt,
            redelivered: message.redelivered,
            effect,
        };
        let item: Item = match decode(&message.envelope, &message.body) {
            Ok(item) => item,
            Err(error) => {
                let _ = self.calls.send(call(false));
                return Err(error.into());
            }
        };
        if item.refused {
            let _ = self.calls.send(call(false));
            return Err(HandleError::Reject(refusal(item.n)));
        }
        let mut tx = self.pool.begin().await?;
        let effect = processed::claim(&mut tx, "items", id).await?;
        if effect {
            sqlx::query("INSERT INTO item_effects (message_id) VALUES ($1)")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let _ = self.calls.send(call(effect));
        Ok(())
    }
}

fn refusal(n: usize) -> String {
    format!("item {n} is refused")
}

#[tokio::test]
async fn at_scale_the_40_poison_among_2000_are_dead_lettered_with_their_reasons(
) -> anyhow::Result<()> {
    const MESSAGES: usize = 2_000;
    // Every 50th message is poison, the three kinds in turn: 40 in all.
    let poison = |n: usize| {
        (n % 50 == 25).then_some(match (n / 50) % 3 {
            0 => Poison::BadEnvelope,
            1 => Poison::Undecodable,
            _ => Poison::Refused,
        })
    };
    let mut fx = Fixture::new().await?;
    sqlx::query("CREATE TABLE item_effects (message_id UUID NOT NULL)")
        .execute(&fx.pool)
        .await?;
    // A work queue with the fast retries: none may be used, since nothing
    // here fails for a passing reason.
    let work = WorkQueue::new(fx.ns.queue("items"))
        .bind(fx.ns.commands_exchange(), Item::TYPE)
        .retry(RetryPolicy {
            delays: vec![Duration::from_millis(100), Duration::from_millis(200)],
        });
    fx.declare(&work).await?;

    // Two competing consumers, each with a connection of its own.
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    let mut consumers = Vec::new();
    for id in 0..2 {
        let broker =
            Broker::connect(&amqp_url(), fx.ns.clone(), &format!("c{id}"), DEADLINE).await?;
        let mut consumer =
            Consumer::new(broker.clone(), Source::Work(work.clone()), format!("c{id}"));
        consumer.attach().await?;
        let handler = Items {
            pool: fx.pool.clone(),
            calls: calls_tx.clone(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(consumer.run(handler, shutdown.clone()));
        consumers.push((broker, Running { shutdown, task }));
    }

    // Published in one sequence, the poison interleaved, each publish
    // confirmed. Good and poison items go through the confirmed publisher
    // in batches; a bad envelope cannot be made from an `Envelope`, so it is
    // published by hand (confirmed too) between the batches.
    let publisher = ConfirmedPublisher::new(&fx.broker).await?;
    let raw = fx.broker.channel().await?;
    raw.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut expected: HashMap<Uuid, (Poison, String)> = HashMap::new();
    let mut good: HashSet<Uuid> = HashSet::new();
    let mut batch: Vec<Outgoing> = Vec::new();
    for n in 0..MESSAGES {
        let envelope = Envelope::new::<Item>();
        let id = envelope.message_id;
        let item = Item {
            n,
            refused: poison(n) == Some(Poison::Refused),
        };
        let mut message = Outgoing::command(&fx.ns, envelope, &item);
        match poison(n) {
            None => {
                good.insert(id);
            }
            Some(Poison::Refused) => {
                expected.insert(id, (Poison::Refused, refusal(n)));
            }
            Some(Poison::Undecodable) => {
                message.payload = format!("{{\"n\":{n},\"refused\":").into_bytes();
                let error = decode::<Item>(&message.envelope, &message.payload).unwrap_err();
                expected.insert(id, (Poison::Undecodable, Chain(&error).to_string()));
            }
            Some(Poison::BadEnvelope) => {
                publisher.publish_all(&batch).await?;
                batch.clear();
                let properties = BasicProperties::default()
                    .with_message_id(id.to_string().into())
                    .with_delivery_mode(2);
                let mandatory = BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                let confirm = raw
                    .basic_publish(
                        fx.ns.commands_exchange().as_str().into(),
                        Item::TYPE.into(),
                        mandatory,
                        &message.payload,
                        properties,
                    )
                    .await?
                    .await?;
                assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");
                let reason = "bad envelope: missing property `type`".to_owned();
                expected.insert(id, (Poison::BadEnvelope, reason));
                continue;
            }
        }
        batch.push(message);
        if batch.len() == 50 {
            publisher.publish_all(&batch).await?;
            batch.clear();
        }
    }
    publisher.publish_all(&batch).await?;
    publisher.close().await;
    assert_eq!(expected.len(), 40);
    assert_eq!(good.len(), MESSAGES - 40);

    // Every good item handled, and every poison one dead-lettered.
    let mut received = Vec::new();
    let mut handled = HashSet::new();
    while handled.len() < good.len() {
        let next = tokio::time::timeout(DEADLINE, calls.recv()).await;
        let Ok(Some(call)) = next else {
            anyhow::bail!(
                "{} of {} good items handled within {DEADLINE:?}",
                handled.len(),
                good.len()
            );
        };
        if call.effect {
            handled.insert(call.id);
        }
        received.push(call);
    }
    let channel = fx.broker.channel().await?;
    let dlq = Namespace::dead_letter_queue(&work.name);
    await_depth(&channel, &dlq, 40).await?;
    // Stopped before counting: every call the consumers made is in.
    for (broker, running) in consumers {
        running.stop().await?;
        broker.close().await;
    }
    while let Ok(call) = calls.try_recv() {
        received.push(call);
    }

    // Exactly the 40 are in the dead-letter queue, each with its id and
    // the reason for its kind, dead-lettered at once (no retries).
    let letters = dead_letters::list(&fx.broker.channel().await?, &work.name, None).await?;
    assert_eq!(letters.len(), 40);
    let mut kinds: HashMap<Poison, usize> = HashMap::new();
    for letter in &letters {
        let id: Uuid = letter
            .message_id
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("a dead letter without its id: {letter:?}"))?
            .parse()?;
        let Some((kind, reason)) = expected.remove(&id) else {
            panic!("dead-lettered but not poison: {letter:?}");
        };
        assert_eq!(
            letter.failure_reason.as_deref(),
            Some(reason.as_str()),
            "{kind:?}"
        );
        if kind == Poison::Undecodable {
            assert!(
                reason.starts_with("malformed `test.item` payload: "),
                "{reason}"
            );
        }
        assert_eq!(letter.original_queue.as_deref(), Some(work.name.as_str()));
        assert_eq!(letter.retry_count, 0, "{letter:?}");
        *kinds.entry(kind).or_default() += 1;
    }
    assert!(expected.is_empty(), "not dead-lettered: {expected:?}");
    assert_eq!(kinds.len(), 3, "{kinds:?}");

    // The other 1,960: each handled exactly once, on its first delivery, with
    // one effect; each poison item that reached the handler did so once.
    let mut per_id: HashMap<Uuid, usize> = HashMap::new();
    for call in &received {
        *per_id.entry(call.id).or_default() += 1;
        assert!(call.attempt == 0 && !call.redelivered, "{call:?}");
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert!(good.iter().all(|id| per_id.contains_key(id)));
    let reached = kinds[&Poison::Undecodable] + kinds[&Poison::Refused];
    assert_eq!(per_id.len(), good.len() + reached);
    let effects: i64 = sqlx::query_scalar("SELECT count(DISTINCT message_id) FROM item_effects")
        .fetch_one(&fx.pool)
        .await?;
    assert_eq!(effects as usize, good.len());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM item_effects")
        .fetch_one(&fx.pool)
        .await?;
    assert_eq!(rows as usize, good.len());
    // Nothing left behind: the work queue and its retry queues are empty.
    await_depth(&channel, &work.name, 0).await?;
    for attempt in 0..work.retry.delays.len() {
        await_depth(&channel, &topology::retry_queue(&work.name, attempt), 0).await?;
    }
    fx.cleanup().await
}
