use serde::{Deserialize, Serialize};
use signalbox_discovery::DiscoverySettings;
use signalbox_platform::config::{
    AmqpSettings, DatabaseSettings, ListenSettings, TelemetrySettings, VerifierSettings,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub grpc: ListenSettings,
    /// Health endpoints.
    pub http: ListenSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub commands: CommandSettings,
    /// How the operator tokens of `UpdateProduct` calls are verified (the
    /// auth service's JWKS, as for the gateway, orders and realtime).
    #[serde(default)]
    pub tokens: VerifierSettings,
    /// Whether and how this instance announces its gRPC address
    /// (`APP__DISCOVERY__MODE=registry`, `APP__DISCOVERY__ETCD_ENDPOINTS`,
    /// `APP__DISCOVERY__ADVERTISE`, …).
    #[serde(default)]
    pub discovery: DiscoverySettings,
    pub telemetry: TelemetrySettings,
}

/// The sharded command channel (see `signalbox_messaging::sharding`). The
/// number of shards is not a setting: it is what the publishers hash with,
/// `commands::CATALOG_SHARDS`, and a consumer with a different count would
/// leave commands without a queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandSettings {
    /// How often an instance compares the shards it is busy on with its fair
    /// share and hands extra ones to the other instances; 0 never does.
    pub rebalance_secs: u64,
}

impl Default for CommandSettings {
    fn default() -> Self {
        Self { rebalance_secs: 15 }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: ListenSettings::on_port(50053),
            http: ListenSettings::on_port(8084),
            database: DatabaseSettings::local("catalog"),
            amqp: AmqpSettings::default(),
            commands: CommandSettings::default(),
            tokens: VerifierSettings::default(),
            discovery: DiscoverySettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}
