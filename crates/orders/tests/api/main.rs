//! The orders service against the real PostgreSQL and RabbitMQ, with a fake
//! catalog for pricing, no catalog consumer at all, and the test standing in
//! for the auth service (its key, its JWKS, its tokens).

mod authentication;
mod census;
mod helpers;
mod revise;
mod saga_deadline;
