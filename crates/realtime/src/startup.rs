//! Wiring: bind the listener, connect to RabbitMQ, declare the event log
//! (a stream) and learn its epoch, then serve sockets and read the log
//! until shutdown.
//!
//! The order matters. The consumer attaches to the stream at `next` in
//! `build`, and then the instance appends a marker to it: once the marker
//! has been handled, the instance knows where the log stands (the position
//! a recovering client's replay reads up to), and only then is it ready.
//! Readiness reports the broker connection, the consumer, and that
//! position; after a broker failure the consumer resumes right after the
//! last offset it handled, so no event is skipped.

use std::{sync::Arc, time::Duration};

use signalbox_messaging::{
    census, stream::Start, Broker, Consumer, Requester, RequesterOptions, Source,
};
use signalbox_platform::{health::Health, serve, tokens::TokenVerifier};
use signalbox_servicekit::connect_broker;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    commands::Commands,
    events::{EventRouter, CONSUMER_TAG},
    hub::Hub,
    recovery::History,
    socket::{self, SocketContext},
    Settings,
};

/// How long shutdown waits for sockets to finish their close handshakes.
const SOCKET_DRAIN: Duration = Duration::from_secs(5);

pub struct Application {
    http_listener: TcpListener,
    broker: Arc<Broker>,
    /// Reads the event log; attached during `build`, so no event published
    /// after start-up is missed.
    events: Consumer,
    /// Reads the log again for recovering clients.
    history: Arc<History>,
    /// Sends socket commands; its reply queue is declared during `build`.
    commands: Arc<Commands>,
    hub: Arc<Hub>,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let http_listener = serve::bind(&settings.http).await?;

        let broker = connect_broker(&settings.amqp, "realtime").await?;
        // The event log: one durable stream bound to the order and catalog
        // events, which every instance reads whole (fan-out), from `next`
        // at start-up and right after its last offset after a broker failure.
        let history = Arc::new(History::open(broker.clone(), settings.recovery.clone()).await?);
        let source = Source::Stream {
            stream: history.stream().clone(),
            start: Start::Next,
        };
        let mut events = Consumer::new(broker.clone(), source, CONSUMER_TAG);
        events.attach().await?;
        // After attaching: the consumer receives this marker, and its offset
        // becomes the instance's first known position.
        history.mark().await?;
        // The hub sheds by the backpressure bounds when the instance falls
        // behind the log (see `crate::backpressure`).
        let hub = Arc::new(Hub::with_backpressure(
            history.epoch(),
            settings.backpressure.clone(),
        ));
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
            history,
            commands,
            hub,
            settings,
        })
    }

    pub fn http_port(&self) -> u16 {
        serve::port(&self.http_listener)
    }

    /// The epoch of the event log (the same for every instance reading it).
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
            history,
            commands,
            hub,
            settings,
        } = self;

        let tracker = TaskTracker::new();
        let context = Arc::new(SocketContext {
            hub: hub.clone(),
            history,
            commands: commands.clone(),
            verifier: Arc::new(TokenVerifier::new(settings.tokens.clone())),
            settings: settings.ws.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        });

        let hub_for_gaps = hub.clone();
        let attached = events.attached();
        let position = hub.clone();
        let health = Health::new()
            .flag("broker", broker.probe())
            .flag("events", attached.probe())
            // The start-up marker has been handled: replays know where to end.
            .flag("position", move || position.position().offset.is_some());
        let router = socket::router(context).merge(health.router());
        let http = serve::http(http_listener, router, shutdown.clone());

        // The events consumer: one delivery at a time from the stream into
        // the hub, acked (credit given back) after the hub took it.
        let events = events.run(EventRouter::new(hub), shutdown.clone());
        let census = census::Responder::new(broker.clone(), "realtime", env!("CARGO_PKG_VERSION"))
            .run(shutdown.clone());
        // Sockets that missed shed events are told once the instance has
        // caught up, also when no fresh event comes to carry the notice.
        let gaps = tell_gaps(hub_for_gaps, shutdown.clone());

        let result = serve::run_all(
            shutdown.clone(),
            vec![
                serve::task("http", http),
                serve::task("events", events),
                serve::task("census", census),
                serve::task("shedding", gaps),
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

/// Every [`STALE_AFTER`](crate::backpressure::STALE_AFTER) until shutdown,
/// tells the channels that missed shed events, once the instance is no
/// longer behind ([`Hub::tell_gaps_if_caught_up`]).
async fn tell_gaps(hub: Arc<Hub>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(crate::backpressure::STALE_AFTER);
    loop {
        tokio::select! {
            // The service is stopping: sockets close anyway.
            _ = shutdown.cancelled() => return Ok(()),
            // Time to look: cheap when there is nothing to tell.
            _ = tick.tick() => {
                hub.tell_gaps_if_caught_up();
            }
        }
    }
}
