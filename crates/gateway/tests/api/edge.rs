//! What the edge answers by itself: health, unknown routes, wrong methods,
//! request ids.

use reqwest::header;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn health_is_live_and_ready_while_every_upstream_is_down() {
    let app = spawn_app().await;

    assert_eq!(app.get("/health/live").await.status(), 200);
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = spawn_app().await;

    let response = app.get("/api/nowhere").await;

    let problem = assert_problem(response, 404, "not_found").await;
    assert!(problem["detail"].as_str().unwrap().contains("/api/nowhere"));
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_that_lists_the_allowed_ones() {
    let app = spawn_app().await;

    let response = app.get("/api/auth/register").await;

    assert_eq!(
        response
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    assert_problem(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;

    let generated = app.get("/api/nowhere").await;
    let kept = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "req-from-client-1")
        .send()
        .await
        .unwrap();

    let id = generated
        .headers()
        .get("x-request-id")
        .expect("generated id");
    assert!(uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok());
    assert_eq!(kept.headers()["x-request-id"], "req-from-client-1");
}
