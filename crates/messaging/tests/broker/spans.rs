//! Each delivery is handled inside one span that names its queue, message
//! and attempt, so every line logged while it is handled carries them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use signalbox_messages::{orders::OrderCancelled, Envelope};
use signalbox_messaging::{
    ConfirmedPublisher, Consumer, HandleError, Handler, Incoming, Outgoing, RetryPolicy, Source,
    WorkQueue,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{
    field::{Field, Visit},
    span::{Attributes, Id, Record},
    Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, Layer};
use uuid::Uuid;

use crate::helpers::{Fixture, DEADLINE};

/// The fields every span has recorded so far, by span id.
#[derive(Clone, Default)]
struct SpanFields(Arc<Mutex<HashMap<u64, HashMap<String, String>>>>);

impl SpanFields {
    fn of(&self, id: &Id) -> HashMap<String, String> {
        let spans = self.0.lock().unwrap();
        spans.get(&id.into_u64()).cloned().unwrap_or_default()
    }

    fn record(&self, id: &Id, values: impl FnOnce(&mut FieldVisitor)) {
        let mut visitor = FieldVisitor::default();
        values(&mut visitor);
        let mut spans = self.0.lock().unwrap();
        spans.entry(id.into_u64()).or_default().extend(visitor.0);
    }
}

impl<S: Subscriber> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        self.record(id, |visitor| attrs.record(visitor));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        self.record(id, |visitor| values.record(visitor));
    }
}

#[derive(Default)]
struct FieldVisitor(HashMap<String, String>);

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Fails the first attempt, and reports the fields of the span it runs in
/// on every attempt.
struct SpanProbe {
    fields: SpanFields,
    seen: mpsc::UnboundedSender<HashMap<String, String>>,
}

impl Handler for SpanProbe {
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let span = tracing::Span::current();
        let fields = span.id().map(|id| self.fields.of(&id)).unwrap_or_default();
        let _ = self.seen.send(fields);
        if message.attempt == 0 {
            return Err(HandleError::Transient("simulated outage".into()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn each_delivery_is_handled_in_a_span_naming_its_queue_message_and_attempt(
) -> anyhow::Result<()> {
    // This thread's subscriber while the test runs: the test runtime has
    // one thread, so the consumer task handles its deliveries here.
    let fields = SpanFields::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(fields.clone()));
    let mut fx = Fixture::new().await?;
    let work = WorkQueue::new(fx.ns.queue("spans"))
        .bind(fx.ns.events_exchange(), "order.*")
        .retry(RetryPolicy {
            delays: vec![Duration::from_millis(100)],
        });
    fx.declare(&work).await?;
    let (seen, mut probed) = mpsc::unbounded_channel();
    let handler = SpanProbe {
        fields: fields.clone(),
        seen,
    };
    let shutdown = CancellationToken::new();
    let mut consumer = Consumer::new(fx.broker.clone(), Source::Work(work.clone()), "spans");
    consumer.attach().await?;
    let task = tokio::spawn(consumer.run(handler, shutdown.clone()));

    let payload = OrderCancelled {
        order_id: Uuid::now_v7(),
        user_id: "u1".into(),
        state: "CANCELLED".into(),
    };
    let message = Outgoing::event(&fx.ns, Envelope::new::<OrderCancelled>(), &payload);
    ConfirmedPublisher::new(&fx.broker)
        .await?
        .publish(&message)
        .await?;

    // The first attempt, then the retry.
    for attempt in ["0", "1"] {
        let span = tokio::time::timeout(DEADLINE, probed.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("handler gone"))?;
        let field = |name: &str| span.get(name).map(String::as_str);
        assert_eq!(field("queue"), Some(work.name.as_str()), "{span:?}");
        assert_eq!(
            field("message_id"),
            Some(message.envelope.message_id.to_string().as_str()),
            "{span:?}"
        );
        assert_eq!(field("message_type"), Some("order.cancelled"), "{span:?}");
        assert_eq!(field("attempt"), Some(attempt), "{span:?}");
    }

    shutdown.cancel();
    task.await??;
    fx.cleanup().await
}
