//! Logs and traces, set up once per process.
//!
//! Logs: `RUST_LOG` filters (default `info`); the format is `pretty` for
//! people and `json` for log collectors. A JSON line written inside a span
//! carries that span's `trace_id` and `span_id`, so a log search and a
//! trace view meet on the same ids.
//!
//! Traces: every `tracing` span that the filter lets through is also an
//! OpenTelemetry span (`tracing-opentelemetry`), and every hop carries the
//! W3C trace context on (HTTP and gRPC headers, the outbox row, AMQP
//! headers), so one order is one trace across the services. Exporting is
//! configured by the standard variables only:
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` (`…_TRACES_ENDPOINT`) | where spans go; unset: spans are made (ids in logs, context propagated) but exported nowhere |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` (`…_TRACES_PROTOCOL`) | `http/protobuf` (the default, port 4318) or `grpc` (port 4317) |
//! | `OTEL_SERVICE_NAME` | the `service.name` resource; default: the binary's name |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | e.g. `parentbased_traceidratio` and `0.1`; default: parent-based, always on |
//! | `OTEL_BSP_SCHEDULE_DELAY` (and the other `OTEL_BSP_*`) | how often the batch processor exports (ms, default 5000) |
//! | `OTEL_SDK_DISABLED=true` | no OpenTelemetry at all: no spans, no ids, nothing propagated |
//!
//! A collector that is down or slow never holds up a request: spans are
//! queued in memory by the batch processor (bounded; the oldest are dropped
//! when full) and exported from a thread of its own, with a timeout. The
//! first failed export is logged, then nothing until an export succeeds
//! again (logged once too), so a dead collector costs one warning, not one
//! per span. [`flush`] exports what is queued; [`crate::serve::run_all`]
//! calls it when a service has stopped, so a graceful shutdown loses no
//! spans.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
    time::Duration,
};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter},
    Resource,
};
use serde::{Deserialize, Serialize};
use tracing::{dispatcher::WeakDispatch, Dispatch, Subscriber};
use tracing_subscriber::{
    fmt::{self, format::Writer, FmtContext, FormatEvent, FormatFields},
    layer::SubscriberExt,
    registry::LookupSpan,
    EnvFilter, Layer, Registry,
};

/// Our own crates at info; chatty dependencies only when something is wrong.
const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,h2=warn,tower=warn,tower_http=info";

/// The name our spans are recorded under (the instrumentation scope).
const SCOPE: &str = "signalbox";

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// The process's tracer provider, kept so that [`flush`] can reach it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The installed subscriber, so the JSON formatter can ask the
/// OpenTelemetry layer for a span's ids (weak: the formatter lives inside
/// the subscriber it points to).
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

/// Installs logging and tracing for `service` (the binary's name, the
/// default `service.name`). Safe to call more than once (tests start
/// several services in one process): later calls do nothing.
pub fn init(service: &'static str, format: LogFormat) {
    let settings = ExportSettings::from_env();
    let (provider, exporter) = settings.provider(service);
    let fmt_layer = match format {
        LogFormat::Pretty => fmt::layer().with_target(false).compact().boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .event_format(WithTraceIds(
                fmt::format().json().flatten_event(true).with_target(false),
            ))
            .boxed(),
    };
    if install(provider, fmt_layer) {
        match (settings.disabled, &settings.endpoint, exporter) {
            (true, _, _) => tracing::info!(service, "telemetry initialised; tracing disabled"),
            (false, None, _) => tracing::info!(
                service,
                "telemetry initialised; traces are not exported \
                 (set OTEL_EXPORTER_OTLP_ENDPOINT to send them to a collector)"
            ),
            (false, Some(endpoint), Ok(())) => {
                tracing::info!(service, %endpoint, "telemetry initialised; exporting traces")
            }
            (false, Some(endpoint), Err(error)) => tracing::warn!(
                service,
                %endpoint,
                %error,
                "telemetry initialised; cannot export traces"
            ),
        }
    }
}

/// For tests: logs go through the test harness's capture, so they are shown
/// only for a failing test. `RUST_LOG` still filters.
///
/// Spans are made as in a service and exported once a test asks for them
/// with [`export_test_spans`] (the test kit's OTLP receiver does); until
/// then they are dropped. All services of a test process share this one
/// provider, so its `service.name` is the test binary's, not a service's:
/// tests tell services apart by their spans' own attributes (the RPC
/// service, the queue consumed).
pub fn init_for_tests() {
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("signalbox-tests")
                .build(),
        )
        .with_span_processor(
            BatchSpanProcessor::builder(TestExporter)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(Duration::from_millis(100))
                        .build(),
                )
                .build(),
        )
        .build();
    let fmt_layer = fmt::layer()
        .with_target(false)
        .with_test_writer()
        .compact()
        .boxed();
    install(Some(provider), fmt_layer);
}

/// The OTLP/gRPC endpoint the spans of [`init_for_tests`] go to from now on
/// (the first call wins). The exporter lives on a runtime of its own,
/// because each test has its own runtime, which ends with the test.
pub fn export_test_spans(endpoint: &str) -> anyhow::Result<()> {
    use opentelemetry_otlp::WithExportConfig;
    if TEST_TARGET.get().is_some() {
        return Ok(());
    }
    let runtime = test_runtime();
    let _entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let _ = TEST_TARGET.set(ReportOnce::new(exporter, endpoint.to_owned()));
    Ok(())
}

/// Exports every span that has ended and waits until the exporter took
/// them (bounded by the exporter's timeout). Blocking: async callers use
/// `spawn_blocking`.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(error) = provider.force_flush() {
            tracing::debug!(%error, "flushing spans failed");
        }
    }
}

/// The trace id of the current span (32 hex digits), if it has one: for a
/// response header or a log line that a person quotes.
pub fn current_trace_id() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The base every formatting layer sits on.
type Base = tracing_subscriber::layer::Layered<EnvFilter, Registry>;

/// Builds and installs the global subscriber: the filter, the log lines,
/// and (unless disabled) the OpenTelemetry layer. `false` when a subscriber
/// was installed before.
fn install(
    provider: Option<SdkTracerProvider>,
    fmt_layer: Box<dyn Layer<Base> + Send + Sync>,
) -> bool {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SCOPE))
            // Our span names are chosen for people (`POST /api/orders`);
            // the code location adds nothing to them.
            .with_location(false)
            .with_threads(false)
    });
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel);
    let dispatch = Dispatch::new(subscriber);
    let weak = dispatch.downgrade();
    if tracing::dispatcher::set_global_default(dispatch).is_err() {
        return false;
    }
    let _ = DISPATCH.set(weak);
    crate::metrics::install();
    if let Some(provider) = provider {
        // W3C `traceparent` / `tracestate`, for every carrier.
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        let _ = PROVIDER.set(provider);
    }
    true
}

/// What the `OTEL_*` variables ask for.
struct ExportSettings {
    disabled: bool,
    endpoint: Option<String>,
}

impl ExportSettings {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            disabled: var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            endpoint: var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT")),
        }
    }

    /// The provider these settings ask for (`None`: disabled), and whether
    /// its exporter could be built.
    fn provider(&self, service: &'static str) -> (Option<SdkTracerProvider>, Result<(), String>) {
        if self.disabled {
            return (None, Ok(()));
        }
        // The environment's `OTEL_SERVICE_NAME` wins (the resource builder
        // reads it); otherwise the binary's name.
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service);
        }
        // The sampler and the batch processor's settings come from the
        // environment (`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`) by default.
        let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
        let mut built = Ok(());
        if let Some(endpoint) = &self.endpoint {
            // The protocol from `OTEL_EXPORTER_OTLP_PROTOCOL`, the endpoint
            // and timeout from their variables.
            match opentelemetry_otlp::SpanExporter::builder().build() {
                Ok(exporter) => {
                    let exporter = ReportOnce::new(exporter, endpoint.clone());
                    builder =
                        builder.with_span_processor(BatchSpanProcessor::builder(exporter).build());
                }
                Err(error) => built = Err(error.to_string()),
            }
        }
        (Some(builder.build()), built)
    }
}

/// An exporter that reports a collector going away once, and its return
/// once, instead of every failed batch.
#[derive(Debug)]
struct ReportOnce<E> {
    inner: E,
    endpoint: String,
    /// Set by the first failed export, cleared by the next good one. Only
    /// the batch processor's thread exports (never two at once), so relaxed
    /// ordering is enough: the flag orders nothing else.
    failing: AtomicBool,
}

impl<E> ReportOnce<E> {
    fn new(inner: E, endpoint: String) -> Self {
        Self {
            inner,
            endpoint,
            failing: AtomicBool::new(false),
        }
    }

    fn observe(&self, result: &OTelSdkResult) {
        match result {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                endpoint = %self.endpoint,
                %error,
                "trace export failed; spans are dropped until the collector answers \
                 (reported once)"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "trace export works again")
            }
            _ => {}
        }
    }
}

impl<E: SpanExporter> SpanExporter for ReportOnce<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.observe(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// Where [`export_test_spans`] sends the spans of [`init_for_tests`].
static TEST_TARGET: OnceLock<ReportOnce<opentelemetry_otlp::SpanExporter>> = OnceLock::new();

/// The spans of a test process: to [`TEST_TARGET`] once it is set, dropped
/// before.
#[derive(Debug)]
struct TestExporter;

impl SpanExporter for TestExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match TEST_TARGET.get() {
            Some(target) => target.export(batch).await,
            None => Ok(()),
        }
    }

    fn set_resource(&mut self, _resource: &Resource) {}
}

/// A runtime for the test exporter's connection, on a thread that lives as
/// long as the process.
fn test_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the test exporter");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("test-span-export".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("a thread for the test exporter");
        handle
    })
}

/// The JSON event format with the current span's `trace_id` and `span_id`
/// added to the object.
struct WithTraceIds<E>(E);

impl<S, N, E> FormatEvent<S, N> for WithTraceIds<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| trace_ids(&span.id()));
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON format writes one object and a newline: the ids go in
        // before its closing brace.
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(
                writer,
                "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// The OpenTelemetry ids of a span, when it has valid ones.
fn trace_ids(id: &tracing::span::Id) -> Option<(String, String)> {
    let dispatch = DISPATCH.get()?.upgrade()?;
    let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}
