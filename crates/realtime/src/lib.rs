//! The realtime service: WebSocket push beside the gateway.
//!
//! Clients get a short-lived access token through the gateway, then open a
//! socket here (`/ws`, subprotocol `signalbox.v1`) with it. Each instance
//! consumes order and catalog events from its own RabbitMQ queue
//! ([`events`]) and the [`hub`] pushes each one to the sockets of this
//! instance that subscribed to its channel ([`socket`]). Several instances
//! run side by side; every one of them receives every event, and the one
//! holding the user's socket delivers it. The other way, a socket's
//! `command` goes to the backend over the inbound exchange and its reply
//! comes back to this instance ([`commands`]). Every event has a position in
//! a log kept by the broker, so a client that reconnects, to any instance,
//! gets what it missed ([`recovery`]). An instance that falls behind the
//! log sheds what the policy allows instead of holding a backlog
//! ([`backpressure`]).

pub mod backpressure;
pub mod commands;
pub mod config;
pub mod error;
pub mod events;
pub mod frames;
pub mod hub;
pub mod queue;
pub mod recovery;
pub mod socket;
pub mod startup;

pub use config::Settings;
pub use startup::Application;
