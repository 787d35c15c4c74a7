//! A harness that runs the whole of Signalbox inside one test process.
//!
//! [`TestSystem::start`] creates three fresh databases (random names) on the
//! real PostgreSQL server and picks a random namespace for every exchange and
//! queue on the real RabbitMQ broker, then builds and runs all five services
//! on port 0 (two realtime instances, to show fan-out). Tests drive it from
//! outside, like a user would: [`api::Api`] over HTTP through the gateway,
//! [`socket::Socket`] over a WebSocket to a realtime instance.
//!
//! Environment: `SIGNALBOX_TEST_DATABASE_URL` (server URL without database,
//! default `postgres://postgres@127.0.0.1:5432`) and `SIGNALBOX_TEST_AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

pub mod api;
pub mod child;
pub mod infra;
pub mod socket;
pub mod system;
pub mod tokens;

pub use api::Api;
pub use socket::Socket;
pub use system::{Options, TestSystem};

use std::time::Duration;

/// How long a test waits for something the system does asynchronously (an
/// event on the socket, a state change). Generous: a deadline that fires
/// means the thing did not happen, not that the machine was slow.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Products seeded by `migrations/catalog/0002_seed_products.sql`.
pub mod products {
    /// Signal lamp: stock 100, 49.00 EUR.
    pub const LAMP: &str = "0193a4c0-0000-7000-8000-000000000001";
    /// Single-line tablet: stock 10, 19.00 EUR.
    pub const TABLET: &str = "0193a4c0-0000-7000-8000-000000000004";
    /// Hand flag: stock 3, 9.00 EUR.
    pub const FLAG: &str = "0193a4c0-0000-7000-8000-000000000005";
}

/// Lifts the edge's rate limits, for scenarios whose load comes from one
/// address and a few users far above what the edge lets one client send:
/// what they check is not the limits (those have tests of their own in the
/// gateway), and a refused request would only stand in their way.
pub fn lift_rate_limits(settings: &mut signalbox_gateway::Settings) {
    use signalbox_gateway::config::{ClassLimits, Rate};
    let unlimited = ClassLimits {
        per_ip: Rate::new(1_000_000, 60_000_000),
        per_user: Some(Rate::new(1_000_000, 60_000_000)),
    };
    settings.limits.credentials = unlimited;
    settings.limits.reads = unlimited;
    settings.limits.writes = unlimited;
    settings.limits.admin = unlimited;
}
