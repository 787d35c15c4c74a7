//! Bad input is refused at the edge, as problems, before any upstream call
//! (every upstream is down here: a request that got through would be a 503).

use serde_json::json;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn malformed_json_is_a_400_invalid_input_problem() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/api/auth/register"))
        .header("content-type", "application/json")
        .body(r#"{"email": "a@example.com", "password": "#)
        .send()
        .await
        .unwrap();

    let problem = assert_problem(response, 400, "invalid_input").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("JSON"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_body_without_json_content_type_is_a_415_problem() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/api/auth/login"))
        .body(r#"{"email": "a@example.com", "password": "x"}"#)
        .send()
        .await
        .unwrap();

    assert_problem(response, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn a_missing_field_is_a_400_problem_naming_it_not_a_422() {
    let app = spawn_app().await;

    let response = app
        .post_json("/api/auth/register", &json!({"email": "a@example.com"}))
        .await;

    let problem = assert_problem(response, 400, "invalid_input").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("password"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_a_400_problem_naming_it() {
    let app = spawn_app().await;
    let token = app.token_for("user-1");

    let response = app
        .post_json_as(
            "/api/orders",
            &token,
            &json!({"items": [{"product_id": "not-a-uuid", "quantity": 1}]}),
        )
        .await;

    let problem = assert_problem(response, 400, "invalid_input").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("product_id"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_problem() {
    let app = spawn_app().await;
    let password = "x".repeat(100 * 1024);

    let response = app
        .post_json(
            "/api/auth/register",
            &json!({"email": "a@example.com", "password": password}),
        )
        .await;

    assert_problem(response, 413, "payload_too_large").await;
}

#[tokio::test]
async fn a_product_id_that_is_not_a_uuid_is_a_400_problem() {
    let app = spawn_app().await;

    let response = app.get("/api/catalog/products/not-a-uuid").await;

    let problem = assert_problem(response, 400, "invalid_input").await;
    assert!(problem["detail"].as_str().unwrap().contains("not-a-uuid"));
}

#[tokio::test]
async fn an_order_id_that_is_not_a_uuid_is_a_400_problem() {
    let app = spawn_app().await;
    let token = app.token_for("user-1");

    let get = app.get_as("/api/orders/42", &token).await;
    let cancel = app
        .post_json_as("/api/orders/42/cancel", &token, &json!({}))
        .await;

    assert_problem(get, 400, "invalid_input").await;
    assert_problem(cancel, 400, "invalid_input").await;
}
