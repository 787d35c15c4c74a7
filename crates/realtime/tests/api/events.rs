//! Events from the broker reach the right sockets, on every instance, and
//! only the right sockets.

use std::time::Duration;

use serde_json::json;
use signalbox_messages::{catalog::PriceChanged, Envelope, Message as _};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, Client};

/// How long a socket must stay silent for "it got nothing" to count. Only
/// used after a later event already arrived elsewhere, so the hub has
/// certainly routed the earlier one by then.
const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn an_order_event_reaches_its_users_socket_with_increasing_offsets_and_no_one_else() {
    let app = spawn_app().await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    let subscribed = alice.subscribe("user:alice").await;
    bob.subscribe("user:bob").await;
    assert_eq!(subscribed["recovered"], false);
    assert_eq!(subscribed["epoch"], app.instances[0].epoch);

    let first = app.publish_order_approved("alice").await;
    let second = app.publish_order_approved("alice").await;

    let one = alice.next_frame().await;
    let two = alice.next_frame().await;
    assert_eq!(one["type"], "event");
    assert_eq!(one["channel"], "user:alice");
    assert_eq!(one["epoch"], app.instances[0].epoch);
    assert_eq!(one["data"]["type"], "order.approved");
    assert_eq!(one["data"]["order_id"], first.to_string());
    assert_eq!(one["data"]["user_id"], "alice");
    assert_eq!(one["data"]["state"], "APPROVED");
    assert_eq!(two["data"]["order_id"], second.to_string());
    let (o1, o2) = (
        one["offset"].as_u64().unwrap(),
        two["offset"].as_u64().unwrap(),
    );
    assert!(o2 > o1, "offsets strictly increase: {o1} then {o2}");

    // Alice already got the later event, so had either been routed to Bob
    // it would be in his socket's queue by now.
    assert_eq!(bob.frame_within(QUIET).await, None, "bob got alice's event");
    // And Bob's own channel works: the first thing he sees is his event.
    let bobs = app.publish_order_approved("bob").await;
    let frame = bob.next_frame().await;
    assert_eq!(frame["channel"], "user:bob");
    assert_eq!(frame["data"]["order_id"], bobs.to_string());
    app.cleanup().await;
}

#[tokio::test]
async fn subscribing_to_another_users_channel_is_forbidden_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let mut mallory = app.client("mallory").await;

    mallory
        .send_json(json!({"type": "subscribe", "channel": "user:alice"}))
        .await;
    let error = mallory.next_frame().await;
    mallory.send_json(json!({"type": "ping"})).await;

    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "forbidden");
    assert_eq!(mallory.next_frame().await["type"], "pong");
    app.cleanup().await;
}

#[tokio::test]
async fn every_instance_receives_each_event_at_the_same_position_so_a_socket_anywhere_gets_it() {
    let mut app = spawn_app().await;
    let second = app.add_instance().await;
    let mut on_first = app.client_on(0, "alice").await;
    let mut on_second = app.client_on(second, "alice").await;
    on_first.subscribe("user:alice").await;
    on_second.subscribe("user:alice").await;

    let order_id = app.publish_order_approved("alice").await;

    let mut positions = Vec::new();
    for client in [&mut on_first, &mut on_second] {
        let event = client.next_frame().await;
        assert_eq!(event["data"]["order_id"], order_id.to_string());
        positions.push((event["epoch"].clone(), event["offset"].clone()));
    }
    assert_eq!(
        positions[0], positions[1],
        "the same event has the same (epoch, offset) on every instance"
    );
    assert_eq!(app.instances[0].epoch, app.instances[second].epoch);
    app.cleanup().await;
}

#[tokio::test]
async fn a_catalog_event_reaches_subscribers_of_the_public_catalog_channel() {
    let app = spawn_app().await;
    let mut client = app.client("alice").await;
    client.subscribe("catalog").await;

    let product_id = Uuid::now_v7();
    app.publish(
        PriceChanged::TYPE,
        &Envelope::new::<PriceChanged>(),
        &json!({"product_id": product_id, "price_cents": 1299, "currency": "EUR"}),
    )
    .await;

    let event = client.next_frame().await;
    assert_eq!(event["channel"], "catalog");
    assert_eq!(event["data"]["type"], "catalog.price_changed");
    assert_eq!(event["data"]["price_cents"], 1299);
    app.cleanup().await;
}

#[tokio::test]
async fn an_unsubscribed_socket_gets_no_more_events() {
    let app = spawn_app().await;
    let mut leaving = app.client("alice").await;
    let mut staying = app.client("alice").await;
    leaving.subscribe("user:alice").await;
    staying.subscribe("user:alice").await;

    leaving
        .send_json(json!({"type": "unsubscribe", "channel": "user:alice"}))
        .await;
    assert_eq!(leaving.next_frame().await["type"], "unsubscribed");
    app.publish_order_approved("alice").await;

    assert_eq!(staying.next_frame().await["type"], "event");
    assert_eq!(leaving.frame_within(QUIET).await, None);
    app.cleanup().await;
}

#[tokio::test]
async fn a_socket_that_does_not_keep_up_is_closed_1008_slow_consumer() {
    let app = spawn_app_with(|s| s.ws.send_buffer = 4).await;
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

    // Alice stops reading while ~10 MB of events for her arrive: more than
    // the TCP buffers between her and the server hold, so the server's writes
    // block, her queue of 4 fills, and the hub evicts her.
    for _ in 0..150 {
        app.publish_order_approved_padded("alice", 64 * 1024).await;
    }
    // Events are consumed in order: once Carol has hers, the hub has routed
    // every one of Alice's.
    app.publish_order_approved("carol").await;
    let marker = carol.frame_within(Duration::from_secs(30)).await;
    assert_eq!(marker.expect("carol's event")["channel"], "user:carol");

    // Alice reads again: what was already on its way, then the close.
    let (code, reason) = slow.closed_within(Duration::from_secs(10)).await;
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    // The other sockets were not held up.
    carol.send_json(json!({"type": "ping"})).await;
    assert_eq!(carol.next_frame().await["type"], "pong");
    app.cleanup().await;
}
