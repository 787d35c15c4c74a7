//! Object-level authorization: a user reaches only their own orders, through
//! the gateway, and the answer for another user's order is the 404 of an
//! order that does not exist.

use reqwest::StatusCode;
use serde_json::Value;
use signalbox_system_tests::{products, TestSystem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_cancel_another_users_order() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let owner = api.new_user().await?;
    let stranger = api.new_user().await?;
    let placed = api.place_order(&owner, &[(products::TABLET, 1)]).await?;
    let order_id = placed.json::<Value>().await?["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let cancel = api
        .http()
        .post(api.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&stranger.access_token)
        .send()
        .await?;

    assert_eq!(cancel.status(), StatusCode::NOT_FOUND);
    assert_eq!(cancel.json::<Value>().await?["code"], "not_found");
    let order: Value = api.get_order(&owner, &order_id).await?.json().await?;
    assert_ne!(order["state"], "CANCELLED", "{order}");

    system.stop().await
}
