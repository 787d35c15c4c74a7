//! The orders service: orders and the order-approval saga.
//!
//! `CreateOrder` (gRPC, from the gateway) prices the items with a synchronous
//! call to catalog, then stores the order as PENDING together with two outbox
//! rows: the `order.created` event and the `catalog.reserve_stock` command.
//! Catalog answers on the `orders.replies` channel; [`saga`] turns the answer
//! into APPROVED or REJECTED and publishes that event, which the realtime
//! service pushes to the user's socket. An order whose reservation has no
//! reply within the saga's deadline is rejected by [`saga_timeouts`].
//!
//! Sockets place and cancel orders too: realtime forwards their commands
//! over the inbound exchange to a work queue every orders instance consumes
//! ([`inbound`]). Both doors run the same [`actions`].

pub mod actions;
pub mod catalog;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod inbound;
pub mod repo;
pub mod saga;
pub mod saga_timeouts;
pub mod startup;

pub use config::Settings;
pub use startup::Application;
