//! Mapping between the [`Envelope`] and AMQP properties and headers.
//!
//! Standard fields use the standard AMQP properties (so the management UI and
//! other clients understand them); the rest travel as headers.

use chrono::{DateTime, Utc};
use lapin::{
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties,
};
use signalbox_messages::{Envelope, MessageKind};
use uuid::Uuid;

use crate::headers;

/// Delivery mode 2: the broker writes the message to disk in durable queues.
const PERSISTENT: u8 = 2;

/// Why a delivery could not be turned into an [`Envelope`]. Such a message is
/// dead-lettered at once: retrying cannot fix it.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("missing property `{0}`")]
    Missing(&'static str),
    #[error("invalid property `{field}`")]
    Invalid {
        field: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("unknown message kind `{0}`")]
    UnknownKind(String),
}

pub fn to_properties(envelope: &Envelope) -> BasicProperties {
    let mut table = FieldTable::default();
    let mut put = |key: &str, value: String| {
        table.insert(ShortString::from(key), AMQPValue::LongString(value.into()));
    };
    put(headers::KIND, kind_str(envelope.kind).to_owned());
    put(headers::OCCURRED_AT, envelope.occurred_at.to_rfc3339());
    put(headers::SCHEMA_VERSION, envelope.schema_version.to_string());
    if let Some(causation) = envelope.causation_id {
        put(headers::CAUSATION_ID, causation.to_string());
    }
    if let Some(traceparent) = &envelope.traceparent {
        put(headers::TRACEPARENT, traceparent.clone());
    }
    if let Some(user_id) = &envelope.user_id {
        put(headers::USER_ID, user_id.clone());
    }

    let mut props = BasicProperties::default()
        .with_message_id(ShortString::from(envelope.message_id.to_string()))
        .with_type(ShortString::from(envelope.message_type.clone()))
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(envelope.occurred_at.timestamp().max(0) as u64)
        .with_headers(table);
    if let Some(correlation) = &envelope.correlation_id {
        props = props.with_correlation_id(ShortString::from(correlation.clone()));
    }
    if let Some(reply_to) = &envelope.reply_to {
        props = props.with_reply_to(ShortString::from(reply_to.clone()));
    }
    props
}

pub fn from_properties(props: &BasicProperties) -> Result<Envelope, EnvelopeError> {
    let message_id = props
        .message_id()
        .as_ref()
        .ok_or(EnvelopeError::Missing("message_id"))?;
    let message_id = parse_uuid("message_id", message_id.as_str())?;
    let message_type = props
        .kind()
        .as_ref()
        .ok_or(EnvelopeError::Missing("type"))?
        .to_string();
    let header = |key: &str| header_str(props.headers(), key);

    let kind = match header(headers::KIND).as_deref() {
        Some("event") | None => MessageKind::Event,
        Some("command") => MessageKind::Command,
        Some("reply") => MessageKind::Reply,
        Some(other) => return Err(EnvelopeError::UnknownKind(other.to_owned())),
    };
    let occurred_at = match header(headers::OCCURRED_AT) {
        Some(raw) => DateTime::parse_from_rfc3339(&raw)
            .map_err(|e| invalid(headers::OCCURRED_AT, e))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let schema_version = match header(headers::SCHEMA_VERSION) {
        Some(raw) => raw
            .parse()
            .map_err(|e| invalid(headers::SCHEMA_VERSION, e))?,
        None => signalbox_messages::SCHEMA_VERSION,
    };
    let causation_id = header(headers::CAUSATION_ID)
        .map(|raw| parse_uuid(headers::CAUSATION_ID, &raw))
        .transpose()?;

    Ok(Envelope {
        message_id,
        message_type,
        kind,
        correlation_id: props.correlation_id().as_ref().map(|c| c.to_string()),
        reply_to: props.reply_to().as_ref().map(|r| r.to_string()),
        causation_id,
        traceparent: header(headers::TRACEPARENT),
        occurred_at,
        user_id: header(headers::USER_ID),
        schema_version,
    })
}

/// Reads a string header, whichever AMQP string type the sender used.
pub fn header_str(headers: &Option<FieldTable>, key: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A header value as an AMQP long string (the type other clients expect for
/// text).
pub(crate) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn kind_str(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Event => "event",
        MessageKind::Command => "command",
        MessageKind::Reply => "reply",
    }
}

fn parse_uuid(field: &'static str, raw: &str) -> Result<Uuid, EnvelopeError> {
    Uuid::parse_str(raw).map_err(|e| invalid(field, e))
}

fn invalid(
    field: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> EnvelopeError {
    EnvelopeError::Invalid {
        field,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalbox_messages::{catalog::ReserveStock, Envelope};

    #[test]
    fn an_envelope_survives_the_trip_through_amqp_properties() {
        let cause = Envelope::new::<ReserveStock>();
        let envelope = Envelope::caused_by::<ReserveStock>(&cause)
            .with_correlation_id("order-1")
            .with_reply_to("t.orders.replies")
            .with_user_id("user-1");
        let mut envelope = envelope;
        envelope.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());

        let back = from_properties(&to_properties(&envelope)).unwrap();

        // Timestamps travel as RFC 3339, which keeps sub-second precision.
        assert_eq!(back, envelope);
    }

    #[test]
    fn an_invalid_property_keeps_its_cause() {
        let props = BasicProperties::default()
            .with_message_id(ShortString::from("not-a-uuid"))
            .with_type(ShortString::from("order.created"));
        let error = from_properties(&props).unwrap_err();
        assert!(matches!(
            error,
            EnvelopeError::Invalid {
                field: "message_id",
                ..
            }
        ));
        let cause = std::error::Error::source(&error).expect("the parse error is kept");
        assert!(cause.downcast_ref::<uuid::Error>().is_some(), "{cause}");
    }

    #[test]
    fn a_delivery_without_message_id_is_refused() {
        let props = BasicProperties::default().with_type(ShortString::from("order.created"));
        assert!(matches!(
            from_properties(&props),
            Err(EnvelopeError::Missing("message_id"))
        ));
    }
}
