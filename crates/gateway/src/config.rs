//! Gateway settings. Defaults run the whole system on one machine; compose and
//! Kubernetes override them with `APP__UPSTREAMS__ORDERS=http://orders:50052`
//! and the like (see `signalbox_platform::config::load`).

use serde::{Deserialize, Serialize};
use signalbox_platform::config::{
    comma_list, AmqpSettings, ListenSettings, TelemetrySettings, VerifierSettings,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// The public REST listener.
    pub http: ListenSettings,
    /// Where the services behind the gateway answer gRPC.
    pub upstreams: Upstreams,
    /// How access tokens are verified (the auth service's JWKS).
    pub tokens: VerifierSettings,
    pub timeouts: Timeouts,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest total size of the request headers (names, values and their
    /// separators); larger ones get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Per-client-IP limit on the credential endpoints (`/api/auth/*`,
    /// `/oauth/*`).
    #[serde(default)]
    pub rate_limit: RateLimitSettings,
    /// Addresses (`10.0.0.7`) or networks (`10.0.0.0/8`) of the reverse
    /// proxies in front of the gateway, whose `X-Forwarded-For` is believed
    /// (`APP__TRUSTED_PROXIES` takes a comma-separated list). Empty: the
    /// client is always the socket's peer and the header is ignored.
    #[serde(default, deserialize_with = "comma_list")]
    pub trusted_proxies: Vec<String>,
    /// The broker, used only by the system census (`GET
    /// /api/system/instances`), connected on the first census and never at
    /// start-up. `None` (`amqp: ~` in the file): the census answers 503.
    #[serde(default = "default_amqp")]
    pub amqp: Option<AmqpSettings>,
    pub telemetry: TelemetrySettings,
}

fn default_amqp() -> Option<AmqpSettings> {
    Some(AmqpSettings::default())
}

/// A token bucket per client IP: `burst` requests at once, refilled at
/// `per_minute`. Each gateway instance counts for itself (in memory): with N
/// instances behind a balancer a client gets up to N times the rate. That is
/// acceptable because the limit that matters for password guessing, per
/// account, is kept by the auth service in its database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    pub burst: u32,
    pub per_minute: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            burst: 20,
            per_minute: 60,
        }
    }
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}

/// The gRPC address of each upstream service (server-side discovery: a DNS
/// name that the platform resolves, such as a Kubernetes Service).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upstreams {
    pub auth: String,
    pub orders: String,
    pub catalog: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeouts {
    /// Whole-request budget at the edge, answered with 504 when exceeded.
    pub request_secs: u64,
    /// Budget of one gRPC call to an upstream.
    pub upstream_secs: u64,
    /// Budget of opening a connection to an upstream.
    pub connect_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: ListenSettings::on_port(8080),
            upstreams: Upstreams::default(),
            tokens: VerifierSettings::default(),
            timeouts: Timeouts::default(),
            max_body_bytes: 64 * 1024,
            max_header_bytes: default_max_header_bytes(),
            rate_limit: RateLimitSettings::default(),
            trusted_proxies: Vec::new(),
            amqp: default_amqp(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Self {
            auth: "http://127.0.0.1:50051".to_owned(),
            orders: "http://127.0.0.1:50052".to_owned(),
            catalog: "http://127.0.0.1:50053".to_owned(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request_secs: 10,
            upstream_secs: 5,
            connect_secs: 2,
        }
    }
}
