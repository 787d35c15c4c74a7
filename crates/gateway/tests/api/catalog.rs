//! `/api/catalog/*`, translated to the catalog service.

use serde_json::{json, Value};

use crate::{
    fakes::{GADGET_ID, WIDGET_ID},
    helpers::{assert_problem, spawn_app, spawn_app_with, World},
};

fn widget() -> Value {
    json!({
        "id": WIDGET_ID, "sku": "WID-1", "name": "Widget",
        "price_cents": 250, "currency": "EUR", "stock": 10,
    })
}

fn fresh(mut product: Value) -> Value {
    product["stale"] = json!(false);
    product
}

#[tokio::test]
async fn products_are_listed_with_every_field() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app.get("/api/catalog/products").await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["products"][0], widget());
    assert_eq!(body["products"][1]["id"], GADGET_ID);
    assert_eq!(body["stale"], false);
    assert_eq!(body.as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn one_product_is_returned_by_id() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app.get(&format!("/api/catalog/products/{WIDGET_ID}")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), fresh(widget()));
}

#[tokio::test]
async fn a_missing_product_is_a_404_problem() {
    let app = spawn_app_with(World::all_up()).await;

    let response = app
        .get(&format!("/api/catalog/products/{}", uuid::Uuid::now_v7()))
        .await;

    assert_problem(response, 404, "not_found").await;
}

#[tokio::test]
async fn products_with_catalog_down_are_a_503_problem() {
    let app = spawn_app().await;

    let list = app.get("/api/catalog/products").await;
    let one = app.get(&format!("/api/catalog/products/{WIDGET_ID}")).await;

    let problem = assert_problem(list, 503, "unavailable").await;
    assert_eq!(problem["detail"], "the catalog service is unavailable");
    // Each read is tried three times; the fifth failure in a row opens
    // catalog's breaker, so the second request is refused without a call.
    assert_problem(one, 503, "upstream_unavailable").await;
}
