//! Clients for demos, load tests and benchmarks, and the peers they are
//! measured against.
//!
//! - [`fanout`]: B1, push fan-out of realtime against Socket.IO and a raw
//!   tokio-tungstenite server (`src/bin/ceiling.rs`), run by `src/bin/fanout.rs`;
//! - [`socket`]: the benchmark's WebSocket clients (`signalbox.v1`, Engine.IO v4);
//! - [`latency`]: publish → receive latency histograms;
//! - [`proc`]: a server process's CPU time and memory from `/proc`;
//! - [`relay`]: B3, the outbox relay against a raw lapin publisher with
//!   confirms, run by `src/bin/relay.rs`;
//! - [`report`]: the tables of `docs/benchmarks.md` and the charts of `docs/bench/`;
//! - [`load`]: open-loop (constant arrival rate) and closed-loop schedules
//!   of calls, with [`http`] and [`grpc`] the calls: B2, the gateway against
//!   direct gRPC and against nginx's hop (`src/bin/gateway-bench.rs`), and B5,
//!   logins (`src/bin/logins.rs`);
//! - [`services`]: auth, catalog, orders and the gateway as processes on
//!   fresh databases, for B2 and B5.

pub mod fanout;
pub mod grpc;
pub mod http;
pub mod latency;
pub mod load;
pub mod proc;
pub mod relay;
pub mod report;
pub mod services;
pub mod socket;
