//! Client-side discovery: keep the current set of a service's instances by
//! watching its prefix in the registry.
//!
//! ```text
//!   connect ─► get <prefix><service>/ (revision r) ─► publish the set
//!                                                       │
//!                 watch from r + 1 ─► put / delete ─► publish the set ─┐
//!                       ▲                                              │
//!                       └──────────────────────────────────────────────┘
//!   etcd unreachable ─► keep the set, mark it stale ─► backoff ─► connect …
//! ```
//!
//! Listing first and watching from the listing's revision + 1 is what makes
//! the set exact: a change that lands between the two is in the watch.
//! After a failure the loop lists again instead of resuming, so a change
//! missed while etcd was away (an instance whose lease expired) is not
//! missed for good.

use std::{collections::BTreeMap, convert::Infallible};

use anyhow::{anyhow, bail, Context};
use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};

use signalbox_resilience::backoff::Backoff;

use super::within;
use crate::{
    source::{Endpoints, Publisher, Source},
    url::Target,
    DiscoverySettings,
};

/// The instances of `service` registered under the settings' prefix, kept
/// current by a task that lives as long as the returned source is
/// received from. Must be called within a Tokio runtime.
pub fn watch(service: &str, settings: &DiscoverySettings) -> Source {
    let (publisher, source) = Source::channel(service);
    let prefix = settings.service_prefix(service);
    tokio::spawn(run(prefix, settings.clone(), publisher));
    source
}

/// The watching task: sessions, each ending only by a failure, with
/// backoff between them, until nobody receives the set.
async fn run(prefix: String, settings: DiscoverySettings, publisher: Publisher) {
    let mut backoff = Backoff::default();
    loop {
        let failed = tokio::select! {
            // The balancer is gone: stop watching.
            _ = publisher.closed() => return,
            // Listing and watching; returns only when that fails.
            failed = session(&prefix, &settings, &publisher, &mut backoff) => failed,
        };
        let delay = backoff.next_delay();
        publisher.stale(format!("watching {prefix}: {failed:#}; again in {delay:?}"));
        tokio::select! {
            _ = publisher.closed() => return,
            // The backoff before the next session.
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session(
    prefix: &str,
    settings: &DiscoverySettings,
    publisher: &Publisher,
    backoff: &mut Backoff,
) -> anyhow::Error {
    match watching(prefix, settings, publisher, backoff).await {
        Ok(never) => match never {},
        Err(error) => error,
    }
}

async fn watching(
    prefix: &str,
    settings: &DiscoverySettings,
    publisher: &Publisher,
    backoff: &mut Backoff,
) -> anyhow::Result<Infallible> {
    let mut client = super::connect(settings).await?;
    let listing = within(
        "cannot list the registrations",
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    // Registration key → URL. Keyed by registration, not by URL: two keys
    // with one URL (an instance that re-registered before its old lease
    // expired) are one endpoint until both are gone.
    let mut instances: BTreeMap<String, String> = listing.kvs().iter().filter_map(entry).collect();
    publisher.current(endpoints(&instances));
    backoff.reset();
    let revision = listing
        .header()
        .map(|header| header.revision())
        .ok_or_else(|| anyhow!("the listing has no revision"))?;

    let watch = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = within(
        "cannot watch the registrations",
        client.watch(prefix, Some(watch)),
    )
    .await?;
    loop {
        let response = stream
            .message()
            .await
            .context("the watch failed")?
            .ok_or_else(|| anyhow!("etcd closed the watch"))?;
        if response.canceled() {
            // For instance when the revision was compacted away meanwhile.
            bail!("etcd cancelled the watch: {}", response.cancel_reason());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    if let Some((key, url)) = entry(kv) {
                        instances.insert(key, url);
                    }
                }
                EventType::Delete => {
                    if let Ok(key) = kv.key_str() {
                        instances.remove(key);
                    }
                }
            }
        }
        publisher.current(endpoints(&instances));
    }
}

/// A registration as (key, URL), or nothing if it is not one.
fn entry(kv: &KeyValue) -> Option<(String, String)> {
    let (Ok(key), Ok(url)) = (kv.key_str(), kv.value_str()) else {
        tracing::warn!("a registration that is not text; ignored");
        return None;
    };
    match Target::parse(url) {
        Ok(_) => Some((key.to_owned(), url.to_owned())),
        Err(error) => {
            tracing::warn!(
                key,
                error = format!("{error:#}"),
                "a registration that is not an endpoint URL; ignored"
            );
            None
        }
    }
}

fn endpoints(instances: &BTreeMap<String, String>) -> Endpoints {
    instances.values().cloned().collect()
}
