//! The catalog reads fall back to the last good answer, marked stale, when
//! catalog cannot answer; fresh again once it can.

use reqwest::Response;
use serde_json::Value;
use signalbox_resilience::CallPolicy;

use crate::{
    fakes::WIDGET_ID,
    faults::{self, Mode},
    helpers::{assert_problem, spawn_app_configured, World},
};

const PRODUCTS: &str = "/api/catalog/products";

fn stale_marks(response: &Response) -> (Option<String>, Option<u64>) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (
        header("x-signalbox-stale"),
        header("age").and_then(|a| a.parse().ok()),
    )
}

#[tokio::test]
async fn products_are_served_stale_while_catalog_is_down_then_fresh_again() {
    let stop = tokio_util::sync::CancellationToken::new();
    let (url, catalog) = faults::catalog(Mode::Healthy, stop.clone()).await;
    let app = spawn_app_configured(World::all_up(), |settings| {
        settings.upstreams.catalog = url;
        let mut policy = CallPolicy::default();
        policy.retry.max_attempts = 1;
        settings.resilience.catalog = policy;
    })
    .await;
    let one = format!("{PRODUCTS}/{WIDGET_ID}");

    // Fresh answers, kept.
    let fresh = app.get(PRODUCTS).await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(stale_marks(&fresh), (None, None));
    let fresh: Value = fresh.json().await.unwrap();
    assert_eq!(fresh["stale"], false);
    assert_eq!(app.get(&one).await.status(), 200);
    let seen = catalog.calls();

    // Catalog down: the last good answers, marked stale.
    catalog.set(Mode::Unavailable);
    let list = app.get(PRODUCTS).await;
    assert_eq!(list.status(), 200);
    let (stale, age) = stale_marks(&list);
    assert_eq!(stale.as_deref(), Some("true"));
    assert!(age.is_some(), "an Age header");
    let list: Value = list.json().await.unwrap();
    assert_eq!(list["stale"], true);
    assert_eq!(list["products"], fresh["products"]);

    let details = app.get(&one).await;
    assert_eq!(details.status(), 200);
    assert_eq!(stale_marks(&details).0.as_deref(), Some("true"));
    let details: Value = details.json().await.unwrap();
    assert_eq!(details["stale"], true);
    assert_eq!(details["id"], WIDGET_ID);
    assert_eq!(details["name"], "Widget");
    assert!(catalog.calls() > seen, "catalog was asked first");

    // Recovered: fresh again.
    catalog.set(Mode::Healthy);
    let again = app.get(PRODUCTS).await;
    assert_eq!(stale_marks(&again), (None, None));
    assert_eq!(again.json::<Value>().await.unwrap()["stale"], false);
}

#[tokio::test]
async fn without_a_last_good_answer_the_problem_is_clean() {
    let stop = tokio_util::sync::CancellationToken::new();
    let (url, _catalog) = faults::catalog(Mode::Unavailable, stop.clone()).await;
    let app = spawn_app_configured(World::all_up(), |settings| {
        settings.upstreams.catalog = url;
        let mut policy = CallPolicy::default();
        policy.retry.max_attempts = 1;
        settings.resilience.catalog = policy;
    })
    .await;

    assert_problem(app.get(PRODUCTS).await, 503, "unavailable").await;
    assert_problem(
        app.get(&format!("{PRODUCTS}/{WIDGET_ID}")).await,
        503,
        "unavailable",
    )
    .await;
}

#[tokio::test]
async fn a_missing_product_is_not_replaced_by_an_old_one() {
    let stop = tokio_util::sync::CancellationToken::new();
    let (url, _catalog) = faults::catalog(Mode::Healthy, stop.clone()).await;
    let app = spawn_app_configured(World::all_up(), |settings| {
        settings.upstreams.catalog = url;
    })
    .await;
    assert_eq!(app.get(PRODUCTS).await.status(), 200);

    let missing = app
        .get(&format!("{PRODUCTS}/{}", uuid::Uuid::now_v7()))
        .await;
    assert_problem(missing, 404, "not_found").await;
}
