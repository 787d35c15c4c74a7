//! `/api/auth/*` and the JWKS document, translated to the auth service.

use reqwest::header;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, World};

#[tokio::test]
async fn register_answers_201_with_the_new_user() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app
        .post_json(
            "/api/auth/register",
            &json!({"email": "ada@example.com", "password": "correct horse"}),
        )
        .await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let fields: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(fields, ["email", "user_id"]);
    assert_eq!(body["email"], "ada@example.com");
}

#[tokio::test]
async fn registering_a_taken_email_is_a_409_problem() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app
        .post_json(
            "/api/auth/register",
            &json!({"email": "taken@example.com", "password": "correct horse"}),
        )
        .await;

    assert_problem(response, 409, "conflict").await;
}

#[tokio::test]
async fn login_answers_tokens_that_no_cache_may_store() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app
        .post_json(
            "/api/auth/login",
            &json!({"email": "ada@example.com", "password": "correct horse"}),
        )
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "access_token": "access.token.value",
            "token_type": "Bearer",
            "expires_in": 900,
            "refresh_token": "refresh-token-value",
        })
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_401_problem() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app
        .post_json(
            "/api/auth/login",
            &json!({"email": "ada@example.com", "password": "wrong"}),
        )
        .await;

    assert_problem(response, 401, "unauthenticated").await;
}

#[tokio::test]
async fn the_jwks_document_is_served_verbatim_and_cacheable() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app.get("/.well-known/jwks.json").await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        response.headers()[header::CACHE_CONTROL],
        "public, max-age=300"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, app.keys.jwks());
}

#[tokio::test]
async fn auth_routes_with_auth_down_are_503_problems() {
    let app = spawn_app().await;
    let credentials = json!({"email": "ada@example.com", "password": "correct horse"});

    let register = app.post_json("/api/auth/register", &credentials).await;
    let login = app.post_json("/api/auth/login", &credentials).await;
    let jwks = app.get("/.well-known/jwks.json").await;

    let problem = assert_problem(register, 503, "unavailable").await;
    assert_eq!(problem["detail"], "the auth service is unavailable");
    assert_problem(login, 503, "unavailable").await;
    assert_problem(jwks, 503, "unavailable").await;
}
