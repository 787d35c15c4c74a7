//! A real OTLP trace receiver, for tests that check what the services
//! export: it serves the collector's `TraceService` over gRPC (OTLP/gRPC,
//! what `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` speaks) and `POST /v1/traces`
//! over HTTP (OTLP/HTTP with protobuf bodies, `http/protobuf`), decodes
//! the `opentelemetry-proto` messages and keeps every span it was sent.
//!
//! One receiver per test process ([`OtlpReceiver::shared`]), on a runtime
//! and thread of its own: every test has its own runtime, which ends with
//! the test, while the exporter of the process (and the child processes a
//! test starts) keep sending to the same address. Tests do not get in each
//! other's way because each looks only at its own trace ids.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use anyhow::Context;
use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value, AnyValue, KeyValue},
};
use prost::Message;
use tokio::sync::watch;

/// One span as received, with what a test asserts on.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource that sent it.
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    /// The span's attributes, as text.
    pub attributes: HashMap<String, String>,
    /// Which protocol brought it: `grpc` or `http/protobuf`.
    pub protocol: &'static str,
}

impl ReceivedSpan {
    /// The attribute `key`, or `""`.
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// The receiver: its two addresses and what it has received.
pub struct OtlpReceiver {
    grpc: SocketAddr,
    http: SocketAddr,
    spans: Arc<Store>,
}

/// Every span received, and a counter that moves with each export (so a
/// waiting test wakes up instead of polling).
struct Store {
    /// A `std` mutex: pushed to and copied from, never held across an
    /// `.await`.
    spans: Mutex<Vec<ReceivedSpan>>,
    exports: watch::Sender<u64>,
}

impl Store {
    fn take(&self, request: ExportTraceServiceRequest, protocol: &'static str) {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| find(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        kind: kind_name(span.kind),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                        name: span.name,
                        protocol,
                    });
                }
            }
        }
        drop(spans);
        self.exports.send_modify(|n| *n += 1);
    }
}

impl OtlpReceiver {
    /// The process's receiver, started on first use.
    pub fn shared() -> &'static OtlpReceiver {
        static RECEIVER: OnceLock<OtlpReceiver> = OnceLock::new();
        RECEIVER.get_or_init(|| Self::start().expect("an OTLP receiver"))
    }

    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let grpc = std::net::TcpListener::bind("127.0.0.1:0")?;
        let http = std::net::TcpListener::bind("127.0.0.1:0")?;
        grpc.set_nonblocking(true)?;
        http.set_nonblocking(true)?;
        let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
        let spans = Arc::new(Store {
            spans: Mutex::new(Vec::new()),
            exports: watch::channel(0).0,
        });
        let store = spans.clone();
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let grpc = tokio::net::TcpListener::from_std(grpc).expect("grpc listener");
                    let http = tokio::net::TcpListener::from_std(http).expect("http listener");
                    let traces = Router::new()
                        .route("/v1/traces", post(http_export))
                        .with_state(store.clone());
                    // Both servers for the life of the process.
                    let grpc = tonic::transport::Server::builder()
                        .add_service(TraceServiceServer::new(Grpc(store)))
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc));
                    let http = axum::serve(http, traces);
                    let _ = tokio::join!(grpc, http);
                })
            })
            .context("a thread for the OTLP receiver")?;
        Ok(Self {
            grpc: grpc_addr,
            http: http_addr,
            spans,
        })
    }

    /// The OTLP/gRPC endpoint (`http://127.0.0.1:<port>`).
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The OTLP/HTTP base endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes
    /// it (the exporter appends `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The spans of `trace_id`.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let mut spans = self.spans();
        spans.retain(|span| span.trace_id == trace_id);
        spans
    }

    /// Waits until `done` holds for the spans received, and returns them;
    /// an error with what was there after `deadline`.
    pub async fn until(
        &self,
        deadline: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        let mut exports = self.spans.exports.subscribe();
        let wait = async {
            loop {
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                // The next export; the sender lives as long as `self`.
                let _ = exports.changed().await;
            }
        };
        match tokio::time::timeout(deadline, wait).await {
            Ok(spans) => Ok(spans),
            Err(_) => anyhow::bail!(
                "spans not received within {deadline:?}; received: {:#?}",
                self.spans()
                    .iter()
                    .map(|s| format!(
                        "{} {} {} <- {}",
                        s.service, s.name, s.span_id, s.parent_span_id
                    ))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

/// The gRPC side: `opentelemetry.proto.collector.trace.v1.TraceService`.
struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.take(request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The HTTP side: `POST /v1/traces` with a protobuf body.
async fn http_export(State(store): State<Arc<Store>>, body: Bytes) -> (StatusCode, Vec<u8>) {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            store.take(request, "http/protobuf");
            let response = ExportTraceServiceResponse {
                partial_success: None,
            };
            (StatusCode::OK, response.encode_to_vec())
        }
        Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
    }
}

fn find(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.as_ref()))
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "internal",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
