//! One realtime instance given more fan-out than it can push: a flood of
//! price changes to a hundred `catalog` sockets. It sheds by its policy
//! (`signalbox_realtime::backpressure`) instead of working through the
//! backlog: old prices are dropped unpushed, every socket that did not get
//! them all is told (`events_dropped`) or was evicted (1008), and the order
//! event published behind the flood still reaches every socket. What is
//! asserted is what was shed, not how fast anything was.

use serde_json::Value;
use signalbox_platform::config::{ListenSettings, VerifierSettings};
use signalbox_system_tests::{
    products, socket::Received, system::await_status, Socket, TestSystem, DEADLINE,
};
use tokio_util::sync::CancellationToken;

use crate::backpressure_helpers::publish_prices;

/// Sockets on `catalog` (and the user's channel) of the overloaded instance.
const SOCKETS: usize = 100;
/// Price changes in the flood.
const PRICES: usize = 3_000;

/// What one socket saw.
#[derive(Debug, Default)]
struct Seen {
    prices: usize,
    told: bool,
    closed: Option<Option<u16>>,
    order_approved: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_instance_sheds_old_prices_and_still_delivers_orders() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let user = api.new_user().await?;
    let user_channel = format!("user:{}", user.id);

    // A third realtime instance, in this process, to read its hub.
    let mut settings = signalbox_realtime::Settings {
        http: ListenSettings::ephemeral(),
        amqp: signalbox_testkit::broker::settings(&system.namespace),
        tokens: VerifierSettings {
            jwks_url: api.url("/.well-known/jwks.json"),
            ..VerifierSettings::default()
        },
        ..Default::default()
    };
    settings.backpressure.drop_superseded_after_ms = 300;
    let app = signalbox_realtime::Application::build(settings).await?;
    let (port, hub) = (app.http_port(), app.hub());
    let stop = CancellationToken::new();
    let instance = tokio::spawn(app.run_until_stopped(stop.clone()));
    await_status(
        &format!("http://127.0.0.1:{port}/health/ready"),
        reqwest::StatusCode::OK,
    )
    .await?;

    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut readers = Vec::new();
    for _ in 0..SOCKETS {
        let mut socket = Socket::connect(&url, Some(&user.access_token)).await?;
        socket.expect("welcome", DEADLINE).await?;
        for channel in ["catalog", user_channel.as_str()] {
            let subscribed = socket.subscribe(channel, DEADLINE).await?;
            assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        }
        // Each socket is read by a task of its own, until the order's
        // APPROVED (published after the flood) and, if it missed prices,
        // the notice (which comes once the instance has caught up), or
        // until the socket's close.
        readers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            loop {
                match socket.receive(DEADLINE * 3).await {
                    Ok(Received::Frame(frame)) => {
                        let data = &frame["data"];
                        if frame["type"] == "error" && frame["code"] == "events_dropped" {
                            seen.told = true;
                        } else if data["type"] == "catalog.price_changed" {
                            seen.prices += 1;
                        } else if data["state"] == "APPROVED" {
                            seen.order_approved = true;
                        }
                        if seen.order_approved && (seen.told || seen.prices == PRICES) {
                            return seen;
                        }
                    }
                    Ok(Received::Closed(code)) => {
                        seen.closed = Some(code);
                        return seen;
                    }
                    Err(_) => return seen,
                }
            }
        }));
    }

    // The flood, then an order behind it.
    publish_prices(&system.namespace, products::LAMP, PRICES).await?;
    let placed = api.place_order(&user, &[(products::LAMP, 1)]).await?;
    assert_eq!(placed.status(), 202);
    let _: Value = placed.json().await?;

    let mut seen = Vec::new();
    for reader in readers {
        seen.push(reader.await?);
    }
    let shed = hub.load().shed();

    // Shed first: old prices were dropped, not pushed to everyone.
    assert!(shed.dropped > 0, "nothing was shed: {shed:?}");
    for (socket, seen) in seen.iter().enumerate() {
        match seen.closed {
            // Evicted: the instance let it go rather than wait for it.
            Some(code) => assert_eq!(code, Some(1008), "socket {socket}: {seen:?}"),
            None => {
                // An order event is never shed.
                assert!(seen.order_approved, "socket {socket}: {seen:?}");
                // A socket that missed prices was told so.
                assert!(
                    seen.prices == PRICES || seen.told,
                    "socket {socket} missed prices silently: {seen:?}"
                );
            }
        }
    }
    assert!(
        seen.iter().any(|seen| seen.order_approved),
        "some sockets stay: {seen:?}"
    );

    stop.cancel();
    instance
        .await?
        .map_err(|error| anyhow::anyhow!("the overloaded instance failed: {error:#}"))?;
    system.stop().await
}
