//! Abuse limits at the edge: per-client-IP rate of the credential
//! endpoints, `X-Forwarded-For` only from trusted proxies, header size.
//! The other route classes and the per-user limits: `rate_limits.rs`.

use reqwest::header;
use serde_json::json;

use signalbox_gateway::config::Rate;

use crate::helpers::{assert_oauth_error, assert_problem, spawn_app_configured, World};

fn strict(settings: &mut signalbox_gateway::Settings) {
    settings.limits.credentials.per_ip = Rate::new(2, 1);
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn past_its_burst_a_client_ip_gets_429_with_retry_after_on_login() {
    let app = spawn_app_configured(World::all_up(), strict).await;
    let credentials = json!({"email": "ada@example.com", "password": "wrong"});

    for _ in 0..2 {
        let refused = app.post_json("/api/auth/login", &credentials).await;
        assert_eq!(refused.status(), 401);
    }
    let limited = app.post_json("/api/auth/login", &credentials).await;

    assert!((1..=60).contains(&retry_after(&limited)));
    assert_problem(limited, 429, "rate_limited").await;
}

#[tokio::test]
async fn the_token_endpoint_shares_the_bucket_and_answers_in_its_own_format() {
    let app = spawn_app_configured(World::all_up(), strict).await;
    let form = [("grant_type", "refresh_token"), ("refresh_token", "good")];

    for _ in 0..2 {
        let ok = app
            .client
            .post(app.url("/oauth/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    let limited = app
        .client
        .post(app.url("/oauth/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let login = app
        .post_json(
            "/api/auth/login",
            &json!({"email": "a@b.co", "password": "correct horse"}),
        )
        .await;

    assert!(retry_after(&limited) >= 1);
    assert_oauth_error(limited, 429, "slow_down").await;
    assert_problem(login, 429, "rate_limited").await;
}

#[tokio::test]
async fn the_credential_limit_is_its_own_and_leaves_reads_alone() {
    let app = spawn_app_configured(World::all_up(), strict).await;
    let credentials = json!({"email": "ada@example.com", "password": "wrong"});
    for _ in 0..3 {
        app.post_json("/api/auth/login", &credentials).await;
    }

    let read = app.get("/api/catalog/products").await;

    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["ratelimit-policy"], r#""reads";q=200;w=10"#);
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_from_an_untrusted_peer() {
    let app = spawn_app_configured(World::all_up(), strict).await;
    let credentials = json!({"email": "ada@example.com", "password": "wrong"});

    let mut last = None;
    for n in 0..3 {
        last = Some(
            app.client
                .post(app.url("/api/auth/login"))
                .header("x-forwarded-for", format!("198.51.100.{n}"))
                .json(&credentials)
                .send()
                .await
                .unwrap(),
        );
    }

    assert_eq!(last.unwrap().status(), 429, "one bucket: the socket peer's");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let app = spawn_app_configured(World::all_up(), |settings| {
        strict(settings);
        settings.trusted_proxies = vec!["127.0.0.1".to_owned()];
    })
    .await;
    let credentials = json!({"email": "ada@example.com", "password": "wrong"});
    let from = |client: &'static str| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", client)
            .json(&credentials)
            .send()
    };

    for _ in 0..2 {
        assert_eq!(from("198.51.100.1").await.unwrap().status(), 401);
    }
    let first_limited = from("198.51.100.1").await.unwrap();
    let second = from("198.51.100.2").await.unwrap();

    assert_eq!(first_limited.status(), 429);
    assert_eq!(second.status(), 401);
}

#[tokio::test]
async fn request_headers_over_the_limit_are_a_431_problem() {
    let app = spawn_app_configured(World::all_up(), |s| s.max_header_bytes = 8 * 1024).await;

    let small = app
        .client
        .get(app.url("/api/catalog/products"))
        .header("x-note", "x".repeat(1024))
        .send()
        .await
        .unwrap();
    let large = app
        .client
        .get(app.url("/api/catalog/products"))
        .header("x-note", "x".repeat(9 * 1024))
        .send()
        .await
        .unwrap();

    assert_eq!(small.status(), 200);
    assert_problem(large, 431, "request_header_fields_too_large").await;
}

#[tokio::test]
async fn a_throttled_login_keeps_the_auth_services_retry_after() {
    let app = spawn_app_configured(World::all_up(), |_| {}).await;

    let response = app
        .post_json(
            "/api/auth/login",
            &json!({"email": "ada@example.com", "password": "throttled"}),
        )
        .await;

    assert_eq!(response.headers()[header::RETRY_AFTER], "9");
    assert_problem(response, 429, "rate_limited").await;
}
