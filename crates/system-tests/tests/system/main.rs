//! Whole-system scenarios: all five services against the real PostgreSQL and
//! RabbitMQ, driven through the gateway and the realtime socket.

// Auth and edge security, by topic; `auth_helpers` is what they share.
mod abuse_limits;
mod access_tokens;
mod auth_helpers;
mod backpressure_helpers;
mod catalog_admin;
mod crashes;
mod database_restart;
mod edge;
mod frozen_catalog;
mod frozen_realtime;
mod hostile_input;
mod observability;
mod order_revision;
mod order_saga;
mod ownership;
mod realtime_overload;
mod realtime_shutdown;
mod rolling_restart;
mod socket_auth;
mod socket_commands;
mod steady_load;
mod token_endpoint;
