//! A message's trace survives the broker: every attempt at handling it (the
//! first, a redelivery after the channel closed, a retry through the delay
//! queue) is a consumer span in the trace its `traceparent` header names,
//! child of the span that sent it. Checked against a real OTLP receiver.

use std::time::Duration;

use signalbox_messages::{orders::OrderCancelled, Envelope};
use signalbox_messaging::{
    ConfirmedPublisher, Consumer, HandleError, Handler, Incoming, Outgoing, RetryPolicy, Source,
    WorkQueue,
};
use signalbox_platform::telemetry;
use signalbox_testkit::otlp::OtlpReceiver;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{Fixture, DEADLINE};

/// The producer the message claims to come from.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SEND_SPAN_ID: &str = "00f067aa0ba902b7";

/// First delivery: gives it back (the channel closes, the broker
/// redelivers); the redelivery: fails transiently (a retry); the retry:
/// succeeds.
struct Stubborn;

impl Handler for Stubborn {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        match (message.attempt, message.redelivered) {
            (0, false) => Err(HandleError::Interrupted),
            (0, true) => Err(HandleError::Transient("simulated outage".into())),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_redelivered_and_retried_message_stays_in_its_trace() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let receiver = OtlpReceiver::shared();
    telemetry::export_test_spans(&receiver.grpc_endpoint())?;
    let work = WorkQueue::new(fx.ns.queue("traced"))
        .bind(fx.ns.events_exchange(), "order.*")
        .retry(RetryPolicy {
            delays: vec![Duration::from_millis(100)],
        });
    fx.declare(&work).await?;
    let queue = work.name.clone();
    let shutdown = CancellationToken::new();
    let mut consumer = Consumer::new(fx.broker.clone(), Source::Work(work), "traced");
    consumer.attach().await?;
    let task = tokio::spawn(consumer.run(Stubborn, shutdown.clone()));

    let payload = OrderCancelled {
        order_id: Uuid::now_v7(),
        user_id: "u1".into(),
        state: "CANCELLED".into(),
    };
    let mut envelope = Envelope::new::<OrderCancelled>();
    envelope.traceparent = Some(format!("00-{TRACE_ID}-{SEND_SPAN_ID}-01"));
    let message = Outgoing::event(&fx.ns, envelope, &payload);
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish(&message)
        .await?;

    let name = format!("process {queue}");
    let spans = receiver
        .until(DEADLINE, |spans| {
            spans
                .iter()
                .filter(|s| s.trace_id == TRACE_ID && s.name == name)
                .count()
                >= 3
        })
        .await?;
    let mut attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == TRACE_ID && s.name == name)
        .collect();
    attempts.sort_by_key(|s| {
        (
            s.attribute("attempt").to_owned(),
            s.attribute("outcome").to_owned(),
        )
    });
    for span in &attempts {
        assert_eq!(span.kind, "consumer");
        assert_eq!(span.parent_span_id, SEND_SPAN_ID, "child of the send");
        assert_eq!(span.attribute("messaging.destination.name"), queue);
        assert_eq!(
            span.attribute("messaging.message.id"),
            message.envelope.message_id.to_string()
        );
    }
    let outcomes: Vec<(&str, &str)> = attempts
        .iter()
        .map(|s| (s.attribute("attempt"), s.attribute("outcome")))
        .collect();
    assert_eq!(
        outcomes,
        [("0", "interrupted"), ("0", "retried"), ("1", "handled")],
        "the first delivery, its redelivery, the retry"
    );
    shutdown.cancel();
    let _ = task.await?;
    fx.cleanup().await
}
