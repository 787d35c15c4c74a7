//! The shared test infrastructure of Signalbox: what every test that talks
//! to the real PostgreSQL server and the real RabbitMQ broker needs, so each
//! crate's `tests/` keeps only what is its own (its `spawn_app()`, its
//! fakes).
//!
//! Many tests run at once against the same two servers. They stay out of
//! each other's way like this:
//!
//! - **Random namespaces.** A test picks a namespace
//!   ([`broker::random_namespace`]: `t` and 12 random hex digits) and gives
//!   it to the services it starts; every exchange and queue name begins with
//!   it, so no two tests ever share a broker object.
//! - **Random database names.** A test's databases are named after its
//!   namespace (`<namespace>_<service>`), created through the server's
//!   `postgres` database ([`db::TestDatabase::create`]), with the service's
//!   migrations run by the service itself.
//! - **Cleanup.** At the end a test removes what it made: its queues and the
//!   namespace's four exchanges ([`broker::delete_namespace`]) and its
//!   databases, dropped `WITH (FORCE)` ([`db::drop_database`]). A harness
//!   keeps all of it in a [`Sandbox`], which does this on
//!   [`Sandbox::remove`] and, for a test that panicked, when it is dropped
//!   (through [`block_on_thread`]).
//!
//! Nothing here sleeps to synchronise: whatever a test waits for, it awaits
//! against [`DEADLINE`] — an event where there is one ([`broker::Tap`]), a
//! probe of the state where there is none ([`probe::until`]).
//!
//! Environment: `SIGNALBOX_TEST_DATABASE_URL` (the server, without a
//! database; default `postgres://postgres@127.0.0.1:5432`) and
//! `SIGNALBOX_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//!
//! [`tokens`] stands in for the auth service where a test needs tokens it
//! signs itself: an Ed25519 key, its JWKS on port 0, and access tokens.
//! [`otlp`] is a real OTLP trace receiver, for the tests of what the
//! services export.

pub mod broker;
pub mod db;
pub mod otlp;
pub mod pg_server;
pub mod probe;
pub mod sandbox;
pub mod tokens;

pub use sandbox::Sandbox;

use std::{future::Future, time::Duration};

/// The longest a test waits for anything the broker or a service does
/// asynchronously.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Runs `cleanup` to completion on a thread of its own, with its own
/// runtime, and waits for it: the way out for a `Drop` impl, which cannot
/// await, and whose test runtime may be shutting down.
pub fn block_on_thread<F>(cleanup: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(cleanup)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the cleanup thread panicked"))?
}
