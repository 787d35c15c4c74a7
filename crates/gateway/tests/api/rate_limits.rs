//! Rate limits on every route class, per client IP and per user (the
//! verified token's subject), with the `RateLimit-Policy` / `RateLimit`
//! fields on every limited answer.

use reqwest::{header, Response};
use serde_json::json;
use signalbox_gateway::{config::Rate, Settings};

use crate::{
    fakes::WIDGET_ID,
    helpers::{assert_oauth_error, assert_problem, spawn_app_configured, TestApp, World},
};

fn field(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} on {}", response.url()))
        .to_str()
        .unwrap()
        .to_owned()
}

async fn place(app: &TestApp, token: &str) -> Response {
    app.post_json_as(
        "/api/orders",
        token,
        &json!({"items": [{"product_id": WIDGET_ID, "quantity": 1}]}),
    )
    .await
}

#[tokio::test]
async fn reads_past_the_ip_limit_get_429_with_retry_after_and_the_fields() {
    let app = spawn_app_configured(World::all_up(), |s: &mut Settings| {
        s.limits.reads.per_ip = Rate::new(3, 6);
    })
    .await;

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let ok = app.get("/api/catalog/products").await;
        assert_eq!(ok.status(), 200);
        assert_eq!(field(&ok, "ratelimit-policy"), r#""reads";q=3;w=30"#);
        remaining.push(field(&ok, "ratelimit"));
    }
    let refused = app.get("/api/catalog/products/anything").await;

    assert_eq!(
        remaining,
        [
            r#""reads";r=2;t=10"#,
            r#""reads";r=1;t=20"#,
            r#""reads";r=0;t=30"#
        ]
    );
    assert_eq!(refused.headers()[header::RETRY_AFTER], "10");
    assert_eq!(field(&refused, "ratelimit-policy"), r#""reads";q=3;w=30"#);
    assert_eq!(field(&refused, "ratelimit"), r#""reads";r=0;t=30"#);
    assert_problem(refused, 429, "rate_limited").await;
}

#[tokio::test]
async fn writes_are_limited_per_ip_whoever_the_users_are() {
    let app = spawn_app_configured(World::all_up(), |s: &mut Settings| {
        s.limits.writes.per_ip = Rate::new(2, 1);
    })
    .await;

    let first = place(&app, &app.token_for("user-1")).await;
    let second = place(&app, &app.token_for("user-2")).await;
    let third = place(&app, &app.token_for("user-3")).await;
    let read = app.get("/api/catalog/products").await;

    assert_eq!(first.status(), 202);
    assert_eq!(second.status(), 202);
    assert!(field(&third, "ratelimit").starts_with(r#""writes";r=0;"#));
    assert_problem(third, 429, "rate_limited").await;
    assert_eq!(read.status(), 200, "reads count apart from writes");
}

#[tokio::test]
async fn a_user_past_their_limit_is_refused_while_others_on_the_ip_go_on() {
    let app = spawn_app_configured(World::all_up(), |s: &mut Settings| {
        s.limits.writes.per_user = Some(Rate::new(1, 1));
    })
    .await;
    let (ada, bob) = (app.token_for("ada"), app.token_for("bob"));

    let first = place(&app, &ada).await;
    let again = place(&app, &ada).await;
    let other = place(&app, &bob).await;

    assert_eq!(first.status(), 202);
    assert_eq!(
        field(&first, "ratelimit-policy"),
        r#""writes";q=60;w=12, "writes-user";q=1;w=60"#
    );
    assert_eq!(other.status(), 202);
    assert!((1..=60).contains(
        &again.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    ));
    assert!(field(&again, "ratelimit").ends_with(r#""writes-user";r=0;t=60"#));
    assert_problem(again, 429, "rate_limited").await;
}

#[tokio::test]
async fn reads_of_a_user_are_limited_per_user_too() {
    let app = spawn_app_configured(World::all_up(), |s: &mut Settings| {
        s.limits.reads.per_user = Some(Rate::new(2, 1));
    })
    .await;
    let token = app.token_for("ada");

    for _ in 0..2 {
        assert_eq!(app.get_as("/api/orders", &token).await.status(), 200);
    }
    let refused = app.get_as("/api/orders", &token).await;
    let anonymous = app.get("/api/catalog/products").await;

    assert_problem(refused, 429, "rate_limited").await;
    assert_eq!(anonymous.status(), 200);
    assert_eq!(
        field(&anonymous, "ratelimit-policy"),
        r#""reads";q=200;w=10"#
    );
}

#[tokio::test]
async fn a_bad_token_counts_against_the_ip_only_and_is_still_a_401() {
    let app = spawn_app_configured(World::all_up(), |s: &mut Settings| {
        s.limits.reads.per_user = Some(Rate::new(1, 1));
    })
    .await;

    let answer = app.get_as("/api/orders", "not-a-token").await;

    assert_eq!(answer.status(), 401);
    assert_eq!(field(&answer, "ratelimit-policy"), r#""reads";q=200;w=10"#);
}

#[tokio::test]
async fn the_oauth_endpoints_answer_a_refusal_as_slow_down_with_the_fields() {
    let app = spawn_app_configured(World::all_up(), |s: &mut Settings| {
        s.limits.credentials.per_ip = Rate::new(1, 1);
    })
    .await;
    let form = [("grant_type", "refresh_token"), ("refresh_token", "good")];
    let send = || app.client.post(app.url("/oauth/token")).form(&form).send();

    let ok = send().await.unwrap();
    let refused = send().await.unwrap();

    assert_eq!(ok.status(), 200);
    assert_eq!(field(&ok, "ratelimit-policy"), r#""credentials";q=1;w=60"#);
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(field(&refused, "ratelimit"), r#""credentials";r=0;t=60"#);
    assert_oauth_error(refused, 429, "slow_down").await;
}

#[tokio::test]
async fn health_probes_are_never_limited() {
    let app = spawn_app_configured(World::all_up(), |s: &mut Settings| {
        s.limits.reads.per_ip = Rate::new(1, 1);
    })
    .await;

    app.get("/api/catalog/products").await;
    let mut probes = Vec::new();
    for _ in 0..3 {
        probes.push(app.get("/health/ready").await);
    }

    for probe in probes {
        assert_eq!(probe.status(), 200);
        assert!(!probe.headers().contains_key("ratelimit"));
    }
}

#[tokio::test]
async fn admin_routes_have_their_own_limit_per_ip_even_for_refused_calls() {
    let app = spawn_app_configured(World::all_up(), |s: &mut Settings| {
        s.limits.admin.per_ip = Rate::new(2, 1);
    })
    .await;

    let first = app.get("/api/system/upstreams").await;
    let second = app.get("/api/system/upstreams").await;
    let third = app.get("/api/system/upstreams").await;
    let read = app.get("/api/catalog/products").await;

    assert_eq!(first.status(), 401);
    assert_eq!(field(&first, "ratelimit-policy"), r#""admin";q=2;w=120"#);
    assert_eq!(second.status(), 401);
    assert_problem(third, 429, "rate_limited").await;
    assert_eq!(read.status(), 200, "reads count apart from admin calls");
}

#[tokio::test]
async fn admin_routes_are_limited_per_user_too() {
    let app = spawn_app_configured(World::all_up(), |s: &mut Settings| {
        s.limits.admin.per_user = Some(Rate::new(1, 1));
    })
    .await;
    let (ada, bob) = (app.token_for("ada"), app.token_for("bob"));

    let first = app.get_as("/api/system/upstreams", &ada).await;
    let again = app.get_as("/api/system/upstreams", &ada).await;
    let other = app.get_as("/api/system/upstreams", &bob).await;

    // A user's token without the admin scope: refused, and still counted.
    assert_eq!(first.status(), 403);
    assert!(field(&first, "ratelimit-policy").ends_with(r#""admin-user";q=1;w=60"#));
    assert_problem(again, 429, "rate_limited").await;
    assert_eq!(other.status(), 403);
}
