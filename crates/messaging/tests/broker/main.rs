//! The messaging building blocks against the real RabbitMQ and PostgreSQL.

mod census;
mod child;
mod consumer;
mod dead_letters;
mod helpers;
mod instance_queue;
mod outbox;
mod request_reply;
mod sharding;
mod spans;
mod trace_context;
