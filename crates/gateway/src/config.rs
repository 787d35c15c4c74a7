//! Gateway settings. Defaults run the whole system on one machine; compose and
//! Kubernetes override them with `APP__UPSTREAMS__ORDERS=http://orders:50052`
//! and the like (see `signalbox_platform::config::load`).

use serde::{Deserialize, Serialize};
use signalbox_platform::config::{ListenSettings, TelemetrySettings, VerifierSettings};

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
    pub telemetry: TelemetrySettings,
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
