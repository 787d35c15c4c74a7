//! Platform-provided (server-side) discovery: the platform's DNS names the
//! instances, the client resolves the name again and again.
//!
//! In compose and Kubernetes an upstream is a name (`http://catalog:50053`)
//! that the platform's DNS resolves. Behind an ordinary Kubernetes Service
//! it resolves to one virtual IP, and kube-proxy balances *connections* to
//! it across the pods. gRPC keeps one long-lived HTTP/2 connection and
//! multiplexes every call over it, so a client that connected once is
//! pinned to one pod until that connection breaks: new pods get no traffic
//! from it, and five replicas serve like one per client. A *headless*
//! Service (`clusterIP: None`) changes the answer: the name resolves to the
//! address of every ready pod. Resolving it periodically and balancing per
//! call over the addresses it yields ([`crate::balance`]) spreads calls
//! across pods and picks up new ones within one interval:
//!
//! ```text
//!   every dns_interval:  lookup_host("catalog:50053")
//!                          → {10.1.0.7, 10.1.0.9}     (headless: one per ready pod)
//!                          → Source.endpoints = {http://10.1.0.7:50053, http://10.1.0.9:50053}
//!   a failed lookup      → keep the last set (status stale)
//! ```
//!
//! The platform's readiness decides what DNS answers (a pod that fails its
//! readiness probe leaves the answer), so this way needs nothing from the
//! service itself; the per-endpoint breakers cover the time until DNS has
//! caught up with a pod that died.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio::time::MissedTickBehavior;

use crate::{
    source::{Endpoints, Publisher, Source},
    url::Target,
};

/// Resolves a host and port to socket addresses. The system's resolver
/// ([`SystemResolver`]) in services; tests give one whose answer they
/// change.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// `tokio::net::lookup_host`: the platform's DNS (and `/etc/hosts`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

impl<F> Resolve for F
where
    F: Fn(&str, u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync + 'static,
{
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        self(host, port)
    }
}

/// The endpoints of `url`, resolved with the system's resolver now and
/// every `interval`. A URL whose host is an IP address is one fixed
/// endpoint, known at once, with nothing to resolve. Must be called within
/// a Tokio runtime (it spawns the resolving task).
pub fn resolve(upstream: &str, url: &str, interval: Duration) -> anyhow::Result<Source> {
    resolve_with(upstream, url, interval, SystemResolver)
}

/// [`resolve`] with a resolver of the caller's choosing.
pub fn resolve_with(
    upstream: &str,
    url: &str,
    interval: Duration,
    resolver: impl Resolve,
) -> anyhow::Result<Source> {
    let target = Target::parse(url)?;
    if let Some(ip) = target.ip() {
        return Ok(Source::fixed(Endpoints::from([
            target.at(SocketAddr::new(ip, target.port))
        ])));
    }
    let (publisher, source) = Source::channel(upstream);
    tokio::spawn(run(target, interval, Arc::new(resolver), publisher));
    Ok(source)
}

/// The resolving task: one lookup per tick, until the balancer is gone.
async fn run(target: Target, interval: Duration, resolver: Arc<dyn Resolve>, publisher: Publisher) {
    let mut ticks = tokio::time::interval(interval);
    // A lookup slower than the interval delays the next one instead of
    // being followed by a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Nobody balances over this set any more: stop resolving.
            _ = publisher.closed() => return,
            // Time for the next lookup (the first tick is immediate).
            _ = ticks.tick() => {}
        }
        match resolver.resolve(&target.host, target.port).await {
            Ok(addrs) if !addrs.is_empty() => {
                publisher.current(addrs.into_iter().map(|addr| target.at(addr)).collect())
            }
            // An empty answer during a rollout or a DNS hiccup is not a
            // reason to drop every endpoint: keep the last ones.
            Ok(_) => publisher.stale(format!("{} resolved to no address", target.host)),
            Err(error) => publisher.stale(format!("cannot resolve {}: {error}", target.host)),
        }
    }
}
