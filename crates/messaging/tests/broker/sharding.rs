//! Sharded channels keep each aggregate's messages in order while several
//! instances share the shards, across a failover, and across retries.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    os::unix::process::ExitStatusExt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use signalbox_messages::{
    channels::{commands, Namespace},
    decode, Envelope, Message, MessageKind,
};
use signalbox_messaging::{
    consumer::ConsumeError, dead_letters, processed, Broker, ConfirmedPublisher, HandleError,
    Handler, Incoming, Outgoing, RetryPolicy, ShardConsumers, Shards, WorkQueue,
};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::{
    sync::{mpsc, Notify},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    child::{self, Child},
    helpers::{amqp_url, await_depth, Fixture, DEADLINE},
};

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
        let recorder = Recorder {
            instance: id,
            shards: Shards::new(queues.len()),
            seen,
            attempts: Arc::default(),
            fault: setup.fault.clone(),
            work: setup.work.clone(),
        };
        Self::run(broker, id, queues, &setup, recorder).await
    }

    /// Registers on every shard of `queues` through `broker` (attached when
    /// this returns), then consumes them with `handler` on a task.
    async fn run<H: Handler>(
        broker: Arc<Broker>,
        id: usize,
        queues: &[WorkQueue],
        setup: &Setup,
        handler: H,
    ) -> anyhow::Result<Self> {
        let mut consumers = ShardConsumers::new(broker.clone(), queues.to_vec(), format!("i{id}"))
            .start_at(setup.start)
            .in_order_retry(setup.retry.clone())
            .rebalance_every(setup.rebalance);
        consumers.attach().await?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(consumers.run(Arc::new(handler), shutdown.clone()));
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

/// The shard queues of the test channel in namespace `ns`.
fn shard_queues(ns: &Namespace, shards: Shards) -> Vec<WorkQueue> {
    shards.work_queues(&ns.queue("steps"), &ns.commands_exchange(), &[Step::TYPE])
}

/// Declares the shard queues of a test channel (remembered for cleanup).
async fn declare_shards(fx: &mut Fixture, shards: Shards) -> anyhow::Result<Vec<WorkQueue>> {
    let queues = shard_queues(&fx.ns, shards);
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

/// One handling by the [`Ledger`] handler, as it reports it.
#[derive(Debug, Clone)]
struct Handled {
    instance: usize,
    message_id: Uuid,
    aggregate: String,
    seq: u32,
    /// The claim was new, so this handling had the effect; otherwise it was
    /// a duplicate the claim absorbed.
    first: bool,
    redelivered: bool,
}

impl Handled {
    /// As the victim says it: `handled <instance> <id> <aggregate> <seq>
    /// <first> <redelivered>`.
    fn line(&self) -> String {
        format!(
            "handled {} {} {} {} {} {}",
            self.instance, self.message_id, self.aggregate, self.seq, self.first, self.redelivered
        )
    }

    fn parse(line: &str) -> anyhow::Result<Self> {
        let fields: Vec<&str> = line.split(' ').collect();
        let ["handled", instance, id, aggregate, seq, first, redelivered] = fields[..] else {
            anyhow::bail!("not a handling: {line:?}");
        };
        Ok(Self {
            instance: instance.parse()?,
            message_id: id.parse()?,
            aggregate: aggregate.to_owned(),
            seq: seq.parse()?,
            first: first.parse()?,
            redelivered: redelivered.parse()?,
        })
    }
}

/// Where a [`Ledger`] handler reports its handlings.
enum Report {
    /// An instance in the test's process: on a channel.
    Channel(mpsc::UnboundedSender<Handled>),
    /// The victim, in a child process: a line each to the parent. Its
    /// `hold_at`-th effect is committed and reported, and then the handler
    /// stops there, before the ack, until the process is killed (`holding
    /// <id>` says so).
    Lines {
        hold_at: usize,
        effects: AtomicUsize,
    },
}

/// An idempotent handler doing real work: one transaction claims the message
/// id (`processed_messages`) and, when the claim is new, appends the step to
/// the `ledger` table, whose `BIGSERIAL` id numbers the effects in the order
/// they were made (at the insert), whichever instance or process made them.
struct Ledger {
    instance: usize,
    pool: PgPool,
    report: Report,
}

impl Handler for Ledger {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let step: Step = decode(&message.envelope, &message.body)?;
        let message_id = message.envelope.message_id;
        let mut tx = self.pool.begin().await?;
        let first = processed::claim(&mut tx, "steps", message_id).await?;
        if first {
            sqlx::query(
                "INSERT INTO ledger (message_id, aggregate, seq, instance) VALUES ($1, $2, $3, $4)",
            )
            .bind(message_id)
            .bind(&step.aggregate)
            .bind(step.seq as i32)
            .bind(self.instance as i32)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let handled = Handled {
            instance: self.instance,
            message_id,
            aggregate: step.aggregate,
            seq: step.seq,
            first,
            redelivered: message.redelivered,
        };
        match &self.report {
            Report::Channel(report) => {
                let _ = report.send(handled);
            }
            Report::Lines { hold_at, effects } => {
                child::say(&handled.line());
                // Relaxed: the shard tasks share only the count, which
                // `fetch_add` keeps exact under any ordering.
                if first && effects.fetch_add(1, Ordering::Relaxed) + 1 == *hold_at {
                    // Committed, not acked: the worst moment to die.
                    child::say(&format!("holding {message_id}"));
                    std::future::pending::<()>().await;
                }
            }
        }
        Ok(())
    }
}

/// How the victim dies: `kill -9`, which it cannot catch.
const SIGKILL: i32 = 9;

/// The victim's part, played in a child process (see [`crate::child`]).
#[derive(Serialize, Deserialize)]
struct Victim {
    namespace: String,
    database_url: String,
    shards: usize,
    hold_at: usize,
}

impl Victim {
    const INSTANCE: usize = 0;

    /// Consumes every shard, as the first instance to register, until it is
    /// killed; says `attached` once it is registered everywhere.
    async fn play(self) -> anyhow::Result<()> {
        let ns = Namespace::new(self.namespace);
        let broker = Broker::connect(&amqp_url(), ns.clone(), "victim", DEADLINE).await?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.database_url)
            .await?;
        let queues = shard_queues(&ns, Shards::new(self.shards));
        let ledger = Ledger {
            instance: Self::INSTANCE,
            pool,
            report: Report::Lines {
                hold_at: self.hold_at,
                effects: AtomicUsize::new(0),
            },
        };
        let setup = Setup {
            start: 0,
            rebalance: Some(Duration::from_millis(100)),
            ..Setup::default()
        };
        let instance = Instance::run(broker, Self::INSTANCE, &queues, &setup, ledger).await?;
        child::say("attached");
        instance.task.await??;
        anyhow::bail!("the victim's consumers stopped before it was killed")
    }
}

#[tokio::test]
async fn at_scale_every_aggregate_stays_in_order_while_a_consumer_instance_is_killed(
) -> anyhow::Result<()> {
    if let Some(victim) = child::role::<Victim>() {
        return victim.play().await;
    }
    // 8 writers × 50 aggregates × 40 steps = 2,000 commands.
    const WRITERS: usize = 8;
    const AGGREGATES: usize = 50;
    const STEPS: u32 = 40;
    const COMMANDS: usize = AGGREGATES * STEPS as usize;
    // The victim is killed in its 100th effect: committed, not acked.
    const HOLD_AT: usize = 100;
    let started = std::time::Instant::now();
    let mut fx = Fixture::new().await?;
    let shards = Shards::new(commands::CATALOG_SHARDS);
    let queues = declare_shards(&mut fx, shards).await?;
    sqlx::query(
        "CREATE TABLE ledger (id BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL,
         aggregate TEXT NOT NULL, seq INT NOT NULL, instance INT NOT NULL)",
    )
    .execute(&fx.pool)
    .await?;

    // Three instances: the victim in a child process, registered first on
    // every shard (so it starts active everywhere and hands shards over as
    // the others arrive), and two survivors here.
    let mut victim = Child::spawn(
        concat!(
            module_path!(),
            "::at_scale_every_aggregate_stays_in_order_while_a_consumer_instance_is_killed"
        ),
        &Victim {
            namespace: fx.ns.prefix().to_owned(),
            database_url: fx.database_url.clone(),
            shards: shards.count,
            hold_at: HOLD_AT,
        },
    )?;
    anyhow::ensure!(
        victim.next().await? == "attached",
        "the victim did not attach"
    );
    let (report, mut reports) = mpsc::unbounded_channel();
    let mut survivors = Vec::new();
    for id in 1..=2 {
        let broker =
            Broker::connect(&amqp_url(), fx.ns.clone(), &format!("i{id}"), DEADLINE).await?;
        let setup = Setup {
            start: id,
            rebalance: Some(Duration::from_millis(100)),
            ..Setup::default()
        };
        let ledger = Ledger {
            instance: id,
            pool: fx.pool.clone(),
            report: Report::Channel(report.clone()),
        };
        survivors.push(Instance::run(broker, id, &queues, &setup, ledger).await?);
    }

    // Eight writers at once, each with its own confirming channel and every
    // eighth aggregate, publishing their steps in order, interleaved. Each
    // publishes its first half, then waits: the second half goes out as the
    // victim is killed, so the kill lands with commands in every state
    // (handled, held unacked by the victim, queued, not yet published).
    let aggregates: Vec<String> = (0..AGGREGATES).map(|n| format!("aggregate-{n}")).collect();
    let (killing, second_half) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let messages: Vec<Outgoing> = (0..STEPS)
                .flat_map(|seq| {
                    aggregates
                        .iter()
                        .skip(writer)
                        .step_by(WRITERS)
                        .map(move |aggregate| (aggregate, seq))
                })
                .map(|(aggregate, seq)| step(&fx, shards, aggregate, seq))
                .collect();
            let broker = fx.broker.clone();
            let mut second_half = second_half.clone();
            tokio::spawn(async move {
                let publisher = ConfirmedPublisher::new(&broker).await?;
                let (first, second) = messages.split_at(messages.len() / 2);
                for batch in first.chunks(10) {
                    publisher.publish_all(batch).await?;
                }
                second_half.wait_for(|&go| go).await?;
                for batch in second.chunks(10) {
                    publisher.publish_all(batch).await?;
                }
                publisher.close().await;
                anyhow::Ok(())
            })
        })
        .collect();

    // The victim handles until it holds its HOLD_AT-th effect; then it is
    // killed, as the writers go on.
    let mut handled: Vec<Handled> = Vec::new();
    let held = loop {
        let line = victim.next().await?;
        match line.strip_prefix("holding ") {
            Some(id) => break id.parse::<Uuid>()?,
            None => handled.push(Handled::parse(&line)?),
        }
    };
    killing.send(true)?;
    let (status, last_words) = victim.kill().await?;
    assert_eq!(status.signal(), Some(SIGKILL), "{status}");
    for line in last_words {
        handled.push(Handled::parse(&line)?);
    }

    // Every command handled: wait for the survivors until every id has
    // been handled by someone.
    let mut ids: HashSet<Uuid> = handled.iter().map(|one| one.message_id).collect();
    while ids.len() < COMMANDS {
        let next = tokio::time::timeout(DEADLINE, reports.recv()).await;
        let Ok(Some(one)) = next else {
            anyhow::bail!(
                "{} of {COMMANDS} commands handled within {DEADLINE:?}",
                ids.len()
            );
        };
        ids.insert(one.message_id);
        handled.push(one);
    }
    for writer in writers {
        writer.await??;
    }

    // The ledger holds the effects, in the order they happened.
    let ledger: Vec<(Uuid, String, i32, i32)> =
        sqlx::query_as("SELECT message_id, aggregate, seq, instance FROM ledger ORDER BY id")
            .fetch_all(&fx.pool)
            .await?;
    // Once each: 2,000 effects of 2,000 distinct commands.
    assert_eq!(ledger.len(), COMMANDS);
    let distinct: HashSet<Uuid> = ledger.iter().map(|row| row.0).collect();
    assert_eq!(distinct.len(), COMMANDS);
    // In order: no step of an aggregate after a later one, and none missing.
    let in_ledger: Vec<Seen> = ledger
        .iter()
        .map(|(_, aggregate, seq, instance)| Seen {
            instance: *instance as usize,
            shard: shards.shard_of(aggregate),
            aggregate: aggregate.clone(),
            seq: *seq as u32,
        })
        .collect();
    let inversions = inversions(&in_ledger);
    assert_eq!(inversions.len(), AGGREGATES);
    assert!(
        inversions.values().all(|&n| n == 0),
        "out of order: {inversions:?}"
    );
    for aggregate in &aggregates {
        let steps: Vec<u32> = in_ledger
            .iter()
            .filter(|one| one.aggregate == *aggregate)
            .map(|one| one.seq)
            .collect();
        assert_eq!(steps, (0..STEPS).collect::<Vec<_>>(), "{aggregate}");
    }

    // The victim did work before it died, and the survivors did the rest.
    let by_victim = in_ledger
        .iter()
        .filter(|one| one.instance == Victim::INSTANCE)
        .count();
    assert!(by_victim >= HOLD_AT, "the victim made {by_victim} effects");
    assert!(by_victim < COMMANDS, "the survivors made no effect");
    // The command the victim died holding: its effect was committed; the
    // broker gave it to a survivor again, whose claim absorbed it; and that
    // aggregate's later steps (published after the kill) were handled by the
    // survivors, in order.
    let (_, held_aggregate, held_seq, by) = ledger
        .iter()
        .find(|row| row.0 == held)
        .expect("the held command's effect is in the ledger");
    assert_eq!(*by as usize, Victim::INSTANCE);
    assert!(
        handled.iter().any(|one| one.message_id == held
            && one.instance != Victim::INSTANCE
            && one.redelivered
            && !one.first),
        "no survivor was given the held command again"
    );
    let after: Vec<&Seen> = in_ledger
        .iter()
        .filter(|one| one.aggregate == *held_aggregate && one.seq as i32 > *held_seq)
        .collect();
    assert!(!after.is_empty());
    assert!(after.iter().all(|one| one.instance != Victim::INSTANCE));
    // Duplicates come from redeliveries only, and only the claim saw them.
    let duplicates: Vec<&Handled> = handled.iter().filter(|one| !one.first).collect();
    assert!(
        duplicates.iter().all(|one| one.redelivered),
        "a duplicate that was not a redelivery: {duplicates:?}"
    );
    println!(
        "{COMMANDS} commands in {:?}: {by_victim} effects by the victim, {} by the survivors, \
         {} duplicates absorbed",
        started.elapsed(),
        COMMANDS - by_victim,
        duplicates.len()
    );

    for survivor in survivors {
        survivor.stop().await?;
    }
    fx.cleanup().await
}
