//! Authentication: a bearer header on the upgrade, or an `auth` first frame.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{refusal, spawn_app, spawn_app_with, Client, Keys};

#[tokio::test]
async fn a_valid_bearer_header_is_welcomed_with_the_tokens_ttl() {
    let app = spawn_app().await;

    let mut client = Client::connect(app.request_with_token(0, &app.token("alice")))
        .await
        .expect("upgrade succeeds");
    let welcome = client.next_frame().await;

    assert_eq!(welcome["type"], "welcome");
    let ttl = welcome["ttl"].as_u64().expect("ttl is a number");
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_valid_first_frame_auth_is_welcomed() {
    let app = spawn_app().await;

    let mut client = Client::connect(app.request())
        .await
        .expect("upgrade succeeds");
    client
        .send_json(json!({"type": "auth", "token": app.token("alice")}))
        .await;
    let welcome = client.next_frame().await;

    assert_eq!(welcome["type"], "welcome", "{welcome}");
    app.cleanup().await;
}

#[tokio::test]
async fn an_invalid_bearer_header_is_refused_with_401_before_the_upgrade() {
    let app = spawn_app().await;
    // Signed by a key the auth service never published.
    let forged = Keys::generate().token("alice", Duration::from_secs(3600));

    for token in [forged.as_str(), "not-a-jwt"] {
        let error = Client::connect(app.request_with_token(0, token))
            .await
            .err()
            .expect("the upgrade is refused");
        let (status, headers, body) = refusal(error);

        assert_eq!(status, 401);
        assert_eq!(
            headers["www-authenticate"],
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["code"], "unauthenticated");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn an_expired_bearer_header_is_refused_with_401() {
    let app = spawn_app_with(|s| s.tokens.leeway_secs = 0).await;
    let expired = app
        .keys
        .token_expiring_at("alice", signalbox_platform::tokens::now_secs() - 10);

    let error = Client::connect(app.request_with_token(0, &expired))
        .await
        .err()
        .expect("the upgrade is refused");

    assert_eq!(refusal(error).0, 401);
    app.cleanup().await;
}

#[tokio::test]
async fn an_invalid_first_frame_token_gets_an_error_then_close_1008() {
    let app = spawn_app().await;
    let forged = Keys::generate().token("alice", Duration::from_secs(3600));

    let mut client = Client::connect(app.request())
        .await
        .expect("upgrade succeeds");
    client
        .send_json(json!({"type": "auth", "token": forged}))
        .await;

    let error = client.next_frame().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "invalid_token");
    assert_eq!(client.closed().await.0, 1008);
    app.cleanup().await;
}

#[tokio::test]
async fn a_first_frame_other_than_auth_is_refused_with_close_1008() {
    let app = spawn_app().await;

    let mut client = Client::connect(app.request())
        .await
        .expect("upgrade succeeds");
    client
        .send_json(json!({"type": "subscribe", "channel": "catalog"}))
        .await;

    assert_eq!(client.next_frame().await["code"], "unauthenticated");
    assert_eq!(client.closed().await.0, 1008);
    app.cleanup().await;
}

#[tokio::test]
async fn a_socket_that_does_not_authenticate_in_time_is_closed_1008() {
    let app = spawn_app_with(|s| s.ws.auth_timeout_secs = 1).await;

    let mut client = Client::connect(app.request())
        .await
        .expect("upgrade succeeds");
    let (code, reason) = client.closed().await;

    assert_eq!(code, 1008);
    assert_eq!(reason, "authentication timeout");
    app.cleanup().await;
}

#[tokio::test]
async fn a_signed_jwt_that_is_not_an_access_token_is_refused_on_both_paths() {
    let app = spawn_app().await;
    let exp = signalbox_platform::tokens::now_secs() + 3600;
    // Signed by the published key, but typed as a plain JWT (an ID token,
    // say): the socket must not take it for an access token.
    let not_access = app.keys.token_typed("alice", exp, Some("JWT"));

    let error = Client::connect(app.request_with_token(0, &not_access))
        .await
        .err()
        .expect("the upgrade is refused");
    let (status, headers, _) = refusal(error);
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );

    let mut client = Client::connect(app.request())
        .await
        .expect("upgrade succeeds");
    client
        .send_json(json!({"type": "auth", "token": not_access}))
        .await;
    assert_eq!(client.next_frame().await["code"], "invalid_token");
    assert_eq!(client.closed().await.0, 1008);
    app.cleanup().await;
}
