//! The vocabulary every Signalbox service speaks on the broker.
//!
//! Producers and consumers share this crate, so a payload type is defined
//! exactly once: [`envelope`] holds the metadata that travels with every
//! message (ids, correlation, causation, trace context), [`channels`] names the
//! exchanges, queues and routing keys, [`orders`] / [`catalog`] hold the
//! business payloads, [`inbound`] the commands sockets send to the backend
//! and their replies, and [`system`] those about the running system (the
//! census). Payloads are JSON so they stay readable in the RabbitMQ
//! management UI, which matters for a teaching system.

pub mod catalog;
pub mod channels;
pub mod envelope;
pub mod inbound;
pub mod orders;
pub mod system;

pub use envelope::{Envelope, MessageKind, SCHEMA_VERSION};

use serde::{de::DeserializeOwned, Serialize};

/// A payload type with a stable name on the wire.
///
/// `TYPE` goes into the AMQP `type` property; a consumer dispatches on it
/// before it tries to deserialize the body.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The wire name, for example `order.created`.
    const TYPE: &'static str;
    /// Whether this is an event, a command or a reply.
    const KIND: MessageKind;
}

/// A payload that could not be understood: never retried, it goes to the
/// dead-letter queue with this reason.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("expected message type `{expected}`, got `{actual}`")]
    WrongType {
        expected: &'static str,
        actual: String,
    },
    #[error("malformed `{message_type}` payload: {source}")]
    Malformed {
        message_type: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Decodes `body` as `M`, checking the `type` the envelope announced first.
pub fn decode<M: Message>(envelope: &Envelope, body: &[u8]) -> Result<M, DecodeError> {
    if envelope.message_type != M::TYPE {
        return Err(DecodeError::WrongType {
            expected: M::TYPE,
            actual: envelope.message_type.clone(),
        });
    }
    serde_json::from_slice(body).map_err(|source| DecodeError::Malformed {
        message_type: M::TYPE,
        source,
    })
}
