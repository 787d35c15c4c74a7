//! `POST /oauth/token` and `POST /oauth/revoke`: the HTTP half of RFC 6749
//! and RFC 7009 (form parsing, client authentication, the exact error
//! format, no-store), against a scripted auth service.

use reqwest::{header, Response};
use serde_json::{json, Value};

use crate::helpers::{
    assert_no_store, assert_oauth_error, spawn_app, spawn_app_with, TestApp, World,
};

async fn post_form(app: &TestApp, path: &str, form: &[(&str, &str)]) -> Response {
    app.client
        .post(app.url(path))
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_refresh_grant_answers_the_rotated_pair_uncacheable() {
    let app = spawn_app_with(World::all_up()).await;

    let response = post_form(
        &app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", "good")],
    )
    .await;

    assert_eq!(response.status(), 200);
    assert_no_store(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "access_token": "rotated.access.token",
            "token_type": "Bearer",
            "expires_in": 300,
            "refresh_token": "next-refresh-token",
            "scope": "orders:read orders:write",
        })
    );
}

#[tokio::test]
async fn client_credentials_by_basic_or_form_get_a_token_without_refresh_token() {
    let app = spawn_app_with(World::all_up()).await;

    let basic = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth("svc", Some("secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let form = post_form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "svc"),
            ("client_secret", "secret"),
        ],
    )
    .await;

    for response in [basic, form] {
        assert_eq!(response.status(), 200);
        assert_no_store(&response);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["access_token"], "client.access.token");
        assert_eq!(body["scope"], "orders:read");
        assert!(body.get("refresh_token").is_none(), "{body}");
    }
}

#[tokio::test]
async fn a_failed_basic_authentication_is_401_with_a_basic_challenge() {
    let app = spawn_app_with(World::all_up()).await;

    let wrong = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth("svc", Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let garbage = app
        .client
        .post(app.url("/oauth/token"))
        .header(header::AUTHORIZATION, "Basic !!!not-base64")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();

    for response in [wrong, garbage] {
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Basic realm="signalbox""#
        );
        assert_oauth_error(response, 401, "invalid_client").await;
    }
}

#[tokio::test]
async fn a_failed_form_authentication_is_400_invalid_client_without_challenge() {
    let app = spawn_app_with(World::all_up()).await;

    let response = post_form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "svc"),
            ("client_secret", "wrong"),
        ],
    )
    .await;

    assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    assert_oauth_error(response, 400, "invalid_client").await;
}

#[tokio::test]
async fn the_auth_service_refusals_keep_their_rfc_6749_code() {
    let app = spawn_app_with(World::all_up()).await;

    let grant = post_form(
        &app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", "stolen")],
    )
    .await;
    let unsupported = post_form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", "a"),
            ("password", "b"),
        ],
    )
    .await;

    assert_oauth_error(grant, 400, "invalid_grant").await;
    assert_oauth_error(unsupported, 400, "unsupported_grant_type").await;
}

#[tokio::test]
async fn a_body_that_is_not_a_form_is_invalid_request() {
    let app = spawn_app().await;

    let json_body = app
        .client
        .post(app.url("/oauth/token"))
        .json(&json!({"grant_type": "refresh_token"}))
        .send()
        .await
        .unwrap();

    let body = assert_oauth_error(json_body, 400, "invalid_request").await;
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("x-www-form-urlencoded"));
}

#[tokio::test]
async fn a_repeated_parameter_is_invalid_request() {
    let app = spawn_app().await;

    let response = post_form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "a"),
            ("refresh_token", "b"),
        ],
    )
    .await;

    let body = assert_oauth_error(response, 400, "invalid_request").await;
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("refresh_token"));
}

#[tokio::test]
async fn two_client_authentication_methods_are_invalid_request() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth("svc", Some("secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "svc"),
            ("client_secret", "secret"),
        ])
        .send()
        .await
        .unwrap();

    assert_oauth_error(response, 400, "invalid_request").await;
}

#[tokio::test]
async fn a_throttled_token_request_is_429_slow_down_with_retry_after() {
    let app = spawn_app_with(World::all_up()).await;

    let response = post_form(
        &app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", "slow")],
    )
    .await;

    assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    assert_oauth_error(response, 429, "slow_down").await;
}

#[tokio::test]
async fn with_auth_down_the_token_endpoint_answers_503_uncacheable() {
    let app = spawn_app().await;

    let response = post_form(
        &app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", "good")],
    )
    .await;

    assert_oauth_error(response, 503, "temporarily_unavailable").await;
}

#[tokio::test]
async fn revocation_answers_200_for_known_and_unknown_tokens() {
    let app = spawn_app_with(World::all_up()).await;

    for token in ["known", "never-issued"] {
        let response = post_form(
            &app,
            "/oauth/revoke",
            &[("token", token), ("token_type_hint", "refresh_token")],
        )
        .await;
        assert_eq!(response.status(), 200, "{token}");
        assert_no_store(&response);
    }
    let missing = post_form(
        &app,
        "/oauth/revoke",
        &[("token_type_hint", "refresh_token")],
    )
    .await;
    assert_oauth_error(missing, 400, "invalid_request").await;
}

#[tokio::test]
async fn logout_answers_204() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app
        .post_json("/api/auth/logout", &json!({"refresh_token": "known"}))
        .await;

    assert_eq!(response.status(), 204);
}
