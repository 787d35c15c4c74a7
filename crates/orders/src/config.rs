//! Orders settings (defaults here, then `config/orders.yaml`, then
//! `APP__…` environment variables).

use serde::{Deserialize, Serialize};
use signalbox_platform::config::{
    AmqpSettings, DatabaseSettings, ListenSettings, TelemetrySettings, VerifierSettings,
};
use signalbox_resilience::CallPolicy;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub grpc: ListenSettings,
    /// Health endpoints.
    pub http: ListenSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub upstreams: Upstreams,
    /// How the calls to catalog are bounded: bulkhead, circuit breaker,
    /// retries of reads (`APP__RESILIENCE__CATALOG__MAX_IN_FLIGHT`,
    /// `…__BREAKER__FAILURE_RATE`, `…__RETRY__MAX_ATTEMPTS`, …).
    #[serde(default)]
    pub resilience: Resilience,
    /// How catalog's instances are found (`APP__DISCOVERY__MODE=dns`, the
    /// default: `upstreams.catalog` re-resolved; `registry`: watched in
    /// etcd), and whether and how this instance announces its own gRPC
    /// address (`APP__DISCOVERY__ETCD_ENDPOINTS`, `…__ADVERTISE`, …).
    #[serde(default)]
    pub discovery: signalbox_discovery::DiscoverySettings,
    /// How the access tokens that every call carries are verified: the
    /// auth service's JWKS (`APP__TOKENS__JWKS_URL`, by default
    /// `http://127.0.0.1:8082/.well-known/jwks.json`), issuer and audience,
    /// as for the gateway and realtime.
    pub tokens: VerifierSettings,
    /// Deadlines of the order saga.
    #[serde(default)]
    pub saga: SagaSettings,
    pub telemetry: TelemetrySettings,
}

/// The saga does not wait forever for catalog: a PENDING order whose stock
/// reservation has had no reply for `reservation_timeout_secs` is rejected
/// (see `saga_timeouts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SagaSettings {
    /// How long an order may wait for catalog's reservation reply.
    pub reservation_timeout_secs: u64,
    /// How often the sweeper looks for orders past that deadline, in
    /// milliseconds. A timed-out order is rejected at most this much late.
    pub sweep_interval_ms: u64,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            reservation_timeout_secs: 60,
            sweep_interval_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upstreams {
    /// The catalog's gRPC endpoint (platform DNS in compose / Kubernetes).
    pub catalog: String,
    /// Deadline of one call to catalog, in milliseconds, when the caller's
    /// remaining budget (its `grpc-timeout`) is longer than this.
    pub catalog_timeout_ms: u64,
}

/// The guards of orders' synchronous calls (only catalog, for now).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Resilience {
    pub catalog: CallPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: ListenSettings::on_port(50052),
            http: ListenSettings::on_port(8083),
            database: DatabaseSettings::local("orders"),
            amqp: AmqpSettings::default(),
            upstreams: Upstreams {
                catalog: "http://127.0.0.1:50053".to_owned(),
                catalog_timeout_ms: 2000,
            },
            resilience: Resilience::default(),
            discovery: signalbox_discovery::DiscoverySettings::default(),
            tokens: VerifierSettings::default(),
            saga: SagaSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}
