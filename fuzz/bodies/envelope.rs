//! Fuzz body `envelope`: arbitrary bytes as an AMQP delivery — the basic
//! properties in their wire encoding (the content header's property flags
//! and values, headers table included), then the body — decoded the way
//! every consumer decodes one.
//!
//! The properties are read by the AMQP client's own decoder
//! (`lapin::protocol::basic::parse_properties`, the code that reads them off
//! the socket); the bytes after them are the body. Then, as
//! `signalbox_messaging::consumer` does: the envelope
//! (`amqp::from_properties`), the retry count, the trace context the
//! consumer's span continues, and the payload as the type the envelope
//! announces. Each step answers a value or a typed error, never panics; an
//! envelope that decodes survives the trip back through `to_properties`.
//!
//! Shared by `fuzz/fuzz_targets/envelope.rs` and the corpus replay
//! `crates/messaging/tests/fuzz_corpus.rs`.

use lapin::protocol::basic::parse_properties;
use signalbox_messages::{
    catalog, decode, inbound, orders, system, DecodeError, Envelope, Message,
};
use signalbox_messaging::{amqp, headers, trace_context};

/// The envelope of the delivery `data` encodes, once its payload decoded
/// as the announced type; otherwise why it would be dead-lettered.
pub fn run(data: &[u8]) -> Result<Envelope, String> {
    let (body, properties) =
        parse_properties(data).map_err(|error| format!("undecodable properties: {error}"))?;
    let _ = headers::retry_count(&properties);
    let envelope = amqp::from_properties(&properties).map_err(|error| error.to_string())?;
    let _ = trace_context::context_of(&envelope);

    let back = amqp::from_properties(&amqp::to_properties(&envelope))
        .expect("an envelope that decoded encodes and decodes again");
    assert_eq!(back, envelope, "the envelope changed on the round trip");

    payload(&envelope, body)?;
    Ok(envelope)
}

/// Decodes `body` as the message type the envelope names: every type of
/// `signalbox_messages`, as the consumer of each would.
fn payload(envelope: &Envelope, body: &[u8]) -> Result<(), String> {
    fn as_type<M: Message>(envelope: &Envelope, body: &[u8]) -> Result<(), DecodeError> {
        decode::<M>(envelope, body).map(drop)
    }
    let decoded = match envelope.message_type.as_str() {
        orders::OrderCreated::TYPE => as_type::<orders::OrderCreated>(envelope, body),
        orders::OrderApproved::TYPE => as_type::<orders::OrderApproved>(envelope, body),
        orders::OrderRejected::TYPE => as_type::<orders::OrderRejected>(envelope, body),
        orders::OrderCancelled::TYPE => as_type::<orders::OrderCancelled>(envelope, body),
        orders::OrderRevised::TYPE => as_type::<orders::OrderRevised>(envelope, body),
        orders::OrderRevisionRejected::TYPE => {
            as_type::<orders::OrderRevisionRejected>(envelope, body)
        }
        catalog::ReserveStock::TYPE => as_type::<catalog::ReserveStock>(envelope, body),
        catalog::ReleaseStock::TYPE => as_type::<catalog::ReleaseStock>(envelope, body),
        catalog::ReserveStockReply::TYPE => as_type::<catalog::ReserveStockReply>(envelope, body),
        catalog::ReviseStock::TYPE => as_type::<catalog::ReviseStock>(envelope, body),
        catalog::ReviseStockReply::TYPE => as_type::<catalog::ReviseStockReply>(envelope, body),
        catalog::PriceChanged::TYPE => as_type::<catalog::PriceChanged>(envelope, body),
        catalog::StockChanged::TYPE => as_type::<catalog::StockChanged>(envelope, body),
        inbound::ClientCommand::TYPE => as_type::<inbound::ClientCommand>(envelope, body),
        inbound::ClientReply::TYPE => as_type::<inbound::ClientReply>(envelope, body),
        system::CensusRequest::TYPE => as_type::<system::CensusRequest>(envelope, body),
        system::CensusReply::TYPE => as_type::<system::CensusReply>(envelope, body),
        other => return Err(format!("unknown message type `{other}`")),
    };
    decoded.map_err(|error| error.to_string())
}
