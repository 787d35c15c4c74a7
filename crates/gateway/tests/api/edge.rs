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

/// The trace id of a `traceparent` header (`00-<trace id>-<span id>-<flags>`).
fn trace_and_span(response: &reqwest::Response) -> (String, String) {
    let value = response
        .headers()
        .get("traceparent")
        .expect("the gateway answers with a traceparent")
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test]
async fn a_callers_traceparent_is_continued_and_a_missing_one_started() {
    // Spans exist only with the tracing layer installed, as in a service.
    signalbox_platform::telemetry::init_for_tests();
    let app = spawn_app().await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";

    let continued = app
        .client
        .get(app.url("/api/nowhere"))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    let started = app.get("/api/nowhere").await;

    // The caller's trace, under a span of the gateway's own.
    let (trace, span) = trace_and_span(&continued);
    assert_eq!(trace, caller_trace);
    assert_ne!(span, caller_span);
    // No caller context: a new trace.
    let (trace, _) = trace_and_span(&started);
    assert_ne!(trace, caller_trace);
    assert_ne!(trace, "0".repeat(32));
}
