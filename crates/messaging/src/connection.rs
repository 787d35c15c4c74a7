//! The connection to the broker.
//!
//! One AMQP connection per service process, many channels on it (a channel is
//! cheap; a connection is a TCP socket plus a handshake). Publishing and each
//! consumer get their own channel, because a channel-level error closes only
//! that channel, and because confirms are counted per channel.

use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use rand::Rng;
use signalbox_messages::channels::Namespace;
use tokio::time::Instant;

use crate::topology;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("could not reach the broker within {waited:?}: {source}")]
    Unreachable {
        waited: Duration,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

/// A connected broker plus the namespace every name is built from.
pub struct Broker {
    connection: Connection,
    namespace: Namespace,
}

impl Broker {
    /// Connects, retrying with exponential backoff and jitter for up to
    /// `max_wait` (in compose the broker may still be starting), then declares
    /// the shared exchanges.
    #[tracing::instrument(skip_all, fields(namespace = namespace.prefix()))]
    pub async fn connect(
        url: &str,
        namespace: Namespace,
        max_wait: Duration,
    ) -> Result<Self, BrokerError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        let connection = loop {
            match Connection::connect(url, connection_properties()).await {
                Ok(connection) => break connection,
                Err(source) if started.elapsed() + delay > max_wait => {
                    return Err(BrokerError::Unreachable {
                        waited: started.elapsed(),
                        source,
                    })
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "broker unreachable");
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let broker = Self {
            connection,
            namespace,
        };
        let channel = broker.channel().await?;
        topology::declare_exchanges(&channel, &broker.namespace).await?;
        channel.close(200, "topology declared").await?;
        tracing::info!("connected to broker");
        Ok(broker)
    }

    /// A fresh channel on the shared connection.
    pub async fn channel(&self) -> Result<Channel, lapin::Error> {
        self.connection.create_channel().await
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Readiness: a service that cannot reach its broker cannot do its job.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection politely (the broker then releases exclusive
    /// queues at once instead of waiting for a heartbeat timeout).
    pub async fn close(&self) {
        if self.is_connected() {
            if let Err(error) = self.connection.close(200, "shutting down").await {
                tracing::debug!(%error, "broker close");
            }
        }
    }
}

/// Runs lapin's socket I/O and callbacks on the tokio runtime the service
/// already has, instead of a second thread pool.
fn connection_properties() -> ConnectionProperties {
    ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
}

/// Full jitter: spreads reconnect attempts of many instances over time so a
/// restarted broker is not hit by all of them at the same instant.
fn jitter(delay: Duration) -> Duration {
    let millis = delay.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
}
