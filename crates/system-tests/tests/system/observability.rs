//! Observability: one order is one trace across gateway, orders, catalog
//! and realtime, through the outbox and the broker; `/metrics` answers
//! Prometheus text whose counters move with the work; JSON logs carry the
//! trace's ids; a collector that is down changes nothing for the requests.
//!
//! How the services are told apart: the services this test process runs
//! share its one tracer provider (`telemetry::init_for_tests`), whose
//! `service.name` is `signalbox-tests`, so their spans are recognised by
//! what they are: the gateway's HTTP server span, the RPC service of a
//! gRPC server span, the queue of a consumer span. The first realtime
//! instance runs as a process of its own, configured only by the standard
//! `OTEL_*` variables, exporting over OTLP/HTTP (the in-process services
//! export over OTLP/gRPC) under the `service.name` of its binary
//! (`realtime`): its spans reach the same trace across a process boundary
//! and the broker, the way they do in a deployment.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::Value;
use signalbox_platform::telemetry;
use signalbox_system_tests::{products, Options, Socket, TestSystem, DEADLINE};
use signalbox_testkit::otlp::{OtlpReceiver, ReceivedSpan};

/// The environment of a realtime child that exports to `endpoint` with
/// `protocol` (`grpc` or `http/protobuf`), quickly (100 ms batches instead
/// of 5 s), and logs its pushes.
fn otel_env(endpoint: &str, protocol: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        // `event handled` is a debug line, written inside the push span.
        ("RUST_LOG".into(), "info,signalbox_realtime=debug".into()),
    ]
}

/// The trace id of a `traceparent` header (`00-<trace id>-<span id>-01`).
fn trace_id_of(response: &reqwest::Response) -> String {
    let traceparent = response
        .headers()
        .get("traceparent")
        .expect("the gateway answers with a traceparent")
        .to_str()
        .expect("ASCII");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    parts[1].to_owned()
}

/// Places an order and waits until `socket` shows it APPROVED; returns the
/// order's trace id.
async fn approved_order(system: &TestSystem) -> anyhow::Result<String> {
    let user = system.api.new_user().await?;
    let mut own = Socket::connect(&system.realtime[0], Some(&user.access_token)).await?;
    own.expect("welcome", DEADLINE).await?;
    own.subscribe(&format!("user:{}", user.id), DEADLINE)
        .await?;
    let placed = system
        .api
        .place_order(&user, &[(products::LAMP, 1)])
        .await?;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let trace_id = trace_id_of(&placed);
    let order_id = placed.json::<Value>().await?["order_id"]
        .as_str()
        .expect("order_id")
        .to_owned();
    own.wait_for(DEADLINE, |frame| {
        frame["type"] == "event"
            && frame["data"]["order_id"] == order_id
            && frame["data"]["state"] == "APPROVED"
    })
    .await?;
    Ok(trace_id)
}

/// The chain of spans from `span` up to its root, `span` first.
fn ancestry<'a>(
    span: &'a ReceivedSpan,
    by_id: &HashMap<&str, &'a ReceivedSpan>,
) -> Vec<&'a ReceivedSpan> {
    let mut chain = vec![span];
    let mut current = span;
    while !current.parent_span_id.is_empty() {
        match by_id.get(current.parent_span_id.as_str()) {
            Some(parent) => {
                chain.push(parent);
                current = parent;
            }
            None => break,
        }
    }
    chain
}

/// Is the approval pushed to the socket in this trace yet: the realtime
/// child's push of `order.approved`, with every ancestor up to the root?
fn approval_pushed(spans: &[ReceivedSpan]) -> bool {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    spans.iter().any(|span| {
        span.service == "realtime"
            && span.name == "push"
            && span.attribute("message_type") == "order.approved"
            && ancestry(span, &by_id)
                .last()
                .is_some_and(|root| root.parent_span_id.is_empty())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_from_the_edge_to_the_socket() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::shared();
    let system = TestSystem::start_with(Options {
        realtime_process: Some(env!("CARGO_BIN_EXE_realtime-child").into()),
        realtime_process_env: otel_env(&receiver.http_endpoint(), "http/protobuf"),
        ..Default::default()
    })
    .await?;
    telemetry::export_test_spans(&receiver.grpc_endpoint())?;
    let trace_id = approved_order(&system).await?;

    let spans = receiver
        .until(DEADLINE, |all| {
            let trace: Vec<ReceivedSpan> = all
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            approval_pushed(&trace)
        })
        .await?;
    let trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let by_id: HashMap<&str, &ReceivedSpan> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let describe = || {
        trace
            .iter()
            .map(|s| {
                format!(
                    "{} {} ({}) <- {}",
                    s.service, s.name, s.span_id, s.parent_span_id
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // One root: the gateway's server span of the request.
    let roots: Vec<_> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root span:\n{}", describe());
    let root = roots[0];
    assert_eq!(root.name, "POST /api/orders", "{}", describe());
    assert_eq!(root.kind, "server");
    assert_eq!(root.attribute("http.route"), "/api/orders");
    assert_eq!(root.attribute("http.response.status_code"), "202");

    // The push to the socket, in the realtime process, over OTLP/HTTP ...
    let push = trace
        .iter()
        .find(|s| {
            s.service == "realtime"
                && s.name == "push"
                && s.attribute("message_type") == "order.approved"
        })
        .expect("the approval's push");
    assert_eq!(push.protocol, "http/protobuf");
    assert_eq!(push.attribute("signalbox.sockets_pushed"), "1");
    // ... hangs below the root through every hop, each parent present.
    let chain = ancestry(push, &by_id);
    assert_eq!(chain.last().map(|s| &s.span_id), Some(&root.span_id));
    let hops: Vec<(&str, &str)> = chain
        .iter()
        .rev()
        .map(|s| (s.kind, s.name.as_str()))
        .collect();
    let has =
        |kind: &str, name: &dyn Fn(&str) -> bool| hops.iter().any(|(k, n)| *k == kind && name(n));
    let path = format!("{hops:#?}");
    // gateway → orders over gRPC, both sides.
    assert!(
        has("client", &|n| n
            == "signalbox.orders.v1.OrderService/CreateOrder"),
        "{path}"
    );
    assert!(
        has("server", &|n| n
            == "signalbox.orders.v1.OrderService/CreateOrder"),
        "{path}"
    );
    // Through the outbox: each relay's send is a child of the operation
    // that wrote the row (the row carries its context), beside the
    // row's INSERT, for the command to catalog, catalog's reply and the
    // approval event alike.
    let sends: Vec<&&ReceivedSpan> = chain.iter().filter(|s| s.kind == "producer").collect();
    assert_eq!(sends.len(), 3, "{path}");
    for send in sends {
        assert!(
            trace.iter().any(|s| s.name == "INSERT outbox"
                && s.parent_span_id == send.parent_span_id
                && s.attribute("db.system.name") == "postgresql"),
            "an INSERT beside {}: {}",
            send.name,
            describe()
        );
    }
    // catalog's reservation, orders' reply handling, realtime's consumer.
    assert!(
        has("consumer", &|n| n.starts_with("process ")
            && n.contains("catalog")),
        "{path}"
    );
    assert!(
        has("consumer", &|n| n.starts_with("process ")
            && n.ends_with("orders.replies")),
        "{path}"
    );
    let realtime_consumer = chain[1];
    assert_eq!(realtime_consumer.kind, "consumer", "{path}");
    assert_eq!(realtime_consumer.service, "realtime", "{path}");
    assert_eq!(realtime_consumer.attribute("messaging.system"), "rabbitmq");

    // Orders priced the order with a call to catalog, in the same trace.
    assert!(
        trace.iter().any(|s| s.kind == "server"
            && s.attribute("rpc.service") == "signalbox.catalog.v1.CatalogService"),
        "{}",
        describe()
    );
    // Every span of the trace has its parent in the trace.
    for span in &trace {
        assert!(
            span.parent_span_id.is_empty() || by_id.contains_key(span.parent_span_id.as_str()),
            "{} has no parent in the trace:\n{}",
            span.name,
            describe()
        );
    }

    // The realtime child's JSON log line of the push names the trace.
    let output = system
        .realtime_process
        .as_ref()
        .expect("the realtime child")
        .output();
    let logged = output.iter().any(|line| {
        serde_json::from_str::<Value>(line).is_ok_and(|line| {
            line["trace_id"] == trace_id.as_str()
                && line["span_id"].as_str().is_some_and(|id| id.len() == 16)
        })
    });
    assert!(logged, "a log line with trace_id {trace_id}");

    system.stop().await
}

/// Scrapes `url` and parses it as Prometheus text.
async fn scrape(url: &str) -> anyhow::Result<prometheus_parse::Scrape> {
    let response = reqwest::get(url).await?;
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await?;
    Ok(prometheus_parse::Scrape::parse(
        text.lines().map(|line| Ok(line.to_owned())),
    )?)
}

/// The sum of the samples of `name` whose labels include `labels`
/// (a histogram's `_count`, a counter, a gauge).
fn total(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_prometheus_text_and_move_with_an_order() -> anyhow::Result<()> {
    let system = TestSystem::start_with(Options {
        realtime_process: Some(env!("CARGO_BIN_EXE_realtime-child").into()),
        ..Default::default()
    })
    .await?;
    let metrics_url = |service: &str| {
        system
            .ready_url(service)
            .expect("a service")
            .replace("/health/ready", "/metrics")
    };
    let gateway = system.api.url("/metrics");
    let realtime = metrics_url("realtime");
    // Every service's HTTP port answers.
    for service in ["auth", "orders", "catalog"] {
        scrape(&metrics_url(service)).await?;
    }
    let before = scrape(&gateway).await?;
    let realtime_before = scrape(&realtime).await?;

    approved_order(&system).await?;

    // The in-process services share one recorder (see the module doc), so
    // the gateway's port shows orders' and catalog's figures too; the
    // realtime child's are its own.
    let after = scrape(&gateway).await?;
    let realtime_after = scrape(&realtime).await?;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        let (was, is) = (total(&before, name, labels), total(&after, name, labels));
        assert!(is > was, "{name} {labels:?}: {was} then {is}");
    };
    moved(
        "http_server_request_duration_seconds_count",
        &[
            ("http_request_method", "POST"),
            ("http_route", "/api/orders"),
            ("http_response_status_code", "202"),
        ],
    );
    moved(
        "rpc_server_duration_seconds_count",
        &[("rpc_method", "CreateOrder"), ("rpc_grpc_status_code", "0")],
    );
    moved(
        "rpc_client_duration_seconds_count",
        &[("rpc_method", "CreateOrder"), ("rpc_grpc_status_code", "0")],
    );
    moved("outbox_relay_published_total", &[]);
    moved("outbox_relay_confirmed_total", &[]);
    // This test's own queue (the namespace is this system's): moved by
    // this order, not by another test's.
    let replies = format!("{}.orders.replies", system.namespace.prefix());
    moved("messaging_consumer_handled_total", &[("queue", &replies)]);
    assert!(
        after
            .samples
            .iter()
            .any(|s| s.metric == "resilience_breaker_state"),
        "breaker states are shown"
    );
    // The realtime child handled the events and pushed them.
    let realtime_handled =
        |scrape: &prometheus_parse::Scrape| total(scrape, "messaging_consumer_handled_total", &[]);
    assert!(
        realtime_handled(&realtime_after) > realtime_handled(&realtime_before),
        "the realtime child's consumer counts"
    );
    // The socket the approval was pushed on counted its frames.
    let frames_out =
        |scrape: &prometheus_parse::Scrape| total(scrape, "realtime_frames_out_total", &[]);
    assert!(
        frames_out(&realtime_after) > frames_out(&realtime_before),
        "the realtime child's frames out count"
    );
    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_nothing_for_requests() -> anyhow::Result<()> {
    // A port nobody listens on: every export fails at once. Over OTLP/gRPC
    // (the other test's child exports over OTLP/HTTP), chosen by the
    // variable alone.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let system = TestSystem::start_with(Options {
        realtime_process: Some(env!("CARGO_BIN_EXE_realtime-child").into()),
        realtime_process_env: otel_env(&format!("http://{closed}"), "grpc"),
        ..Default::default()
    })
    .await?;
    // Two orders, each pushed live through the realtime child, whose
    // exporter fails batch after batch meanwhile.
    approved_order(&system).await?;
    approved_order(&system).await?;

    // The failure is reported, once.
    let child = system
        .realtime_process
        .as_ref()
        .expect("the realtime child");
    let reported = || {
        child
            .output()
            .iter()
            .filter(|line| line.contains("trace export failed"))
            .count()
    };
    signalbox_testkit::probe::until("the failed export reported", DEADLINE, || async {
        Ok(match reported() {
            0 => Err("not yet".to_owned()),
            _ => Ok(()),
        })
    })
    .await?;
    assert_eq!(reported(), 1, "reported once, not per batch");
    system.stop().await
}
