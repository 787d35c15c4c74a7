//! Liveness and readiness over HTTP.
//!
//! `/health/live` answers 200 while the process can serve at all (restart me
//! if not). `/health/ready` runs the service's checks (database reachable,
//! broker connected, …) and answers 503 while any fails, so a load balancer
//! or Kubernetes stops sending traffic without killing the process. The
//! same checks drive the gRPC health protocol of a service that serves gRPC
//! ([`crate::serve::grpc`]).
//!
//! The router also answers `/metrics` ([`crate::metrics`]), so every
//! service's HTTP port has it.

use std::{future::Future, pin::Pin, sync::Arc};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::{json, Map, Value};

type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The readiness checks of one service.
#[derive(Clone, Default)]
pub struct Health {
    checks: Vec<(&'static str, CheckFn)>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named check; `Err` carries a short reason shown in the answer.
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()))));
        self
    }

    /// A check backed by a cheap synchronous probe, such as "is the broker
    /// connection open".
    pub fn flag<F>(self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> bool + Send + Sync + 'static,
    {
        self.check(name, move || {
            let up = probe();
            async move { up.then_some(()).ok_or_else(|| "down".to_owned()) }
        })
    }

    /// A check that the database answers `SELECT 1`.
    pub fn database(self, pool: sqlx::PgPool) -> Self {
        self.check("database", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
    }

    /// Runs every check; `true` when all pass.
    pub async fn report(&self) -> (bool, Value) {
        let mut results = Map::new();
        let mut ready = true;
        for (name, check) in &self.checks {
            let outcome = match check().await {
                Ok(()) => Value::from("ok"),
                Err(reason) => {
                    ready = false;
                    Value::from(reason)
                }
            };
            results.insert((*name).to_owned(), outcome);
        }
        (ready, Value::Object(results))
    }

    pub fn router(self) -> Router {
        Router::new()
            .route(
                "/health/live",
                get(|| async { Json(json!({"status": "live"})) }),
            )
            .route("/health/ready", get(ready))
            .with_state(self)
            .merge(crate::metrics::router())
    }
}

async fn ready(State(health): State<Health>) -> impl IntoResponse {
    let (ok, checks) = health.report().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if ok { "ready" } else { "not_ready" }, "checks": checks});
    (status, Json(body))
}
