//! The session loop: how a long-lived user of the broker survives it.
//!
//! A consumer or a reply router cannot keep a channel forever: the broker
//! restarts, the connection drops, a channel is closed by an error. So it
//! works in *sessions* (see [`crate::connection`]): open one (get a channel,
//! declare what it needs on it), serve it until it ends, and start over.
//! Between a failure and the next attempt it waits, longer after each
//! failure in a row ([`Backoff`]), so a broker that accepts connections but
//! fails channels is not hammered; a session that opened resets the wait.
//!
//! ```text
//!            ┌──────────── open fails: back off ◀──────────┐
//!            ▼                                             │
//!   start ─▶ open ──ok──▶ reset backoff ─▶ serve ──Err──▶ back off ─▶ open …
//!            │                              │
//!          stop                           Ok(()) (asked to stop): done
//! ```
//!
//! [`run`] is that loop, once, for [`crate::Consumer::run`] and the
//! [`crate::Requester`]'s reply router; each says what opening and serving
//! mean for it. The outbox relay does not use it: it is driven by database
//! notifications and a poll interval, and reopens its channel on the next
//! round (see [`crate::outbox`]).

use std::{fmt::Display, future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Runs sessions until `stop` is cancelled or a session ends without error.
///
/// - `first`: a session opened beforehand (a service attaches while it
///   starts), served before any is opened here;
/// - `open`: opens a session; it may wait for a reconnect as long as the
///   broker is away, so it is raced against `stop`;
/// - `serve`: serves a session until it ends: `Ok(())` when it stopped
///   because `stop` was cancelled, `Err` when the channel or the connection
///   failed. It watches `stop` itself, so that it can finish what it holds;
/// - `failed`: logs a failure (of `open` or `serve`) and the wait before the
///   next attempt.
pub async fn run<S, E, Opened, Served>(
    stop: &CancellationToken,
    first: Option<S>,
    mut open: impl FnMut() -> Opened,
    mut serve: impl FnMut(S) -> Served,
    mut failed: impl FnMut(&E, Duration),
) where
    E: Display,
    Opened: Future<Output = Result<S, E>>,
    Served: Future<Output = Result<(), E>>,
{
    let mut backoff = Backoff::default();
    let mut next = first;
    loop {
        let opened = match next.take() {
            Some(session) => Ok(session),
            None => tokio::select! {
                biased;
                // Stopping wins over a broker that never comes back.
                _ = stop.cancelled() => return,
                // A channel (after a reconnect, if need be) and what the
                // session declares on it.
                opened = open() => opened,
            },
        };
        let error = match opened {
            Ok(session) => {
                backoff.reset();
                match serve(session).await {
                    Ok(()) => return,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        let delay = backoff.next_delay();
        failed(&error, delay);
        tokio::select! {
            biased;
            // Stopping does not wait for the pause to end.
            _ = stop.cancelled() => return,
            // The pause before the next attempt.
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
