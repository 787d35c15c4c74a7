//! `PATCH /api/orders/{id}`: translated to `ReviseOrder` with the caller's
//! token; orders' answers map to 202, 404 and 409.

use serde_json::{json, Value};

use crate::{
    fakes::{GADGET_ID, WIDGET_ID},
    helpers::{assert_problem, spawn_app_with, TestApp, World},
};

async fn place_order(app: &TestApp, token: &str) -> String {
    let response = app
        .post_json_as(
            "/api/orders",
            token,
            &json!({"items": [{"product_id": WIDGET_ID, "quantity": 1}]}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["order_id"].as_str().unwrap().to_owned()
}

async fn revise(app: &TestApp, token: &str, order_id: &str) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/api/orders/{order_id}")))
        .bearer_auth(token)
        .json(&json!({"items": [{"product_id": GADGET_ID, "quantity": 3}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_revision_is_accepted_with_202_and_the_order_state() {
    let app = spawn_app_with(World::all_up()).await;
    let token = app.token_for("user-1");
    let order_id = place_order(&app, &token).await;

    let response = revise(&app, &token, &order_id).await;

    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["order_id"], order_id.as_str());
    assert_eq!(body["state"], "PENDING");
}

#[tokio::test]
async fn revising_another_users_order_is_not_found() {
    let app = spawn_app_with(World::all_up()).await;
    let order_id = place_order(&app, &app.token_for("user-1")).await;

    let response = revise(&app, &app.token_for("user-2"), &order_id).await;

    assert_problem(response, 404, "not_found").await;
}

#[tokio::test]
async fn a_revision_orders_aborts_is_a_409_conflict() {
    let app = spawn_app_with(World::all_up()).await;
    let token = app.token_for("user-1");
    let order_id = place_order(&app, &token).await;
    let cancelled = app
        .client
        .post(app.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);

    let response = revise(&app, &token, &order_id).await;

    assert_problem(response, 409, "conflict").await;
}

#[tokio::test]
async fn a_revision_without_items_is_refused_at_the_edge() {
    let app = spawn_app_with(World::all_up()).await;
    let token = app.token_for("user-1");

    let response = app
        .client
        .patch(app.url("/api/orders/0193a4c0-0000-7000-8000-000000000001"))
        .bearer_auth(&token)
        .json(&json!({"quantity": 3}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 400);
}
