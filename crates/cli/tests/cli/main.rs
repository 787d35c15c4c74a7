//! The `signalbox` binary, run as a user runs it, against a whole system
//! (all five services on the real PostgreSQL and RabbitMQ, see
//! `signalbox_system_tests::TestSystem`) and, for `dlq`, the real broker.
//! Each test gets its own config directory (`XDG_CONFIG_HOME`), so the
//! stored login is the test's own.

mod account;
mod census;
mod dlq;
mod helpers;
mod orders;
mod watch;
