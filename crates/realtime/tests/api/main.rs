//! Integration tests of the realtime service against a real RabbitMQ, with a
//! stand-in JWKS server for the auth service.

mod auth;
mod backpressure;
mod commands;
mod events;
mod expiry;
mod handshake;
mod helpers;
mod memory;
mod protocol;
mod recovery;
