use serde::{Deserialize, Serialize};
use signalbox_platform::config::{
    AmqpSettings, DatabaseSettings, ListenSettings, TelemetrySettings,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub grpc: ListenSettings,
    /// Health endpoints.
    pub http: ListenSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub upstreams: Upstreams,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upstreams {
    /// The catalog's gRPC endpoint (platform DNS in compose / Kubernetes).
    pub catalog: String,
    /// Deadline of one call to catalog, in milliseconds.
    pub catalog_timeout_ms: u64,
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
            telemetry: TelemetrySettings::default(),
        }
    }
}
