//! Service discovery against a real etcd (`scripts/services --etcd`; or
//! `SIGNALBOX_TEST_ETCD_URL`) and real gRPC servers over real connections:
//! registration and its lease, watching, balancing with per-endpoint
//! ejection, an etcd outage (on a private etcd), and DNS re-resolution.
//!
//! Every test works under a random key prefix of its own, removed when it
//! ends (`helpers::Registry`).

mod balancing;
mod dns;
mod etcd_outage;
mod helpers;
mod registration;
mod watching;
