//! The orders service against the real PostgreSQL and RabbitMQ, with a fake
//! catalog for pricing and no catalog consumer at all.

mod census;
mod helpers;
mod saga_deadline;
