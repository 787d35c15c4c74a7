//! Per-account throttling of failed logins and client authentications,
//! counted in the auth database.

use std::time::Duration;

use signalbox_proto::auth::v1::{LoginRequest, TokenRequest};
use tonic::Code;

use crate::helpers::{spawn_app_with, PASSWORD};

fn retry_after(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("retry-after")
        .expect("a retry-after entry")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn past_the_limit_an_account_is_throttled_even_with_the_right_password() {
    let app = spawn_app_with(|s| {
        s.throttle.max_failures = 2;
        s.throttle.window_secs = 60;
    })
    .await;
    app.register("ann@example.org", PASSWORD).await.unwrap();

    for _ in 0..2 {
        let wrong = app
            .login("ann@example.org", "wrong password")
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
    }
    let throttled = app.login("Ann@Example.org", PASSWORD).await.unwrap_err();

    assert_eq!(throttled.code(), Code::ResourceExhausted);
    assert!((1..=60).contains(&retry_after(&throttled)), "{throttled:?}");
    // Another account is not affected.
    app.register("bob@example.org", PASSWORD).await.unwrap();
    app.login("bob@example.org", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn unknown_emails_are_counted_like_known_ones() {
    let app = spawn_app_with(|s| s.throttle.max_failures = 1).await;

    app.login("ghost@example.org", PASSWORD).await.unwrap_err();
    let second = app.login("ghost@example.org", PASSWORD).await.unwrap_err();

    assert_eq!(second.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn a_successful_login_resets_the_count() {
    let app = spawn_app_with(|s| s.throttle.max_failures = 2).await;
    app.register("ann@example.org", PASSWORD).await.unwrap();

    app.login("ann@example.org", "wrong password")
        .await
        .unwrap_err();
    app.login("ann@example.org", PASSWORD).await.unwrap();
    app.login("ann@example.org", "wrong password")
        .await
        .unwrap_err();
    let still_counted = app
        .login("ann@example.org", "wrong password")
        .await
        .unwrap_err();

    assert_eq!(still_counted.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn an_ended_window_starts_a_new_count() {
    let app = spawn_app_with(|s| s.throttle.max_failures = 1).await;
    app.register("ann@example.org", PASSWORD).await.unwrap();
    app.login("ann@example.org", "wrong password")
        .await
        .unwrap_err();
    sqlx::query("UPDATE auth_throttle SET window_start = now() - interval '1 hour'")
        .execute(&app.db)
        .await
        .unwrap();

    app.login("ann@example.org", PASSWORD).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_cannot_slip_past_the_limit() {
    let app = spawn_app_with(|s| s.throttle.max_failures = 3).await;
    app.register("ann@example.org", PASSWORD).await.unwrap();

    // Eight guesses at once, each on its own task.
    let mut guesses = tokio::task::JoinSet::new();
    for n in 0..8 {
        let mut client = app.client.clone();
        guesses.spawn(async move {
            client
                .login(LoginRequest {
                    email: "ann@example.org".into(),
                    password: format!("guess {n}"),
                })
                .await
        });
    }
    let answers = tokio::time::timeout(Duration::from_secs(20), guesses.join_all())
        .await
        .expect("every guess is answered");

    let tried = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == Code::Unauthenticated))
        .count();
    assert_eq!(tried, 3, "{answers:?}");
}

#[tokio::test]
async fn failed_client_authentications_are_throttled_per_client_id() {
    let app = spawn_app_with(|s| s.throttle.max_failures = 2).await;
    let secret = app.create_client("reporting", "orders:read").await;
    let grant = |secret: &str| TokenRequest {
        grant_type: "client_credentials".into(),
        client_id: "reporting".into(),
        client_secret: secret.into(),
        ..Default::default()
    };

    for _ in 0..2 {
        app.token(grant("wrong")).await.unwrap().unwrap_err();
    }
    let throttled = app.token(grant(&secret)).await.unwrap_err();

    assert_eq!(throttled.code(), Code::ResourceExhausted);
    assert!(retry_after(&throttled) >= 1);
}
