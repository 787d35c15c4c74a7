//! The API gateway: the one public REST edge of Signalbox.
//!
//! Browsers and scripts speak JSON over HTTP to the gateway only; the services
//! behind it speak gRPC. The gateway holds no state of its own. For each
//! request it
//! - finds the upstream in its routing table ([`routes`]),
//! - authenticates the caller at the edge when the route is protected and
//!   checks the token's scope ([`auth`]), then forwards the caller's token
//!   with every call made on the caller's behalf, for the service to verify
//!   again (no service trusts a bare user id),
//! - serves the OAuth 2.0 token and revocation endpoints ([`routes::oauth`]),
//! - limits abuse: request size, header size, and the rate of credential
//!   requests per client IP ([`limits`]),
//! - translates REST to a gRPC call and the answer back to JSON, every error
//!   becoming an RFC 9457 problem ([`error`]),
//! - and, for an order, aggregates the answers of two services into one
//!   response ([`aggregate`]).
//!
//! In the order scenario it is the first hop: register, log in, place the
//! order (gateway → orders over gRPC) and read it back enriched with catalog
//! product details.

pub mod aggregate;
pub mod auth;
pub mod budget;
pub mod config;
pub mod drain;
pub mod error;
pub mod extract;
pub mod fallback;
pub mod limits;
pub mod oauth_error;
pub mod openapi;
pub mod order_state;
pub mod page;
pub mod routes;
pub mod startup;
pub mod upstream;

pub use config::Settings;
pub use startup::Application;
