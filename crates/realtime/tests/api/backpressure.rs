//! The shedding policy seen from a socket (`signalbox_realtime::backpressure`):
//! an instance that handles events late drops old prices and tells their
//! subscribers, still pushes every order event, evicts the socket furthest
//! behind, and refuses new sockets with 1013.
//!
//! How late an event is handled is measured from its envelope's
//! `occurred_at`, so these tests publish events stamped seconds ago: to the
//! instance they are exactly what a freeze or a backlog would hand it. That
//! makes each step of the policy deterministic here; the whole-system tests
//! (`frozen_realtime`, `realtime_overload`) make the lag real.

use std::time::Duration;

use serde_json::{json, Value};
use signalbox_messages::{catalog::PriceChanged, orders::OrderApproved, Envelope, Message as _};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, Client, TestApp};

/// How long ago the "late" events occurred: above every default bound
/// (1 s to drop a price, 3 s to evict and refuse).
const LATE: Duration = Duration::from_secs(10);

/// An envelope of `M` that occurred `age` ago.
fn stamped<M: signalbox_messages::Message>(age: Duration) -> Envelope {
    let mut envelope = Envelope::new::<M>();
    envelope.occurred_at = chrono::Utc::now() - chrono::Duration::from_std(age).unwrap();
    envelope
}

/// Publishes a price change of `price_cents` that occurred `age` ago.
async fn publish_price(app: &TestApp, age: Duration, price_cents: i64) {
    app.publish(
        PriceChanged::TYPE,
        &stamped::<PriceChanged>(age),
        &json!({"product_id": Uuid::now_v7(), "price_cents": price_cents, "currency": "EUR"}),
    )
    .await;
}

/// Publishes `order.approved` for `user` that occurred `age` ago, with
/// `padding` bytes more in its payload; returns the order id.
async fn publish_order(app: &TestApp, user: &str, age: Duration, padding: usize) -> Uuid {
    let order_id = Uuid::now_v7();
    let envelope = stamped::<OrderApproved>(age).with_user_id(user);
    let mut payload = json!({"order_id": order_id, "user_id": user, "state": "APPROVED"});
    if padding > 0 {
        payload["padding"] = Value::String("x".repeat(padding));
    }
    app.publish(OrderApproved::TYPE, &envelope, &payload).await;
    order_id
}

#[tokio::test]
async fn a_late_price_is_dropped_and_told_while_a_late_order_event_still_arrives() {
    let app = spawn_app().await;
    let mut client = app.client("alice").await;
    client.subscribe("catalog").await;
    client.subscribe("user:alice").await;

    publish_price(&app, LATE, 100).await;
    let order_id = publish_order(&app, "alice", LATE, 0).await;

    // The price came first in the log; had it been pushed, it would be
    // first on the socket.
    let first = client.next_frame().await;
    assert_eq!(first["type"], "event", "{first}");
    assert_eq!(first["data"]["order_id"], order_id.to_string(), "{first}");
    // Once the instance is no longer behind (here: nothing more comes),
    // the catalog's subscribers are told what they missed.
    let told = client.next_frame().await;
    assert_eq!(told["type"], "error", "{told}");
    assert_eq!(told["code"], "events_dropped", "{told}");
    assert!(told["message"].as_str().unwrap_or("").contains("catalog"));
    // Fresh prices flow again.
    publish_price(&app, Duration::ZERO, 200).await;
    let fresh = client.next_frame().await;
    assert_eq!(fresh["data"]["price_cents"], 200, "{fresh}");

    let shed = app.instances[0].hub.load().shed();
    assert_eq!(shed.dropped, 1, "{shed:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn an_instance_far_behind_refuses_new_sockets_with_1013_and_keeps_its_own() {
    // No eviction in this test: only the refusal is watched.
    let app = spawn_app_with(|s| s.backpressure.evict_after_ms = 3_600_000).await;
    let mut open = app.client("alice").await;
    open.subscribe("user:alice").await;

    // Late events keep coming while the new socket knocks, so the lag the
    // upgrade reads is fresh however long the knock takes.
    let late = CancellationToken::new();
    let publishing = {
        let (late, app) = (late.clone(), &app);
        async move {
            // A steady stream of late events, one every 50 ms, until enough
            // lag has been seen.
            let mut every = tokio::time::interval(Duration::from_millis(50));
            while !late.is_cancelled() {
                every.tick().await;
                publish_order(app, "alice", LATE, 0).await;
            }
        }
    };
    let knocking = async {
        // The instance has been late for over a second (a lag that lasts,
        // not one late event): it pushed that many late events.
        for _ in 0..30 {
            assert_eq!(open.next_frame().await["type"], "event");
        }
        let mut refused = Client::connect(app.request_with_token(0, &app.token("bob")))
            .await
            .expect("the upgrade itself succeeds");
        let closed = refused.closed().await;
        late.cancel();
        closed
    };
    let ((), (code, reason)) = tokio::join!(publishing, knocking);
    assert_eq!((code, reason.as_str()), (1013, "try again later"));

    // The sockets it had are kept...
    open.send_json(json!({"type": "ping"})).await;
    loop {
        let frame = open.next_frame().await;
        if frame["type"] == "pong" {
            break;
        }
        assert_eq!(frame["type"], "event", "{frame}");
    }
    // ...and once it has caught up (no late event for a while: its lag is
    // stale), new ones are welcome again.
    let hub = &app.instances[0].hub;
    signalbox_testkit::probe::until("the lag gone", Duration::from_secs(10), || async {
        Ok(match hub.load().lag() {
            Duration::ZERO => Ok(()),
            lag => Err(format!("{lag:?}")),
        })
    })
    .await
    .expect("the instance catches up");
    app.client("bob").await;
    assert!(app.instances[0].hub.load().shed().refused >= 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_sustained_lag_evicts_the_socket_furthest_behind_with_1008() {
    // A queue per socket far larger than this test fills, so a socket can
    // only go by the lag rule; and an eviction at the first late event that
    // finds a socket behind.
    let app = spawn_app_with(|s| {
        s.ws.send_buffer = 100_000;
        s.backpressure.evict_after_ms = 5_000;
        s.backpressure.evict_interval_ms = 0;
    })
    .await;
    let mut slow = Client::connect_with_small_receive_buffer(
        app.request_with_token(0, &app.token("alice")),
        app.instances[0].port,
    )
    .await
    .expect("upgrade succeeds");
    assert_eq!(slow.next_frame().await["type"], "welcome");
    slow.subscribe("user:alice").await;
    let mut carol = app.client("carol").await;
    carol.subscribe("user:carol").await;

    // Alice stops reading while ~10 MB of late events for her arrive: the
    // TCP buffers fill, frames wait in her queue, and she is the socket
    // furthest behind while the instance lags.
    for _ in 0..150 {
        publish_order(&app, "alice", LATE, 64 * 1024).await;
    }
    // A fresh event (no lag: nobody is evicted for it) tells when the hub
    // has handled every one of Alice's.
    publish_order(&app, "carol", Duration::ZERO, 0).await;
    let marker = carol.frame_within(Duration::from_secs(30)).await;
    assert_eq!(marker.expect("carol's event")["channel"], "user:carol");

    let (code, _) = slow.closed_within(Duration::from_secs(10)).await;
    assert_eq!(code, 1008);
    let shed = app.instances[0].hub.load().shed();
    assert_eq!(shed.evicted, 1, "evicted by the lag rule: {shed:?}");
    carol.send_json(json!({"type": "ping"})).await;
    assert_eq!(carol.next_frame().await["type"], "pong");
    app.cleanup().await;
}
