//! Sharded channels: per-aggregate order with more than one consumer.
//!
//! # The problem
//!
//! Competing consumers on one queue share the load, but they lose the order:
//! with two catalog instances on one command queue, `reserve_stock` for an
//! order can go to instance A and the `release_stock` that follows it to
//! instance B, and B may well finish first. A release that overtakes its
//! reservation finds nothing to release, and then the reservation takes the
//! stock for good. (Catalog also refuses a reservation that comes after its
//! release, as a second line of defence; keeping the order is the first.) A
//! single consumer keeps the order but does not scale and is a single point
//! of failure.
//!
//! Most commands only need order *per aggregate* (per order id), not
//! globally. That is what sharding gives.
//!
//! # The pattern
//!
//! In the order scenario, the saga in orders writes `reserve_stock` (and,
//! to compensate, `release_stock`) into its outbox; the relay publishes them
//! in commit order to catalog's shard queues:
//!
//! ```text
//!                                 commands exchange (direct)
//!   saga ─ reserve_stock(order 7) ──▶ catalog.reserve_stock.2 ──▶ <ns>.catalog.commands.shard.2
//!   saga ─ release_stock(order 7) ──▶ catalog.release_stock.2 ──▶ <ns>.catalog.commands.shard.2
//!   saga ─ reserve_stock(order 9) ──▶ catalog.reserve_stock.0 ──▶ <ns>.catalog.commands.shard.0
//!                                                                    │ single active consumer
//!                              instance A (active on 0, 3) ◀─────────┤
//!                              instance B (active on 1, 2) ◀─────────┘ (standby on the rest)
//! ```
//!
//! 1. There are `N` shard queues, `<base>.shard.<i>` ([`Shards::queue`]).
//! 2. The **publisher** computes the shard from the aggregate id with a
//!    stable hash ([`Shards::shard_of`]) and puts it into the routing key:
//!    `<message type>.<shard>` ([`Shards::routing_key`]). Each shard queue is
//!    bound to the commands exchange once per message type it takes, with its
//!    own suffix ([`Shards::work_queues`]). Every message of one aggregate
//!    therefore lands in the same queue, and a queue is FIFO.
//! 3. Each shard queue is declared **single active consumer**. Every instance
//!    of the service registers a consumer on every shard; the broker delivers
//!    a shard's messages to one of them only (the *active* one) and keeps the
//!    others as standbys. One consumer handling one FIFO queue one message at
//!    a time (the consumer loop handles deliveries sequentially) keeps the
//!    order; different shards go to different consumers, which shares the
//!    load.
//!
//! # Why single active consumer, not one exclusive consumer per shard
//!
//! The ordering needs *at most one* consumer per shard at any moment. An
//! exclusive consumer would give that too, but the other instances could
//! then only poll for the moment the owner disappears. With single active
//! consumer they are registered already, and the broker switches at once:
//!
//! **Failover.** When the active consumer goes away (its process dies, its
//! connection drops, it shuts down), the broker puts its unacknowledged
//! deliveries back into the queue *at their original positions* and makes
//! the next registered consumer active. That consumer starts from the head of
//! the queue, so it sees the messages in the same order, beginning with the
//! one that was in flight (which it may therefore handle a second time: the
//! idempotent handler's `processed_messages` claim absorbs that duplicate).
//! No message of the shard can be handled by the new consumer while the old
//! one still holds an earlier one, because the old one's deliveries only
//! return when its channel is gone.
//!
//! # Why publisher-side hashing
//!
//! RabbitMQ has a consistent-hash exchange plugin that would pick the queue
//! itself. Hashing in the publisher instead needs no plugin, keeps the
//! routing key readable (`catalog.release_stock.2` in the management UI says
//! what and where), and makes the mapping an ordinary function that is unit
//! tested with fixed vectors. The price: publisher and consumer must agree on
//! `N` and on the hash. The hash is fixed here, in one place, and it must
//! never change: it is FNV-1a (64 bit) of the key's bytes, mapped to a shard
//! by *jump consistent hashing*, not std's `DefaultHasher`, which is
//! randomised per process and would send the same order to different shards
//! from different instances.
//!
//! # Changing the number of shards
//!
//! Jump consistent hashing moves as few aggregates as possible when `N` grows
//! (from `N` to `N + 1`, only about `1/(N + 1)` of them move, all to the new
//! shard). Those that move lose their ordering guarantee for as long as old
//! messages for them wait in their old shard, so grow `N` while the queues
//! are drained (stop the publishers' relays, wait for the shard queues to be
//! empty, deploy). Consumers must run at least as many shards as publishers
//! use, or messages for the missing shards are unroutable.
//!
//! # Retries must not reorder
//!
//! The ordinary retry path ([`crate::consumer`]) moves a failed message to a
//! delay queue and acks it, so the messages behind it overtake it. On a
//! sharded queue that is exactly the reordering we are avoiding. Shard
//! queues therefore have no delay queues; the handler is wrapped in
//! [`InOrder`], which retries a transiently failed message *in place*, with
//! growing delays, while it holds the shard (the head-of-line blocking is the
//! price of the order, and it only affects the aggregates of that shard).
//! When the retries are used up the message goes to the dead-letter queue
//! with the reason, and the shard moves on. When the instance stops while it
//! waits for a retry, the message is handed back untouched
//! ([`HandleError::Interrupted`]) for the next active consumer.
//!
//! # Sharing the load: what single active consumer does not do
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

use crate::{
    chain::Chain,
    connection::close_quietly,
    consumer::{ConsumeError, Consumer, Flag, HandleError, Handler, Incoming, Source},
    topology::{RetryPolicy, WorkQueue},
    Broker,
};

/// The shards of one sharded channel: how many there are, and which one an
/// aggregate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards {
    /// At least 1.
    pub count: usize,
}

impl Shards {
    /// `count` shards; 0 is taken as 1 (one shard is a plain ordered queue).
    pub fn new(count: usize) -> Self {
        Self {
            count: count.max(1),
        }
    }

    /// The shard of the aggregate with id `key`, in `0..count`. The same key
    /// gives the same shard in every process, on every platform, forever.
    pub fn shard_of(&self, key: impl AsRef<[u8]>) -> usize {
        jump_consistent_hash(fnv1a_64(key.as_ref()), self.count)
    }

    /// The routing key that sends a `message_type` message about aggregate
    /// `key` to its shard: `<message type>.<shard>`.
    pub fn routing_key(&self, message_type: &str, key: impl AsRef<[u8]>) -> String {
        Self::shard_routing_key(message_type, self.shard_of(key))
    }

    /// The routing key of `message_type` on shard `shard`.
    pub fn shard_routing_key(message_type: &str, shard: usize) -> String {
        format!("{message_type}.{shard}")
    }

    /// The name of shard `shard` of the channel `base`: `<base>.shard.<i>`.
    pub fn queue(base: &str, shard: usize) -> String {
        format!("{base}.shard.{shard}")
    }

    /// Every shard queue of the channel `base`, shard 0 first.
    pub fn queues(&self, base: &str) -> Vec<String> {
        (0..self.count)
            .map(|shard| Self::queue(base, shard))
            .collect()
    }

    /// The shard queues of `base`, ready to declare: single active consumer,
    /// bound on `exchange` for each of `message_types` with the shard's
    /// suffix, and without delay queues (see [`InOrder`]: a delay queue
    /// would let later messages overtake a retried one). Failures still end
    /// in `<shard queue>.dlq`.
    pub fn work_queues(
        &self,
        base: &str,
        exchange: &str,
        message_types: &[&str],
    ) -> Vec<WorkQueue> {
        (0..self.count)
            .map(|shard| {
                let queue = message_types.iter().fold(
                    WorkQueue::new(Self::queue(base, shard)),
                    |queue, message_type| {
                        queue.bind(exchange, Self::shard_routing_key(message_type, shard))
                    },
                );
                queue
                    .retry(RetryPolicy { delays: Vec::new() })
                    .single_active_consumer()
            })
            .collect()
    }

    /// The order in which an instance registers its shard consumers: all
    /// shards, starting at `start` and wrapping around. Each instance picks
    /// its own (random) start, so instances that start together become the
    /// first, and hence active, consumer of different shards.
    pub fn attach_order(&self, start: usize) -> impl Iterator<Item = usize> {
        let count = self.count;
        (0..count).map(move |i| (start + i) % count)
    }
}

/// FNV-1a, 64 bit: a tiny, fixed, well-known hash. Not for security (an
/// adversary can choose keys that collide), which does not matter for
/// spreading order ids.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// Jump consistent hashing (Lamping and Veach, 2014): maps a 64-bit hash to
/// one of `buckets` buckets such that growing `buckets` by one moves only the
/// keys that now belong to the new bucket.
pub fn jump_consistent_hash(mut key: u64, buckets: usize) -> usize {
    let buckets = buckets.max(1) as i64;
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < buckets {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as usize
}

/// A handler wrapper for ordered (sharded) queues: a transient failure is
/// retried right here, with the delays of `retry`, while the message stays
/// unacknowledged at the head of its shard, so nothing behind it can
/// overtake it.
///
/// - Retries used up: the message is rejected with the reason (it goes to
///   the dead-letter queue, from where it can be replayed) and the shard
///   moves on.
/// - Shutdown while waiting for a retry: the message is handed back to the
///   queue untouched ([`HandleError::Interrupted`]), together with everything
///   prefetched behind it, for the next active consumer.
pub struct InOrder<H> {
    inner: Arc<H>,
    retry: RetryPolicy,
    shutdown: CancellationToken,
}

impl<H: Handler> InOrder<H> {
    pub fn new(inner: Arc<H>, retry: RetryPolicy, shutdown: CancellationToken) -> Self {
        Self {
            inner,
            retry,
            shutdown,
        }
    }
}

impl<H: Handler> Handler for InOrder<H> {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let mut retries = 0u32;
        loop {
            let error = match self.inner.handle(message.clone()).await {
                Err(HandleError::Transient(error)) => error,
                // Success, a rejection or an interruption: settled as usual.
                other => return other,
            };
            let Some(delay) = self.retry.delay(retries) else {
                // The reason becomes the dead letter's header: text, but
                // the whole chain.
                return Err(HandleError::Reject(format!(
                    "gave up after {retries} in-order retries: {}",
                    Chain(&*error)
                )));
            };
            tracing::warn!(
                message_id = %message.envelope.message_id,
                message_type = %message.envelope.message_type,
                retries,
                retry_in = ?delay,
                error = %Chain(&*error),
                "handler failed; retrying in place to keep the order"
            );
            tokio::select! {
                // Stopping: give the message back rather than decide its fate.
                _ = self.shutdown.cancelled() => return Err(HandleError::Interrupted),
                // The shard waits with us: nothing behind this message runs.
                _ = tokio::time::sleep(delay) => {}
            }
            retries += 1;
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_64() {
        // The published test vectors of FNV-1a (64 bit).
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn an_aggregate_maps_to_the_same_shard_in_every_process() {
        // Fixed vectors: if one of these changes, publishers and consumers
        // built from different versions would disagree about where an order's
        // commands go. They must never change.
        let four = Shards::new(4);
        let eight = Shards::new(8);
        let cases = [
            ("", 1, 1),
            ("a", 2, 2),
            ("foobar", 1, 5),
            ("0193a4c0-0000-7000-8000-000000000001", 1, 1),
            ("0193a4c0-0000-7000-8000-000000000002", 2, 7),
            ("0193a4c0-0000-7000-8000-000000000003", 0, 6),
            ("0193a4c0-0000-7000-8000-000000000004", 3, 3),
        ];
        for (key, in_four, in_eight) in cases {
            assert_eq!(four.shard_of(key), in_four, "{key:?} in 4 shards");
            assert_eq!(eight.shard_of(key), in_eight, "{key:?} in 8 shards");
        }
    }

    #[test]
    fn growing_the_shard_count_moves_keys_only_to_the_new_shard() {
        let (before, after) = (Shards::new(4), Shards::new(5));
        let mut moved = 0;
        for n in 0..10_000 {
            let key = format!("order-{n}");
            let (old, new) = (before.shard_of(&key), after.shard_of(&key));
            if old != new {
                assert_eq!(new, 4, "{key} moved between old shards");
                moved += 1;
            }
        }
        // About a fifth move; plain `hash % n` would move about four fifths.
        assert!((1_500..2_500).contains(&moved), "{moved} moved");
    }

    #[test]
    fn keys_spread_over_all_shards() {
        let shards = Shards::new(4);
        let mut counts = [0usize; 4];
        for n in 0..4_000 {
            counts[shards.shard_of(uuid::Uuid::now_v7().to_string() + &n.to_string())] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn the_routing_key_names_the_message_type_and_the_shard() {
        let shards = Shards::new(4);
        let key = "0193a4c0-0000-7000-8000-000000000004";
        assert_eq!(
            shards.routing_key("catalog.release_stock", key),
            "catalog.release_stock.3"
        );
        assert_eq!(
            shards.queues("t1.catalog.commands"),
            [
                "t1.catalog.commands.shard.0",
                "t1.catalog.commands.shard.1",
                "t1.catalog.commands.shard.2",
                "t1.catalog.commands.shard.3",
            ]
        );
    }

    #[test]
    fn shard_queues_take_their_suffix_only_and_have_no_delay_queues() {
        let queues = Shards::new(2).work_queues("t1.c", "t1.commands", &["c.a", "c.b"]);
        assert_eq!(queues.len(), 2);
        let second = &queues[1];
        assert_eq!(second.name, "t1.c.shard.1");
        assert!(second.single_active_consumer);
        assert!(second.retry.delays.is_empty());
        assert_eq!(
            second.bindings,
            [
                ("t1.commands".to_owned(), "c.a.1".to_owned()),
                ("t1.commands".to_owned(), "c.b.1".to_owned()),
            ]
        );
    }

    #[test]
    fn every_instance_attaches_every_shard_from_its_own_start() {
        let shards = Shards::new(4);
        assert_eq!(shards.attach_order(2).collect::<Vec<_>>(), [2, 3, 0, 1]);
        assert_eq!(shards.attach_order(5).collect::<Vec<_>>(), [1, 2, 3, 0]);
        assert_eq!(Shards::new(0).count, 1);
    }
}
