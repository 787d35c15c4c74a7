//! Events the orders service publishes. Each carries the order's new `state`,
//! so a subscriber (a browser, through the realtime service) can render it
//! without knowing the saga.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{channels::events, Message, MessageKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub product_id: Uuid,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub user_id: String,
    pub state: String,
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    pub currency: String,
}

impl Message for OrderCreated {
    const TYPE: &'static str = events::ORDER_CREATED;
    const KIND: MessageKind = MessageKind::Event;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderApproved {
    pub order_id: Uuid,
    pub user_id: String,
    pub state: String,
}

impl Message for OrderApproved {
    const TYPE: &'static str = events::ORDER_APPROVED;
    const KIND: MessageKind = MessageKind::Event;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    pub order_id: Uuid,
    pub user_id: String,
    pub state: String,
    pub reason: String,
}

impl Message for OrderRejected {
    const TYPE: &'static str = events::ORDER_REJECTED;
    const KIND: MessageKind = MessageKind::Event;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub user_id: String,
    pub state: String,
}

impl Message for OrderCancelled {
    const TYPE: &'static str = events::ORDER_CANCELLED;
    const KIND: MessageKind = MessageKind::Event;
}
