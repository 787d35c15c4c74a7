//! Waiting for state that announces nothing.
//!
//! Most things a test waits for are events it awaits directly: a delivery
//! ([`crate::broker::Tap`]), a frame on a socket, a reply. A few are plain
//! state that nobody announces: the depth of a queue, a row in a table, a
//! readiness endpoint. For those, [`until`] asks again every
//! [`PROBE_INTERVAL`] until the state is the one wanted, and fails at the
//! deadline — the way a load balancer probes readiness. The test goes on the
//! moment the state is right, never after a guessed pause; this is the one
//! place the tests look at a clock to wait.

use std::{future::Future, time::Duration};

use tokio::time::MissedTickBehavior;

/// How often [`until`] asks again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Asks `probe` until it answers `Ok(value)`, and returns the value. An
/// `Err(state)` answer means "not yet"; the last one is quoted if the
/// `deadline` passes. An error from the probe itself ends the wait.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<T, String>>>,
{
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = String::from("never asked");
    let waiting = async {
        loop {
            ticks.tick().await;
            match probe().await? {
                Ok(value) => return anyhow::Ok(value),
                Err(state) => last = state,
            }
        }
    };
    match tokio::time::timeout(deadline, waiting).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("{what}: not reached within {deadline:?} (last seen: {last})"),
    }
}
