//! The connection to the broker, and getting it back when it is lost.
//!
//! One AMQP connection per service process, many channels on it (a channel is
//! cheap; a connection is a TCP socket plus a handshake). Each consumer and the
//! outbox relay get their own channel, because a channel-level error closes
//! only that channel, and because publisher confirms are counted per channel.
//!
//! Connections die: the broker restarts, an operator runs
//! `rabbitmqctl close_all_connections`, a network blip outlasts the heartbeat.
//! Nothing here tries to keep a dead channel alive. Instead every user of the
//! broker runs *sessions* ([`crate::session`]): it asks [`Broker::channel`]
//! for a channel, works until that channel fails, and asks again.
//! `channel()` notices the dead connection and reconnects, once for all
//! callers (the first caller does the work, the others wait for it), with
//! exponential backoff and jitter ([`crate::backoff`]), and re-declares the
//! shared exchanges. Each session re-declares its own queues, so the
//! topology is rebuilt by the same code that built it.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use lapin::{Channel, Connection, ConnectionProperties};
use signalbox_messages::channels::Namespace;
use tokio::time::Instant;

use crate::{backoff::Backoff, topology};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("could not reach the broker within {waited:?}")]
    Unreachable {
        waited: Duration,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

/// How long [`Broker::close`] waits for the connection's I/O loop to end
/// after `Close-Ok`: it only has the TCP stream left to close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A broker connection that heals itself, plus the namespace every name is
/// built from.
pub struct Broker {
    url: String,
    namespace: Namespace,
    /// A name the broker shows for our connection (`rabbitmqctl
    /// list_connections client_properties`, the management UI).
    connection_name: String,
    /// The current connection. Readers take a clone of the `Arc` and release
    /// the lock at once; only a reconnect writes.
    current: RwLock<Option<Arc<Connection>>>,
    /// Held while reconnecting, so concurrent callers wait for one reconnect
    /// instead of each opening their own connection.
    reconnecting: tokio::sync::Mutex<()>,
}

impl Broker {
    /// Connects for the first time, retrying with backoff for up to
    /// `max_wait` (in compose the broker may still be starting), and declares
    /// the shared exchanges. `client` names the connection, for example
    /// `orders`; the broker shows it as `<namespace>/<client>`.
    #[tracing::instrument(skip_all, fields(namespace = namespace.prefix()))]
    pub async fn connect(
        url: &str,
        namespace: Namespace,
        client: &str,
        max_wait: Duration,
    ) -> Result<Arc<Self>, BrokerError> {
        let broker = Self {
            url: url.to_owned(),
            connection_name: format!("{}/{client}", namespace.prefix()),
            namespace,
            current: RwLock::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
        };
        let started = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            let error = match broker.open().await {
                Ok(connection) => {
                    broker.install(connection);
                    tracing::info!("connected to broker");
                    return Ok(Arc::new(broker));
                }
                Err(error) => error,
            };
            let delay = backoff.next_delay();
            if started.elapsed() + delay > max_wait {
                return Err(BrokerError::Unreachable {
                    waited: started.elapsed(),
                    source: error,
                });
            }
            tracing::warn!(%error, retry_in = ?delay, "broker unreachable");
            tokio::time::sleep(delay).await;
        }
    }

    /// A fresh channel on a live connection. When the connection is gone this
    /// reconnects first, retrying until it succeeds: callers that must stay
    /// responsive to shutdown race it against their shutdown token.
    pub async fn channel(&self) -> Result<Channel, lapin::Error> {
        loop {
            if let Some(connection) = self.live() {
                match connection.create_channel().await {
                    Ok(channel) => return Ok(channel),
                    // The connection died between the check and the call:
                    // fall through to reconnect.
                    Err(_) if !connection.status().connected() => {}
                    Err(error) => return Err(error),
                }
            }
            self.reconnect().await;
        }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Readiness: a service that cannot reach its broker cannot do its job.
    pub fn is_connected(&self) -> bool {
        self.live().is_some()
    }

    /// [`Broker::is_connected`] as a readiness probe
    /// (`Health::flag("broker", broker.probe())`).
    pub fn probe(self: &Arc<Self>) -> impl Fn() -> bool + Send + Sync + 'static {
        let broker = self.clone();
        move || broker.is_connected()
    }

    /// Closes the connection politely (the broker then releases exclusive
    /// queues at once instead of waiting for a heartbeat timeout), and
    /// returns only once the connection's I/O loop has ended.
    ///
    /// That second half is what makes a shutdown quiet. lapin runs the I/O
    /// loop on a thread of its own that drives the socket through this
    /// runtime's reactor; after `Close-Ok` it still closes the TCP stream.
    /// A service whose `main` returned right after `close` drops the
    /// runtime under that thread, and lapin reports the runtime's "being
    /// shutdown" I/O error as an ERROR "Connection error" (about every
    /// other shutdown). So the loop's thread is joined here, on a blocking
    /// thread, within [`CLOSE_WAIT`].
    pub async fn close(&self) {
        let connection = self.current.write().ok().and_then(|mut c| c.take());
        let Some(connection) = connection else {
            return;
        };
        if connection.status().connected() {
            if let Err(error) = connection.close(200, "shutting down".into()).await {
                tracing::debug!(%error, "broker close");
            }
        }
        // `live()` hands out clones only for the length of a `channel()`
        // call, so at shutdown this is the last one.
        let Ok(connection) = Arc::try_unwrap(connection) else {
            tracing::debug!("broker connection still shared; not waiting for its I/O loop");
            return;
        };
        // `Connection::run` drops the handle and joins the I/O loop's thread.
        let joined = tokio::task::spawn_blocking(move || connection.run());
        match tokio::time::timeout(CLOSE_WAIT, joined).await {
            Ok(Ok(Ok(()))) => tracing::debug!("broker connection closed"),
            Ok(Ok(Err(error))) => tracing::debug!(%error, "broker I/O loop ended"),
            Ok(Err(error)) => tracing::debug!(%error, "broker I/O loop join"),
            Err(_) => tracing::warn!(waited = ?CLOSE_WAIT, "broker I/O loop still running"),
        }
    }

    fn live(&self) -> Option<Arc<Connection>> {
        let current = self.current.read().ok()?;
        current
            .as_ref()
            .filter(|connection| connection.status().connected())
            .cloned()
    }

    fn install(&self, connection: Connection) {
        if let Ok(mut current) = self.current.write() {
            *current = Some(Arc::new(connection));
        }
    }

    /// Opens a connection and declares the shared exchanges on it.
    async fn open(&self) -> Result<Connection, lapin::Error> {
        let properties =
            connection_properties().with_connection_name(self.connection_name.clone().into());
        let connection = Connection::connect(&self.url, properties).await?;
        let channel = connection.create_channel().await?;
        topology::declare_exchanges(&channel, &self.namespace).await?;
        channel.close(200, "topology declared".into()).await?;
        Ok(connection)
    }

    /// Replaces a dead connection, retrying forever with backoff. Only one
    /// caller reconnects; the others find the new connection when they get
    /// the lock.
    async fn reconnect(&self) {
        let _guard = self.reconnecting.lock().await;
        if self.is_connected() {
            return; // someone else reconnected while we waited
        }
        let mut backoff = Backoff::default();
        let mut attempt = 1u32;
        loop {
            match self.open().await {
                Ok(connection) => {
                    self.install(connection);
                    tracing::info!(attempt, "reconnected to broker");
                    return;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, attempt, retry_in = ?delay, "broker reconnect failed");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// Connection properties for every Signalbox connection. lapin's `tokio`
/// feature runs the connection's I/O on the runtime that opens it, so no
/// second thread pool is started. lapin's own auto-recovery stays off (its
/// default): it cannot redeclare the server-named queues our instances consume
/// from, and it gives up after a fixed number of attempts. Reconnection is the
/// job of [`Broker::reconnect`] and the sessions built on it.
pub(crate) fn connection_properties() -> ConnectionProperties {
    ConnectionProperties::default()
}

/// Closes a channel on the way out; it may already be closed (the connection
/// went first), which is fine.
pub(crate) async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        if let Err(error) = channel.close(200, "stopping".into()).await {
            tracing::debug!(%error, "channel close");
        }
    }
}
