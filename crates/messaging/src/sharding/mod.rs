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
//! # Where each part is
//!
//! - which shard an aggregate belongs to, and the names that route it there
//!   ([`Shards`]): `shards.rs`;
//! - retries that keep the order ([`InOrder`]): `in_order.rs`;
//! - sharing the shards between instances ([`ShardConsumers`]):
//!   `rebalance.rs`.

mod in_order;
mod rebalance;
mod shards;

pub use in_order::InOrder;
pub use rebalance::{AllAttached, ShardConsumers, DEFAULT_REBALANCE};
pub use shards::{fnv1a_64, jump_consistent_hash, Shards};
