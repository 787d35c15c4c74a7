//! The trace context across the broker.
//!
//! A message carries the W3C `traceparent` of the operation that produced
//! it, in its envelope: in the outbox row's envelope from the moment it is
//! enqueued ([`crate::outbox::enqueue`] stamps it with the current span),
//! then as the AMQP header `traceparent` ([`crate::headers::TRACEPARENT`]).
//! Each hop continues the trace:
//!
//! ```text
//!   handler span ──enqueue──▶ outbox row (envelope.traceparent)
//!        relay: "send <exchange>" span, child of the row's context,
//!               its own context in the published header
//!        consumer: "process <queue>" span, child of the header's context
//!               (the same on a redelivery and on every retry: the copy
//!               keeps its headers)
//! ```
//!
//! Only `traceparent` travels with a message (the envelope has no
//! `tracestate`); HTTP and gRPC hops carry both.

use std::collections::HashMap;

use opentelemetry::trace::TraceContextExt;
use signalbox_messages::Envelope;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C `traceparent` of `span`, when it has a valid context (none when
/// telemetry is off).
pub fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier)
    });
    carrier.remove("traceparent")
}

/// Puts the current span's context into `envelope`, replacing what it
/// carried (a message caused by another copies its cause's context; the
/// current span, a child of that, is the better parent). Leaves the
/// envelope as it is when there is no current context.
pub fn stamp(envelope: &mut Envelope) {
    if let Some(traceparent) = traceparent_of(&Span::current()) {
        envelope.traceparent = Some(traceparent);
    }
}

/// The context an envelope carries, as the parent for the span that
/// handles or forwards it (empty without one: the span starts a trace).
pub fn context_of(envelope: &Envelope) -> opentelemetry::Context {
    let Some(traceparent) = &envelope.traceparent else {
        return opentelemetry::Context::new();
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
}
