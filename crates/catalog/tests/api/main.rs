//! The catalog service against the real PostgreSQL and RabbitMQ: one
//! process per test, a fresh database and namespace each.

mod commands;
mod health;
mod helpers;
