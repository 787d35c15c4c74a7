//! `/api/orders*`: translation with the caller's token forwarded (the fake
//! orders takes its user from that token), and aggregation of an order with
//! catalog details.

use reqwest::header;
use serde_json::{json, Value};

use crate::{
    fakes::{GADGET_ID, WIDGET_ID},
    helpers::{assert_problem, spawn_app_with, TestApp, World},
};

/// Places an order of 2 widgets and 1 gadget as `user`; returns its id.
async fn place_order(app: &TestApp, token: &str) -> String {
    let response = app
        .post_json_as(
            "/api/orders",
            token,
            &json!({"items": [
                {"product_id": WIDGET_ID, "quantity": 2},
                {"product_id": GADGET_ID, "quantity": 1},
            ]}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["order_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn placing_an_order_answers_202_pending_with_its_location() {
    let app = spawn_app_with(World::all_up()).await;
    let token = app.token_for("user-1");

    let response = app
        .post_json_as(
            "/api/orders",
            &token,
            &json!({"items": [{"product_id": WIDGET_ID, "quantity": 2}]}),
        )
        .await;

    assert_eq!(response.status(), 202);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    let order_id = body["order_id"].as_str().unwrap();
    assert_eq!(body, json!({"order_id": order_id, "state": "PENDING"}));
    assert_eq!(location, format!("/api/orders/{order_id}"));
}

#[tokio::test]
async fn an_order_refused_by_orders_is_a_problem_with_its_code() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app
        .post_json_as(
            "/api/orders",
            &app.token_for("user-1"),
            &json!({"items": []}),
        )
        .await;

    assert_problem(response, 400, "invalid_input").await;
}

#[tokio::test]
async fn an_order_is_returned_with_its_product_details() {
    let app = spawn_app_with(World::all_up()).await;
    let token = app.token_for("user-1");
    let order_id = place_order(&app, &token).await;

    let response = app.get_as(&format!("/api/orders/{order_id}"), &token).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "id": order_id,
            "state": "PENDING",
            "items": [
                {"product_id": WIDGET_ID, "quantity": 2, "unit_price_cents": 250,
                 "product": {"sku": "WID-1", "name": "Widget"}},
                {"product_id": GADGET_ID, "quantity": 1, "unit_price_cents": 250,
                 "product": {"sku": "GAD-1", "name": "Gadget"}},
            ],
            "total_cents": 750,
            "currency": "EUR",
            "rejection_reason": null,
            "created_at": "2025-06-01T12:00:00Z",
            "updated_at": "2025-06-01T12:00:00Z",
            "degraded": false,
        })
    );
}

#[tokio::test]
async fn with_catalog_down_an_order_is_still_returned_marked_degraded() {
    let app = spawn_app_with(World {
        catalog: false,
        ..World::all_up()
    })
    .await;
    let token = app.token_for("user-1");
    let order_id = place_order(&app, &token).await;

    let response = app.get_as(&format!("/api/orders/{order_id}"), &token).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["degraded"], true);
    assert_eq!(body["total_cents"], 750);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i["product"].is_null()), "{body}");
}

#[tokio::test]
async fn another_users_order_is_not_found() {
    let app = spawn_app_with(World::all_up()).await;
    let order_id = place_order(&app, &app.token_for("owner")).await;
    let intruder = app.token_for("intruder");

    let get = app
        .get_as(&format!("/api/orders/{order_id}"), &intruder)
        .await;
    let cancel = app
        .post_json_as(
            &format!("/api/orders/{order_id}/cancel"),
            &intruder,
            &json!({}),
        )
        .await;
    let list = app.get_as("/api/orders", &intruder).await;

    assert_problem(get, 404, "not_found").await;
    assert_problem(cancel, 404, "not_found").await;
    assert_eq!(list.json::<Value>().await.unwrap(), json!({"orders": []}));
}

#[tokio::test]
async fn orders_are_listed_for_their_owner() {
    let app = spawn_app_with(World::all_up()).await;
    let token = app.token_for("user-1");
    let order_id = place_order(&app, &token).await;

    let response = app.get_as("/api/orders", &token).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"orders": [{
            "id": order_id,
            "state": "PENDING",
            "items": [
                {"product_id": WIDGET_ID, "quantity": 2, "unit_price_cents": 250},
                {"product_id": GADGET_ID, "quantity": 1, "unit_price_cents": 250},
            ],
            "total_cents": 750,
            "currency": "EUR",
            "rejection_reason": null,
            "created_at": "2025-06-01T12:00:00Z",
            "updated_at": "2025-06-01T12:00:00Z",
        }]})
    );
}

#[tokio::test]
async fn cancelling_an_order_answers_it_cancelled() {
    let app = spawn_app_with(World::all_up()).await;
    let token = app.token_for("user-1");
    let order_id = place_order(&app, &token).await;

    let response = app
        .client
        .post(app.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], order_id.as_str());
    assert_eq!(body["state"], "CANCELLED");
}
