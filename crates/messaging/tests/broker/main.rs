//! The messaging building blocks against the real RabbitMQ and PostgreSQL.

mod census;
mod consumer;
mod dead_letters;
mod helpers;
mod outbox;
mod request_reply;
mod sharding;
mod spans;
