//! Sharing the shards between the instances of a service.
//!
//! The broker (classic queues, RabbitMQ 3.x) makes the *first* registered
//! consumer of a shard active and never moves a shard while that consumer
//! lives. Left alone, the instance that started first would hold every
//! shard, and after a rolling restart the last survivor would. So each
//! instance runs its shard consumers through [`ShardConsumers`], which
//!
//! - registers on the shards in its own rotation ([`Shards::attach_order`],
//!   from a random start), so instances that start together are first on
//!   different shards;
//! - and, every little while, compares the shards it is *busy* on (it
//!   received deliveries from them lately: a standby receives nothing) with
//!   its fair share, `ceil(shards / instances)`, where the number of
//!   instances is the queues' consumer count. If it holds more, it **hands
//!   the extra shards over**: it stops that shard's consumer gracefully (the
//!   delivery in hand is finished and acked, the prefetched ones return to
//!   the queue in order), which makes the next registered instance active,
//!   and registers again at the back of the line.
//!
//! ```text
//!   start:  register on shard s, s+1, …, s-1   (s random per instance)
//!   every DEFAULT_REBALANCE:
//!     busy = shards that delivered to us lately
//!     share = ceil(shards / instances)          (instances: consumer count)
//!     busy > share ─▶ for each extra shard: stop its consumer gracefully
//!                       ─▶ the broker makes the next standby active
//!                       ─▶ register again: now a standby here
//! ```
//!
//! A handover is an ordinary failover, so it keeps the order; the
//! rebalancing only decides *who* is active, never *whether* there is one
//! active consumer per shard: that stays the broker's job. (Newer brokers
//! can do this themselves for quorum queues, by honouring consumer
//! priorities in single-active-consumer selection.)

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use lapin::{options::QueueDeclareOptions, types::FieldTable};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{InOrder, Shards};
use crate::{
    connection::close_quietly,
    consumer::{ConsumeError, Consumer, Flag, HandleError, Handler, Incoming, Source},
    topology::{RetryPolicy, WorkQueue},
    Broker,
};

/// One instance's consumers on every shard queue of a sharded channel: one
/// [`Consumer`] per shard, each running its own task with the same handler
/// (wrapped in [`InOrder`]), plus the rebalancing described in the module
/// documentation.
pub struct ShardConsumers {
    broker: Arc<Broker>,
    queues: Vec<WorkQueue>,
    tag: String,
    start: usize,
    retry: RetryPolicy,
    rebalance: Option<Duration>,
    /// The attached flag of each shard's current consumer (replaced when a
    /// shard is handed over and registered again).
    flags: Arc<Mutex<Vec<Flag>>>,
    /// Consumers registered by [`ShardConsumers::attach`], shard by shard.
    prepared: Vec<(usize, Consumer)>,
}

/// Readiness of a [`ShardConsumers`]: every shard has a consumer attached.
#[derive(Clone)]
pub struct AllAttached(Arc<Mutex<Vec<Flag>>>);

impl AllAttached {
    pub fn get(&self) -> bool {
        self.0
            .lock()
            .map(|flags| flags.iter().all(Flag::get))
            .unwrap_or(false)
    }

    /// As a readiness probe (`Health::flag("commands", attached.probe())`).
    pub fn probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let all = self.clone();
        move || all.get()
    }
}

/// How often an instance checks its share unless told otherwise.
pub const DEFAULT_REBALANCE: Duration = Duration::from_secs(15);

impl ShardConsumers {
    /// `queues` are the shard queues in shard order (see
    /// [`Shards::work_queues`]); `tag` names the consumers in the broker,
    /// suffixed with the shard.
    pub fn new(broker: Arc<Broker>, queues: Vec<WorkQueue>, tag: impl Into<String>) -> Self {
        let flags = vec![Flag::default(); queues.len()];
        Self {
            broker,
            queues,
            tag: tag.into(),
            start: 0,
            retry: RetryPolicy::default(),
            rebalance: Some(DEFAULT_REBALANCE),
            flags: Arc::new(Mutex::new(flags)),
            prepared: Vec::new(),
        }
    }

    /// The shard to register on first (see [`Shards::attach_order`]); give
    /// every instance a different, random one.
    pub fn start_at(mut self, start: usize) -> Self {
        self.start = start;
        self
    }

    /// The delays of the in-place retries (see [`InOrder`]).
    pub fn in_order_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How often to compare the busy shards with the fair share; `None`
    /// never hands a shard over (the broker's first-come choice stands).
    pub fn rebalance_every(mut self, every: Option<Duration>) -> Self {
        self.rebalance = every;
        self
    }

    /// True while every shard has an attached consumer.
    pub fn attached(&self) -> AllAttached {
        AllAttached(self.flags.clone())
    }

    /// Declares every shard queue and registers on it, in this instance's
    /// rotation, before `run`: a service calls this while it starts.
    pub async fn attach(&mut self) -> Result<(), ConsumeError> {
        for shard in self.attach_order() {
            let mut consumer = self.consumer(shard);
            consumer.attach().await?;
            self.prepared.push((shard, consumer));
        }
        Ok(())
    }

    /// Consumes every shard until `shutdown`, handing shards over when this
    /// instance holds more than its share.
    pub async fn run<H: Handler>(
        mut self,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), ConsumeError> {
        let activity = Activity::new(self.queues.len());
        let mut running: Vec<Option<Running>> = (0..self.queues.len()).map(|_| None).collect();
        let mut prepared = std::mem::take(&mut self.prepared);
        if prepared.is_empty() {
            // Not attached beforehand: the consumers declare and register
            // when their sessions start.
            prepared = self
                .attach_order()
                .into_iter()
                .map(|shard| (shard, self.consumer(shard)))
                .collect();
        }
        for (shard, consumer) in prepared {
            running[shard] = Some(self.spawn(shard, consumer, &handler, &activity, &shutdown));
        }

        let mut ticks = self.rebalance.map(|every| {
            let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            tokio::select! {
                // Stop: every shard consumer has the same token as parent.
                _ = shutdown.cancelled() => break,
                // Time to compare the busy shards with the fair share.
                _ = tick(&mut ticks) => {
                    let excess = match self.excess(&activity).await {
                        Ok(excess) => excess,
                        Err(error) => {
                            tracing::debug!(%error, "shard balance check failed");
                            Vec::new()
                        }
                    };
                    for shard in excess {
                        if let Some(current) = running[shard].take() {
                            current.stop().await;
                        }
                        let mut consumer = self.consumer(shard);
                        // Back of the line: now a standby for this shard.
                        if let Err(error) = consumer.attach().await {
                            tracing::warn!(shard, %error, "re-registering after handover failed; the consumer retries");
                        }
                        activity.forget(shard);
                        running[shard] = Some(self.spawn(shard, consumer, &handler, &activity, &shutdown));
                        tracing::info!(consumer = %self.tag, shard, "shard handed over");
                    }
                }
            }
        }
        let mut first_error = None;
        for current in running.into_iter().flatten() {
            if let Ok(Err(error)) = current.task.await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every shard, in this instance's rotation (none without queues).
    fn attach_order(&self) -> Vec<usize> {
        if self.queues.is_empty() {
            return Vec::new();
        }
        Shards::new(self.queues.len())
            .attach_order(self.start)
            .collect()
    }

    fn consumer(&self, shard: usize) -> Consumer {
        let consumer = Consumer::new(
            self.broker.clone(),
            Source::Work(self.queues[shard].clone()),
            format!("{}/shard-{shard}", self.tag),
        );
        if let Ok(mut flags) = self.flags.lock() {
            flags[shard] = consumer.attached();
        }
        consumer
    }

    /// Runs `consumer` on its own task, stoppable on its own (a child of
    /// `shutdown`) for a handover.
    fn spawn<H: Handler>(
        &self,
        shard: usize,
        consumer: Consumer,
        handler: &Arc<H>,
        activity: &Activity,
        shutdown: &CancellationToken,
    ) -> Running {
        let stop = shutdown.child_token();
        let handler = Tracked {
            inner: InOrder::new(handler.clone(), self.retry.clone(), stop.clone()),
            shard,
            activity: activity.clone(),
        };
        Running {
            task: tokio::spawn(consumer.run(handler, stop.clone())),
            stop,
        }
    }

    /// The shards to hand over: those this instance was busy on beyond its
    /// fair share.
    async fn excess(&self, activity: &Activity) -> Result<Vec<usize>, lapin::Error> {
        let Some(window) = self.rebalance else {
            return Ok(Vec::new());
        };
        let busy = activity.busy_within(window);
        if busy.len() <= 1 || !self.broker.is_connected() {
            return Ok(Vec::new());
        }
        // Every instance registers on every shard, so a shard's consumer
        // count is the number of instances (the largest, in case one is
        // just re-registering somewhere).
        let channel = self.broker.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut instances = 1usize;
        for queue in &self.queues {
            let declared = channel
                .queue_declare(queue.name.as_str().into(), passive, FieldTable::default())
                .await?;
            instances = instances.max(declared.consumer_count() as usize);
        }
        close_quietly(&channel).await;
        let share = self.queues.len().div_ceil(instances);
        if busy.len() <= share {
            return Ok(Vec::new());
        }
        tracing::info!(consumer = %self.tag, busy = busy.len(), share, instances, "more than a fair share of shards; handing some over");
        Ok(busy[share..].to_vec())
    }
}

/// A shard consumer's task and the token that stops it alone.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), ConsumeError>>,
}

impl Running {
    /// Graceful: the delivery in hand is finished, the rest returns to the
    /// queue when the channel closes.
    async fn stop(self) {
        self.stop.cancel();
        if let Ok(Err(error)) = self.task.await {
            tracing::debug!(%error, "shard consumer ended with an error");
        }
    }
}

/// Waits for the next rebalancing tick, or forever when there is none.
async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// When each shard last delivered to this instance (milliseconds since
/// `since`, plus one; zero for never).
#[derive(Clone)]
struct Activity {
    since: Instant,
    last: Arc<Vec<AtomicU64>>,
}

impl Activity {
    fn new(shards: usize) -> Self {
        Self {
            since: Instant::now(),
            last: Arc::new((0..shards).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    fn touch(&self, shard: usize) {
        let now = self.since.elapsed().as_millis() as u64 + 1;
        self.last[shard].store(now, Ordering::Relaxed);
    }

    fn forget(&self, shard: usize) {
        self.last[shard].store(0, Ordering::Relaxed);
    }

    /// The shards that delivered within `window`: the ones this instance is
    /// active on and that have work.
    fn busy_within(&self, window: Duration) -> Vec<usize> {
        let now = self.since.elapsed().as_millis() as u64 + 1;
        let window = window.as_millis() as u64;
        (0..self.last.len())
            .filter(|&shard| {
                let last = self.last[shard].load(Ordering::Relaxed);
                last != 0 && now.saturating_sub(last) <= window
            })
            .collect()
    }
}

/// Notes each delivery of its shard in [`Activity`], then handles it.
struct Tracked<H> {
    inner: InOrder<H>,
    shard: usize,
    activity: Activity,
}

impl<H: Handler> Handler for Tracked<H> {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        self.activity.touch(self.shard);
        self.inner.handle(message).await
    }
}
