//! The `signalbox.v1` wire protocol: JSON text frames tagged by `type`.
//!
//! Both directions are closed enums, so the whole protocol can be read on one
//! page and a frame the server does not know fails to parse (and is answered
//! with `error {code: "bad_request"}`) instead of being half-understood.
//!
//! ```text
//! client → server                       server → client
//! auth        {token}                   welcome        {ttl}
//! subscribe   {channel, recover?}       subscribed     {channel, recovered, epoch, offset}
//! unsubscribe {channel}                 unsubscribed   {channel}
//! refresh     {token}                   welcome        {ttl}   (the refresh ack)
//! command     {id, name, data}          reply          {id, ok, data | error}
//! ping                                  pong
//!                                       event          {channel, epoch, offset, data}
//!                                       token_expiring {in}
//!                                       error          {code, message}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The WebSocket subprotocol a client must offer. Versioning the protocol
/// in the handshake lets a `signalbox.v2` live beside it later.
pub const SUBPROTOCOL: &str = "signalbox.v1";

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticates a socket opened without an `Authorization` header
    /// (browsers cannot set headers on a WebSocket). Must be the first frame.
    Auth {
        token: String,
    },
    /// Starts the pushes of a channel. `recover` names the last event the
    /// client saw on it: the events after it are replayed first, and the
    /// answer says whether that was possible (see [`crate::recovery`]).
    Subscribe {
        channel: String,
        #[serde(default)]
        recover: Option<StreamPosition>,
    },
    Unsubscribe {
        channel: String,
    },
    /// Replaces the socket's token with a fresher one of the same user, which
    /// moves the socket's expiry.
    Refresh {
        token: String,
    },
    /// A message for the backend (`order.place`, `order.cancel`), answered
    /// by a `reply` with the same `id`; resending an `id` has one effect and
    /// gets the same reply (see [`crate::commands`]).
    Command {
        id: String,
        name: String,
        #[serde(default)]
        data: Value,
    },
    /// Application-level liveness check (the WebSocket ping is invisible to
    /// browser code, so clients get one of their own).
    Ping,
}

impl ClientFrame {
    /// Reads a client's text frame: the one parser of client frames, used by
    /// the socket for the first (`auth`) frame and every later one, and by
    /// the `client_frame` fuzz target. An error is answered with
    /// `error {code: "bad_request"}` carrying its text.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A position in the event log: its epoch and the offset of an event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct StreamPosition {
    pub epoch: String,
    pub offset: u64,
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The socket is authenticated; `ttl` is the number of seconds until its
    /// token expires. Also the answer to a successful `refresh`.
    Welcome {
        ttl: u64,
    },
    /// A backend event pushed on a channel, with its position in the event
    /// log: `offset` is the same on every instance and strictly increases
    /// within a channel (with gaps: the log holds every channel's events);
    /// `epoch` changes only when the log is created anew, which tells a
    /// client its offsets are no longer comparable.
    Event {
        channel: String,
        epoch: String,
        offset: u64,
        data: Value,
    },
    /// The subscription is active. `offset` is the last position this
    /// instance had handled when it subscribed (later events follow live);
    /// with `recover`, `recovered` says whether the missed events were
    /// replayed (they follow this frame, before any live one) or cannot be.
    Subscribed {
        channel: String,
        recovered: bool,
        epoch: String,
        offset: u64,
    },
    Unsubscribed {
        channel: String,
    },
    /// The answer to a `command`: `data` when `ok`, else `error` with one of
    /// the codes of `signalbox_messages::inbound::codes`.
    Reply {
        id: String,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
    /// The token expires in `in` seconds: send `refresh` or be closed with 4001.
    TokenExpiring {
        #[serde(rename = "in")]
        in_secs: u64,
    },
    /// Something the client sent was refused; the socket stays open unless a
    /// close frame follows.
    Error {
        code: String,
        message: String,
    },
    Pong,
}

/// A stable error `code` (clients switch on it) and a human `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ServerFrame {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// The frame as JSON text. Serialising these types cannot fail (string
    /// keys, no maps with non-string keys); the fallback only keeps a bug
    /// from panicking a socket task.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| {
            tracing::error!(%error, "frame serialisation failed");
            r#"{"type":"error","code":"internal","message":"frame serialisation failed"}"#
                .to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_frames_are_tagged_by_type() {
        let frame: ClientFrame = serde_json::from_value(json!({
            "type": "subscribe",
            "channel": "user:42",
            "recover": {"epoch": "ab12", "offset": 7}
        }))
        .unwrap();
        assert_eq!(
            frame,
            ClientFrame::Subscribe {
                channel: "user:42".into(),
                recover: Some(StreamPosition {
                    epoch: "ab12".into(),
                    offset: 7
                })
            }
        );
        let ping: ClientFrame = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert_eq!(ping, ClientFrame::Ping);
    }

    #[test]
    fn an_unknown_client_frame_does_not_parse() {
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"shout"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"channel":"x"}"#).is_err());
    }

    #[test]
    fn token_expiring_carries_its_seconds_as_in() {
        let json = serde_json::to_value(ServerFrame::TokenExpiring { in_secs: 12 }).unwrap();
        assert_eq!(json, json!({"type": "token_expiring", "in": 12}));
    }

    #[test]
    fn a_failed_reply_has_an_error_and_no_data() {
        let frame = ServerFrame::Reply {
            id: "c1".into(),
            ok: false,
            data: None,
            error: Some(ErrorBody {
                code: "not_found".into(),
                message: "order o1 not found".into(),
            }),
        };
        assert_eq!(
            serde_json::to_value(frame).unwrap(),
            json!({"type": "reply", "id": "c1", "ok": false,
                   "error": {"code": "not_found", "message": "order o1 not found"}})
        );
    }
}
