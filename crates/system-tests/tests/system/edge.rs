//! Bad input at the edge gets a typed problem and changes nothing.

use reqwest::{header::CONTENT_TYPE, StatusCode};
use serde_json::Value;
use signalbox_system_tests::TestSystem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_answered_with_a_400_problem() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let user = api.new_user().await?;

    let response = api
        .http()
        .post(api.url("/api/orders"))
        .bearer_auth(&user.access_token)
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"items": [{"product_id": "#)
        .send()
        .await?;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()[CONTENT_TYPE].to_str()?,
        "application/problem+json"
    );
    let problem: Value = response.json().await?;
    assert_eq!(problem["status"], 400);
    assert_eq!(problem["code"], "invalid_input");

    // Nothing was created.
    let listed: Value = api
        .http()
        .get(api.url("/api/orders"))
        .bearer_auth(&user.access_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["orders"].as_array().map(Vec::len), Some(0));

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_for_an_unknown_product_is_refused_with_a_problem() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let user = api.new_user().await?;

    let response = api
        .place_order(&user, &[("0193a4c0-0000-7000-8000-0000000000ff", 1)])
        .await?;

    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await?;
    assert_eq!(problem["code"], "failed_precondition");
    assert!(problem["detail"]
        .as_str()
        .is_some_and(|d| d.contains("unknown products")));

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_census_lists_every_instance_of_every_service_on_the_broker() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;

    let census: Value = api
        .http()
        .get(api.url("/api/system/instances?deadline_ms=2000"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;

    // orders, catalog and two realtime instances answer the scatter-gather.
    let mut services: Vec<&str> = census["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["service"].as_str())
        .collect();
    services.sort_unstable();
    assert_eq!(
        services,
        ["catalog", "orders", "realtime", "realtime"],
        "{census}"
    );

    system.stop().await
}
