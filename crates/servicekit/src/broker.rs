//! Opening the broker from the settings.

use std::{sync::Arc, time::Duration};

use secrecy::ExposeSecret;
use signalbox_messages::channels::Namespace;
use signalbox_messaging::{connection::BrokerError, Broker};
use signalbox_platform::config::AmqpSettings;

/// Connects to the broker of `settings` in its namespace, waiting up to the
/// settings' connect timeout (in compose the broker may still be starting).
/// `client` names the connection in the broker (`orders`, `catalog`, …).
pub async fn connect_broker(
    settings: &AmqpSettings,
    client: &str,
) -> Result<Arc<Broker>, BrokerError> {
    connect_broker_within(settings, client, settings.connect_timeout()).await
}

/// [`connect_broker`] with a wait of the caller's choosing, for a caller
/// that must not wait as long as a service that cannot start without the
/// broker (the gateway's census connects on a request).
pub async fn connect_broker_within(
    settings: &AmqpSettings,
    client: &str,
    max_wait: Duration,
) -> Result<Arc<Broker>, BrokerError> {
    let namespace = Namespace::new(&settings.namespace);
    // The one place a service reads its broker URL.
    Broker::connect(settings.url.expose_secret(), namespace, client, max_wait).await
}
