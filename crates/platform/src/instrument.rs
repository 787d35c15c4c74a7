//! Server-side instrumentation: one span per inbound HTTP request and per
//! gRPC call, continuing the caller's trace, and their duration histograms.
//!
//! The caller's W3C trace context (`traceparent`, `tracestate`) is read
//! from the request's headers — HTTP headers at the edge, gRPC metadata
//! (which are HTTP/2 headers) inside — and becomes the parent of the
//! server span; without one, the span starts a trace. Span names and
//! attributes follow OpenTelemetry's semantic conventions for HTTP
//! (`POST /api/orders`, `http.request.method`, `http.route`,
//! `http.response.status_code`) and RPC (`signalbox.orders.v1.OrderService/CreateOrder`,
//! `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`).
//!
//! The client side of a gRPC call is in `signalbox_resilience::trace`; the
//! messaging hops in `signalbox_messaging::trace_context`.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    http::HeaderMap,
    middleware::Next,
    response::Response,
};
use signalbox_resilience::outcome;
use tracing::{field::Empty, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace context in `headers`, for a span's parent (empty when there is
/// none, and then the span starts a trace).
pub fn extract(headers: &HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    })
}

/// Writes the current span's trace context into `headers`.
pub fn inject(headers: &mut HeaderMap) {
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers))
    });
}

/// The server span of an HTTP request: named by method and route (the
/// route template, never the raw path, so names stay few), child of the
/// caller's context. `request_id` is the edge's request id, for logs.
pub fn http_server_span(request: &Request<Body>, request_id: &str) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let method = request.method().as_str();
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route.as_deref().unwrap_or_default(),
        url.path = request.uri().path(),
        http.response.status_code = Empty,
        request_id,
    );
    // Before the span is entered: its parent is fixed when it starts.
    let _ = span.set_parent(extract(request.headers()));
    span
}

/// Records the answer on an HTTP server span: its status, and an error
/// status for 5xx (a 4xx is the client's mistake, not a failed span).
pub fn record_http_response(response: &Response, span: &Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Middleware: answers with the request's `traceparent`, so a client (or
/// a person with `curl -i`) can look the request's trace up. Inside the
/// request's span, whose context it writes.
pub async fn return_traceparent(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    if let Some(traceparent) = headers.remove("traceparent") {
        response.headers_mut().insert("traceparent", traceparent);
    }
    response
}

/// Middleware: `http_server_request_duration_seconds` by method, route
/// template and status. After routing (a route layer or the router's own
/// layer), so that the route is known; unrouted requests count as route
/// `unmatched`.
pub async fn http_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics::histogram!(
        "http_server_request_duration_seconds",
        "http_request_method" => method,
        "http_route" => route,
        "http_response_status_code" => response.status().as_str().to_owned(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// The gRPC server's tower layer: a server span per call (continuing the
/// caller's trace from the metadata) and `rpc_server_duration_seconds`.
/// Health checks and reflection are measured but not traced: a probe
/// every few seconds would bury the traces worth reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServerLayer;

impl<S> tower::Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServer { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcServer<S> {
    inner: S,
}

impl<S, B, ResB> tower::Service<http::Request<B>> for GrpcServer<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = rpc_names(request.uri().path());
        let span = if is_infrastructure(&service) {
            Span::none()
        } else {
            let span = tracing::info_span!(
                "grpc",
                otel.name = format!("{service}/{method}"),
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = service.as_str(),
                rpc.method = method.as_str(),
                rpc.grpc.status_code = Empty,
            );
            let _ = span.set_parent(extract(request.headers()));
            span
        };
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(
            async move {
                let result = call.await;
                let code = match &result {
                    // A trailers-only answer (every error a handler
                    // returns) has its status in the headers; a successful
                    // unary answer has it in the trailers, after the body,
                    // and counts as `Ok` here.
                    Ok(response) => outcome::code_of(response).map_or(0, |code| code as i32),
                    // The transport failed under the call: `Unknown`.
                    Err(_) => 2,
                };
                let span = Span::current();
                span.record("rpc.grpc.status_code", code);
                if is_server_error(code) {
                    span.record("otel.status_code", "ERROR");
                }
                metrics::histogram!(
                    "rpc_server_duration_seconds",
                    "rpc_service" => service,
                    "rpc_method" => method,
                    "rpc_grpc_status_code" => code.to_string(),
                )
                .record(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

/// `("signalbox.orders.v1.OrderService", "CreateOrder")` from the path
/// `/signalbox.orders.v1.OrderService/CreateOrder`.
pub fn rpc_names(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_owned();
    let method = parts.next().unwrap_or_default().to_owned();
    (service, method)
}

/// The codes that mean the server failed (OpenTelemetry's RPC conventions:
/// Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable,
/// DataLoss); the others are the caller's to handle.
pub fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

fn is_infrastructure(service: &str) -> bool {
    service.starts_with("grpc.health.") || service.starts_with("grpc.reflection.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_path_names_its_service_and_method() {
        assert_eq!(
            rpc_names("/signalbox.orders.v1.OrderService/CreateOrder"),
            (
                "signalbox.orders.v1.OrderService".to_owned(),
                "CreateOrder".to_owned()
            )
        );
    }

    #[test]
    fn only_the_servers_own_failures_mark_a_server_span_failed() {
        assert!(is_server_error(14), "Unavailable");
        assert!(is_server_error(13), "Internal");
        assert!(!is_server_error(5), "NotFound is the caller's");
        assert!(!is_server_error(16), "Unauthenticated is the caller's");
    }
}
