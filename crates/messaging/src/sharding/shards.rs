//! Which shard an aggregate belongs to, and the names that route it there.
//!
//! A publisher hashes the aggregate id to a shard and puts the shard into
//! the routing key; each shard queue is bound for its own suffix, so every
//! message of one aggregate lands in the same queue:
//!
//! ```text
//!   order 7 ─ fnv1a_64 ─ jump_consistent_hash(·, N) ─▶ shard 2
//!     routing key  catalog.release_stock.2   (Shards::routing_key)
//!     queue        <base>.shard.2            (Shards::queue), bound for
//!                  catalog.release_stock.2   (Shards::work_queues)
//! ```
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

use crate::topology::{RetryPolicy, WorkQueue};

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
    /// suffix, and without delay queues (see [`super::InOrder`]: a delay queue
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
