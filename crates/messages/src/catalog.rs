//! Commands the catalog service handles, its replies, and its events.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    channels::{commands, events},
    orders::LineItem,
    Message, MessageKind,
};

/// Reserve stock for every item of an order, all or nothing. Sent by the
/// order saga with `reply_to` set to the orders reply channel and the order id
/// as `correlation_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStock {
    pub order_id: Uuid,
    pub items: Vec<LineItem>,
}

impl Message for ReserveStock {
    const TYPE: &'static str = commands::RESERVE_STOCK;
    const KIND: MessageKind = MessageKind::Command;
}

/// Give back what was reserved for an order (it was cancelled). Idempotent:
/// releasing an order with no reservation does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStock {
    pub order_id: Uuid,
}

impl Message for ReleaseStock {
    const TYPE: &'static str = commands::RELEASE_STOCK;
    const KIND: MessageKind = MessageKind::Command;
}

/// The answer to [`ReserveStock`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStockReply {
    pub order_id: Uuid,
    #[serde(flatten)]
    pub outcome: ReservationOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReservationOutcome {
    Reserved,
    Rejected { reason: String },
}

impl Message for ReserveStockReply {
    const TYPE: &'static str = "catalog.reserve_stock.reply";
    const KIND: MessageKind = MessageKind::Reply;
}

/// Make an order's reservation match its revised items: reserve what the
/// revision adds, release what it removes, all or nothing. `items` are the
/// order's items after the revision, all of them; catalog computes the
/// difference from what it holds for the order. Sent by the saga with
/// `reply_to` set to the orders reply channel, on the order's shard, so it
/// is handled after the order's `reserve_stock` and before any later
/// `release_stock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviseStock {
    pub order_id: Uuid,
    pub revision_id: Uuid,
    pub items: Vec<LineItem>,
}

impl Message for ReviseStock {
    const TYPE: &'static str = commands::REVISE_STOCK;
    const KIND: MessageKind = MessageKind::Command;
}

/// The answer to [`ReviseStock`]: `reserved` when the reservation now
/// matches the revised items, `rejected` (the reservation unchanged) when it
/// could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviseStockReply {
    pub order_id: Uuid,
    pub revision_id: Uuid,
    #[serde(flatten)]
    pub outcome: ReservationOutcome,
}

impl Message for ReviseStockReply {
    const TYPE: &'static str = "catalog.revise_stock.reply";
    const KIND: MessageKind = MessageKind::Reply;
}

/// Published when a product's price changes; pushed to the public `catalog`
/// channel of the realtime service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceChanged {
    pub product_id: Uuid,
    pub price_cents: i64,
    pub currency: String,
}

impl Message for PriceChanged {
    const TYPE: &'static str = events::CATALOG_PRICE_CHANGED;
    const KIND: MessageKind = MessageKind::Event;
}

/// Published when an operator sets a product's stock; pushed to the public
/// `catalog` channel like [`PriceChanged`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockChanged {
    pub product_id: Uuid,
    pub stock: i64,
}

impl Message for StockChanged {
    const TYPE: &'static str = events::CATALOG_STOCK_CHANGED;
    const KIND: MessageKind = MessageKind::Event;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_reply_carries_its_reason_on_the_wire() {
        let reply = ReserveStockReply {
            order_id: Uuid::nil(),
            outcome: ReservationOutcome::Rejected {
                reason: "insufficient stock".into(),
            },
        };
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["outcome"], "rejected");
        assert_eq!(json["reason"], "insufficient stock");
        let back: ReserveStockReply = serde_json::from_value(json).unwrap();
        assert_eq!(back, reply);
    }
}
