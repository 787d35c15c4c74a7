//! Names of exchanges, queues and routing keys.
//!
//! Every name is prefixed with a namespace (`signalbox` by default). Tests use
//! a random namespace each, so many systems share one broker without seeing
//! each other's messages; a team could do the same for tenants or branches.

/// Routing keys of domain events on the events exchange: `<aggregate>.<event>`.
pub mod events {
    pub const ORDER_CREATED: &str = "order.created";
    pub const ORDER_APPROVED: &str = "order.approved";
    pub const ORDER_REJECTED: &str = "order.rejected";
    pub const ORDER_CANCELLED: &str = "order.cancelled";
    /// A revision of the order's items was accepted; its outcome follows
    /// (`order.approved` with the new items, or `order.revision_rejected`).
    pub const ORDER_REVISED: &str = "order.revised";
    /// Catalog could not reserve a revision's difference: the order stays
    /// as it was.
    pub const ORDER_REVISION_REJECTED: &str = "order.revision_rejected";
    pub const CATALOG_PRICE_CHANGED: &str = "catalog.price_changed";
    pub const CATALOG_STOCK_CHANGED: &str = "catalog.stock_changed";
}

/// Routing keys of point-to-point commands on the commands exchange.
///
/// Catalog's commands travel on a *sharded* channel: the routing key carries
/// the shard of the order as a suffix (`catalog.release_stock.2`), computed
/// by the publisher from the order id (`signalbox_messaging::sharding`), so
/// every command about one order lands in the same shard queue
/// `<ns>.catalog.commands.shard.<i>` and is handled in order.
pub mod commands {
    /// Request-reply: catalog answers on the `reply_to` queue.
    pub const RESERVE_STOCK: &str = "catalog.reserve_stock";
    /// One-way: catalog sends no reply.
    pub const RELEASE_STOCK: &str = "catalog.release_stock";
    /// Request-reply: reserve or release the difference between what an
    /// order holds and its revised items; catalog answers on `reply_to`.
    pub const REVISE_STOCK: &str = "catalog.revise_stock";
    /// Every command catalog handles: the routing keys its shard queues
    /// are bound with.
    pub const CATALOG_COMMANDS: [&str; 3] = [RESERVE_STOCK, RELEASE_STOCK, REVISE_STOCK];
    /// How many shard queues catalog's commands are spread over. Publishers
    /// hash with it and catalog consumes that many shards: both sides must
    /// agree, so it is part of the contract, like a queue name.
    pub const CATALOG_SHARDS: usize = 4;
}

/// Routing keys of requests about the system itself, published on the events
/// exchange so that every instance of every service receives them.
pub mod system {
    /// "Who is running?": every instance answers with its identity.
    pub const CENSUS: &str = "system.census";
}

/// The namespace every exchange and queue name is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    pub const DEFAULT: &'static str = "signalbox";

    pub fn new(prefix: impl Into<String>) -> Self {
        Self(prefix.into())
    }

    pub fn prefix(&self) -> &str {
        &self.0
    }

    /// Topic exchange for domain events (publish-subscribe).
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.0)
    }

    /// Direct exchange for commands (point-to-point).
    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.0)
    }

    /// Direct exchange for messages from WebSocket clients.
    pub fn inbound_exchange(&self) -> String {
        format!("{}.inbound", self.0)
    }

    /// Dead-letter exchange; each queue's dead letters land in `<queue>.dlq`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.0)
    }

    /// A queue owned by one service, for example `queue("orders.replies")`.
    pub fn queue(&self, name: &str) -> String {
        format!("{}.{name}", self.0)
    }

    /// The base name of catalog's command shard queues
    /// (`<base>.shard.<i>`, see [`commands::CATALOG_SHARDS`]). No queue of
    /// exactly this name is declared any more.
    pub fn catalog_commands_queue(&self) -> String {
        self.queue("catalog.commands")
    }

    /// The reply channel of the orders service.
    pub fn orders_replies_queue(&self) -> String {
        self.queue("orders.replies")
    }

    /// The work queue of socket commands that orders handles, bound to the
    /// inbound exchange by command name and consumed by every orders
    /// instance (competing consumers).
    pub fn orders_inbound_queue(&self) -> String {
        self.queue("orders.inbound")
    }

    /// The queue where a queue's dead letters end up.
    pub fn dead_letter_queue(queue: &str) -> String {
        format!("{queue}.dlq")
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new(Self::DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace() {
        let ns = Namespace::new("t42");
        assert_eq!(ns.events_exchange(), "t42.events");
        assert_eq!(ns.orders_replies_queue(), "t42.orders.replies");
        assert_eq!(
            Namespace::dead_letter_queue(&ns.catalog_commands_queue()),
            "t42.catalog.commands.dlq"
        );
    }
}
