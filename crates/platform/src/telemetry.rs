//! Structured logs. `RUST_LOG` filters (default `info`); the format is
//! `pretty` for people and `json` for log collectors.

use serde::{Deserialize, Serialize};
use tracing_subscriber::{fmt, EnvFilter};

/// Our own crates at info; chatty dependencies only when something is wrong.
const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,h2=warn,tower=warn,tower_http=info";

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// Installs the global subscriber. Safe to call more than once (tests start
/// several services in one process): later calls do nothing.
pub fn init(service: &'static str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let installed = match format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}

/// For tests: logs go through the test harness's capture, so they are shown
/// only for a failing test. `RUST_LOG` still filters.
pub fn init_for_tests() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_test_writer()
        .compact()
        .try_init();
}
