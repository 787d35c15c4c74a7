//! Whole-system scenarios: all five services against the real PostgreSQL and
//! RabbitMQ, driven through the gateway and the realtime socket.

mod edge;
mod order_saga;
mod security;
mod socket_auth;
