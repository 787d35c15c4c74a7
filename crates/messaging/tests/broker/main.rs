//! The messaging building blocks against the real RabbitMQ and PostgreSQL.

mod consumer;
mod helpers;
mod outbox;
