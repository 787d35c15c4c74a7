//! Wiring: bind the listener, connect to RabbitMQ and declare this instance's
//! event queue, then serve sockets and consume events until shutdown.
//!
//! The order matters. The queue is declared and bound in `build` (the
//! consumer attaches), before the service serves anything, so an event
//! published after start-up already has a queue to land in and is not missed;
//! the consumer starts draining it in `run_until_stopped`. Readiness reports
//! the broker connection and whether the consumer is attached: after a broker
//! failure the instance is not ready until it has a new queue.

use std::{sync::Arc, time::Duration};

use signalbox_messaging::{census, Broker, Consumer, Requester, RequesterOptions, Source};
use signalbox_platform::{health::Health, serve, tokens::TokenVerifier};
use signalbox_servicekit::connect_broker;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    commands::Commands,
    events::{EventRouter, BINDINGS, CONSUMER_TAG},
    hub::Hub,
    socket::{self, SocketContext},
    Settings,
};

/// How long shutdown waits for sockets to finish their close handshakes.
const SOCKET_DRAIN: Duration = Duration::from_secs(5);

pub struct Application {
    http_listener: TcpListener,
    broker: Arc<Broker>,
    /// Consumes this instance's queue; attached (queue declared and bound)
    /// during `build`, so no event published after start-up is missed.
    events: Consumer,
    /// Sends socket commands; its reply queue is declared during `build`.
    commands: Arc<Commands>,
    hub: Arc<Hub>,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let http_listener = serve::bind(&settings.http).await?;

        let broker = connect_broker(&settings.amqp, "realtime").await?;
        // This instance's private queue (server-named, exclusive, deleted
        // with the connection), bound to the order and catalog events: every
        // instance gets its own copy of each event (fan-out). After a broker
        // failure the consumer declares a new one.
        let source = Source::Instance {
            patterns: BINDINGS.iter().map(|p| (*p).to_owned()).collect(),
        };
        let mut events = Consumer::new(broker.clone(), source, CONSUMER_TAG);
        events.attach().await?;
        // This instance's reply queue for socket commands (server-named,
        // exclusive): the `reply_to` of every command its sockets send.
        let requester = Requester::start(broker.clone(), RequesterOptions::new("realtime")).await?;
        let commands = Arc::new(Commands::new(
            requester,
            Duration::from_millis(settings.ws.command_timeout_ms),
        ));

        Ok(Self {
            http_listener,
            broker,
            events,
            commands,
            hub: Arc::new(Hub::new()),
            settings,
        })
    }

    pub fn http_port(&self) -> u16 {
        serve::port(&self.http_listener)
    }

    /// The instance's random epoch (the prefix of every stream position it
    /// hands out).
    pub fn epoch(&self) -> &str {
        self.hub.epoch()
    }

    /// The instance's hub, shared with its sockets and its events consumer;
    /// a handle to watch its state from outside (tests read
    /// [`Hub::channel_count`]).
    pub fn hub(&self) -> Arc<Hub> {
        Arc::clone(&self.hub)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            http_listener,
            broker,
            events,
            commands,
            hub,
            settings,
        } = self;

        let tracker = TaskTracker::new();
        let context = Arc::new(SocketContext {
            hub: hub.clone(),
            commands: commands.clone(),
            verifier: Arc::new(TokenVerifier::new(settings.tokens.clone())),
            settings: settings.ws.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        });

        let attached = events.attached();
        let health = Health::new()
            .flag("broker", broker.probe())
            .flag("events", attached.probe());
        let router = socket::router(context).merge(health.router());
        let http = serve::http(http_listener, router, shutdown.clone());

        // The events consumer: one delivery at a time from the instance
        // queue into the hub, acked after the hub took it.
        let events = events.run(EventRouter::new(hub), shutdown.clone());
        let census = census::Responder::new(broker.clone(), "realtime", env!("CARGO_PKG_VERSION"))
            .run(shutdown.clone());

        let result = serve::run_all(
            shutdown.clone(),
            vec![
                serve::task("http", http),
                serve::task("events", events),
                serve::task("census", census),
            ],
        )
        .await;

        // Upgraded sockets are no longer part of the HTTP server: they were
        // told to close (1001) by the same shutdown token; give them a bounded
        // time to finish the close handshake.
        tracker.close();
        if tokio::time::timeout(SOCKET_DRAIN, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(open = tracker.len(), "sockets still open at shutdown");
        }
        commands.close().await;
        broker.close().await;
        result
    }
}
