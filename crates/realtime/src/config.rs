//! Settings of the realtime service (defaults here, then
//! `config/realtime.yaml`, then `APP__…` environment variables).

use serde::{Deserialize, Serialize};
use signalbox_platform::config::{
    comma_list, AmqpSettings, ListenSettings, TelemetrySettings, VerifierSettings,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// WebSocket endpoint (`/ws`) and health endpoints share this listener.
    pub http: ListenSettings,
    pub amqp: AmqpSettings,
    /// How access tokens presented by sockets are verified (JWKS of auth).
    pub tokens: VerifierSettings,
    pub ws: WsSettings,
    pub telemetry: TelemetrySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: ListenSettings::on_port(8081),
            amqp: AmqpSettings::default(),
            tokens: VerifierSettings::default(),
            ws: WsSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

/// Limits and timers of each socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WsSettings {
    /// Browser origins allowed to open a socket (`APP__WS__ALLOWED_ORIGINS`
    /// takes a comma-separated list). A request with an `Origin` header not in
    /// the list is refused; a request without one (not a browser) is let in,
    /// since it is the token, not the origin, that authenticates.
    #[serde(deserialize_with = "comma_list")]
    pub allowed_origins: Vec<String>,
    /// How long a socket opened without an `Authorization` header may take to
    /// send its `auth` frame.
    pub auth_timeout_secs: u64,
    /// Largest message (and frame) a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// Frames the hub may queue for one socket before it counts as a slow
    /// consumer and is disconnected.
    pub send_buffer: usize,
    /// Interval of the server's WebSocket pings; three silent intervals close
    /// the socket.
    pub heartbeat_secs: u64,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            auth_timeout_secs: 5,
            max_frame_bytes: 64 * 1024,
            send_buffer: 256,
            heartbeat_secs: 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_origins_read_from_a_comma_separated_environment_value() {
        let ws: WsSettings =
            serde_json::from_str(r#"{"allowed_origins":"https://a.example, https://b.example"}"#)
                .unwrap();
        assert_eq!(
            ws.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert_eq!(ws.heartbeat_secs, 20, "missing keys keep their defaults");
    }
}
