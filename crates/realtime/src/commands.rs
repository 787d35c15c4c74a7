//! From a socket to the backend and back: `command {id, name, data}` →
//! `reply {id, ok, data | error}`.
//!
//! A socket's command is a request somebody waits for, so it travels as an
//! asynchronous request/response ([`signalbox_messaging::Requester`]), not
//! through an outbox: it is published with a confirm on the inbound
//! exchange, routed by its `name` to the one work queue of the service that
//! handles it (`order.*` → `<ns>.orders.inbound`, consumed by every orders
//! instance: competing consumers, one of them takes it), and its reply comes
//! back to this instance's private reply queue, where the requester's
//! router hands it to the socket task waiting on its correlation id.
//!
//! ```text
//!  socket task ──rate limit──▶ spawn ──Requester::request──▶ inbound exchange ──▶ orders
//!      ▲                                                                            │
//!      └── JoinSet (reply frame) ◀── oneshot ◀── router ◀── this instance's reply queue
//! ```
//!
//! What the message carries: the socket's *verified* user (`user_id` in the
//! envelope; the token was checked at the upgrade or the `auth` frame, and
//! again at every `refresh`) and the token's scopes, so the handler applies
//! the same permission rule as the REST routes; a `message_id` derived from
//! (user, command id) ([`command_message_id`]), so a resent command id is
//! the same message to the handler's processed-messages table and gets the
//! stored reply; a fresh `correlation_id` and this instance's reply queue as
//! `reply_to`, set by the requester.
//!
//! Each command waits at most `ws.command_timeout_ms`; past it the socket is
//! answered `timeout` (the command may still take effect: resend the same id
//! to learn its outcome), and a reply that arrives later finds no waiter and
//! is dropped by the router. A command for which no queue is bound is
//! returned by the broker (the publish is mandatory) and answered
//! `unknown_command` at once.

use std::time::Duration;

use serde_json::Value;
use signalbox_messages::{
    inbound::{codes, command_message_id, ClientCommand, ClientReply},
    Envelope,
};
use signalbox_messaging::{Outgoing, RequestError, Requester};
use tokio::time::Instant;

use crate::frames::{ErrorBody, ServerFrame};

/// Sends socket commands to the backend. One per instance, shared by every
/// socket (the requester's reply queue is the instance's).
pub struct Commands {
    requester: Requester,
    deadline: Duration,
}

impl Commands {
    pub fn new(requester: Requester, deadline: Duration) -> Self {
        Self {
            requester,
            deadline,
        }
    }

    /// Sends command `id` of `user_id` and returns the `reply` frame for it:
    /// the backend's answer, or the error that stood in for it.
    #[tracing::instrument(skip_all, fields(command = %name, id = %id))]
    pub async fn send(
        &self,
        user_id: &str,
        scopes: Vec<String>,
        id: String,
        name: String,
        data: Value,
    ) -> ServerFrame {
        let ns = self.requester.namespace();
        let mut envelope = Envelope::new::<ClientCommand>().with_user_id(user_id);
        envelope.message_id = command_message_id(user_id, &id);
        let command = ClientCommand {
            command_id: id.clone(),
            name: name.clone(),
            data,
            scopes,
        };
        let message = Outgoing {
            exchange: ns.inbound_exchange(),
            routing_key: name.clone(),
            envelope,
            payload: serde_json::to_vec(&command).expect("a command serializes to JSON"),
        };
        let reply = match self.requester.request(message, self.deadline).await {
            Ok(reply) => reply.decode::<ClientReply>().unwrap_or_else(|error| {
                tracing::warn!(%error, "undecodable reply");
                ClientReply::failed(codes::UNAVAILABLE, "the backend's reply was not understood")
            }),
            Err(error) => failure(&name, error),
        };
        reply_frame(id, reply)
    }

    /// Closes the reply queue (at shutdown).
    pub async fn close(&self) {
        self.requester.close().await;
    }
}

/// The reply that stands in for one that did not come.
fn failure(name: &str, error: RequestError) -> ClientReply {
    match error {
        RequestError::Timeout { after, .. } => {
            tracing::info!(?after, "command timed out");
            ClientReply::failed(
                codes::TIMEOUT,
                format!("no reply within {} ms; the command may still take effect, resend the same id to learn its outcome", after.as_millis()),
            )
        }
        RequestError::Unroutable { .. } => ClientReply::failed(
            codes::UNKNOWN_COMMAND,
            format!("no service handles `{name}`"),
        ),
        other => {
            tracing::warn!(error = %other, "command not delivered");
            ClientReply::failed(
                codes::UNAVAILABLE,
                "the backend cannot be reached right now",
            )
        }
    }
}

/// The wire frame for `reply` to command `id`.
pub fn reply_frame(id: String, reply: ClientReply) -> ServerFrame {
    ServerFrame::Reply {
        id,
        ok: reply.ok,
        data: reply.data,
        error: reply.error.map(|error| ErrorBody {
            code: error.code,
            message: error.message,
        }),
    }
}

/// A token bucket: `rate` commands per second on average, `burst` at once.
/// Owned by one socket task, so it needs no lock.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// [`Self::try_take`] at `now` (a test passes its own clock).
    fn try_take_at(&mut self, now: Instant) -> bool {
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut limit = RateLimit::new(20, 40);
        let start = limit.refilled;
        assert_eq!((0..50).filter(|_| limit.try_take_at(start)).count(), 40);
        // 20 per second earns one token every 50 ms.
        let later = start + Duration::from_millis(50);
        assert!(limit.try_take_at(later));
        assert!(!limit.try_take_at(later));
        let much_later = later + Duration::from_secs(60);
        let taken = (0..50).filter(|_| limit.try_take_at(much_later)).count();
        assert_eq!(taken, 40, "never above the burst");
    }
}
