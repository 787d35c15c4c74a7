//! Clients for demos, load tests and benchmarks, and the peers they are
//! measured against.
//!
//! - [`fanout`]: B1, push fan-out of realtime against Socket.IO and a raw
//!   tokio-tungstenite server (`src/bin/ceiling.rs`), run by `src/bin/fanout.rs`;
//! - [`socket`]: the benchmark's WebSocket clients (`signalbox.v1`, Engine.IO v4);
//! - [`latency`]: publish → receive latency histograms;
//! - [`proc`]: a server process's CPU time and memory from `/proc`;
//! - [`report`]: the tables of `docs/benchmarks.md` and the charts of `docs/bench/`.

pub mod fanout;
pub mod latency;
pub mod proc;
pub mod report;
pub mod socket;
