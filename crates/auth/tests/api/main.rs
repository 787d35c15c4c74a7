//! Integration tests of the auth service against a real PostgreSQL: each
//! test gets its own freshly migrated database and its own server on
//! OS-chosen ports, and talks to it as the gateway would, over gRPC.

mod helpers;
mod jwks;
mod login;
mod refresh;
mod register;
mod revoke;
mod service_accounts;
mod throttle;
mod token_endpoint;
