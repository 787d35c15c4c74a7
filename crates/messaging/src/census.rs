//! Publish / async responses: the system census.
//!
//! "Which instances are running, and which versions?" Nobody knows the
//! answer in advance, not even how many instances there are, so the question
//! is *published*: a `system.census` request on the events exchange, where
//! every instance of every service has bound a private queue for it. Each
//! instance answers on the requester's reply queue; the requester collects
//! what arrives before its deadline.
//!
//! ```text
//!                        ┌──▶ orders   #1 queue ──▶ Responder ──┐
//!  gather() ──publish──▶ events ──▶ orders #2 queue ──▶ Responder ──┼──▶ reply queue ──▶ gather()
//!   (deadline)           └──▶ catalog  #1 queue ──▶ Responder ──┘      (all replies until the deadline)
//! ```
//!
//! The requester ([`gather`]) uses the [`Requester`]'s machinery:
//! [`Requester::scatter`] registers the correlation id for *many* replies
//! instead of one. What "complete" means is the requester's choice:
//! - with `expected: None`, gather returns at the deadline with whoever
//!   answered (a silent or slow instance is simply absent; the caller learns
//!   nothing about instances that did not answer);
//! - with `expected: Some(n)`, it returns as soon as `n` replies are in, or
//!   at the deadline with fewer.
//!
//! The domain use is operational (the gateway's `GET /api/system/instances`),
//! but the shape is the one of any "ask everybody, take what comes in time"
//! query: price quotes from several suppliers, a search across shards.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use signalbox_messages::{
    system::{CensusReply, CensusRequest},
    Envelope, Message,
};
use tokio_util::sync::CancellationToken;

use crate::{
    consumer::ConsumeError,
    publisher::{ConfirmedPublisher, PublishError},
    request_reply::{RequestError, Requester},
    Broker, Consumer, HandleError, Handler, Incoming, Outgoing, Source,
};

/// The consumer tag of census responders (shown in the RabbitMQ UI).
pub const CONSUMER_TAG: &str = "census";

/// Answers census requests for one service instance. A service spawns one:
///
/// ```no_run
/// # use std::sync::Arc;
/// # use signalbox_messaging::{census, Broker};
/// # async fn service(broker: Arc<Broker>, shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
/// let census = census::Responder::new(broker.clone(), "orders", env!("CARGO_PKG_VERSION"));
/// census.run(shutdown).await?; // one of the service's tasks
/// # Ok(())
/// # }
/// ```
pub struct Responder {
    consumer: Consumer,
    identity: CensusReply,
    broker: Arc<Broker>,
}

impl Responder {
    /// `service` and `version` name what runs; the instance id is fresh and
    /// the start time is now (a responder is created when its service
    /// starts).
    pub fn new(
        broker: Arc<Broker>,
        service: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        // This instance's private queue on the events exchange, bound to the
        // census request only: server-named, exclusive, re-created by the
        // consumer after a broker failure.
        let source = Source::Instance {
            patterns: vec![CensusRequest::TYPE.to_owned()],
        };
        Self {
            consumer: Consumer::new(broker.clone(), source, CONSUMER_TAG),
            identity: CensusReply {
                service: service.into(),
                instance_id: uuid::Uuid::new_v4().to_string(),
                version: version.into(),
                started_at: Utc::now(),
            },
            broker,
        }
    }

    /// What this instance answers.
    pub fn identity(&self) -> &CensusReply {
        &self.identity
    }

    /// Declares and binds the queue now, before `run` (tests use it to know
    /// the responder is counted from the first census on).
    pub async fn attach(&mut self) -> Result<(), ConsumeError> {
        self.consumer.attach().await
    }

    /// Answers census requests until `shutdown`, surviving broker failures.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumeError> {
        tracing::info!(service = %self.identity.service, instance_id = %self.identity.instance_id, "census responder started");
        let answerer = Answerer {
            identity: self.identity,
            broker: self.broker,
            publisher: tokio::sync::Mutex::new(None),
        };
        self.consumer.run(answerer, shutdown).await
    }
}

/// The handler behind a [`Responder`].
struct Answerer {
    identity: CensusReply,
    broker: Arc<Broker>,
    /// The confirm-mode channel replies go out on; opened on the first
    /// request and again after a failure.
    publisher: tokio::sync::Mutex<Option<ConfirmedPublisher>>,
}

impl Answerer {
    async fn publish(&self, reply: &Outgoing) -> Result<(), PublishError> {
        let mut publisher = self.publisher.lock().await;
        let current = ConfirmedPublisher::reuse_or_open(&mut publisher, &self.broker).await?;
        let published = current.publish(reply).await;
        if published.is_err() {
            // Start over with a fresh channel next time.
            *publisher = None;
        }
        published
    }
}

impl Handler for Answerer {
    #[tracing::instrument(skip_all, fields(correlation_id = ?message.envelope.correlation_id))]
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let _request: CensusRequest = signalbox_messages::decode(&message.envelope, &message.body)?;
        let Some(reply_to) = message.envelope.reply_to.as_deref() else {
            return Err(HandleError::Reject(
                "census request without reply_to".to_owned(),
            ));
        };
        // Caused by the request: carries its correlation id back.
        let envelope = Envelope::caused_by::<CensusReply>(&message.envelope);
        let reply = Outgoing::reply(reply_to, envelope, &self.identity);
        // A census answer is only worth something now: it is never retried
        // (a retry on an instance queue would requeue it in a loop), and a
        // failure is only logged. The request is acked either way.
        match self.publish(&reply).await {
            Ok(()) => tracing::debug!("census answered"),
            Err(PublishError::Unroutable { .. }) => {
                tracing::info!(%reply_to, "census requester gone; answer dropped");
            }
            Err(error) => tracing::warn!(%error, "census answer not sent"),
        }
        Ok(())
    }
}

/// Asks every instance who it is and collects the answers that arrive within
/// `deadline` (or until `expected` answered), sorted by service and instance.
///
/// An instance that answers twice (its copy of the request was redelivered)
/// is counted once. When no instance at all has a census queue the broker
/// returns the request at once, and the census is empty without waiting for
/// the deadline.
#[tracing::instrument(skip_all, fields(deadline = ?deadline, expected))]
pub async fn gather(
    requester: &Requester,
    deadline: Duration,
    expected: Option<usize>,
) -> Result<Vec<CensusReply>, RequestError> {
    // On the events exchange, routed like an event by its type, so every
    // bound instance queue gets a copy.
    let request = Outgoing::event(
        requester.namespace(),
        Envelope::new::<CensusRequest>(),
        &CensusRequest {},
    );
    let replies = match requester.scatter(request, deadline, expected).await {
        Ok(replies) => replies,
        Err(RequestError::Unroutable { .. }) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut by_instance: HashMap<String, CensusReply> = HashMap::new();
    for reply in replies {
        match reply.decode::<CensusReply>() {
            Ok(reply) => {
                by_instance.insert(reply.instance_id.clone(), reply);
            }
            Err(error) => tracing::warn!(%error, "bad census reply; skipped"),
        }
    }
    let sorted: BTreeMap<(String, String), CensusReply> = by_instance
        .into_values()
        .map(|reply| ((reply.service.clone(), reply.instance_id.clone()), reply))
        .collect();
    Ok(sorted.into_values().collect())
}
