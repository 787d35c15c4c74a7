//! The consumer loop: receive, handle, then acknowledge.
//!
//! The rule that makes the system lose nothing: a delivery is acked only
//! after its handler returned `Ok`, that is, after the handler's transaction
//! committed. If the process dies before the ack, the broker redelivers, and
//! the idempotent handler recognises the duplicate ([`crate::processed`]).

use std::future::Future;

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
    Channel,
};
use signalbox_messages::Envelope;
use tokio_util::sync::CancellationToken;

use crate::amqp;

/// A received message, its envelope already decoded.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub envelope: Envelope,
    pub body: Vec<u8>,
    /// The broker delivered this message before (to us or another consumer).
    pub redelivered: bool,
}

/// How a handler failed, which decides what happens to the message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message itself is bad (cannot be decoded, violates the contract):
    /// retrying cannot help, so it goes straight to the dead-letter queue.
    #[error("rejected: {0}")]
    Reject(String),
    /// Something around the message failed (database down, deadlock):
    /// the message is requeued once; a second failure dead-letters it.
    #[error("transient failure: {0}")]
    Transient(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl HandleError {
    pub fn transient(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Transient(Box::new(error))
    }
}

impl From<sqlx::Error> for HandleError {
    fn from(error: sqlx::Error) -> Self {
        Self::transient(error)
    }
}

impl From<signalbox_messages::DecodeError> for HandleError {
    fn from(error: signalbox_messages::DecodeError) -> Self {
        Self::Reject(error.to_string())
    }
}

/// What a service implements to consume a queue.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: Incoming) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// Why the consumer loop stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("the broker ended the consumer on `{0}`")]
    Cancelled(String),
}

/// How many unacknowledged deliveries the broker may push ahead to this
/// consumer. Deliveries are handled one at a time, in order; the prefetch only
/// hides the network round trip between them.
const PREFETCH: u16 = 16;

/// Consumes `queue` until `shutdown` is cancelled, handling one message at a
/// time. Returns an error when the channel or connection fails.
#[tracing::instrument(skip_all, fields(queue = %queue))]
pub async fn run<H: Handler>(
    channel: Channel,
    queue: String,
    consumer_tag: &str,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            &queue,
            consumer_tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!("consuming");

    loop {
        let delivery = tokio::select! {
            // Stop taking new deliveries; the one being handled (if any) has
            // already finished, because handling happens below, not here.
            // Closing the channel returns unacked prefetched deliveries to
            // the queue at once, for another instance to take.
            _ = shutdown.cancelled() => {
                close_quietly(&channel).await;
                return Ok(());
            }
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => return Err(ConsumeError::Cancelled(queue)),
            },
        };
        process(&handler, delivery).await?;
    }
}

/// Handles one delivery and settles it: ack on success, requeue or
/// dead-letter on failure.
async fn process<H: Handler>(handler: &H, delivery: Delivery) -> Result<(), lapin::Error> {
    let envelope = match amqp::from_properties(&delivery.properties) {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::warn!(%error, "undecodable envelope; dead-lettering");
            return dead_letter(&delivery).await;
        }
    };
    let message_id = envelope.message_id;
    let message_type = envelope.message_type.clone();
    let incoming = Incoming {
        envelope,
        body: delivery.data.clone(),
        redelivered: delivery.redelivered,
    };

    match handler.handle(incoming).await {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(HandleError::Reject(reason)) => {
            tracing::warn!(%message_id, %message_type, %reason, "message rejected; dead-lettering");
            dead_letter(&delivery).await
        }
        Err(HandleError::Transient(error)) if !delivery.redelivered => {
            tracing::warn!(%message_id, %message_type, %error, "handler failed; requeueing");
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
        Err(HandleError::Transient(error)) => {
            tracing::error!(%message_id, %message_type, %error, "handler failed again; dead-lettering");
            dead_letter(&delivery).await
        }
    }
}

/// Closes a channel on the way out; it may already be closed (the connection
/// went first), which is fine.
pub(crate) async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        if let Err(error) = channel.close(200, "stopping").await {
            tracing::debug!(%error, "channel close");
        }
    }
}

/// `requeue: false` on a queue with a dead-letter exchange moves the message
/// to `<queue>.dlq`; the broker adds an `x-death` header saying why.
async fn dead_letter(delivery: &Delivery) -> Result<(), lapin::Error> {
    delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
}
