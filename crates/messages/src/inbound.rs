//! Commands from WebSocket clients to the backend, and their replies.
//!
//! A socket sends `command {id, name, data}`; the realtime instance that
//! holds it publishes a [`ClientCommand`] on the inbound exchange, routed by
//! the command's `name`, with the socket's verified user in the envelope's
//! `user_id` and its own reply queue in `reply_to`. The handling service
//! (orders, for `order.*`) answers with a [`ClientReply`], which realtime
//! turns into the `reply {id, ok, data | error}` frame.
//!
//! The envelope's `message_id` is not fresh: it is
//! [`command_message_id`]`(user, id)`, so a client that resends a command
//! (after a timeout, or on a new socket after a reconnect) sends the *same*
//! message, which the handler's processed-messages table recognises.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Message, MessageKind};

/// Names of the commands a socket may send, which are also their routing
/// keys on the inbound exchange.
pub mod names {
    /// `{items: [{product_id, quantity}]}` → `{order_id, state}`.
    pub const ORDER_PLACE: &str = "order.place";
    /// `{order_id}` → `{order_id, state}`.
    pub const ORDER_CANCEL: &str = "order.cancel";
}

/// The `code` values of a failed reply. Clients switch on them.
pub mod codes {
    /// No service handles a command of that name.
    pub const UNKNOWN_COMMAND: &str = "unknown_command";
    /// The command's `data` is not what the command takes.
    pub const BAD_REQUEST: &str = "bad_request";
    /// No such thing, or it belongs to another user (not disclosed).
    pub const NOT_FOUND: &str = "not_found";
    /// The socket's token does not grant the scope the command needs.
    pub const FORBIDDEN: &str = "forbidden";
    /// The command is valid but the state does not allow it (cancelling an
    /// approved order, ordering an unknown product).
    pub const FAILED_PRECONDITION: &str = "failed_precondition";
    /// No reply within the deadline; the command may still take effect.
    pub const TIMEOUT: &str = "timeout";
    /// The socket sent commands faster than it may.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Something the handler needs is down; resending later is safe.
    pub const UNAVAILABLE: &str = "unavailable";
}

/// A command from a socket, as the backend receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientCommand {
    /// The client's `id` of the command (echoed in the reply frame).
    pub command_id: String,
    pub name: String,
    #[serde(default)]
    pub data: Value,
    /// The scopes of the socket's verified access token, for the handler's
    /// permission check (the same scopes the REST routes need).
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl Message for ClientCommand {
    const TYPE: &'static str = "client.command";
    const KIND: MessageKind = MessageKind::Command;
}

/// Why a command failed: a stable `code` (see [`codes`]) and a text for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandError {
    pub code: String,
    pub message: String,
}

/// The answer to a [`ClientCommand`]: `data` when `ok`, `error` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandError>,
}

impl ClientReply {
    pub fn ok(data: Value) -> Self {
        Self {
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(CommandError {
                code: code.to_owned(),
                message: message.into(),
            }),
        }
    }
}

impl Message for ClientReply {
    const TYPE: &'static str = "client.reply";
    const KIND: MessageKind = MessageKind::Reply;
}

/// The message id of command `command_id` of `user_id`: the same pair gives
/// the same id, whichever socket or instance sends it, so a resent command
/// is a duplicate to the idempotent handler. A UUIDv8 (custom) built from
/// SHA-256 over both, length-prefixed so that `("ab", "c")` and `("a", "bc")`
/// differ; the user is part of it, so one user's ids never collide with
/// another's.
pub fn command_message_id(user_id: &str, command_id: &str) -> Uuid {
    let mut hash = Sha256::new();
    for part in [user_id, command_id] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_id_gives_one_message_id_per_user() {
        let first = command_message_id("42", "c1");
        assert_eq!(first, command_message_id("42", "c1"));
        assert_ne!(first, command_message_id("43", "c1"));
        assert_ne!(first, command_message_id("42", "c2"));
        assert_ne!(command_message_id("ab", "c"), command_message_id("a", "bc"));
        assert_eq!(first.get_version_num(), 8);
    }
}
