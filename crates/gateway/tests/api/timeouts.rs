//! Slow upstreams: the per-call timeout and the whole-request budget both
//! end in a 504 problem instead of a hung client. The call inherits the
//! request's budget, so when the budget is the shorter of the two it is
//! still the call's deadline that answers, naming the upstream.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalbox_gateway::config::Timeouts;

use crate::helpers::{assert_problem, spawn_app_with, World};

async fn slow_order_world(timeouts: Timeouts) -> (crate::helpers::TestApp, String, String) {
    let app = spawn_app_with(World {
        orders_stuck: true,
        timeouts,
        ..World::all_up()
    })
    .await;
    let token = app.token_for("user-1");
    let response = app
        .post_json_as(
            "/api/orders",
            &token,
            &json!({"items": [{"product_id": crate::fakes::WIDGET_ID, "quantity": 1}]}),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    let order_id = body["order_id"].as_str().expect("order placed").to_owned();
    (app, token, order_id)
}

#[tokio::test]
async fn an_upstream_slower_than_its_call_timeout_is_a_504_problem() {
    let (app, token, order_id) = slow_order_world(Timeouts {
        request_secs: 10,
        upstream_secs: 1,
        connect_secs: 1,
    })
    .await;

    let started = Instant::now();
    let response = app.get_as(&format!("/api/orders/{order_id}"), &token).await;

    let problem = assert_problem(response, 504, "upstream_timeout").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("the orders service did not answer in time"),
        "{problem}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_request_over_its_budget_is_a_504_problem() {
    let (app, token, order_id) = slow_order_world(Timeouts {
        request_secs: 1,
        upstream_secs: 10,
        connect_secs: 1,
    })
    .await;

    let started = Instant::now();
    let response = app.get_as(&format!("/api/orders/{order_id}"), &token).await;

    let problem = assert_problem(response, 504, "upstream_timeout").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("the orders service did not answer in time"),
        "{problem}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
