//! The whole system, on fresh databases and a fresh broker namespace, for
//! checks that drive it from outside this process: `scripts/check-openapi`
//! (schemathesis against the gateway) and `scripts/check-browser` (the live
//! page in Chromium).
//!
//! ```text
//! serve-system READY_FILE
//! ```
//!
//! Starts a [`TestSystem`], writes `{"gateway": URL, "realtime": [URL, …]}`
//! to READY_FILE once every service is ready (the file appears whole: it is
//! written beside and renamed), then serves until SIGINT or SIGTERM and
//! stops everything cleanly, dropping the databases and the broker objects.
//!
//! The edge's rate limits are lifted: a checker sends far more requests
//! from one address than the edge lets one client send, and what it checks
//! is the answers, not the limits (their own tests are in the gateway).
//! The realtime instances accept the gateway's origin, so the page it
//! serves may open its socket; the gateway's port is chosen before the
//! system starts for that, by binding port 0 and releasing it.

use std::net::TcpListener;

use anyhow::Context;
use signalbox_platform::config::ListenSettings;
use signalbox_system_tests::{Options, TestSystem};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ready_file = std::env::args()
        .nth(1)
        .context("usage: serve-system READY_FILE")?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let origins = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];

    let system = TestSystem::start_with(Options {
        gateway: Some(Box::new(move |settings| {
            settings.http = ListenSettings {
                host: "127.0.0.1".to_owned(),
                port,
            };
            signalbox_system_tests::lift_rate_limits(settings);
        })),
        realtime: Some(Box::new(move |settings| {
            settings.ws.allowed_origins = origins.clone();
        })),
        ..Options::default()
    })
    .await?;

    let ready = serde_json::json!({
        "gateway": system.api.url(""),
        "realtime": system.realtime,
    });
    let partial = format!("{ready_file}.partial");
    std::fs::write(&partial, ready.to_string())?;
    std::fs::rename(&partial, &ready_file)?;
    println!("serve-system: ready: {ready}");

    signalbox_platform::shutdown::on_signal().cancelled().await;
    println!("serve-system: stopping");
    system.stop().await
}
