//! The `discovery` section of a service's settings (`APP__DISCOVERY__*`):
//! which way endpoints are found, and what each way needs.
//!
//! One section for both sides of discovery: a server reads what it
//! registers as (mode, registry, lease, advertised address), a client reads
//! how it finds its upstreams (mode, registry or DNS interval, connect
//! timeout). Every key has a default, so a service without the section
//! runs in `dns` mode exactly as before.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use signalbox_platform::config::comma_list;

/// How a client finds the instances of an upstream, and whether a server
/// announces itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Platform-provided (server-side) discovery: the upstream URL's host is
    /// a name the platform resolves (compose, Kubernetes). The client
    /// re-resolves it periodically and balances over every address it
    /// yields; servers register nowhere.
    #[default]
    Dns,
    /// Application-level discovery: every server registers its address in
    /// etcd under a lease; clients watch the registry.
    Registry,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Dns => "dns",
            Mode::Registry => "registry",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DiscoverySettings {
    /// `dns` (the default) or `registry`.
    pub mode: Mode,
    /// The etcd cluster's client URLs, a list or one comma-separated string
    /// (`APP__DISCOVERY__ETCD_ENDPOINTS=http://etcd-0:2379,http://etcd-1:2379`).
    #[serde(deserialize_with = "comma_list")]
    pub etcd_endpoints: Vec<String>,
    /// Where registrations live: `<prefix><service>/<instance id>`. Tests
    /// use a random one each.
    pub prefix: String,
    /// How often, in `dns` mode, an upstream's name is resolved again.
    pub dns_interval_ms: u64,
    /// The lease a registration is held under: an instance that stops
    /// renewing it (it crashed, it lost the network) is removed from the
    /// registry this long after its last renewal.
    pub lease_ttl_secs: u64,
    /// The URL this instance registers (`http://10.1.2.3:50053`), when the
    /// address it can be reached at is not `advertise_host` and the bound
    /// port (behind NAT, in a container with a published port).
    pub advertise: Option<String>,
    /// The host of the registered URL when `advertise` is not set; the port
    /// is the one the gRPC listener is bound to.
    pub advertise_host: String,
    /// How long a client waits to open a connection to one endpoint.
    pub connect_timeout_ms: u64,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            mode: Mode::Dns,
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/signalbox/services/".to_owned(),
            dns_interval_ms: 10_000,
            lease_ttl_secs: 10,
            advertise: None,
            advertise_host: "127.0.0.1".to_owned(),
            connect_timeout_ms: 2_000,
        }
    }
}

impl DiscoverySettings {
    pub fn dns_interval(&self) -> Duration {
        // Zero would spin: once a millisecond at the least.
        Duration::from_millis(self.dns_interval_ms.max(1))
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The lease TTL in seconds, as etcd takes it (it grants at least its
    /// own minimum, about two seconds).
    pub fn lease_ttl(&self) -> i64 {
        i64::try_from(self.lease_ttl_secs.max(1)).unwrap_or(i64::MAX)
    }

    /// The key prefix under which every instance of `service` registers,
    /// ending in `/` so that `orders` does not also match `orders-archive`.
    pub fn service_prefix(&self, service: &str) -> String {
        let prefix = self.prefix.trim_end_matches('/');
        format!("{prefix}/{service}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_dns_and_a_local_etcd() {
        let settings = DiscoverySettings::default();
        assert_eq!(settings.mode, Mode::Dns);
        assert_eq!(settings.etcd_endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(settings.dns_interval(), Duration::from_secs(10));
        assert_eq!(settings.lease_ttl(), 10);
        assert_eq!(
            settings.service_prefix("catalog"),
            "/signalbox/services/catalog/"
        );
    }

    #[test]
    fn the_section_reads_from_a_document_with_the_endpoints_as_one_string() {
        let settings: DiscoverySettings = serde_json::from_value(serde_json::json!({
            "mode": "registry",
            "etcd_endpoints": "http://a:2379, http://b:2379",
            "prefix": "/t1/",
        }))
        .unwrap();
        assert_eq!(settings.mode, Mode::Registry);
        assert_eq!(settings.etcd_endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(settings.service_prefix("orders"), "/t1/orders/");
        // Unset keys keep their defaults.
        assert_eq!(settings.lease_ttl_secs, 10);
        assert!(
            serde_json::from_value::<DiscoverySettings>(serde_json::json!({"mode": "gossip"}))
                .is_err()
        );
    }
}
