//! Service discovery, both ways, and per-call balancing over what it finds:
//! how a gRPC client in Signalbox (the gateway's, orders' call to catalog)
//! knows where its upstream's instances are.
//!
//! A client given one address reaches one instance. Scaled out, an
//! upstream is a *set* of instances that changes (they start, stop, crash,
//! move), and something must tell the client what the set is now. There
//! are two ways, chosen by `APP__DISCOVERY__MODE`:
//!
//! ```text
//!   dns (default)            the platform knows: its DNS name resolves to the instances
//!     dns::resolve ─ every dns_interval ─► lookup_host(catalog:50053) ─┐
//!                                                                      ├─► Source ─► balance::balanced ─► UpstreamService
//!   registry                 the instances say so themselves, in etcd  │      (endpoint set)   (p2c, per-endpoint breakers)
//!     registration::register (each server) ─► etcd ◄─ watcher::watch ──┘
//! ```
//!
//! - [`dns`] — platform-provided (server-side) discovery: compose or
//!   Kubernetes DNS; with a headless Service the name resolves to every
//!   pod, re-resolved periodically.
//! - [`registry`] — application-level discovery: self-registration under a
//!   lease and client-side watching, with etcd.
//! - [`balance`] — either source's changing set becomes one cloneable tower
//!   service: a power-of-two-choices balancer over lazily connected
//!   channels, each behind its own circuit breaker, so a failing or hung
//!   endpoint is ejected while the others take its calls.
//!
//! A service calls two functions: [`upstream`] for each gRPC client, and
//! [`register`] for its own gRPC server.

#![forbid(unsafe_code)]

pub mod balance;
mod discover;
pub mod dns;
mod endpoint;
mod fail_fast;
pub mod registry;
mod settings;
mod source;
mod url;
mod view;

pub use balance::{balanced, UpstreamService};
pub use endpoint::EndpointSettings;
pub use registry::registration::{register, Registration, RegistrationState};
pub use settings::{DiscoverySettings, Mode};
pub use signalbox_resilience::BreakerSettings;
pub use source::{Endpoints, Source, SourceStatus};
pub use view::{EndpointSnapshot, UpstreamSnapshot, UpstreamView};

/// The balanced client side of upstream `name`, found the way
/// `settings.mode` says:
///
/// - `dns`: `dns_url` (`http://catalog:50053`), its host resolved now and
///   every `dns_interval_ms`, one endpoint per address (an IP address is
///   one endpoint, never re-resolved);
/// - `registry`: every instance registered under
///   `<prefix><name>/` in etcd, watched; `dns_url` is not used.
///
/// Returns the service the client's guarded stack sits on (where one
/// channel was: the deadline, bulkhead and retries above it; a deadline
/// above it is what ends calls to a hung endpoint) and a view for the
/// admin page. Fails only on a `dns_url` that is not
/// `scheme://host:port`. Each endpoint's breaker has the default
/// [`BreakerSettings`]; see [`upstream_with`]. Must be called within a
/// Tokio runtime; nothing is connected until the first call.
pub fn upstream(
    name: &str,
    dns_url: &str,
    settings: &DiscoverySettings,
) -> anyhow::Result<(UpstreamService, UpstreamView)> {
    upstream_with(name, dns_url, settings, BreakerSettings::default())
}

/// [`upstream`] with the breaker settings of each endpoint.
pub fn upstream_with(
    name: &str,
    dns_url: &str,
    settings: &DiscoverySettings,
    breaker: BreakerSettings,
) -> anyhow::Result<(UpstreamService, UpstreamView)> {
    let source = match settings.mode {
        Mode::Dns => dns::resolve(name, dns_url, settings.dns_interval())?,
        Mode::Registry => registry::watcher::watch(name, settings),
    };
    let endpoints = EndpointSettings {
        connect_timeout: settings.connect_timeout(),
        breaker,
    };
    Ok(balanced(name, settings.mode, source, endpoints))
}
