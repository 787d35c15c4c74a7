//! The auth service: users, passwords and tokens.
//!
//! First stop of the order scenario: a user registers and logs in (through
//! the gateway, over gRPC) and gets a short-lived EdDSA access token plus a
//! rotating refresh token. Every other service checks access tokens offline
//! against the public keys this service publishes at
//! `/.well-known/jwks.json`; none of them calls auth per request.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod passwords;
pub mod repo;
pub mod service;
pub mod startup;
pub mod tokens;

pub use config::{Settings, TokenSettings};
pub use startup::Application;
