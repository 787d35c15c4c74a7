//! The frame protocol once a socket is authenticated.

use std::time::Duration;

use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app, spawn_app_with, Client};

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let app = spawn_app().await;
    let mut client = app.client("alice").await;

    client.send_json(json!({"type": "ping"})).await;

    assert_eq!(client.next_frame().await, json!({"type": "pong"}));
    app.cleanup().await;
}

#[tokio::test]
async fn bad_json_unknown_frames_and_binary_get_errors_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let mut client = app.client("alice").await;

    client
        .stream
        .send(Message::text("{not json"))
        .await
        .unwrap();
    assert_eq!(client.next_frame().await["code"], "bad_request");
    client.send_json(json!({"type": "shout"})).await;
    assert_eq!(client.next_frame().await["code"], "bad_request");
    client
        .stream
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(client.next_frame().await["code"], "bad_request");

    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.next_frame().await["type"], "pong");
    app.cleanup().await;
}

#[tokio::test]
async fn a_message_above_the_size_limit_closes_the_socket_with_1009() {
    let app = spawn_app_with(|s| s.ws.max_frame_bytes = 1024).await;
    let mut client = app.client("alice").await;

    let padding = "x".repeat(4096);
    client
        .send_json(json!({"type": "ping", "padding": padding}))
        .await;

    assert_eq!(client.closed().await.0, 1009);
    app.cleanup().await;
}

#[tokio::test]
async fn a_message_longer_than_the_read_buffer_is_read_whole_up_to_the_size_limit() {
    let app = spawn_app().await;
    let (read_buffer, limit) = (
        app.settings.ws.read_buffer_bytes,
        app.settings.ws.max_frame_bytes,
    );
    let mut client = app.client("alice").await;

    // Several read buffers long, still under the limit: read and answered.
    let padding = "x".repeat(8 * read_buffer);
    assert!(padding.len() < limit);
    client
        .send_json(json!({"type": "ping", "padding": padding}))
        .await;
    assert_eq!(client.next_frame().await["type"], "pong");

    // Over the limit: closed with 1009, whatever the read buffer.
    let padding = "x".repeat(limit);
    client
        .send_json(json!({"type": "ping", "padding": padding}))
        .await;
    assert_eq!(client.closed().await.0, 1009);
    app.cleanup().await;
}

#[tokio::test]
async fn shutdown_closes_open_sockets_with_1001() {
    let app = spawn_app().await;
    let mut client = app.client("alice").await;

    app.instances[0].shutdown.cancel();

    assert_eq!(client.closed().await.0, 1001);
    app.cleanup().await;
}

#[tokio::test]
async fn a_client_that_stays_silent_for_three_heartbeats_is_closed() {
    let app = spawn_app_with(|s| s.ws.heartbeat_secs = 1).await;
    // Its pongs never reach the server; three silent intervals later the
    // server closes it, which the client reads.
    let mut client = Client::silent(&app, "alice").await;

    assert_eq!(
        client.closed_within(Duration::from_secs(10)).await,
        (1008, "heartbeat timeout".to_owned())
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_client_that_answers_pings_is_kept_open() {
    let app = spawn_app_with(|s| s.ws.heartbeat_secs = 1).await;
    let mut client = app.client("alice").await;

    // Reading answers the server's pings; after more than three intervals
    // the socket is still there.
    assert_eq!(client.frame_within(Duration::from_millis(4500)).await, None);
    client.send_json(json!({"type": "ping"})).await;

    assert_eq!(client.next_frame().await["type"], "pong");
    app.cleanup().await;
}
