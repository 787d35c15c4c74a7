//! Application-level discovery: self-registration and client-side
//! discovery, with etcd as the service registry.
//!
//! Instead of asking the platform where an upstream's instances are, the
//! instances say so themselves, and the clients listen:
//!
//! ```text
//!   catalog #1 ── put /signalbox/services/catalog/<id-1> = http://127.0.0.1:50053 (lease 10 s, kept alive)
//!   catalog #2 ── put /signalbox/services/catalog/<id-2> = http://127.0.0.1:50063 (lease 10 s, kept alive)
//!
//!   gateway, orders ── get + watch /signalbox/services/catalog/
//!                       → {http://127.0.0.1:50053, http://127.0.0.1:50063} → p2c balancer
//! ```
//!
//! - [`registration`]: a server, once it serves, puts its address under a
//!   lease and keeps the lease alive; on a graceful shutdown it revokes the
//!   lease, and its key is gone at once. A server that dies without saying
//!   so stops renewing, and etcd deletes its key when the lease expires.
//! - [`watcher`]: a client lists the service's prefix, then watches it from
//!   the revision it listed at, so no change between the two is missed,
//!   and keeps the current set in a [`Source`](crate::Source).
//!
//! Both loops outlive etcd: when it is unreachable, a registration tries
//! again with backoff (and registers anew if its lease was lost meanwhile),
//! and a watcher keeps the last set it knew (the instances in it are most
//! likely still serving) and watches again with backoff.

pub mod registration;
pub mod watcher;

use std::{future::Future, time::Duration};

use anyhow::{anyhow, Context};
use etcd_client::{Client, ConnectOptions};

use crate::DiscoverySettings;

/// Bounds every request that opens something in etcd (a grant, a put, a
/// listing, a watch): etcd answers in milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh client for one session of a loop. Fresh, not reused across
/// failures: a client whose every endpoint failed can stay without one.
async fn connect(settings: &DiscoverySettings) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(settings.connect_timeout())
        .with_timeout(REQUEST_TIMEOUT)
        // HTTP/2 pings notice an etcd that vanished without closing the
        // connection (a partition) on an otherwise silent watch. etcd
        // refuses pings more often than every 5 s.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    within(
        "cannot connect to etcd",
        Client::connect(&settings.etcd_endpoints, Some(options)),
    )
    .await
}

/// One etcd request, failed after [`REQUEST_TIMEOUT`]. The client's own
/// request timeout is not enough: it runs from when a connection takes the
/// request, and a client whose connection attempt failed (etcd was down
/// when it first tried) has no connection left to take it, so the request
/// would wait forever. Ended here, the loop starts a new session with a new
/// client instead.
async fn within<T>(
    what: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
        .and_then(|answer| answer.map_err(Into::into))
        .with_context(|| what.to_owned())
}
