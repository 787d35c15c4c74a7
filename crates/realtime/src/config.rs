//! Settings of the realtime service (defaults here, then
//! `config/realtime.yaml`, then `APP__…` environment variables).

use std::num::NonZeroUsize;

pub use crate::{backpressure::BackpressureSettings, recovery::RecoverySettings};
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
    /// How much history is kept for recovering clients, and for how long.
    #[serde(default)]
    pub recovery: RecoverySettings,
    /// What the instance sheds when it falls behind the event log, and
    /// from how far behind (`APP__BACKPRESSURE__…`).
    #[serde(default)]
    pub backpressure: BackpressureSettings,
    pub telemetry: TelemetrySettings,
    /// Worker threads of the process's Tokio runtime
    /// (`APP__WORKER_THREADS`); by default one fewer than the cores the
    /// process may use, and at least one
    /// (`signalbox_platform::runtime::beside_the_broker`, which says why).
    #[serde(default)]
    pub worker_threads: Option<NonZeroUsize>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: ListenSettings::on_port(8081),
            amqp: AmqpSettings::default(),
            tokens: VerifierSettings::default(),
            ws: WsSettings::default(),
            recovery: RecoverySettings::default(),
            backpressure: BackpressureSettings::default(),
            telemetry: TelemetrySettings::default(),
            worker_threads: None,
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
    /// since it is the token, not the origin, that authenticates. By
    /// default the gateway's live page on this machine
    /// (`http://localhost:8080`, `http://127.0.0.1:8080`).
    #[serde(deserialize_with = "comma_list")]
    pub allowed_origins: Vec<String>,
    /// How long a socket opened without an `Authorization` header may take to
    /// send its `auth` frame.
    pub auth_timeout_secs: u64,
    /// Largest message (and frame) a client may send, in bytes; a larger one
    /// closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Read buffer of each socket, in bytes. It is allocated, and filled on
    /// the first read, when the socket opens, and kept for the socket's
    /// life: an idle socket costs this much whatever it does. It is not a
    /// limit: a longer frame (up to `max_frame_bytes`) grows the buffer to
    /// fit, and the socket may keep that larger buffer afterwards.
    pub read_buffer_bytes: usize,
    /// How many bytes of outgoing frames are gathered before they are
    /// written to the connection. The write buffer is not allocated up
    /// front: it holds the frame being written and keeps the capacity of the
    /// largest one so far.
    pub write_buffer_bytes: usize,
    /// Frames the hub may queue for one socket before it counts as a slow
    /// consumer and is disconnected.
    pub send_buffer: usize,
    /// Interval of the server's WebSocket pings; three silent intervals close
    /// the socket.
    pub heartbeat_secs: u64,
    /// How long a `command` waits for the backend's reply before it is
    /// answered `timeout`, in milliseconds. A reply that comes later is
    /// dropped.
    pub command_timeout_ms: u64,
    /// Commands one socket may send per second, on average...
    pub command_rate_per_sec: u32,
    /// ...and at once after a quiet spell (the token bucket's size). A
    /// command beyond them is answered `rate_limited` and not sent.
    pub command_burst: u32,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            allowed_origins: vec![
                "http://localhost:8080".to_owned(),
                "http://127.0.0.1:8080".to_owned(),
            ],
            auth_timeout_secs: 5,
            // Client frames are small JSON: `subscribe` is tens of bytes,
            // `auth` and `refresh` carry a token of about a kilobyte. 64 KiB
            // is far above any of them and small enough that a client cannot
            // make the service buffer much on its behalf.
            max_frame_bytes: 64 * 1024,
            // tungstenite's default is 128 KiB, and the buffer is filled
            // (so resident) on the first read: every idle socket would cost
            // 128 KiB. Client frames of this protocol are tens of bytes
            // (`subscribe`, `ping`) or about a kilobyte (`auth`, `refresh`
            // with a token); 1 KiB holds most of them in one read, and a
            // longer one grows the buffer to fit (see the field).
            read_buffer_bytes: 1024,
            // The socket task writes every event its queue holds before it
            // flushes once (`socket::push_queued`): this gathers them into
            // one write to the connection, up to 4 KiB (some twenty event
            // frames), instead of one write per frame; tungstenite's
            // default would wait for 128 KiB. A socket that once had a
            // burst keeps that much capacity.
            write_buffer_bytes: 4 * 1024,
            send_buffer: 256,
            heartbeat_secs: 20,
            command_timeout_ms: 10_000,
            command_rate_per_sec: 20,
            command_burst: 40,
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
