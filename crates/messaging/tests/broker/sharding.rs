//! Sharded channels keep each aggregate's messages in order while several
//! instances share the shards, across a failover, and across retries.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use signalbox_messages::{decode, Envelope, Message, MessageKind};
use signalbox_messaging::{
    consumer::ConsumeError, dead_letters, Broker, ConfirmedPublisher, HandleError, Handler,
    Incoming, Outgoing, RetryPolicy, ShardConsumers, Shards, WorkQueue,
};
use sqlx::PgPool;
use tokio::{
    sync::{mpsc, Notify},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::helpers::{amqp_url, await_depth, Fixture, DEADLINE};

/// A numbered step of one aggregate: the test's command.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    aggregate: String,
    seq: u32,
}

impl Message for Step {
    const TYPE: &'static str = "test.step";
    const KIND: MessageKind = MessageKind::Command;
}

/// One handled step: who handled it, from which shard.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    instance: usize,
    shard: usize,
    aggregate: String,
    seq: u32,
}

/// How the recording handler misbehaves, if at all.
#[derive(Clone, Default)]
enum Fault {
    #[default]
    None,
    /// Lose the instance's broker connection after handling this seq, once:
    /// the instance "crashes" between its work and its ack.
    CrashAfter(u32, Arc<Broker>, Arc<AtomicBool>),
    /// Fail transiently on the first `times` attempts at this seq.
    FailFirst { seq: u32, times: u32 },
    /// Fail transiently on every attempt at this seq.
    AlwaysFail(u32),
    /// Fail transiently on everything, announcing each attempt.
    Everything(Arc<Notify>),
}

/// Reports every successful handling on `seen` and every attempt (failed or
/// not) in `attempts`.
struct Recorder {
    instance: usize,
    shards: Shards,
    seen: mpsc::UnboundedSender<Seen>,
    attempts: Arc<Mutex<HashMap<u32, u32>>>,
    fault: Fault,
    /// Where the handler does real work (a committed insert), as a real
    /// handler would; `None` to do none.
    work: Option<PgPool>,
}

impl Handler for Recorder {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let step: Step = decode(&message.envelope, &message.body)?;
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(step.seq).or_default();
            *n += 1;
            *n
        };
        match &self.fault {
            Fault::FailFirst { seq, times } if *seq == step.seq && attempt <= *times => {
                return Err(HandleError::Transient("simulated outage".into()));
            }
            Fault::AlwaysFail(seq) if *seq == step.seq => {
                return Err(HandleError::Transient("still broken".into()));
            }
            Fault::Everything(attempted) => {
                attempted.notify_one();
                return Err(HandleError::Transient("all broken".into()));
            }
            _ => {}
        }
        // The work itself: a database transaction, as in a real handler.
        if let Some(pool) = &self.work {
            sqlx::query("INSERT INTO handled_steps (aggregate, seq, instance) VALUES ($1, $2, $3)")
                .bind(&step.aggregate)
                .bind(step.seq as i32)
                .bind(self.instance as i32)
                .execute(pool)
                .await?;
        }
        let _ = self.seen.send(Seen {
            instance: self.instance,
            shard: self.shards.shard_of(&step.aggregate),
            aggregate: step.aggregate,
            seq: step.seq,
        });
        if let Fault::CrashAfter(seq, broker, crashed) = &self.fault {
            if *seq == step.seq && !crashed.swap(true, Ordering::SeqCst) {
                broker.close().await;
            }
        }
        Ok(())
    }
}

/// Fast in-place retries, so tests are quick.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        delays: vec![
            Duration::from_millis(50),
            Duration::from_millis(100),
            Duration::from_millis(200),
        ],
    }
}

/// One service instance: its own connection, and a consumer on every shard
/// queue, as catalog runs them.
struct Instance {
    broker: Arc<Broker>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ConsumeError>>,
}

/// How an [`Instance`] is set up.
struct Setup {
    /// The shard it registers on first.
    start: usize,
    fault: Fault,
    retry: RetryPolicy,
    rebalance: Option<Duration>,
    /// The database the handler writes to (see [`Recorder::work`]).
    work: Option<PgPool>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            start: 0,
            fault: Fault::None,
            retry: quick_retries(),
            rebalance: None,
            work: None,
        }
    }
}

impl Instance {
    async fn start(
        fx: &Fixture,
        id: usize,
        queues: &[WorkQueue],
        seen: mpsc::UnboundedSender<Seen>,
        setup: impl FnOnce(&Arc<Broker>) -> Setup,
    ) -> anyhow::Result<Self> {
        let broker = Broker::connect(
            &amqp_url(),
            fx.ns.clone(),
            &format!("instance-{id}"),
            DEADLINE,
        )
        .await?;
        let setup = setup(&broker);
        let mut consumers = ShardConsumers::new(broker.clone(), queues.to_vec(), format!("i{id}"))
            .start_at(setup.start)
            .in_order_retry(setup.retry)
            .rebalance_every(setup.rebalance);
        consumers.attach().await?;
        let recorder = Recorder {
            instance: id,
            shards: Shards::new(queues.len()),
            seen,
            attempts: Arc::default(),
            fault: setup.fault,
            work: setup.work,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(consumers.run(Arc::new(recorder), shutdown.clone()));
        Ok(Self {
            broker,
            shutdown,
            task,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        self.broker.close().await;
        Ok(())
    }
}

/// Declares the shard queues of a test channel (remembered for cleanup).
async fn declare_shards(fx: &mut Fixture, shards: Shards) -> anyhow::Result<Vec<WorkQueue>> {
    let queues = shards.work_queues(
        &fx.ns.queue("steps"),
        &fx.ns.commands_exchange(),
        &[Step::TYPE],
    );
    for queue in &queues {
        fx.declare(queue).await?;
    }
    Ok(queues)
}

fn step(fx: &Fixture, shards: Shards, aggregate: &str, seq: u32) -> Outgoing {
    let payload = Step {
        aggregate: aggregate.to_owned(),
        seq,
    };
    let key = shards.routing_key(Step::TYPE, aggregate);
    Outgoing::command_to(&fx.ns, key, Envelope::new::<Step>(), &payload)
}

/// Receives until `distinct` different (aggregate, seq) pairs were handled;
/// returns everything handled, duplicates included, in handling order.
async fn collect(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    distinct: usize,
) -> anyhow::Result<Vec<Seen>> {
    let mut all = Vec::new();
    let mut pairs = BTreeSet::new();
    while pairs.len() < distinct {
        let next = tokio::time::timeout(DEADLINE, seen.recv()).await;
        let Ok(Some(one)) = next else {
            anyhow::bail!(
                "{} of {distinct} steps handled within {DEADLINE:?}",
                pairs.len()
            );
        };
        pairs.insert((one.aggregate.clone(), one.seq));
        all.push(one);
    }
    Ok(all)
}

/// Per aggregate: how many handlings came after a *later* step of the same
/// aggregate had been handled. A duplicate (same seq again, as after a
/// failover) is not an inversion.
fn inversions(seen: &[Seen]) -> BTreeMap<String, usize> {
    let mut highest: BTreeMap<String, u32> = BTreeMap::new();
    let mut inversions: BTreeMap<String, usize> = BTreeMap::new();
    for one in seen {
        let count = inversions.entry(one.aggregate.clone()).or_default();
        match highest.get(&one.aggregate) {
            Some(&high) if one.seq < high => *count += 1,
            _ => {
                highest.insert(one.aggregate.clone(), one.seq);
            }
        }
    }
    inversions
}

/// `per_shard` aggregate ids for each shard of `shards`.
fn aggregates(shards: Shards, per_shard: usize) -> Vec<String> {
    let mut taken = vec![0; shards.count];
    let mut chosen = Vec::new();
    for n in 0.. {
        let key = format!("aggregate-{n}");
        let shard = shards.shard_of(&key);
        if taken[shard] < per_shard {
            taken[shard] += 1;
            chosen.push(key);
        }
        if chosen.len() == shards.count * per_shard {
            break;
        }
    }
    chosen
}

#[tokio::test]
async fn each_aggregate_is_handled_in_order_while_instances_share_the_shards() -> anyhow::Result<()>
{
    const STEPS: u32 = 50;
    const PUBLISHERS: usize = 4;
    let mut fx = Fixture::new().await?;
    let shards = Shards::new(4);
    let queues = declare_shards(&mut fx, shards).await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();

    // Three instances, started one after the other (the hard case): the
    // first registers first on every shard, so the broker makes it active
    // everywhere and the others stand by, until the first notices that it
    // is busy on more than its share and hands shards over.
    sqlx::query("CREATE TABLE handled_steps (aggregate TEXT, seq INT, instance INT)")
        .execute(&fx.pool)
        .await?;
    let mut instances = Vec::new();
    for id in 0..3 {
        let pool = fx.pool.clone();
        let setup = |_: &Arc<Broker>| Setup {
            start: id,
            rebalance: Some(Duration::from_millis(100)),
            work: Some(pool),
            ..Setup::default()
        };
        instances.push(Instance::start(&fx, id, &queues, seen_tx.clone(), setup).await?);
    }

    // Eight aggregates, two per shard; four publishers at once, each owning
    // two aggregates and publishing their steps in order, interleaved.
    let aggregates = aggregates(shards, 2);
    let publishers = (0..PUBLISHERS).map(|task| {
        let mine: Vec<String> = aggregates
            .iter()
            .skip(task)
            .step_by(PUBLISHERS)
            .cloned()
            .collect();
        let messages: Vec<Outgoing> = (0..STEPS)
            .flat_map(|seq| mine.iter().map(move |aggregate| (aggregate.clone(), seq)))
            .map(|(aggregate, seq)| step(&fx, shards, &aggregate, seq))
            .collect();
        let broker = fx.broker.clone();
        tokio::spawn(async move {
            let publisher = ConfirmedPublisher::new(&broker).await?;
            for batch in messages.chunks(10) {
                publisher.publish_all(batch).await?;
            }
            publisher.close().await;
            anyhow::Ok(())
        })
    });
    for publisher in futures::future::join_all(publishers).await {
        publisher??;
    }

    let handled = collect(&mut seen, aggregates.len() * STEPS as usize).await?;

    let inversions = inversions(&handled);
    assert!(
        inversions.values().all(|&n| n == 0),
        "out of order: {inversions:?}"
    );
    // The shards were shared: not one instance did all the work.
    let working: BTreeSet<usize> = handled.iter().map(|one| one.instance).collect();
    assert!(working.len() > 1, "only instance {working:?} did work");

    for instance in instances {
        instance.stop().await?;
    }
    fx.cleanup().await
}

#[tokio::test]
async fn a_standby_takes_over_a_shard_where_the_crashed_instance_stopped() -> anyhow::Result<()> {
    const STEPS: u32 = 100;
    let mut fx = Fixture::new().await?;
    let shards = Shards::new(1);
    let queues = declare_shards(&mut fx, shards).await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();

    // A registers first, so A is active; B stands by.
    let crashed = Arc::new(AtomicBool::new(false));
    let a = Instance::start(&fx, 0, &queues, seen_tx.clone(), |broker| Setup {
        fault: Fault::CrashAfter(20, broker.clone(), crashed.clone()),
        ..Setup::default()
    })
    .await?;
    let b = Instance::start(&fx, 1, &queues, seen_tx.clone(), |_| Setup::default()).await?;

    let messages: Vec<Outgoing> = (0..STEPS)
        .map(|seq| step(&fx, shards, "one", seq))
        .collect();
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish_all(&messages)
        .await?;

    let handled = collect(&mut seen, STEPS as usize).await?;

    // A handled the head and lost its connection before acking step 20; the
    // broker returned 20 and everything A had prefetched to the queue, in
    // order, and made B active. B starts with 20 again (a duplicate, which
    // an idempotent handler absorbs), never with a later step.
    assert_eq!(inversions(&handled)["one"], 0, "{handled:?}");
    let by = |instance| -> Vec<u32> {
        handled
            .iter()
            .filter(|one| one.instance == instance)
            .map(|one| one.seq)
            .collect()
    };
    let (head, tail) = (by(0), by(1));
    assert_eq!(head, (0..=20).collect::<Vec<_>>());
    assert_eq!(tail.first(), Some(&20), "B resumed at {tail:?}");
    assert_eq!(tail.last(), Some(&(STEPS - 1)));

    a.stop().await?;
    b.stop().await?;
    fx.cleanup().await
}

#[tokio::test]
async fn a_transient_failure_is_retried_in_place_and_nothing_overtakes_it() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let shards = Shards::new(1);
    let queues = declare_shards(&mut fx, shards).await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let instance = Instance::start(&fx, 0, &queues, seen_tx, |_| Setup {
        fault: Fault::FailFirst { seq: 3, times: 2 },
        ..Setup::default()
    })
    .await?;

    let messages: Vec<Outgoing> = (0..10).map(|seq| step(&fx, shards, "one", seq)).collect();
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish_all(&messages)
        .await?;

    // With delay queues, step 3 would come back after 4..9; in place, the
    // shard waits for it.
    let handled = collect(&mut seen, 10).await?;
    let order: Vec<u32> = handled.iter().map(|one| one.seq).collect();
    assert_eq!(order, (0..10).collect::<Vec<_>>());

    instance.stop().await?;
    let channel = fx.broker.channel().await?;
    await_depth(&channel, &format!("{}.dlq", queues[0].name), 0).await?;
    fx.cleanup().await
}

#[tokio::test]
async fn a_message_failing_past_its_in_place_retries_is_dead_lettered_and_the_shard_moves_on(
) -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let shards = Shards::new(1);
    let queues = declare_shards(&mut fx, shards).await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let instance = Instance::start(&fx, 0, &queues, seen_tx, |_| Setup {
        fault: Fault::AlwaysFail(2),
        ..Setup::default()
    })
    .await?;

    let messages: Vec<Outgoing> = (0..5).map(|seq| step(&fx, shards, "one", seq)).collect();
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish_all(&messages)
        .await?;

    let handled = collect(&mut seen, 4).await?;
    let order: Vec<u32> = handled.iter().map(|one| one.seq).collect();
    assert_eq!(order, [0, 1, 3, 4]);

    let channel = fx.broker.channel().await?;
    let dlq = format!("{}.dlq", queues[0].name);
    await_depth(&channel, &dlq, 1).await?;
    let letters = dead_letters::list(&channel, &dlq, None).await?;
    assert_eq!(letters.len(), 1);
    let reason = letters[0].failure_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("gave up after 3 in-order retries: still broken"),
        "{reason}"
    );

    instance.stop().await?;
    fx.cleanup().await
}

#[tokio::test]
async fn stopping_during_an_in_place_retry_hands_the_messages_back_in_order() -> anyhow::Result<()>
{
    let mut fx = Fixture::new().await?;
    let shards = Shards::new(1);
    let queues = declare_shards(&mut fx, shards).await?;
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    // A retry far in the future: the instance is stopped while it waits.
    let patient = RetryPolicy {
        delays: vec![Duration::from_secs(600)],
    };
    let attempted = Arc::new(Notify::new());
    let instance = Instance::start(&fx, 0, &queues, seen_tx, |_| Setup {
        fault: Fault::Everything(attempted.clone()),
        retry: patient,
        ..Setup::default()
    })
    .await?;

    let messages: Vec<Outgoing> = (0..3).map(|seq| step(&fx, shards, "one", seq)).collect();
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish_all(&messages)
        .await?;
    // The first attempt failed: the instance now waits to retry step 0,
    // holding 1 and 2 (prefetched) behind it.
    tokio::time::timeout(DEADLINE, attempted.notified()).await?;
    let channel = fx.broker.channel().await?;
    await_depth(&channel, &queues[0].name, 0).await?;

    tokio::time::timeout(DEADLINE, instance.stop()).await??;

    // Neither acked nor dead-lettered: back in the shard queue, first one
    // first, for whoever consumes the shard next.
    await_depth(&channel, &queues[0].name, 3).await?;
    await_depth(&channel, &format!("{}.dlq", queues[0].name), 0).await?;
    let reader = fx.broker.channel().await?;
    let mut order = Vec::new();
    for _ in 0..3 {
        let got = reader
            .basic_get(
                queues[0].name.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?
            .ok_or_else(|| anyhow::anyhow!("queue emptied early"))?;
        let step: Step = serde_json::from_slice(&got.delivery.data)?;
        order.push(step.seq);
    }
    assert_eq!(order, [0, 1, 2]);
    fx.cleanup().await
}
