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
    pub telemetry: TelemetrySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: ListenSettings::on_port(50053),
            http: ListenSettings::on_port(8084),
            database: DatabaseSettings::local("catalog"),
            amqp: AmqpSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}
