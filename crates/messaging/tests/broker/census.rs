//! Publish / async responses: one census request, an answer from every
//! instance that hears it in time.

use std::time::Duration;

use lapin::{options::QueueBindOptions, types::FieldTable};
use signalbox_messages::{system::CensusReply, Message};
use signalbox_messaging::{
    census::{self, Responder},
    consumer::ConsumeError,
    topology, Requester, RequesterOptions,
};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Fixture, DEADLINE};

/// Census responders running for one test.
struct Instances {
    identities: Vec<CensusReply>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<Result<(), ConsumeError>>>,
}

impl Instances {
    /// Starts one responder per service name; each is bound before this
    /// returns, so it hears the first census.
    async fn start(fx: &Fixture, services: &[&str]) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let mut identities = Vec::new();
        let mut tasks = Vec::new();
        for service in services {
            let mut responder = Responder::new(fx.broker.clone(), *service, "1.2.3");
            responder.attach().await?;
            identities.push(responder.identity().clone());
            tasks.push(tokio::spawn(responder.run(shutdown.clone())));
        }
        identities.sort_by(|a, b| (&a.service, &a.instance_id).cmp(&(&b.service, &b.instance_id)));
        Ok(Self {
            identities,
            shutdown,
            tasks,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }
}

async fn requester(fx: &Fixture) -> anyhow::Result<Requester> {
    Ok(Requester::start(fx.broker.clone(), RequesterOptions::new("test-census")).await?)
}

#[tokio::test]
async fn gather_collects_one_answer_from_every_instance_within_the_deadline() -> anyhow::Result<()>
{
    let fx = Fixture::new().await?;
    let instances = Instances::start(&fx, &["orders", "catalog", "realtime"]).await?;
    let requester = requester(&fx).await?;

    let census = census::gather(&requester, Duration::from_millis(500), None).await?;

    // Sorted by service and instance, one entry each.
    assert_eq!(census, instances.identities);
    requester.close().await;
    instances.stop().await?;
    fx.cleanup().await
}

#[tokio::test]
async fn a_silent_instance_is_simply_absent_and_gather_returns_at_the_deadline(
) -> anyhow::Result<()> {
    let fx = Fixture::new().await?;
    let instances = Instances::start(&fx, &["orders", "catalog"]).await?;
    // An instance that hears the census but never answers (hung, or busy
    // beyond the deadline): its queue is bound, nobody consumes it.
    let channel = fx.broker.channel().await?;
    let silent = topology::declare_instance_queue(&channel, &fx.ns, &[]).await?;
    channel
        .queue_bind(
            silent.as_str().into(),
            fx.ns.events_exchange().into(),
            signalbox_messages::system::CensusRequest::TYPE.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let requester = requester(&fx).await?;
    let deadline = Duration::from_millis(400);

    let started = Instant::now();
    let census = census::gather(&requester, deadline, None).await?;

    assert_eq!(census, instances.identities);
    assert!(
        started.elapsed() >= deadline,
        "it waited for the silent one"
    );
    requester.close().await;
    instances.stop().await?;
    fx.cleanup().await
}

#[tokio::test]
async fn gather_returns_early_once_the_expected_number_has_answered() -> anyhow::Result<()> {
    let fx = Fixture::new().await?;
    let instances = Instances::start(&fx, &["orders", "orders", "catalog"]).await?;
    let requester = requester(&fx).await?;
    let deadline = Duration::from_secs(60);

    let started = Instant::now();
    let census = census::gather(&requester, deadline, Some(3)).await?;

    assert_eq!(census, instances.identities);
    assert!(
        started.elapsed() < DEADLINE,
        "long before the 60 s deadline"
    );
    requester.close().await;
    instances.stop().await?;
    fx.cleanup().await
}

#[tokio::test]
async fn a_census_nobody_hears_is_empty_at_once() -> anyhow::Result<()> {
    let fx = Fixture::new().await?;
    let requester = requester(&fx).await?;

    let started = Instant::now();
    let census = census::gather(&requester, Duration::from_secs(60), None).await?;

    // No queue is bound: the broker returns the request, nobody to wait for.
    assert!(census.is_empty());
    assert!(started.elapsed() < DEADLINE);
    requester.close().await;
    fx.cleanup().await
}
