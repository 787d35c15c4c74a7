//! Clients for demos, load tests and benchmarks.
