//! Everything Signalbox does with RabbitMQ lives here, so a reader can learn
//! the asynchronous patterns of "Microservices Patterns" (ch. 3) from one
//! crate, and the services contain only their business rules.
//!
//! The path of a message through the system:
//!
//! 1. A service changes its database and, **in the same transaction**, writes
//!    the messages that announce the change into its `outbox` table
//!    ([`outbox::enqueue`]). Either both happen or neither does.
//! 2. The [`outbox::OutboxRelay`] reads committed rows and publishes them with
//!    **publisher confirms** ([`publisher::ConfirmedPublisher`]); a row is
//!    marked published only after the broker confirmed it.
//! 3. A consumer ([`consumer::Consumer`]) receives the message, runs the handler,
//!    and acks only after the handler's transaction committed. The handler
//!    first records the message id in `processed_messages`
//!    ([`processed::claim`]): a redelivered duplicate finds its id there and is
//!    acknowledged without a second effect.
//!
//! Together this is *at-least-once delivery with idempotent handling*:
//! messages can be delivered twice, but their effects happen once.
//!
//! Where the order of an aggregate's messages matters, a channel is split
//! into shard queues with one active consumer each ([`sharding`]). What
//! could not be handled waits in a dead-letter queue, from where an operator
//! lists and replays it ([`dead_letters`], `signalbox dlq`).
//!
//! Not every message belongs in the outbox. A caller that *waits* for an
//! answer (an HTTP request, a WebSocket command) sends it directly with a
//! [`Requester`]: request/response over a private reply queue, matched by
//! correlation id, with a deadline and a bound on outstanding requests
//! ([`request_reply`]). Asking every instance at once and taking the answers
//! that come in time is the same machinery ([`census`]).
//!
//! Underneath, every long-lived user of the broker works in sessions that
//! end when a channel fails and start again ([`session`]), on a connection
//! that heals itself ([`connection`]), each retry waiting with the one
//! [`backoff::Backoff`]. An event log every reader can read from any
//! position, for recovering what a client missed, is a RabbitMQ stream
//! ([`stream`]). The names of the headers a message carries are in
//! [`headers`].

pub mod amqp;
pub mod census;
pub mod chain;
pub mod connection;
pub mod consumer;
pub mod dead_letters;
pub mod headers;
pub mod outbox;
pub mod processed;
pub mod publisher;
pub mod request_reply;
pub mod retention;
pub mod session;
pub mod sharding;
pub mod stream;
pub mod topology;
pub mod trace_context;

pub use connection::Broker;
pub use consumer::{Consumer, Flag, HandleError, Handler, Incoming, Source};
pub use outbox::OutboxRelay;
pub use publisher::{ConfirmedPublisher, Outgoing};
pub use request_reply::{Reply, RequestError, Requester, RequesterOptions};
pub use sharding::{InOrder, ShardConsumers, Shards};
pub use topology::{RetryPolicy, WorkQueue};

/// The one backoff of every retry loop (it lives in `signalbox_resilience`).
pub use signalbox_resilience::backoff;
