//! The requester matches replies to requests by correlation id, within a
//! deadline, bounded in number, and survives the loss of its reply queue.
//!
//! The responder is the test itself: requests land in a durable queue the
//! test reads ([`Tap`]), and the test decides when (and whether) to answer,
//! so every interleaving below is forced, not hoped for.

use std::time::Duration;

use anyhow::Context;
use lapin::{message::Delivery, Channel};
use serde::{Deserialize, Serialize};
use signalbox_messages::{Envelope, Message, MessageKind};
use signalbox_messaging::{
    amqp, ConfirmedPublisher, Outgoing, RequestError, Requester, RequesterOptions, WorkQueue,
};
use tokio::time::Instant;

use crate::helpers::{Fixture, Tap, DEADLINE};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Ping {
    n: u32,
}

impl Message for Ping {
    const TYPE: &'static str = "test.ping";
    const KIND: MessageKind = MessageKind::Command;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pong {
    n: u32,
}

impl Message for Pong {
    const TYPE: &'static str = "test.pong";
    const KIND: MessageKind = MessageKind::Reply;
}

/// A command no queue is bound for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Nobody {}

impl Message for Nobody {
    const TYPE: &'static str = "test.nobody";
    const KIND: MessageKind = MessageKind::Command;
}

/// The pieces of one test: a requester and the queue its pings go to.
struct Setup {
    requester: Requester,
    pings: Tap,
    queue: String,
    /// Keeps the tap's channel open.
    _channel: Channel,
}

async fn setup(fx: &mut Fixture, max_outstanding: usize) -> anyhow::Result<Setup> {
    let work = WorkQueue::new(fx.ns.queue("pings")).bind(fx.ns.commands_exchange(), Ping::TYPE);
    fx.declare(&work).await?;
    let channel = fx.broker.channel().await?;
    let pings = Tap::open(&channel, &work.name).await?;
    let requester = Requester::start(
        fx.broker.clone(),
        RequesterOptions::new("test-requester").max_outstanding(max_outstanding),
    )
    .await?;
    Ok(Setup {
        requester,
        pings,
        queue: work.name,
        _channel: channel,
    })
}

/// Answers a ping the way a handler does: to its `reply_to`, with its
/// correlation id (carried over by `caused_by`).
async fn answer(fx: &Fixture, request: &Delivery, n: u32) -> anyhow::Result<()> {
    let envelope = amqp::from_properties(&request.properties)?;
    let reply_to = envelope
        .reply_to
        .clone()
        .context("a request has reply_to")?;
    let reply = Outgoing::reply(
        &reply_to,
        Envelope::caused_by::<Pong>(&envelope),
        &Pong { n },
    );
    publish(fx, &reply).await
}

async fn publish(fx: &Fixture, message: &Outgoing) -> anyhow::Result<()> {
    let publisher = ConfirmedPublisher::new(&fx.broker).await?;
    publisher.publish(message).await?;
    publisher.close().await;
    Ok(())
}

fn ping_of(request: &Delivery) -> anyhow::Result<Ping> {
    Ok(serde_json::from_slice(&request.data)?)
}

fn correlation_id_of(request: &Delivery) -> Option<String> {
    request
        .properties
        .correlation_id()
        .as_ref()
        .map(|id| id.to_string())
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_reply_even_when_answered_out_of_order(
) -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let mut s = setup(&mut fx, 16).await?;

    let calls: Vec<_> = (0..5)
        .map(|n| {
            let requester = s.requester.clone();
            tokio::spawn(async move { requester.call::<Ping, Pong>(&Ping { n }, DEADLINE).await })
        })
        .collect();
    let mut requests = Vec::new();
    for _ in 0..5 {
        requests.push(s.pings.next().await?);
    }
    // Answer the last request first; each answer is derived from its request.
    for request in requests.iter().rev() {
        let n = ping_of(request)?.n;
        answer(&fx, request, n * 10).await?;
    }

    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await??, Pong { n: n as u32 * 10 });
    }
    assert_eq!(s.requester.outstanding(), 0);
    s.requester.close().await;
    fx.cleanup().await
}

#[tokio::test]
async fn a_request_without_a_reply_fails_with_a_timeout_at_its_deadline() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let mut s = setup(&mut fx, 16).await?;
    let deadline = Duration::from_millis(300);

    let started = Instant::now();
    let result = s
        .requester
        .call::<Ping, Pong>(&Ping { n: 1 }, deadline)
        .await;

    let sent = s.pings.next().await?;
    match result {
        Err(RequestError::Timeout {
            correlation_id,
            after,
        }) => {
            assert_eq!(after, deadline);
            assert_eq!(Some(correlation_id), correlation_id_of(&sent));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= deadline, "not before the deadline");
    assert_eq!(s.requester.outstanding(), 0, "the waiter is gone");
    s.requester.close().await;
    fx.cleanup().await
}

#[tokio::test]
async fn a_late_reply_is_discarded_and_the_next_request_gets_its_own_reply() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let mut s = setup(&mut fx, 16).await?;

    let first = s
        .requester
        .call::<Ping, Pong>(&Ping { n: 1 }, Duration::from_millis(200))
        .await;
    assert!(
        matches!(first, Err(RequestError::Timeout { .. })),
        "{first:?}"
    );
    let late = s.pings.next().await?;

    // The second request is waiting when the late reply to the first
    // arrives, right before its own: a router that handed replies to "any
    // waiter" would give it the wrong one.
    let requester = s.requester.clone();
    let second =
        tokio::spawn(async move { requester.call::<Ping, Pong>(&Ping { n: 2 }, DEADLINE).await });
    let request = s.pings.next().await?;
    answer(&fx, &late, 1).await?;
    answer(&fx, &request, 2).await?;

    assert_eq!(second.await??, Pong { n: 2 });
    s.requester.close().await;
    fx.cleanup().await
}

#[tokio::test]
async fn a_reply_with_an_unknown_correlation_id_is_ignored() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let mut s = setup(&mut fx, 16).await?;

    let requester = s.requester.clone();
    let call =
        tokio::spawn(async move { requester.call::<Ping, Pong>(&Ping { n: 7 }, DEADLINE).await });
    let request = s.pings.next().await?;
    let reply_to = s.requester.reply_queue().context("a reply queue")?;

    // Two strays reach the reply queue first: one with a correlation id
    // nobody waits for, one with none at all.
    let stray = Envelope::new::<Pong>().with_correlation_id(uuid::Uuid::new_v4().to_string());
    publish(&fx, &Outgoing::reply(&reply_to, stray, &Pong { n: 666 })).await?;
    let mut anonymous = Envelope::new::<Pong>();
    anonymous.correlation_id = None;
    publish(
        &fx,
        &Outgoing::reply(&reply_to, anonymous, &Pong { n: 667 }),
    )
    .await?;
    answer(&fx, &request, 70).await?;

    assert_eq!(call.await??, Pong { n: 70 });
    s.requester.close().await;
    fx.cleanup().await
}

#[tokio::test]
async fn an_unroutable_request_fails_at_once_instead_of_at_its_deadline() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let s = setup(&mut fx, 16).await?;
    let deadline = Duration::from_secs(30);

    let started = Instant::now();
    let result = s.requester.call::<Nobody, Pong>(&Nobody {}, deadline).await;

    match result {
        Err(RequestError::Unroutable { routing_key, .. }) => {
            assert_eq!(routing_key, Nobody::TYPE)
        }
        other => panic!("expected unroutable, got {other:?}"),
    }
    assert!(started.elapsed() < DEADLINE, "long before the deadline");
    assert_eq!(s.requester.outstanding(), 0);
    s.requester.close().await;
    fx.cleanup().await
}

#[tokio::test]
async fn requests_over_the_bound_are_refused_as_busy() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let mut s = setup(&mut fx, 2).await?;

    // Two requests waiting (both reached the responder, so both hold their
    // permits)...
    let calls: Vec<_> = (1..=2)
        .map(|n| {
            let requester = s.requester.clone();
            tokio::spawn(async move { requester.call::<Ping, Pong>(&Ping { n }, DEADLINE).await })
        })
        .collect();
    let requests = [s.pings.next().await?, s.pings.next().await?];
    assert_eq!(s.requester.outstanding(), 2);

    // ...so a third is refused without being sent.
    let third = s
        .requester
        .call::<Ping, Pong>(&Ping { n: 3 }, DEADLINE)
        .await;
    assert!(
        matches!(third, Err(RequestError::Busy { limit: 2 })),
        "{third:?}"
    );

    for request in &requests {
        let n = ping_of(request)?.n;
        answer(&fx, request, n).await?;
    }
    for call in calls {
        call.await??;
    }
    // The permits came back: the next request goes through.
    let requester = s.requester.clone();
    let fourth =
        tokio::spawn(async move { requester.call::<Ping, Pong>(&Ping { n: 4 }, DEADLINE).await });
    let request = s.pings.next().await?;
    assert_eq!(
        ping_of(&request)?,
        Ping { n: 4 },
        "the third was never sent"
    );
    answer(&fx, &request, 4).await?;
    assert_eq!(fourth.await??, Pong { n: 4 });
    s.requester.close().await;
    fx.cleanup().await
}

#[tokio::test]
async fn a_request_after_the_connection_was_lost_succeeds_on_a_new_reply_queue(
) -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let s = setup(&mut fx, 16).await?;
    let before = s.requester.reply_queue().context("a reply queue")?;

    fx.broker.close().await;
    let requester = s.requester.clone();
    let call =
        tokio::spawn(async move { requester.call::<Ping, Pong>(&Ping { n: 5 }, DEADLINE).await });

    // The test's own tap died with the connection too; the pings queue is
    // durable, so the request waits there for a new tap.
    let channel = fx.broker.channel().await?;
    let mut pings = Tap::open(&channel, &s.queue).await?;
    let request = pings.next().await?;
    answer(&fx, &request, 50).await?;

    assert_eq!(call.await??, Pong { n: 50 });
    let after = s.requester.reply_queue().context("a reply queue")?;
    assert_ne!(before, after, "a new reply queue was declared");
    s.requester.close().await;
    fx.cleanup().await
}

#[tokio::test]
async fn a_request_in_flight_when_the_reply_queue_is_lost_fails_fast() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let mut s = setup(&mut fx, 16).await?;
    let deadline = Duration::from_secs(60);

    let requester = s.requester.clone();
    let call =
        tokio::spawn(async move { requester.call::<Ping, Pong>(&Ping { n: 6 }, deadline).await });
    s.pings.next().await?; // sent: it now waits for its reply

    let lost_at = Instant::now();
    fx.broker.close().await;
    let result = tokio::time::timeout(DEADLINE, call).await??;

    assert!(
        matches!(result, Err(RequestError::ReplyChannelLost { .. })),
        "{result:?}"
    );
    assert!(
        lost_at.elapsed() < DEADLINE,
        "long before its 60 s deadline"
    );
    s.requester.close().await;
    fx.cleanup().await
}
