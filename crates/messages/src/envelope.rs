//! The envelope: what every message carries besides its payload.
//!
//! On the wire these fields are AMQP properties (`message_id`, `type`,
//! `correlation_id`, `reply_to`, `timestamp`) and headers (`causation_id`,
//! `traceparent`, `occurred_at`, `user_id`, `schema_version`). The outbox stores
//! the envelope as JSON next to the payload, so a message published minutes
//! after its transaction committed still carries what it was given then.
//!
//! There is no tracing across hops yet: the `traceparent` field exists, travels
//! as a header and is copied by [`Envelope::caused_by`], but nothing sets it, so
//! every message Signalbox publishes today goes without one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Message;

/// Bumped when a payload changes incompatibly; consumers can refuse versions
/// they do not know.
pub const SCHEMA_VERSION: u32 = 1;

/// The three message styles of "Microservices Patterns" ch. 3 that Signalbox
/// uses (documents are events that carry a whole aggregate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// Something happened; any number of subscribers may react.
    Event,
    /// Please do this; exactly one handler acts, and may reply.
    Command,
    /// The answer to a command, routed by `reply_to` and matched by
    /// `correlation_id`.
    Reply,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per message (UUIDv7: time-ordered). The idempotent consumer
    /// deduplicates on it, so a redelivered message keeps its id.
    pub message_id: Uuid,
    /// The payload's wire name, for example `order.created`.
    pub message_type: String,
    pub kind: MessageKind,
    /// Ties a reply to its request (and every message of a saga together).
    pub correlation_id: Option<String>,
    /// Where a reply to this command should be sent (a queue name).
    pub reply_to: Option<String>,
    /// The message that caused this one, for tracing a chain of reactions.
    pub causation_id: Option<Uuid>,
    /// A W3C trace context, for the trace of the operation that produced the
    /// message. No service sets it yet (only a test of the AMQP mapping does),
    /// so it is `None` on every message Signalbox publishes.
    pub traceparent: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// The user who owns the affected data, when there is one. The realtime
    /// service routes events to `user:<id>` with it.
    pub user_id: Option<String>,
    pub schema_version: u32,
}

impl Envelope {
    /// A fresh envelope for a message of type `M`.
    pub fn new<M: Message>() -> Self {
        Self {
            message_id: Uuid::now_v7(),
            message_type: M::TYPE.to_owned(),
            kind: M::KIND,
            correlation_id: None,
            reply_to: None,
            causation_id: None,
            traceparent: None,
            occurred_at: Utc::now(),
            user_id: None,
            schema_version: SCHEMA_VERSION,
        }
    }

    /// An envelope for a message caused by `cause`: the correlation id, the
    /// user and the trace context (if the cause had one) carry over, and the
    /// causation chain grows by one.
    pub fn caused_by<M: Message>(cause: &Envelope) -> Self {
        Self {
            correlation_id: cause.correlation_id.clone(),
            causation_id: Some(cause.message_id),
            traceparent: cause.traceparent.clone(),
            user_id: cause.user_id.clone(),
            ..Self::new::<M>()
        }
    }

    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    pub fn with_reply_to(mut self, queue: impl Into<String>) -> Self {
        self.reply_to = Some(queue.into());
        self
    }

    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }
}
