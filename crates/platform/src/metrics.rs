//! Metrics, in Prometheus text at `/metrics` on every service's HTTP port.
//!
//! Code anywhere records through the `metrics` facade (`counter!`,
//! `gauge!`, `histogram!`); this module installs the one recorder of the
//! process (`metrics-exporter-prometheus`, without an HTTP listener of its
//! own) and [`router`] renders it on the service's own axum server, next
//! to the health endpoints ([`crate::health::Health::router`] merges it).
//! Names follow Prometheus conventions: base units in the name
//! (`_seconds`), `_total` on counters; [`describe`] lists every name
//! Signalbox records, with its help text.
//!
//! Several services in one process (the tests) share the recorder, so
//! their figures add up; in a deployment each process is one service.

use std::{sync::OnceLock, time::Duration};

use axum::{http::header, response::IntoResponse, routing::get, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds) for every `_duration_seconds` histogram: from
/// a cache hit to a request that ran into its timeout.
const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (a scrape does it too); bounds the memory samples take.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the recorder (once per process) and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_duration_seconds".into()),
                &DURATION_BUCKETS,
            )
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder was installed first; /metrics stays empty");
        }
        describe();
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        handle
    })
}

/// `GET /metrics`: the process's metrics in the Prometheus text format.
pub fn router() -> Router {
    Router::new().route("/metrics", get(render))
}

async fn render() -> impl IntoResponse {
    let handle = install();
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

/// The help text of every metric Signalbox records. A metric shows on
/// `/metrics` once something recorded it.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

    describe_histogram!(
        "http_server_request_duration_seconds",
        Unit::Seconds,
        "HTTP requests served, by method, route and status"
    );
    describe_histogram!(
        "rpc_server_duration_seconds",
        Unit::Seconds,
        "gRPC calls served, by service, method and grpc status code"
    );
    describe_histogram!(
        "rpc_client_duration_seconds",
        Unit::Seconds,
        "gRPC calls made to upstreams, by service, method and grpc status code"
    );
    describe_gauge!(
        "outbox_rows_waiting",
        "outbox rows committed and not yet published (at the relay's last look)"
    );
    describe_gauge!(
        "outbox_oldest_waiting_age_seconds",
        Unit::Seconds,
        "age of the oldest unpublished outbox row (at the relay's last look)"
    );
    describe_counter!(
        "outbox_relay_published_total",
        "messages the outbox relay published"
    );
    describe_counter!(
        "outbox_relay_confirmed_total",
        "messages the broker confirmed to the outbox relay"
    );
    describe_counter!(
        "outbox_relay_failures_total",
        "outbox relay batches that failed (and will be published again)"
    );
    describe_counter!(
        "messaging_consumer_handled_total",
        "deliveries handled and acked, by queue"
    );
    describe_counter!(
        "messaging_consumer_retried_total",
        "deliveries sent to a retry queue (or requeued), by queue"
    );
    describe_counter!(
        "messaging_consumer_dead_lettered_total",
        "deliveries moved to the dead-letter queue (or dropped), by queue"
    );
    describe_counter!(
        "messaging_consumer_duplicates_total",
        "deliveries recognised as already processed, by consumer"
    );
    describe_histogram!(
        "messaging_consumer_handle_duration_seconds",
        Unit::Seconds,
        "time to handle one delivery, by queue and outcome"
    );
    describe_gauge!("realtime_sockets_open", "WebSocket connections open");
    describe_counter!(
        "realtime_frames_in_total",
        "text frames received from clients"
    );
    describe_counter!("realtime_frames_out_total", "frames sent to clients");
    describe_counter!(
        "realtime_slow_consumer_evictions_total",
        "sockets closed because they did not keep up"
    );
    describe_counter!(
        "realtime_token_expiries_total",
        "sockets closed because their token expired"
    );
    describe_counter!(
        "realtime_recoveries_total",
        "subscribes that asked for recovery, by result (hit, miss)"
    );
    describe_counter!(
        "realtime_commands_total",
        "socket commands accepted (within the rate limit) and sent to the backend"
    );
    describe_gauge!(
        "realtime_event_lag_seconds",
        Unit::Seconds,
        "how long after it occurred the instance handled its latest event"
    );
    describe_counter!(
        "realtime_events_dropped_total",
        "superseded (catalog) events not pushed because they arrived too late"
    );
    describe_counter!(
        "realtime_lag_evictions_total",
        "sockets closed 1008 because the instance lagged for too long"
    );
    describe_counter!(
        "realtime_sockets_refused_total",
        "new sockets refused 1013 while the instance lagged"
    );
    describe_counter!("auth_logins_total", "login attempts, by outcome");
    describe_counter!("auth_tokens_issued_total", "access tokens issued, by grant");
    describe_counter!(
        "auth_refresh_reuse_detected_total",
        "rotated refresh tokens presented again (their family is revoked)"
    );
    describe_gauge!(
        "resilience_breaker_state",
        "circuit breaker state per upstream endpoint: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        "resilience_breaker_transitions_total",
        "circuit breaker state changes per upstream endpoint, by new state"
    );
}
