//! Limits against abuse at the edge: failed logins throttled per account (in
//! auth's database), credential requests throttled per client IP (in the
//! gateway), oversized headers and bad registrations refused with problems.

use reqwest::{header, StatusCode};
use serde_json::Value;
use signalbox_system_tests::{Options, TestSystem};

use crate::auth_helpers::{post_form, uncacheable, PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_account_with_retry_after() -> anyhow::Result<()> {
    let system = TestSystem::start_with(Options {
        auth: Some(Box::new(|s| s.throttle.max_failures = 3)),
        ..Options::default()
    })
    .await?;
    let api = &system.api;
    let email = "victim@example.com";
    assert_eq!(
        api.register(email, PASSWORD).await?.status(),
        StatusCode::CREATED
    );

    for _ in 0..3 {
        assert_eq!(
            api.login(email, "guess").await?.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let throttled = api.login(email, PASSWORD).await?;

    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = throttled.headers()[header::RETRY_AFTER].to_str()?.parse()?;
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    assert_eq!(
        throttled.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(throttled.json::<Value>().await?["code"], "rate_limited");
    // Other accounts log in as usual.
    api.new_user().await?;

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_requests_are_throttled_per_client_ip() -> anyhow::Result<()> {
    let system = TestSystem::start_with(Options {
        gateway: Some(Box::new(|s| {
            s.limits.credentials.per_ip = signalbox_gateway::config::Rate::new(3, 1);
        })),
        ..Options::default()
    })
    .await?;
    let api = &system.api;

    for n in 0..3 {
        let answer = api
            .login(&format!("nobody{n}@example.com"), PASSWORD)
            .await?;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let login = api.login("someone@example.com", PASSWORD).await?;
    let token = post_form(
        api,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", "x")],
        None,
    )
    .await?;

    assert_eq!(login.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(login.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(login.json::<Value>().await?["code"], "rate_limited");
    assert_eq!(token.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(token.headers().contains_key(header::RETRY_AFTER));
    assert!(uncacheable(&token));
    assert_eq!(token.json::<Value>().await?["error"], "slow_down");

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_refuses_oversized_headers_and_bad_registrations_with_problems(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;

    let large = api
        .http()
        .get(api.url("/api/catalog/products"))
        .header("x-padding", "x".repeat(20 * 1024))
        .send()
        .await?;
    assert_eq!(large.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        large.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );

    let long_password = "x".repeat(129);
    for (email, password, mentions) in [
        ("not-an-email", PASSWORD, "email"),
        ("ann@example.com", "1234567", "at least 8"),
        ("ann@example.com", long_password.as_str(), "at most 128"),
    ] {
        let response = api.register(email, password).await?;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{email} {password}"
        );
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let problem: Value = response.json().await?;
        assert_eq!(problem["code"], "invalid_input");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(mentions)),
            "{problem}"
        );
    }

    system.stop().await
}
