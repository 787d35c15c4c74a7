//! Asynchronous request/response over a reply channel, for a caller that
//! waits: a [`Requester`].
//!
//! The pattern ("Microservices Patterns", ch. 3): the requester sends a
//! command whose envelope names a `reply_to` queue and carries a fresh
//! `correlation_id`; the handler answers to that queue with the same
//! correlation id; the requester matches the answer to the request that is
//! waiting for it. Here every requester instance owns a private, server-named
//! reply queue (exclusive, deleted with its connection), and one task reads
//! it and hands each reply to its waiter:
//!
//! ```text
//!  request() ──register(correlation id → oneshot)──▶ waiters (HashMap)
//!      │                                                ▲
//!      │ publish, mandatory, confirmed                  │ route by correlation id
//!      ▼                                                │
//!  exchange ──▶ handler's queue ──▶ handler ──reply──▶ reply queue ──▶ router task
//!      ▲
//!  request() awaits its oneshot until the DEADLINE
//! ```
//!
//! Every wait has a deadline, and every way a request can end is a typed
//! [`RequestError`]: no reply in time ([`RequestError::Timeout`]), the reply
//! queue died with the broker connection ([`RequestError::ReplyChannelLost`],
//! at once, not at the deadline: the reply could no longer arrive), no queue
//! takes the request ([`RequestError::Unroutable`], at once, thanks to the
//! `mandatory` flag), too many requests already waiting
//! ([`RequestError::Busy`], a bulkhead). A reply that arrives after its
//! deadline, or carries a correlation id nobody waits for, is dropped with a
//! log line: it can never reach the wrong waiter, because correlation ids are
//! fresh UUIDs and a waiter forgets its id when it gives up.
//!
//! # This, or the outbox-based command of the saga?
//!
//! The order saga also sends a command and gets a reply
//! (`catalog.reserve_stock` → `orders.replies`), but it does so very
//! differently, and on purpose:
//!
//! - **Saga (outbox):** the command is part of a business state change (the
//!   order is stored PENDING *and* the command is written, in one
//!   transaction). It must survive a crash of the sender, may be answered
//!   minutes later (catalog down, broker restarting), and nobody waits for it
//!   in memory: the reply lands in a *durable* queue shared by all orders
//!   instances, and the handler moves the order's state machine. Time limits
//!   are part of the business (the saga's reservation deadline), not a socket
//!   timeout.
//! - **Requester (this module):** somebody is waiting *now* (an HTTP request,
//!   a WebSocket command) and the answer is worth nothing after a deadline.
//!   Nothing is stored before sending; if this instance dies, the request and
//!   its waiter die together, and the caller sees an error and may try again.
//!   So the request is published directly (with a confirm, so "sent" means
//!   the broker took it), and the reply comes to this instance's private
//!   queue.
//!
//! A timeout does not mean the handler did nothing: it means *we do not know*.
//! Commands sent this way should be idempotent, or the caller must treat
//! [`RequestError::Timeout`] as "outcome unknown".
//!
//! # Surviving the broker
//!
//! The reply queue lives and dies with the broker connection. The router task
//! runs in sessions (see [`crate::session`]): when the connection is lost
//! it fails the requests waiting on the old queue, asks [`Broker::channel`]
//! for a new channel (which reconnects), declares a new reply queue and
//! publishes it to new requests. A request made while no session exists
//! waits for the next one, within its own deadline.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicConsumeOptions, BasicPublishOptions},
    types::{FieldTable, ShortString},
    Channel, Confirmation,
};
use signalbox_messages::{channels::Namespace, decode, DecodeError, Envelope, Message};
use tokio::{
    sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    amqp, chain::Chain, connection::close_quietly, session, topology, Broker, ConfirmedPublisher,
    Outgoing,
};

/// How many requests may wait for their replies at once, unless configured.
pub const DEFAULT_MAX_OUTSTANDING: usize = 256;

/// How many replies of one scatter-gather request may be buffered before the
/// gatherer reads them; more are dropped (with a warning) rather than
/// slowing down the router, which serves every waiter.
const GATHER_BUFFER: usize = 1024;

/// How a request ended without its reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No reply arrived before the deadline. The handler may still have acted.
    #[error("no reply to request {correlation_id} within {after:?}")]
    Timeout {
        correlation_id: String,
        after: Duration,
    },
    /// The reply queue was lost (the broker connection died) while the
    /// request waited: its reply can no longer arrive.
    #[error("the reply channel of request {correlation_id} was lost")]
    ReplyChannelLost { correlation_id: String },
    /// Too many requests are already waiting; this one was not sent.
    #[error("too many outstanding requests (limit {limit})")]
    Busy { limit: usize },
    /// No queue is bound for the request's routing key: nobody could answer.
    #[error("no queue takes request {correlation_id} (`{routing_key}` on `{exchange}`)")]
    Unroutable {
        correlation_id: String,
        exchange: String,
        routing_key: String,
    },
    /// The broker refused to take the request.
    #[error("the broker refused request {correlation_id}")]
    Nacked { correlation_id: String },
    /// No reply queue could be set up within the deadline (the broker is
    /// unreachable); the request was not sent.
    #[error("no reply channel within {after:?}: the broker is unreachable")]
    NotConnected { after: Duration },
    /// The requester was closed.
    #[error("the requester is closed")]
    Closed,
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    /// The reply arrived but is not the expected message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A reply, matched to its request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub envelope: Envelope,
    pub body: Vec<u8>,
}

impl Reply {
    /// Decodes the payload as `M`, checking the announced type first.
    pub fn decode<M: Message>(&self) -> Result<M, DecodeError> {
        decode(&self.envelope, &self.body)
    }
}

/// How a [`Requester`] is set up.
#[derive(Debug, Clone)]
pub struct RequesterOptions {
    /// Names the reply consumer in the broker (management UI, logs).
    pub name: String,
    /// The most requests waiting for replies at once; more are refused with
    /// [`RequestError::Busy`] instead of piling up.
    pub max_outstanding: usize,
}

impl RequesterOptions {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
        }
    }

    pub fn max_outstanding(mut self, max_outstanding: usize) -> Self {
        self.max_outstanding = max_outstanding;
        self
    }
}

/// Sends requests and awaits their replies, each within a deadline. Cheap to
/// clone; every clone shares one reply queue. When the last clone is dropped
/// (or [`Requester::close`] is called) the reply queue is closed.
#[derive(Clone)]
pub struct Requester {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Arc<Broker>,
    /// The current reply session, `None` while reconnecting. The router task
    /// is the only writer; every request reads it to learn its `reply_to`
    /// and where to register.
    sessions: watch::Receiver<Option<Arc<Session>>>,
    /// One permit per waiting request: the bound on outstanding requests
    /// (a bulkhead). A request that finds none is refused at once.
    permits: Arc<Semaphore>,
    limit: usize,
    /// The confirm-mode channel requests are published on; opened on first
    /// use and again whenever it was closed. A tokio mutex, because opening
    /// a channel awaits the broker.
    publisher: tokio::sync::Mutex<Option<ConfirmedPublisher>>,
    /// Tells the router task to stop: cancelled by `close()`, or when the
    /// last handle is dropped.
    stop: CancellationToken,
    /// The router task, awaited by `close()`.
    router: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can wait for a reply any more.
        self.stop.cancel();
    }
}

/// One reply queue and the requests waiting on it. A session ends with its
/// channel; its waiters are then failed, and a new session takes over.
struct Session {
    queue: String,
    /// The channel consuming `queue`; its state tells whether replies can
    /// still arrive.
    channel: Channel,
    /// Who waits for which correlation id. A std mutex: it is held for a map
    /// operation only, never across an `.await`.
    waiters: Mutex<Waiters>,
}

struct Waiters {
    /// False once the session ended: nobody may register any more.
    open: bool,
    by_correlation_id: HashMap<String, Waiter>,
}

/// Where the reply (or replies) for one correlation id go.
enum Waiter {
    /// Request/response: the first reply completes the request.
    One(oneshot::Sender<Reply>),
    /// Scatter-gather: every reply until the deadline is collected.
    Many(mpsc::Sender<Reply>),
}

impl Session {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every critical section is one map operation), so a poisoned lock
        // is still usable.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replies can arrive: the channel is up and the session not ended.
    fn is_live(&self) -> bool {
        self.channel.status().connected() && self.waiters().open
    }

    /// Registers `waiter` under `correlation_id`, or hands it back when the
    /// session already ended.
    fn register(
        self: &Arc<Self>,
        correlation_id: &str,
        waiter: Waiter,
    ) -> Result<Registration, Waiter> {
        let mut waiters = self.waiters();
        if !waiters.open {
            return Err(waiter);
        }
        waiters
            .by_correlation_id
            .insert(correlation_id.to_owned(), waiter);
        Ok(Registration {
            session: self.clone(),
            correlation_id: correlation_id.to_owned(),
        })
    }

    /// Hands a reply to whoever waits for its correlation id. Never blocks:
    /// the router serves every waiter, so one slow waiter must not stall
    /// the others.
    fn route(&self, delivery: Delivery) {
        let Some(correlation_id) = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(ShortString::to_string)
        else {
            tracing::info!(queue = %self.queue, "reply without correlation id; discarded");
            return;
        };
        let envelope = match amqp::from_properties(&delivery.properties) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(%correlation_id, error = %Chain(&error), "undecodable reply; discarded");
                return;
            }
        };
        let reply = Reply {
            envelope,
            body: delivery.data,
        };

        // Look the waiter up under the lock, deliver after releasing it.
        let mut waiters = self.waiters();
        let waiter = match waiters.by_correlation_id.get(&correlation_id) {
            None => None,
            // A gatherer keeps its place until its deadline: take a copy of
            // its sender.
            Some(Waiter::Many(sender)) => Some(Waiter::Many(sender.clone())),
            // A single waiter is done with its first reply: take it out.
            Some(Waiter::One(_)) => waiters.by_correlation_id.remove(&correlation_id),
        };
        drop(waiters);

        match waiter {
            // Late (the waiter timed out and forgot its id) or never ours
            // (a stray message, a reply meant for an earlier queue).
            None => tracing::info!(%correlation_id, "late or unknown reply; discarded"),
            Some(Waiter::One(sender)) => {
                // The waiter may give up between the lookup and this send.
                if sender.send(reply).is_err() {
                    tracing::info!(%correlation_id, "waiter gave up; late reply discarded");
                }
            }
            Some(Waiter::Many(sender)) => match sender.try_send(reply) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(%correlation_id, "gatherer not keeping up; reply dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::info!(%correlation_id, "gatherer gone; late reply discarded");
                }
            },
        }
    }

    /// Ends the session: no new registrations, and every waiter is failed
    /// now (dropping its sender wakes it with "channel lost").
    fn close(&self) -> usize {
        let mut waiters = self.waiters();
        waiters.open = false;
        let failed = waiters.by_correlation_id.len();
        waiters.by_correlation_id.clear();
        failed
    }
}

/// A waiter's place in a session's map. Dropping it (the request finished,
/// timed out, or its future was dropped by its caller) removes the entry, so
/// a reply arriving later is recognised as late.
struct Registration {
    session: Arc<Session>,
    correlation_id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.session
            .waiters()
            .by_correlation_id
            .remove(&self.correlation_id);
    }
}

impl Requester {
    /// Declares this instance's reply queue and starts the router task.
    /// Returns once the queue exists, so the first request need not wait.
    #[tracing::instrument(skip_all, fields(name = %options.name))]
    pub async fn start(
        broker: Arc<Broker>,
        options: RequesterOptions,
    ) -> Result<Self, lapin::Error> {
        let first = open_session(&broker, &options.name).await?;
        // The current session, for requests; the router task replaces it
        // after every reconnect.
        let (sessions_tx, sessions) = watch::channel(Some(first.0.clone()));
        let stop = CancellationToken::new();
        // The router task: reads the reply queue and wakes the waiters, and
        // re-creates the reply queue after the connection was lost.
        let router = tokio::spawn(route_replies(
            broker.clone(),
            options.name.clone(),
            first,
            sessions_tx,
            stop.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                broker,
                sessions,
                permits: Arc::new(Semaphore::new(options.max_outstanding)),
                limit: options.max_outstanding,
                publisher: tokio::sync::Mutex::new(None),
                stop,
                router: Mutex::new(Some(router)),
            }),
        })
    }

    /// The namespace requests are addressed in.
    pub fn namespace(&self) -> &Namespace {
        self.inner.broker.namespace()
    }

    /// The current reply queue (`None` while reconnecting).
    pub fn reply_queue(&self) -> Option<String> {
        self.inner
            .sessions
            .borrow()
            .as_ref()
            .map(|session| session.queue.clone())
    }

    /// How many requests are waiting for their replies now.
    pub fn outstanding(&self) -> usize {
        self.inner.limit - self.inner.permits.available_permits()
    }

    /// Sends `command` to its handler (on the commands exchange, routed by
    /// its type) and decodes the reply as `R`.
    pub async fn call<C: Message, R: Message>(
        &self,
        command: &C,
        deadline: Duration,
    ) -> Result<R, RequestError> {
        let message = Outgoing::command(self.namespace(), Envelope::new::<C>(), command);
        let reply = self.request(message, deadline).await?;
        Ok(reply.decode()?)
    }

    /// Sends `message` and waits for its one reply, at most `deadline` in
    /// all (waiting for a reply queue, publishing, and the reply itself).
    ///
    /// The envelope's `reply_to` and `correlation_id` are set here: the
    /// correlation id is a fresh UUID, so no two requests can share one.
    #[tracing::instrument(skip_all, fields(exchange = %message.exchange, routing_key = %message.routing_key))]
    pub async fn request(
        &self,
        message: Outgoing,
        deadline: Duration,
    ) -> Result<Reply, RequestError> {
        let until = Instant::now() + deadline;
        let _permit = self.permit()?;
        let correlation_id = Uuid::new_v4().to_string();
        // The reply's way back to this call: the router task sends it here.
        let (sender, receiver) = oneshot::channel();
        // Registered *before* publishing: a fast reply must find its waiter.
        let registration = self
            .register(&correlation_id, Waiter::One(sender), until, deadline)
            .await?;
        self.send(&message, &registration, None, until, deadline)
            .await?;
        match tokio::time::timeout_at(until, receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            // The router dropped our sender: the session ended.
            Ok(Err(_)) => Err(RequestError::ReplyChannelLost { correlation_id }),
            // Dropping `registration` on return forgets the correlation id,
            // so a reply arriving later is discarded as late.
            Err(_) => Err(RequestError::Timeout {
                correlation_id,
                after: deadline,
            }),
        }
    }

    /// Publish / async responses: sends `message` once (usually on the
    /// events exchange, so every bound instance gets a copy) and collects
    /// every reply that arrives within `deadline`.
    ///
    /// Returns at the deadline with what arrived, or earlier once `expected`
    /// replies are in. The request carries the deadline as its AMQP
    /// expiration: an instance that cannot take it in time never sees it.
    /// If the reply queue is lost meanwhile, the gather fails
    /// ([`RequestError::ReplyChannelLost`]) rather than returning a list
    /// that silently misses the answers that could no longer arrive.
    #[tracing::instrument(skip_all, fields(exchange = %message.exchange, routing_key = %message.routing_key))]
    pub async fn scatter(
        &self,
        message: Outgoing,
        deadline: Duration,
        expected: Option<usize>,
    ) -> Result<Vec<Reply>, RequestError> {
        let until = Instant::now() + deadline;
        let _permit = self.permit()?;
        let correlation_id = Uuid::new_v4().to_string();
        // Every reply for this request arrives here until the deadline.
        let (sender, mut receiver) = mpsc::channel(GATHER_BUFFER);
        let registration = self
            .register(&correlation_id, Waiter::Many(sender), until, deadline)
            .await?;
        self.send(&message, &registration, Some(deadline), until, deadline)
            .await?;
        let mut replies = Vec::new();
        while expected.is_none_or(|expected| replies.len() < expected) {
            match tokio::time::timeout_at(until, receiver.recv()).await {
                Ok(Some(reply)) => replies.push(reply),
                // The session ended: later replies could not arrive.
                Ok(None) => return Err(RequestError::ReplyChannelLost { correlation_id }),
                // The deadline: what arrived is the answer.
                Err(_) => break,
            }
        }
        tracing::debug!(%correlation_id, replies = replies.len(), "gathered");
        Ok(replies)
    }

    /// The broker connection this requester uses (to close it at shutdown
    /// when the requester owns it).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.inner.broker
    }

    /// Stops the router task and closes the reply queue. Requests still
    /// waiting fail with [`RequestError::ReplyChannelLost`]; later ones with
    /// [`RequestError::Closed`].
    pub async fn close(&self) {
        self.inner.stop.cancel();
        let router = self
            .inner
            .router
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(router) = router {
            if let Err(error) = router.await {
                tracing::warn!(%error, "reply router ended abnormally");
            }
        }
        if let Some(publisher) = self.inner.publisher.lock().await.take() {
            publisher.close().await;
        }
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, RequestError> {
        self.inner
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| RequestError::Busy {
                limit: self.inner.limit,
            })
    }

    /// Registers a waiter on a live session, waiting (until the deadline)
    /// for one when the reply queue is being re-created.
    async fn register(
        &self,
        correlation_id: &str,
        waiter: Waiter,
        until: Instant,
        deadline: Duration,
    ) -> Result<Registration, RequestError> {
        let mut sessions = self.inner.sessions.clone();
        let mut waiter = waiter;
        loop {
            let live = sessions.wait_for(|s| s.as_ref().is_some_and(|s| s.is_live()));
            let session = match tokio::time::timeout_at(until, live).await {
                Ok(Ok(current)) => current.as_ref().cloned(),
                // The router task is gone: the requester was closed.
                Ok(Err(_)) => return Err(RequestError::Closed),
                Err(_) => return Err(RequestError::NotConnected { after: deadline }),
            };
            let Some(session) = session else { continue };
            match session.register(correlation_id, waiter) {
                Ok(registration) => return Ok(registration),
                // The session ended between the check and the insert: wait
                // for the next one.
                Err(back) => waiter = back,
            }
        }
    }

    /// Publishes the request with our `reply_to` and correlation id, and
    /// waits for the broker's confirm (within the deadline).
    async fn send(
        &self,
        message: &Outgoing,
        registration: &Registration,
        expiration: Option<Duration>,
        until: Instant,
        deadline: Duration,
    ) -> Result<(), RequestError> {
        let correlation_id = &registration.correlation_id;
        let mut envelope = message.envelope.clone();
        envelope.reply_to = Some(registration.session.queue.clone());
        envelope.correlation_id = Some(correlation_id.clone());
        // The caller's trace goes with the request: the handler's span
        // (another service's consumer) continues it.
        crate::trace_context::stamp(&mut envelope);
        let mut properties = amqp::to_properties(&envelope);
        if let Some(expiration) = expiration {
            properties = properties.with_expiration(expiration.as_millis().to_string().into());
        }
        let published = async {
            let channel = self.publisher().await?;
            let confirm = channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    // Mandatory: when no queue takes the request the broker
                    // returns it, so the caller learns at once instead of
                    // waiting for a reply that cannot come.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &message.payload,
                    properties,
                )
                .await?
                .await?;
            Ok::<_, lapin::Error>(confirm)
        };
        let confirm = match tokio::time::timeout_at(until, published).await {
            Ok(Ok(confirm)) => confirm,
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => {
                return Err(RequestError::Timeout {
                    correlation_id: correlation_id.clone(),
                    after: deadline,
                })
            }
        };
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            // Acked but returned: routed to no queue.
            Confirmation::Ack(Some(_)) => Err(RequestError::Unroutable {
                correlation_id: correlation_id.clone(),
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            }),
            Confirmation::Nack(_) => Err(RequestError::Nacked {
                correlation_id: correlation_id.clone(),
            }),
        }
    }

    /// The publishing channel, opened (in confirm mode) when there is none
    /// or the last one closed.
    async fn publisher(&self) -> Result<Channel, lapin::Error> {
        let mut publisher = self.inner.publisher.lock().await;
        let current = ConfirmedPublisher::reuse_or_open(&mut publisher, &self.inner.broker).await?;
        Ok(current.channel().clone())
    }
}

/// Declares a fresh reply queue (server-named, exclusive, auto-delete: it
/// dies with the connection) and starts consuming it.
async fn open_session(
    broker: &Broker,
    name: &str,
) -> Result<(Arc<Session>, lapin::Consumer), lapin::Error> {
    let channel = broker.channel().await?;
    let queue = topology::declare_instance_queue(&channel, broker.namespace(), &[]).await?;
    // No manual acks: a reply is settled the moment it is delivered. A
    // manual ack would buy nothing, because the queue, the router and the
    // waiters live and die together: a reply requeued after a crash would
    // find no one waiting for it.
    let deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            name.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    tracing::info!(%queue, "reply queue ready");
    let session = Session {
        queue,
        channel,
        waiters: Mutex::new(Waiters {
            open: true,
            by_correlation_id: HashMap::new(),
        }),
    };
    Ok((Arc::new(session), deliveries))
}

/// Why the router is between reply queues.
#[derive(Debug, thiserror::Error)]
enum ReplyQueueError {
    /// No reply queue could be declared on a new channel.
    #[error("reply queue not declared")]
    NotDeclared(#[source] lapin::Error),
    /// The reply queue died with its channel or connection; the requests
    /// waiting on it were failed.
    #[error("reply queue `{queue}` lost; {failed} waiting request(s) failed")]
    Lost {
        queue: String,
        failed: usize,
        #[source]
        cause: ReplyConsumerEnded,
    },
}

/// How the consumer of a reply queue ended without being asked to.
#[derive(Debug, thiserror::Error)]
enum ReplyConsumerEnded {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("the reply consumer was cancelled")]
    Cancelled,
}

/// The router task: serves one reply queue after another until stopped
/// (see [`crate::session`]).
async fn route_replies(
    broker: Arc<Broker>,
    name: String,
    first: (Arc<Session>, lapin::Consumer),
    sessions: watch::Sender<Option<Arc<Session>>>,
    stop: CancellationToken,
) {
    let (broker, name, sessions, stop) = (&broker, name.as_str(), &sessions, &stop);
    session::run(
        stop,
        Some(first),
        // A new channel (reconnecting first if needed) and a new reply
        // queue on it.
        move || async move {
            open_session(broker, name)
                .await
                .map_err(ReplyQueueError::NotDeclared)
        },
        move |(session, deliveries)| async move {
            // New requests address this queue from now on.
            sessions.send_replace(Some(session.clone()));
            let ended = serve_session(&session, deliveries, stop).await;
            // No reply can reach the old queue any more: new requests wait
            // for the next session, and those waiting on this one fail now
            // instead of at their deadlines.
            sessions.send_replace(None);
            let failed = session.close();
            match ended {
                Ok(()) => {
                    close_quietly(&session.channel).await;
                    tracing::debug!(queue = %session.queue, "reply queue closed");
                    Ok(())
                }
                Err(cause) => Err(ReplyQueueError::Lost {
                    queue: session.queue.clone(),
                    failed,
                    cause,
                }),
            }
        },
        |error, retry_in| {
            tracing::warn!(error = %Chain(error), ?retry_in, "reply queue unavailable; re-creating");
        },
    )
    .await;
}

/// Routes the replies of one session until the requester closes (`Ok`) or
/// the session's channel fails.
async fn serve_session(
    session: &Session,
    mut deliveries: lapin::Consumer,
    stop: &CancellationToken,
) -> Result<(), ReplyConsumerEnded> {
    loop {
        tokio::select! {
            biased;
            // The requester was closed or its last handle dropped.
            _ = stop.cancelled() => return Ok(()),
            // The next reply; `None` or an error means the channel (and with
            // it the exclusive reply queue) is gone.
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => session.route(delivery),
                Some(Err(error)) => return Err(error.into()),
                None => return Err(ReplyConsumerEnded::Cancelled),
            },
        }
    }
}
