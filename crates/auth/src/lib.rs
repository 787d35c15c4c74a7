//! The auth service: users, passwords and tokens.
//!
//! First stop of the order scenario: a user registers and logs in (through
//! the gateway, over gRPC) and gets a short-lived EdDSA access token plus a
//! rotating refresh token. Every other service checks access tokens offline
//! against the public keys this service publishes at
//! `/.well-known/jwks.json`; none of them calls auth per request. It also
//! serves the OAuth token endpoint behind the gateway's `/oauth/token`
//! (refresh-token rotation, service accounts) and revocation.

pub mod cli;
pub mod clients;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod passwords;
pub mod repo;
pub mod scope;
pub mod service;
pub mod startup;
pub mod throttle;
pub mod tokens;

pub use config::{Settings, TokenSettings};
pub use startup::Application;
