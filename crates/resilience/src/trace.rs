//! The client side of a traced gRPC call.
//!
//! Every guarded call gets a client span (`otel.kind = client`, named
//! `signalbox.catalog.v1.CatalogService/BatchGetProducts` like the server
//! span it leads to, with `rpc.system`, `rpc.service`, `rpc.method` and
//! `rpc.grpc.status_code`), and that span's W3C context goes into the
//! call's metadata (`traceparent`, `tracestate`), where the server's layer
//! (`signalbox_platform::instrument::GrpcServerLayer`) picks it up as the
//! parent of its own span. The call is measured as well
//! (`rpc_client_duration_seconds`, by service, method and status).
//!
//! Without an installed propagator (a process that never set up
//! telemetry) the injection writes nothing, and the call goes as before.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tonic::Code;
use tower::{Layer, Service};
use tracing::{field::Empty, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{outcome, BoxError};

/// Adds the client span and the trace context to every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTraceLayer;

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S, B, ResB> Service<http::Request<B>> for ClientTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let (service, method) = (service.to_owned(), method.to_owned());
        let span = tracing::info_span!(
            "grpc client",
            otel.name = format!("{service}/{method}"),
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service.as_str(),
            rpc.method = method.as_str(),
            rpc.grpc.status_code = Empty,
            server.address = request.uri().host().unwrap_or_default(),
        );
        // The client span's context, not the caller's: the server span
        // becomes this span's child.
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(
                &context,
                &mut opentelemetry_http::HeaderInjector(request.headers_mut()),
            )
        });
        let started = Instant::now();
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = call.await;
                let code = match &result {
                    Ok(response) => outcome::code_of(response).unwrap_or(Code::Ok),
                    Err(error) => outcome::code_of_error(error).unwrap_or(Code::Unknown),
                };
                let span = Span::current();
                span.record("rpc.grpc.status_code", code as i32);
                // A client span fails on any status but OK (OpenTelemetry's
                // RPC conventions): the caller did not get its answer.
                if code != Code::Ok {
                    span.record("otel.status_code", "ERROR");
                }
                metrics::histogram!(
                    "rpc_client_duration_seconds",
                    "rpc_service" => service,
                    "rpc_method" => method,
                    "rpc_grpc_status_code" => (code as i32).to_string(),
                )
                .record(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}
