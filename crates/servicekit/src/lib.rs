//! Start-up shared by the services that use the broker, where `platform`
//! (settings, health, serving) meets `messaging` (the broker, the outbox).
//! Neither of the two depends on the other, so what needs both lives here:
//!
//! - [`connect_broker`]: the broker connection, opened from the service's
//!   [`AmqpSettings`](signalbox_platform::config::AmqpSettings) (orders,
//!   catalog, realtime, and the gateway's census).
//! - [`OutboxService`]: what every service with an outbox runs besides its
//!   own work (orders, catalog): readiness, the relay, the retention purge
//!   and the census responder.

mod broker;
mod outbox_service;

pub use broker::{connect_broker, connect_broker_within};
pub use outbox_service::OutboxService;
