//! Retries that keep the order of a shard.
//!
//! The ordinary retry path ([`crate::consumer`]) moves a failed message to a
//! delay queue and acks it, so the messages behind it overtake it. On a
//! sharded queue that is exactly the reordering we are avoiding. Shard
//! queues therefore have no delay queues; the handler is wrapped in
//! [`InOrder`], which retries a transiently failed message *in place*, with
//! growing delays, while it holds the shard (the head-of-line blocking is the
//! price of the order, and it only affects the aggregates of that shard).
//! When the retries are used up the message goes to the dead-letter queue
//! with the reason, and the shard moves on. When the instance stops while it
//! waits for a retry, the message is handed back untouched
//! ([`HandleError::Interrupted`]) for the next active consumer.
//!
//! ```text
//!   delivery ─▶ InOrder ─▶ handler ──Ok / Reject / Interrupted──▶ settled as usual
//!                  ▲          │ Transient
//!                  └─ wait ◀──┘ (the delay of the retry; the shard waits too)
//!                     retries used up ─▶ Reject ─▶ <shard queue>.dlq
//!                     shutdown while waiting ─▶ Interrupted ─▶ back to the queue
//! ```

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    chain::Chain,
    consumer::{HandleError, Handler, Incoming},
    topology::RetryPolicy,
};

/// A handler wrapper for ordered (sharded) queues: a transient failure is
/// retried right here, with the delays of `retry`, while the message stays
/// unacknowledged at the head of its shard, so nothing behind it can
/// overtake it.
///
/// - Retries used up: the message is rejected with the reason (it goes to
///   the dead-letter queue, from where it can be replayed) and the shard
///   moves on.
/// - Shutdown while waiting for a retry: the message is handed back to the
///   queue untouched ([`HandleError::Interrupted`]), together with everything
///   prefetched behind it, for the next active consumer.
pub struct InOrder<H> {
    inner: Arc<H>,
    retry: RetryPolicy,
    shutdown: CancellationToken,
}

impl<H: Handler> InOrder<H> {
    pub fn new(inner: Arc<H>, retry: RetryPolicy, shutdown: CancellationToken) -> Self {
        Self {
            inner,
            retry,
            shutdown,
        }
    }
}

impl<H: Handler> Handler for InOrder<H> {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let mut retries = 0u32;
        loop {
            let error = match self.inner.handle(message.clone()).await {
                Err(HandleError::Transient(error)) => error,
                // Success, a rejection or an interruption: settled as usual.
                other => return other,
            };
            let Some(delay) = self.retry.delay(retries) else {
                // The reason becomes the dead letter's header: text, but
                // the whole chain.
                return Err(HandleError::Reject(format!(
                    "gave up after {retries} in-order retries: {}",
                    Chain(&*error)
                )));
            };
            tracing::warn!(
                message_id = %message.envelope.message_id,
                message_type = %message.envelope.message_type,
                retries,
                retry_in = ?delay,
                error = %Chain(&*error),
                "handler failed; retrying in place to keep the order"
            );
            tokio::select! {
                // Stopping: give the message back rather than decide its fate.
                _ = self.shutdown.cancelled() => return Err(HandleError::Interrupted),
                // The shard waits with us: nothing behind this message runs.
                _ = tokio::time::sleep(delay) => {}
            }
            retries += 1;
        }
    }
}
