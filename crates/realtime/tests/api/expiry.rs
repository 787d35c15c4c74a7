//! Token expiry on open sockets, and in-band refresh.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{spawn_app_with, Client};

#[tokio::test]
async fn a_socket_whose_token_expires_is_warned_then_closed_4001() {
    let app = spawn_app_with(|s| s.tokens.leeway_secs = 0).await;
    let token = app.keys.token("alice", Duration::from_secs(3));

    let mut client = Client::connect(app.request_with_token(0, &token))
        .await
        .expect("upgrade succeeds");
    let welcome = client.next_frame().await;
    // Less than 30 s remain, so the warning comes at once.
    let warning = client.next_frame().await;
    let (code, reason) = client.closed_within(Duration::from_secs(6)).await;

    assert_eq!(welcome["type"], "welcome");
    assert!(welcome["ttl"].as_u64().unwrap() <= 3);
    assert_eq!(warning["type"], "token_expiring");
    assert!(warning["in"].as_u64().unwrap() <= 3);
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
    app.cleanup().await;
}

#[tokio::test]
async fn a_refresh_with_a_fresh_token_of_the_same_user_keeps_the_socket_open() {
    let app = spawn_app_with(|s| s.tokens.leeway_secs = 0).await;
    let short = app.keys.token("alice", Duration::from_secs(2));

    let mut client = Client::connect(app.request_with_token(0, &short))
        .await
        .expect("upgrade succeeds");
    assert_eq!(client.next_frame().await["type"], "welcome");
    assert_eq!(client.next_frame().await["type"], "token_expiring");
    client
        .send_json(json!({"type": "refresh", "token": app.token("alice")}))
        .await;
    let ack = client.next_frame().await;

    assert_eq!(
        ack["type"], "welcome",
        "the refresh is acknowledged by a new welcome"
    );
    assert!(ack["ttl"].as_u64().unwrap() > 3000);
    // The old token's expiry passes without a close.
    assert_eq!(client.frame_within(Duration::from_secs(4)).await, None);
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.next_frame().await["type"], "pong");
    app.cleanup().await;
}

#[tokio::test]
async fn a_refresh_with_an_invalid_token_is_refused_and_changes_nothing() {
    let app = spawn_app_with(|s| s.tokens.leeway_secs = 0).await;
    let short = app.keys.token("alice", Duration::from_secs(3));

    let mut client = Client::connect(app.request_with_token(0, &short))
        .await
        .expect("upgrade succeeds");
    client.next_frame().await; // welcome
    client.next_frame().await; // token_expiring
    client
        .send_json(json!({"type": "refresh", "token": "garbage"}))
        .await;

    assert_eq!(client.next_frame().await["code"], "invalid_token");
    assert_eq!(client.closed_within(Duration::from_secs(6)).await.0, 4001);
    app.cleanup().await;
}

#[tokio::test]
async fn a_refresh_with_another_users_token_closes_4003() {
    let app = spawn_app_with(|_| {}).await;
    let mut client = app.client("alice").await;

    client
        .send_json(json!({"type": "refresh", "token": app.token("mallory")}))
        .await;

    assert_eq!(client.next_frame().await["code"], "forbidden");
    assert_eq!(client.closed().await.0, 4003);
    app.cleanup().await;
}
