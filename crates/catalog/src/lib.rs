//! The catalog service: products, prices and stock.
//!
//! Two ways in: gRPC for synchronous reads (orders prices an order with
//! `BatchGetProducts`), and the sharded `catalog.commands.shard.<i>` queues
//! for the saga's commands: `catalog.reserve_stock` (request-reply, answered
//! through the outbox on the requester's reply channel) and
//! `catalog.release_stock` (one-way, no reply).

pub mod admin;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod repo;
pub mod reservations;
pub mod startup;

pub use config::Settings;
pub use startup::Application;
