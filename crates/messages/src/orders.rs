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

/// A revision of the order's items was accepted and its reservation asked
/// for; `state` is the order's state, unchanged until catalog answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRevised {
    pub order_id: Uuid,
    pub user_id: String,
    pub state: String,
    pub revision_id: Uuid,
    pub items: Vec<LineItem>,
}

impl Message for OrderRevised {
    const TYPE: &'static str = events::ORDER_REVISED;
    const KIND: MessageKind = MessageKind::Event;
}

/// A revision catalog could not reserve: the order keeps its items and its
/// `state`; `reason` says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRevisionRejected {
    pub order_id: Uuid,
    pub user_id: String,
    pub state: String,
    pub revision_id: Uuid,
    pub reason: String,
}

impl Message for OrderRevisionRejected {
    const TYPE: &'static str = events::ORDER_REVISION_REJECTED;
    const KIND: MessageKind = MessageKind::Event;
}
