//! Readiness, as `OutboxService` assembles it: the database and the broker
//! every service with an outbox needs, plus catalog's own check.

use serde_json::{json, Value};

use crate::helpers::spawn_app;

#[tokio::test]
async fn readiness_checks_the_database_the_broker_and_the_shard_consumers() -> anyhow::Result<()> {
    let app = spawn_app().await?;

    let response = reqwest::get(format!("http://127.0.0.1:{}/health/ready", app.http_port)).await?;

    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: Value = response.json().await?;
    assert_eq!(
        body,
        json!({
            "status": "ready",
            "checks": {"database": "ok", "broker": "ok", "commands": "ok"},
        })
    );
    app.cleanup().await
}
