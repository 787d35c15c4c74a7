//! The names of the AMQP headers Signalbox writes, each defined once.
//!
//! Two families travel in the headers of a message:
//!
//! - the **envelope** fields that have no standard AMQP property
//!   ([`crate::amqp`] maps the rest onto `message_id`, `type`,
//!   `correlation_id`, `reply_to`);
//! - the **failure story** of a message that could not be handled, written
//!   by the consumer when it moves a copy to a retry queue or the
//!   dead-letter queue ([`crate::consumer`]) and by the replay tool
//!   ([`crate::dead_letters`]). These carry the `x-` prefix, like the
//!   broker's own dead-lettering headers (`x-death`), so they read as
//!   transport metadata next to the message's own.
//!
//! An operator sees these names in the management UI and in `signalbox dlq list`; the
//! pattern pages cite them. Renaming one is a change of the wire format.

use lapin::{types::AMQPValue, BasicProperties};

/// Event, command or reply.
pub const KIND: &str = "kind";
/// When the fact happened (RFC 3339), not when it was sent.
pub const OCCURRED_AT: &str = "occurred_at";
/// The version of the payload's schema.
pub const SCHEMA_VERSION: &str = "schema_version";
/// The message id of the message that caused this one.
pub const CAUSATION_ID: &str = "causation_id";
/// W3C trace context, so a trace continues across the broker.
pub const TRACEPARENT: &str = "traceparent";
/// The user on whose behalf the message was sent, where a user owns it.
pub const USER_ID: &str = "user_id";

/// How many times a message was retried.
pub const RETRY_COUNT: &str = "x-retry-count";
/// Why a message was dead-lettered (or last failed).
pub const FAILURE_REASON: &str = "x-failure-reason";
/// The queue a dead letter came from, for replay.
pub const ORIGINAL_QUEUE: &str = "x-original-queue";
/// When a message was dead-lettered (RFC 3339).
pub const FAILED_AT: &str = "x-failed-at";
/// When a dead letter was replayed (RFC 3339).
pub const REPLAYED_AT: &str = "x-replayed-at";

/// The [`RETRY_COUNT`] header, whichever integer type the sender used; 0
/// when there is none.
pub fn retry_count(properties: &BasicProperties) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(RETRY_COUNT).cloned());
    match value {
        Some(AMQPValue::LongUInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => n.max(0) as u32,
        Some(AMQPValue::LongLongInt(n)) => n.clamp(0, u32::MAX as i64) as u32,
        Some(AMQPValue::ShortUInt(n)) => n.into(),
        Some(AMQPValue::ShortInt(n)) => n.max(0) as u32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldTable, ShortString};

    use super::*;

    fn with_retry_count(value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(RETRY_COUNT), value);
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn the_retry_count_is_read_from_any_integer_type_and_never_negative() {
        assert_eq!(retry_count(&BasicProperties::default()), 0);
        assert_eq!(retry_count(&with_retry_count(AMQPValue::LongUInt(3))), 3);
        assert_eq!(retry_count(&with_retry_count(AMQPValue::LongInt(4))), 4);
        assert_eq!(retry_count(&with_retry_count(AMQPValue::LongInt(-1))), 0);
        assert_eq!(retry_count(&with_retry_count(AMQPValue::LongLongInt(5))), 5);
        assert_eq!(retry_count(&with_retry_count(AMQPValue::ShortUInt(6))), 6);
        assert_eq!(retry_count(&with_retry_count(AMQPValue::ShortInt(-2))), 0);
        assert_eq!(
            retry_count(&with_retry_count(AMQPValue::LongString("7".into()))),
            0
        );
    }
}
