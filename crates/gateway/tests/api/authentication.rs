//! Edge authentication, RFC 6750 style.

use serde_json::json;
use signalbox_platform::tokens::now_secs;

use crate::helpers::{
    assert_problem, claims, spawn_app, spawn_app_with, www_authenticate, TestKey, World,
};

#[tokio::test]
async fn a_protected_route_without_a_token_is_a_401_bare_challenge() {
    let app = spawn_app().await;

    let response = app.get("/api/orders").await;

    assert_eq!(www_authenticate(&response), r#"Bearer realm="signalbox""#);
    assert_problem(response, 401, "unauthenticated").await;
}

#[tokio::test]
async fn another_auth_scheme_is_a_401_bare_challenge() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/api/orders"))
        .basic_auth("user", Some("pass"))
        .send()
        .await
        .unwrap();

    assert_eq!(www_authenticate(&response), r#"Bearer realm="signalbox""#);
    assert_problem(response, 401, "unauthenticated").await;
}

#[tokio::test]
async fn a_token_is_checked_before_the_body() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/api/orders"))
        .body("not json at all")
        .send()
        .await
        .unwrap();

    assert_problem(response, 401, "unauthenticated").await;
}

async fn assert_invalid_token(response: reqwest::Response, mentions: &str) {
    let challenge = www_authenticate(&response);
    assert!(
        challenge
            .starts_with(r#"Bearer realm="signalbox", error="invalid_token", error_description=""#),
        "{challenge}"
    );
    assert!(challenge.contains(mentions), "{challenge}");
    assert_problem(response, 401, "unauthenticated").await;
}

#[tokio::test]
async fn a_garbage_token_is_a_401_invalid_token() {
    let app = spawn_app().await;

    let response = app.get_as("/api/orders", "not-a-jwt").await;

    assert_invalid_token(response, "malformed").await;
}

#[tokio::test]
async fn an_empty_bearer_token_is_a_401_invalid_token() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/api/orders"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();

    assert_invalid_token(response, "empty").await;
}

#[tokio::test]
async fn an_expired_token_is_a_401_invalid_token() {
    let app = spawn_app().await;
    let mut expired = claims("user-1");
    expired.iat = now_secs() - 7200;
    expired.exp = now_secs() - 3600;

    let response = app.get_as("/api/orders", &app.keys.sign(&expired)).await;

    assert_invalid_token(response, "expired").await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_a_401_invalid_token() {
    let app = spawn_app().await;
    let mut elsewhere = claims("user-1");
    elsewhere.aud = "some-other-api".to_owned();

    let response = app.get_as("/api/orders", &app.keys.sign(&elsewhere)).await;

    assert_invalid_token(response, "audience").await;
}

#[tokio::test]
async fn a_token_signed_by_an_unpublished_key_is_a_401_invalid_token() {
    let app = spawn_app().await;
    let impostor = TestKey::generate();

    let response = app
        .get_as("/api/orders", &impostor.sign(&claims("user-1")))
        .await;

    assert_invalid_token(response, "unknown key").await;
}

#[tokio::test]
async fn unreachable_signing_keys_are_a_503_not_a_401() {
    let app = spawn_app_with(World {
        jwks: false,
        ..World::all_down()
    })
    .await;

    let response = app.get_as("/api/orders", &app.token_for("user-1")).await;

    assert!(response.headers().get("www-authenticate").is_none());
    assert_problem(response, 503, "unavailable").await;
}

#[tokio::test]
async fn a_valid_token_with_orders_down_is_a_503_unavailable() {
    let app = spawn_app().await;
    let token = app.token_for("user-1");

    let list = app.get_as("/api/orders", &token).await;
    let create = app
        .post_json_as(
            "/api/orders",
            &token,
            &json!({"items": [{"product_id": crate::fakes::WIDGET_ID, "quantity": 1}]}),
        )
        .await;

    let problem = assert_problem(list, 503, "unavailable").await;
    assert_eq!(problem["detail"], "the orders service is unavailable");
    assert_problem(create, 503, "unavailable").await;
}

#[tokio::test]
async fn a_signed_jwt_not_typed_at_jwt_is_a_401_invalid_token() {
    let app = spawn_app().await;

    let id_token = app.keys.sign_typed(&claims("user-1"), Some("JWT"));
    let response = app.get_as("/api/orders", &id_token).await;

    assert_invalid_token(response, "typ").await;
}

#[tokio::test]
async fn a_token_without_the_routes_scope_is_a_403_insufficient_scope() {
    let app = spawn_app_with(World::all_up()).await;
    let mut read_only = claims("user-1");
    read_only.scope = "orders:read".to_owned();
    let token = app.keys.sign(&read_only);

    let listed = app.get_as("/api/orders", &token).await;
    let placed = app
        .post_json_as(
            "/api/orders",
            &token,
            &json!({"items": [{"product_id": crate::fakes::WIDGET_ID, "quantity": 1}]}),
        )
        .await;

    assert_eq!(listed.status(), 200);
    assert_eq!(
        www_authenticate(&placed),
        r#"Bearer realm="signalbox", error="insufficient_scope", scope="orders:write""#
    );
    assert_problem(placed, 403, "forbidden").await;
}

#[tokio::test]
async fn a_token_without_any_scope_reads_no_orders() {
    let app = spawn_app_with(World::all_up()).await;
    let mut unscoped = claims("user-1");
    unscoped.scope = String::new();

    let response = app.get_as("/api/orders", &app.keys.sign(&unscoped)).await;

    assert_eq!(
        www_authenticate(&response),
        r#"Bearer realm="signalbox", error="insufficient_scope", scope="orders:read""#
    );
    assert_problem(response, 403, "forbidden").await;
}
