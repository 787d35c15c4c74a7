//! From the broker to the hub: the fan-out consumer.
//!
//! Publish-subscribe across instances, with a memory. The events exchange
//! feeds one stream, bound with [`BINDINGS`] (see [`crate::recovery`]), and
//! every realtime instance reads all of it: so whichever instance holds a
//! user's socket, it gets the user's `order.approved`; the instance does not
//! need to know where the user is connected, and instances can come and go
//! freely. Each event arrives with its stream offset, its position for
//! every instance alike, and goes to the hub with it.
//!
//! Routing onto channels (see [`channels_for`]): an event whose envelope names
//! a `user_id` goes to `user:<user_id>`; a `catalog.*` event goes to the
//! public `catalog` channel. The frame's `data` is the payload with the
//! message type added as `type`, so a client sees
//! `{"type":"order.approved","order_id":…,"user_id":…,"state":"APPROVED"}`.
//!
//! Each event is handled by the shedding policy ([`crate::backpressure`]):
//! its kind ([`EventKind::of`]) and its lag, how long after it occurred it
//! is handled here, decide whether it is pushed at all.
//!
//! The consumer loop acks after [`EventRouter::handle`] returns: the effect of
//! an event here is the push into the hub, which cannot fail in a way a
//! redelivery would fix (and an ack on a stream only gives credit back).
//! Nothing is stored here, so nothing needs deduplicating.

use std::sync::Arc;

use serde_json::Value;
use signalbox_messages::Envelope;
use signalbox_messaging::{HandleError, Handler, Incoming};

use crate::{
    backpressure::EventKind,
    hub::{user_channel, Hub, CATALOG_CHANNEL},
};

/// Routing-key patterns this instance's queue is bound with.
pub const BINDINGS: [&str; 2] = ["order.*", "catalog.*"];

/// The consumer tag of the events consumer (shown in the RabbitMQ UI).
pub const CONSUMER_TAG: &str = "realtime";

/// The channels an event is pushed on.
pub fn channels_for(envelope: &Envelope) -> Vec<String> {
    let mut channels = Vec::with_capacity(2);
    if let Some(user_id) = envelope.user_id.as_deref().filter(|id| !id.is_empty()) {
        channels.push(user_channel(user_id));
    }
    if envelope.message_type.starts_with("catalog.") {
        channels.push(CATALOG_CHANNEL.to_owned());
    }
    channels
}

/// The `data` of the event frame: the payload's fields plus `type`.
pub fn frame_data(envelope: &Envelope, body: &[u8]) -> Result<Value, HandleError> {
    let mut fields = match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => {
            return Err(HandleError::Reject(
                "payload is not a JSON object".to_owned(),
            ))
        }
        Err(error) => return Err(HandleError::Reject(format!("payload is not JSON: {error}"))),
    };
    fields.insert(
        "type".to_owned(),
        Value::String(envelope.message_type.clone()),
    );
    Ok(Value::Object(fields))
}

/// Hands each received event to the hub.
pub struct EventRouter {
    hub: Arc<Hub>,
}

impl EventRouter {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Handler for EventRouter {
    // The push of one event to this instance's sockets: a span of its own
    // under the consumer's `process` span, so an order's trace shows where
    // it reached the sockets and how many it reached.
    #[tracing::instrument(
        name = "push",
        skip_all,
        fields(
            otel.name = "push",
            message_id = %message.envelope.message_id,
            message_type = %message.envelope.message_type,
            signalbox.sockets_pushed = tracing::field::Empty,
        )
    )]
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let Some(offset) = message.stream_offset else {
            return Err(HandleError::Reject(
                "an event without a stream offset".to_owned(),
            ));
        };
        let channels = channels_for(&message.envelope);
        let kind = EventKind::of(&message.envelope.message_type);
        // How long after it occurred the event is handled here: the
        // instance's lag, which the shedding policy goes by. A clock behind
        // the publisher's gives a negative age, counted as none.
        let lag = (chrono::Utc::now() - message.envelope.occurred_at)
            .to_std()
            .unwrap_or_default();
        // Whatever it carries, the event moves the hub's position: it has
        // been handled, and a replay up to here must not wait for it.
        let data = match frame_data(&message.envelope, &message.body) {
            Ok(data) if !channels.is_empty() => data,
            Ok(_) => {
                self.hub.handle(offset, &[], &Value::Null, kind, lag);
                tracing::trace!(offset, "event for no channel");
                return Ok(());
            }
            // A malformed payload is passed over (logged by the consumer
            // loop): it could not be shown to anyone anyway.
            Err(error) => {
                self.hub.handle(offset, &[], &Value::Null, kind, lag);
                return Err(error);
            }
        };
        let pushed = self.hub.handle(offset, &channels, &data, kind, lag);
        tracing::Span::current().record("signalbox.sockets_pushed", pushed);
        tracing::debug!(offset, pushed, ?lag, "event handled");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use signalbox_messages::{catalog::PriceChanged, orders::OrderApproved};

    #[test]
    fn a_user_event_goes_to_the_users_channel_only() {
        let envelope = Envelope::new::<OrderApproved>().with_user_id("42");
        assert_eq!(channels_for(&envelope), vec!["user:42"]);
    }

    #[test]
    fn a_catalog_event_goes_to_the_public_catalog_channel() {
        let envelope = Envelope::new::<PriceChanged>();
        assert_eq!(channels_for(&envelope), vec!["catalog"]);
    }

    #[test]
    fn frame_data_is_the_payload_with_its_type() {
        let envelope = Envelope::new::<OrderApproved>().with_user_id("42");
        let data = frame_data(&envelope, br#"{"order_id":"o1","state":"APPROVED"}"#).unwrap();
        assert_eq!(
            data,
            json!({"type": "order.approved", "order_id": "o1", "state": "APPROVED"})
        );
        assert!(frame_data(&envelope, b"[1,2]").is_err());
    }
}
