//! Publishing with publisher confirms.
//!
//! A plain `basic.publish` is fire-and-forget: if the broker crashes before
//! the message reaches a queue, nobody knows. In confirm mode the broker acks
//! each publish once it has taken responsibility for it (for persistent
//! messages on durable queues: once written to disk). Only then may the outbox
//! relay mark the row published.
//!
//! What is published is an [`Outgoing`] message, whoever sends it: the
//! outbox stores one per row and its relay publishes them here
//! ([`crate::outbox`]), the [`crate::Requester`] and the census publish
//! theirs directly. So `Outgoing` lives here, and the outbox depends on the
//! publisher, never the other way round.

use futures::future::try_join_all;
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    Channel, Confirmation,
};
use signalbox_messages::{channels::Namespace, Envelope, Message, MessageKind};

use crate::{amqp, Broker};

/// A message ready to be published: where to, with which envelope.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub envelope: Envelope,
    pub payload: Vec<u8>,
}

impl Outgoing {
    fn new<M: Message>(
        exchange: String,
        routing_key: String,
        envelope: Envelope,
        payload: &M,
    ) -> Self {
        Self {
            exchange,
            routing_key,
            envelope,
            payload: serde_json::to_vec(payload).expect("message payloads serialize to JSON"),
        }
    }

    /// A domain event on the events exchange, routed by its type.
    pub fn event<M: Message>(ns: &Namespace, envelope: Envelope, payload: &M) -> Self {
        Self::new(ns.events_exchange(), M::TYPE.to_owned(), envelope, payload)
    }

    /// A command on the commands exchange, routed to its handler's queue.
    pub fn command<M: Message>(ns: &Namespace, envelope: Envelope, payload: &M) -> Self {
        Self::new(
            ns.commands_exchange(),
            M::TYPE.to_owned(),
            envelope,
            payload,
        )
    }

    /// A command on the commands exchange with an explicit routing key, for
    /// sharded channels: the key names the shard as well as the command (see
    /// [`crate::sharding::Shards::routing_key`]).
    pub fn command_to<M: Message>(
        ns: &Namespace,
        routing_key: impl Into<String>,
        envelope: Envelope,
        payload: &M,
    ) -> Self {
        Self::new(
            ns.commands_exchange(),
            routing_key.into(),
            envelope,
            payload,
        )
    }

    /// A reply to the queue named in the request's `reply_to`, through the
    /// default exchange (which routes by queue name).
    pub fn reply<M: Message>(reply_to: &str, envelope: Envelope, payload: &M) -> Self {
        Self::new(String::new(), reply_to.to_owned(), envelope, payload)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused message {message_id} (nack)")]
    Nacked { message_id: uuid::Uuid },
    #[error("no queue takes message {message_id} (unroutable {kind:?})")]
    Unroutable {
        message_id: uuid::Uuid,
        kind: MessageKind,
    },
    #[error("no confirms within {0:?}")]
    Unconfirmed(std::time::Duration),
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

/// Longest wait for a batch's confirms. A confirm on a connection that died
/// underneath it may never come, and the outbox relay waits inside a
/// database transaction holding the publishing lease: past this it gives up,
/// rolls back, and publishes the batch again on a new channel.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A channel in confirm mode.
#[derive(Clone)]
pub struct ConfirmedPublisher {
    channel: Channel,
}

impl ConfirmedPublisher {
    pub async fn new(broker: &Broker) -> Result<Self, lapin::Error> {
        let channel = broker.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// The publisher in `slot` while its channel is open, otherwise a new one,
    /// stored in `slot`. Long-lived publishers keep theirs this way: a
    /// channel that closed (its broker session ended) is replaced on the
    /// next use, reconnecting first if need be.
    pub async fn reuse_or_open<'a>(
        slot: &'a mut Option<Self>,
        broker: &Broker,
    ) -> Result<&'a Self, lapin::Error> {
        let publisher = match slot.take() {
            Some(publisher) if publisher.is_open() => publisher,
            _ => Self::new(broker).await?,
        };
        Ok(slot.insert(publisher))
    }

    /// The confirm-mode channel, for publishes that need options of their
    /// own (the [`crate::Requester`]'s expiration and mandatory flag).
    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, message: &Outgoing) -> Result<(), PublishError> {
        self.publish_all(std::slice::from_ref(message)).await
    }

    /// Publishes a batch, then waits for all confirms: the publishes are
    /// pipelined on the channel (one round trip for the batch, not one per
    /// message), and their order on the channel is the order of `messages`.
    #[tracing::instrument(skip_all, fields(count = messages.len()))]
    pub async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            // Commands and replies are point-to-point: if no queue takes one
            // (the handler's queue was never declared, or was deleted), the
            // broker must hand it back instead of dropping it. Events may have
            // no subscriber at all, which is fine.
            let mandatory = message.envelope.kind != MessageKind::Event;
            let confirm = self
                .channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory,
                        ..Default::default()
                    },
                    &message.payload,
                    amqp::to_properties(&message.envelope),
                )
                .await?;
            pending.push(async move {
                match confirm.await? {
                    Confirmation::Nack(_) => Err(PublishError::Nacked {
                        message_id: message.envelope.message_id,
                    }),
                    // Acked but returned: routed to no queue.
                    Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                        message_id: message.envelope.message_id,
                        kind: message.envelope.kind,
                    }),
                    Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                }
            });
        }
        match tokio::time::timeout(CONFIRM_TIMEOUT, try_join_all(pending)).await {
            Ok(confirmed) => confirmed.map(|_| ()),
            Err(_) => Err(PublishError::Unconfirmed(CONFIRM_TIMEOUT)),
        }
    }

    /// Closes the channel (pending confirms have been awaited by then).
    pub async fn close(&self) {
        crate::connection::close_quietly(&self.channel).await;
    }

    pub(crate) fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}
