//! The public `catalog` channel carries real events: an operator changes a
//! product through the gateway (`PATCH /api/catalog/products/{id}`, scope
//! `catalog:admin`), catalog commits the change with its events in the
//! outbox, and every socket subscribed to `catalog` sees them.

use reqwest::StatusCode;
use serde_json::{json, Value};
use signalbox_system_tests::{products, Socket, TestSystem, DEADLINE};

use crate::auth_helpers::post_form;

/// A token of a service account with `scopes`, from the token endpoint.
async fn service_token(system: &TestSystem, id: &str, scopes: &str) -> anyhow::Result<String> {
    let pool = sqlx::PgPool::connect(&system.database_url("auth").expect("auth db")).await?;
    let secret = signalbox_auth::clients::create(&pool, id, scopes)
        .await?
        .secret;
    pool.close().await;
    let issued: Value = post_form(
        &system.api,
        "/oauth/token",
        &[("grant_type", "client_credentials")],
        Some((id, &secret)),
    )
    .await?
    .json()
    .await?;
    Ok(issued["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

async fn patch(
    system: &TestSystem,
    token: &str,
    product: &str,
    body: Value,
) -> anyhow::Result<reqwest::Response> {
    let api = &system.api;
    Ok(api
        .http()
        .patch(api.url(&format!("/api/catalog/products/{product}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_and_stock_change_reaches_catalog_subscribers_on_every_instance(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let admin = service_token(&system, "merchandiser", "catalog:admin").await?;
    let user = system.api.new_user().await?;
    let mut sockets = Vec::new();
    for url in &system.realtime {
        let mut socket = Socket::connect(url, Some(&user.access_token)).await?;
        socket.expect("welcome", DEADLINE).await?;
        socket.subscribe("catalog", DEADLINE).await?;
        sockets.push(socket);
    }

    let changed = patch(
        &system,
        &admin,
        products::TABLET,
        json!({"price_cents": 2100, "stock": 7}),
    )
    .await?;
    assert_eq!(changed.status(), StatusCode::OK);
    let body: Value = changed.json().await?;
    assert_eq!(
        (body["price_cents"].clone(), body["stock"].clone()),
        (json!(2100), json!(7))
    );

    for socket in &mut sockets {
        let price = socket
            .wait_for(DEADLINE, |f| {
                f["type"] == "event" && f["data"]["type"] == "catalog.price_changed"
            })
            .await?;
        assert_eq!(price["channel"], "catalog");
        assert_eq!(price["data"]["product_id"], products::TABLET);
        assert_eq!(price["data"]["price_cents"], 2100);
        let stock = socket
            .wait_for(DEADLINE, |f| {
                f["type"] == "event" && f["data"]["type"] == "catalog.stock_changed"
            })
            .await?;
        assert_eq!(stock["data"]["stock"], 7);
    }
    // The gateway reads the new values back.
    assert_eq!(
        system.api.product(products::TABLET).await?["price_cents"],
        2100
    );
    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_unknown_products_and_missing_scopes_are_refused() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let admin = service_token(&system, "merchandiser", "catalog:admin").await?;
    let user = system.api.new_user().await?;

    for body in [
        json!({}),
        json!({"price_cents": 0}),
        json!({"price_cents": -100}),
        json!({"stock": -1}),
        json!({"price_cents": "cheap"}),
        json!({"colour": "red"}),
    ] {
        let refused = patch(&system, &admin, products::LAMP, body.clone()).await?;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
    }
    let unknown = patch(
        &system,
        &admin,
        &uuid::Uuid::now_v7().to_string(),
        json!({"price_cents": 100}),
    )
    .await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    // A user's token has no `catalog:admin`.
    let forbidden = patch(
        &system,
        &user.access_token,
        products::LAMP,
        json!({"stock": 1}),
    )
    .await?;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    // Nothing changed.
    assert_eq!(system.api.stock(products::LAMP).await?, 100);
    system.stop().await
}
