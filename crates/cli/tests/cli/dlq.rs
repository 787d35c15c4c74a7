//! `signalbox dlq`: dead letters made by the real consumer on the real
//! broker, listed without being consumed and replayed without being lost.

use std::sync::Arc;

use signalbox_messages::{orders::OrderCancelled, Envelope};
use signalbox_messaging::{
    topology, Broker, ConfirmedPublisher, Consumer, HandleError, Handler, Incoming, Outgoing,
    Source, WorkQueue,
};
use signalbox_testkit::{
    broker::{amqp_url, await_depth},
    Sandbox, DEADLINE,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::Terminal;

/// Rejects everything, as a handler does with a message it cannot handle.
struct Broken;

impl Handler for Broken {
    async fn handle(&self, _message: Incoming) -> Result<(), HandleError> {
        Err(HandleError::Reject("product does not exist".into()))
    }
}

/// A work queue with `count` messages dead-lettered from it by the real
/// consumer; their ids, oldest first.
async fn dead_lettered(
    sandbox: &mut Sandbox,
    broker: &Arc<Broker>,
    count: usize,
) -> anyhow::Result<(WorkQueue, Vec<String>)> {
    let ns = sandbox.namespace().clone();
    let work = WorkQueue::new(ns.queue("work")).bind(ns.events_exchange(), "order.*");
    let channel = broker.channel().await?;
    topology::declare_work_queue(&channel, &ns, &work).await?;
    sandbox.queues(work.declared_queues());
    let mut consumer = Consumer::new(broker.clone(), Source::Work(work.clone()), "test");
    consumer.attach().await?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(Broken, shutdown.clone()));
    let messages: Vec<Outgoing> = (0..count)
        .map(|_| {
            let payload = OrderCancelled {
                order_id: Uuid::now_v7(),
                user_id: "u1".into(),
                state: "CANCELLED".into(),
            };
            Outgoing::event(&ns, Envelope::new::<OrderCancelled>(), &payload)
        })
        .collect();
    ConfirmedPublisher::new(broker)
        .await?
        .publish_all(&messages)
        .await?;
    await_depth(&channel, &format!("{}.dlq", work.name), count as u32).await?;
    shutdown.cancel();
    running.await??;
    let ids = messages
        .iter()
        .map(|m| m.envelope.message_id.to_string())
        .collect();
    Ok((work, ids))
}

#[tokio::test]
async fn dlq_lists_without_consuming_and_replays_back_to_the_work_queue() -> anyhow::Result<()> {
    signalbox_platform::telemetry::init_for_tests();
    let mut sandbox = Sandbox::new();
    let broker =
        Broker::connect(&amqp_url(), sandbox.namespace().clone(), "test", DEADLINE).await?;
    let (work, ids) = dead_lettered(&mut sandbox, &broker, 3).await?;
    let dlq = format!("{}.dlq", work.name);
    let channel = broker.channel().await?;
    // The broker URL comes from APP__AMQP__URL, as the services read it.
    let terminal = Terminal::new("http://127.0.0.1:1", "ws://127.0.0.1:1/ws");
    let run = |args: &[&str]| {
        let mut command = terminal.command(args);
        command.env("APP__AMQP__URL", amqp_url());
        async move {
            let output = tokio::time::timeout(DEADLINE, command.output()).await??;
            anyhow::Ok((
                output.status.code(),
                String::from_utf8(output.stdout)?,
                String::from_utf8(output.stderr)?,
            ))
        }
    };

    // Every dead letter with its reason, and the count.
    let (code, shown, stderr) = run(&["dlq", "list", &work.name]).await?;
    assert_eq!(code, Some(0), "{stderr}");
    for id in &ids {
        assert!(shown.contains(&format!("message {id}")), "{shown}");
    }
    assert_eq!(
        shown.matches("reason: product does not exist").count(),
        3,
        "{shown}"
    );
    assert!(
        shown.contains(&format!("3 dead letter(s) in {dlq}")),
        "{shown}"
    );
    // Nothing was consumed; a limit shows the oldest only, also by the
    // DLQ's own name.
    await_depth(&channel, &dlq, 3).await?;
    let (code, listed, _) = run(&["dlq", "list", &dlq, "--limit", "1", "--json"]).await?;
    assert_eq!(code, Some(0));
    let listed: serde_json::Value = serde_json::from_str(listed.trim())?;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["dead_letters"][0]["message_id"], ids[0].as_str());
    assert_eq!(
        listed["dead_letters"][0]["original_queue"],
        work.name.as_str()
    );
    await_depth(&channel, &dlq, 3).await?;

    // Replay moves the oldest two, then the rest, back to the work queue.
    let (code, moved, _) = run(&["dlq", "replay", &work.name, "--limit", "2"]).await?;
    assert_eq!(code, Some(0));
    assert_eq!(
        moved.trim(),
        format!("moved 2 message(s) from {dlq} to {}", work.name)
    );
    await_depth(&channel, &dlq, 1).await?;
    let (code, moved, _) = run(&["dlq", "replay", &work.name, "--json"]).await?;
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(moved.trim())?["moved"],
        1
    );
    await_depth(&channel, &dlq, 0).await?;
    await_depth(&channel, &work.name, 3).await?;

    // A queue that does not exist is bad input.
    let (code, _, stderr) = run(&["dlq", "replay", &sandbox.namespace().queue("nothing")]).await?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("there is no queue"), "{stderr}");

    broker.close().await;
    sandbox.remove().await
}

#[tokio::test]
async fn dlq_without_a_broker_names_it_without_its_password() {
    let terminal = Terminal::new("http://127.0.0.1:1", "ws://127.0.0.1:1/ws");
    let ran = terminal
        .run(&[
            "dlq",
            "list",
            "q",
            "--amqp-url",
            "amqp://guest:secret@127.0.0.1:1/%2f",
        ])
        .await;
    assert_eq!(ran.code, Some(4), "{ran:?}");
    assert!(ran.stderr.contains("127.0.0.1:1"), "{ran:?}");
    assert!(!ran.stderr.contains("secret"), "{ran:?}");
    assert!(ran.stderr.contains("RabbitMQ"), "{ran:?}");
}
