//! The gateway alone: upstreams are closed ports or in-process fakes.

mod auth_routes;
mod authentication;
mod catalog;
mod edge;
mod fakes;
mod fallback;
mod faults;
mod helpers;
mod input;
mod limits;
mod oauth;
mod orders;
mod rate_limits;
mod resilience;
mod revise;
mod shared_limits;
mod system;
mod timeouts;
