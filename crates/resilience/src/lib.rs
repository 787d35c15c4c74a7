//! Resilience for synchronous calls: the remote-procedure-invocation half of
//! "Microservices Patterns", chapter 3.
//!
//! A synchronous call ties the caller to the callee: when the callee is slow
//! or down, the caller's threads, sockets and users wait with it. Each module
//! here is one tower [`Layer`](tower::Layer) with its [`Service`](tower::Service),
//! one concern each, so that a client's stack reads as a list of decisions:
//!
//! ```text
//!   caller ──► Deadline ──► Bulkhead ──► Retry ──► CircuitBreaker ──► channel ──► upstream
//!              every call    refuse at    reads     fail fast while
//!              has a budget  once when    only,     the upstream is
//!                            too many     within    known to be down
//!                            are out      budget
//! ```
//!
//! The layers work on `http::Request`/`http::Response`, the level at which a
//! tonic `Channel` is a tower service, so they sit under any generated gRPC
//! client. A rejection is a [`tonic::Status`] (see [`Rejection`]) that the
//! generated client hands back like any other error.
//!
//! [`outcome`] tells a failure from a success by the gRPC status the server
//! answered with; [`deadline`] carries the caller's remaining budget into
//! `grpc-timeout`, and out of it on the server side; [`trace`] gives every
//! call a client span and sends its trace context on; [`policy`] is how
//! configuration spells the layers' settings. A client's stack is built in
//! one function beside the client: `crates/gateway/src/upstream.rs`
//! (`guarded`) and `crates/orders/src/catalog.rs` (`guarded`).

#![forbid(unsafe_code)]

pub mod backoff;
pub mod breaker;
pub mod bulkhead;
pub mod client;
pub mod deadline;
pub mod outcome;
pub mod policy;
pub mod rejection;
pub mod retry;
mod stack;
pub mod trace;
mod window;

pub use breaker::{BreakerSettings, CircuitBreaker, CircuitBreakerLayer, State};
pub use bulkhead::{Bulkhead, BulkheadLayer};
pub use client::{ClientService, UpstreamService};
pub use deadline::{Deadline, DeadlineLayer, InheritDeadlineLayer};
pub use policy::{BreakerPolicy, CallPolicy, RetryPolicy};
pub use rejection::Rejection;
pub use retry::{RetryLayer, RetrySettings};
pub use stack::guard;

/// The error type of every layer here, as tower's own layers use it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
