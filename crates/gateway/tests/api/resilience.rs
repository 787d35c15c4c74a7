//! The guards of the gateway's upstream calls, against real tonic servers
//! that hang or fail: the circuit breaker, the bulkhead, retries of reads,
//! the request budget carried as `grpc-timeout`, and the admin view.

use std::time::{Duration, Instant};

use reqwest::header::RETRY_AFTER;
use serde_json::{json, Value};
use signalbox_gateway::{config::Timeouts, Settings};
use signalbox_resilience::CallPolicy;
use tokio_util::sync::CancellationToken;

use crate::{
    faults::{self, Faults, Mode},
    helpers::{assert_problem, claims, spawn_app_configured, TestApp, World},
};

const PRODUCTS: &str = "/api/catalog/products";

/// A breaker that judges quickly: 4 calls, half of them failed, anything
/// slower than 200 ms failed; open for 300–600 ms at first.
fn quick_breaker() -> CallPolicy {
    let mut policy = CallPolicy::default();
    policy.breaker.minimum_calls = 4;
    policy.breaker.failure_rate = 0.5;
    policy.breaker.slow_call_ms = 200;
    policy.breaker.open_base_ms = 600;
    policy.breaker.open_max_ms = 600;
    policy.breaker.half_open_probes = 1;
    // Nothing retried, so each request is one call the fake sees.
    policy.retry.max_attempts = 1;
    policy
}

fn timeouts(request_secs: u64, upstream_secs: u64) -> Timeouts {
    Timeouts {
        request_secs,
        upstream_secs,
        connect_secs: 1,
    }
}

/// A gateway whose catalog is a faulty fake in `mode`; everything else up.
async fn with_faulty_catalog(
    mode: Mode,
    configure: impl FnOnce(&mut Settings),
) -> (TestApp, Faults, CancellationToken) {
    let stop = CancellationToken::new();
    let (url, faults) = faults::catalog(mode, stop.clone()).await;
    let app = spawn_app_configured(World::all_up(), |settings| {
        settings.upstreams.catalog = url;
        configure(settings);
    })
    .await;
    (app, faults, stop)
}

fn admin_token(app: &TestApp) -> String {
    let mut claims = claims("operator");
    claims.scope = "system:admin".to_owned();
    app.keys.sign(&claims)
}

async fn upstreams_view(app: &TestApp) -> Value {
    let response = app.get_as("/api/system/upstreams", &admin_token(app)).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn catalog_of(view: &Value) -> &Value {
    view["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "catalog")
        .expect("catalog is listed")
}

#[tokio::test]
async fn a_failing_upstream_opens_the_breaker_and_rejections_do_not_reach_it() {
    let (app, catalog, _stop) = with_faulty_catalog(Mode::Unavailable, |s| {
        s.resilience.catalog = quick_breaker();
    })
    .await;

    for _ in 0..4 {
        assert_problem(app.get(PRODUCTS).await, 503, "unavailable").await;
    }
    let seen = catalog.calls();
    assert_eq!(seen, 4);

    let refused = app.get(PRODUCTS).await;
    let retry_after: u64 = refused.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        retry_after, 1,
        "the open interval (at most 600 ms), rounded up"
    );
    assert_problem(refused, 503, "upstream_unavailable").await;
    assert_eq!(
        catalog.calls(),
        seen,
        "an open breaker does not call catalog"
    );
}

#[tokio::test]
async fn a_hung_upstream_opens_the_breaker_within_its_window() {
    // Every call ends by its 1 s deadline, far past the 200 ms slow-call
    // threshold.
    let (app, catalog, _stop) = with_faulty_catalog(Mode::Hang, |s| {
        s.resilience.catalog = quick_breaker();
        s.timeouts = timeouts(10, 1);
    })
    .await;

    for _ in 0..4 {
        assert_problem(app.get(PRODUCTS).await, 504, "upstream_timeout").await;
    }
    let seen = catalog.calls();

    let started = Instant::now();
    assert_problem(app.get(PRODUCTS).await, 503, "upstream_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "an open breaker answers without waiting for the deadline"
    );
    assert_eq!(catalog.calls(), seen);
}

#[tokio::test]
async fn after_recovery_a_half_open_probe_closes_the_breaker() {
    let (app, catalog, _stop) = with_faulty_catalog(Mode::Unavailable, |s| {
        s.resilience.catalog = quick_breaker();
    })
    .await;
    for _ in 0..4 {
        app.get(PRODUCTS).await;
    }
    assert_eq!(
        catalog_of(&upstreams_view(&app).await)["endpoints"][0]["breaker"],
        "open"
    );

    catalog.set(Mode::Healthy);
    // The open interval (at most 600 ms) passes; the first call after it is
    // the probe, and its success closes the breaker.
    let probe =
        signalbox_testkit::probe::until("the probe succeeds", signalbox_testkit::DEADLINE, || {
            let request = app.client.get(app.url(PRODUCTS)).send();
            async move {
                Ok(match request.await?.status().as_u16() {
                    200 => Ok(()),
                    other => Err(format!("answered {other}")),
                })
            }
        })
        .await;
    probe.unwrap();

    let view = upstreams_view(&app).await;
    let endpoint = &catalog_of(&view)["endpoints"][0];
    assert_eq!(endpoint["breaker"], "closed");
    let path: Vec<(String, String)> = endpoint["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from"].as_str().unwrap().to_owned(),
                t["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = path.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        pairs,
        [
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "closed")
        ]
    );
    assert_eq!(app.get(PRODUCTS).await.status(), 200);
}

#[tokio::test]
async fn a_full_bulkhead_refuses_at_once_while_other_upstreams_keep_answering() {
    let (app, catalog, _stop) = with_faulty_catalog(Mode::Hang, |s| {
        let mut policy = CallPolicy {
            max_in_flight: 2,
            ..CallPolicy::default()
        };
        // The breaker stays out of it: only the bulkhead refuses here.
        policy.breaker.slow_call_ms = 60_000;
        s.resilience.catalog = policy;
        s.timeouts = timeouts(60, 60);
    })
    .await;

    let hung: Vec<_> = (0..2)
        .map(|_| tokio::spawn(app.client.get(app.url(PRODUCTS)).send()))
        .collect();
    catalog.until_calls(2).await;
    assert_eq!(catalog_of(&upstreams_view(&app).await)["in_flight"], 2);

    let started = Instant::now();
    assert_problem(app.get(PRODUCTS).await, 503, "overloaded").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(catalog.calls(), 2, "a refused call never reached catalog");

    // Orders has its own bulkhead: its routes answer.
    let token = app.token_for("user-1");
    let listed = app.get_as("/api/orders", &token).await;
    assert_eq!(listed.status(), 200);
    for call in hung {
        call.abort();
    }
}

/// A gateway whose orders is a faulty fake in `mode`.
async fn with_faulty_orders(
    mode: Mode,
    configure: impl FnOnce(&mut Settings),
) -> (TestApp, Faults, CancellationToken) {
    let stop = CancellationToken::new();
    let (url, faults) = faults::orders(mode, stop.clone()).await;
    let app = spawn_app_configured(World::all_up(), |settings| {
        settings.upstreams.orders = url;
        configure(settings);
    })
    .await;
    (app, faults, stop)
}

fn no_breaker() -> CallPolicy {
    let mut policy = CallPolicy::default();
    policy.breaker.minimum_calls = 10_000;
    policy
}

#[tokio::test]
async fn a_read_is_retried_and_a_write_is_not() {
    let (app, orders, _stop) = with_faulty_orders(Mode::FailNext(1), |s| {
        s.resilience.orders = no_breaker();
    })
    .await;
    let token = app.token_for("user-1");

    assert_eq!(app.get_as("/api/orders", &token).await.status(), 200);
    assert_eq!(orders.calls_of("ListOrders"), 2, "one retry");

    orders.set(Mode::FailNext(1));
    let placed = app
        .post_json_as(
            "/api/orders",
            &token,
            &json!({"items": [{"product_id": crate::fakes::WIDGET_ID, "quantity": 1}]}),
        )
        .await;
    assert_problem(placed, 503, "unavailable").await;
    assert_eq!(orders.calls_of("CreateOrder"), 1, "a write is sent once");
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let (app, orders, _stop) = with_faulty_orders(Mode::Unavailable, |s| {
        let mut policy = no_breaker();
        // No floor: only the ratio (20 %) earns retries.
        policy.retry.min_per_second = 0;
        policy.retry.backoff_ms = 1;
        s.resilience.orders = policy;
    })
    .await;
    let token = app.token_for("user-1");

    for _ in 0..20 {
        app.get_as("/api/orders", &token).await;
    }

    let retries = orders.calls() - 20;
    assert!(retries <= 4, "{retries} retries for 20 calls at 20 %");
    assert!(retries > 0, "the budget allows some");
}

#[tokio::test]
async fn no_retry_is_started_that_would_end_past_the_deadline() {
    let (app, orders, _stop) = with_faulty_orders(Mode::Unavailable, |s| {
        let mut policy = no_breaker();
        // Any backoff is longer than the whole 1 s deadline.
        policy.retry.backoff_ms = 5_000;
        s.resilience.orders = policy;
        s.timeouts = timeouts(10, 1);
    })
    .await;
    let token = app.token_for("user-1");

    let started = Instant::now();
    assert_problem(app.get_as("/api/orders", &token).await, 503, "unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(orders.calls(), 1);
}

#[tokio::test]
async fn an_upstream_call_carries_what_is_left_of_the_request_budget() {
    // The request has 3 s, a call on its own would get 10 s.
    let (app, catalog, _stop) = with_faulty_catalog(Mode::Healthy, |s| {
        s.timeouts = timeouts(3, 10);
    })
    .await;

    assert_eq!(app.get(PRODUCTS).await.status(), 200);

    let sent = catalog.timeouts();
    assert_eq!(sent.len(), 1);
    let budget = sent[0].expect("every call carries a grpc-timeout");
    assert!(budget <= Duration::from_secs(3), "sent {budget:?}");
    assert!(budget > Duration::ZERO);
}

#[tokio::test]
async fn a_call_gets_its_own_timeout_when_that_is_sooner() {
    let (app, catalog, _stop) = with_faulty_catalog(Mode::Healthy, |s| {
        s.timeouts = timeouts(10, 2);
    })
    .await;

    assert_eq!(app.get(PRODUCTS).await.status(), 200);

    let budget = catalog.timeouts()[0].expect("a grpc-timeout");
    assert!(budget <= Duration::from_secs(2), "sent {budget:?}");
}

#[tokio::test]
async fn the_admin_view_shows_the_open_breaker_and_requires_the_admin_scope() {
    let (app, _catalog, _stop) = with_faulty_catalog(Mode::Unavailable, |s| {
        s.resilience.catalog = quick_breaker();
    })
    .await;
    for _ in 0..4 {
        app.get(PRODUCTS).await;
    }

    let anonymous = app.get("/api/system/upstreams").await;
    assert_problem(anonymous, 401, "unauthenticated").await;
    let user = app
        .get_as("/api/system/upstreams", &app.token_for("user-1"))
        .await;
    assert_problem(user, 403, "forbidden").await;

    let view = upstreams_view(&app).await;
    let names: Vec<_> = view["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["auth", "orders", "catalog"]);
    let catalog = catalog_of(&view);
    assert_eq!(catalog["in_flight"], 0);
    assert_eq!(catalog["max_in_flight"], 64);
    let endpoint = &catalog["endpoints"][0];
    assert_eq!(endpoint["breaker"], "open");
    let opened = &endpoint["transitions"][0];
    assert_eq!(opened["from"], "closed");
    assert_eq!(opened["to"], "open");
    assert!(
        opened["reason"].as_str().unwrap().contains("Unavailable"),
        "{opened}"
    );
    // An open breaker does not take the gateway out of service.
    assert_eq!(app.get("/health/ready").await.status(), 200);
}
