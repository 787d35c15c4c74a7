//! The catalog service: products, prices and stock.
//!
//! Two ways in: gRPC for synchronous reads (orders prices an order with
//! `BatchGetProducts`), and the `catalog.commands` queue for the saga's
//! `catalog.reserve_stock` / `catalog.release_stock` commands, answered
//! through the outbox on the requester's reply channel.

pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod repo;
pub mod startup;

pub use config::Settings;
pub use startup::Application;
