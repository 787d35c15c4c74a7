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
//! 3. A consumer ([`consumer::run`]) receives the message, runs the handler,
//!    and acks only after the handler's transaction committed. The handler
//!    first records the message id in `processed_messages`
//!    ([`processed::claim`]): a redelivered duplicate finds its id there and is
//!    acknowledged without a second effect.
//!
//! Together this is *at-least-once delivery with idempotent handling*:
//! messages can be delivered twice, but their effects happen once.

pub mod amqp;
pub mod connection;
pub mod consumer;
pub mod outbox;
pub mod processed;
pub mod publisher;
pub mod retention;
pub mod topology;

pub use connection::Broker;
pub use consumer::{Consumer, Flag, HandleError, Handler, Incoming, Source};
pub use outbox::{OutboxRelay, Outgoing};
pub use publisher::ConfirmedPublisher;
pub use topology::{RetryPolicy, WorkQueue};
