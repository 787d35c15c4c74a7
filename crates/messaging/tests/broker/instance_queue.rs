//! A per-instance queue is bounded: an instance that stops consuming (frozen,
//! or gone without closing its connection) costs the broker at most
//! `INSTANCE_QUEUE_MAX_MESSAGES` messages, the oldest dropped first, and the
//! publisher is never refused.

use lapin::{
    options::{BasicGetOptions, BasicPublishOptions},
    BasicProperties,
};
use signalbox_messaging::topology::{self, INSTANCE_QUEUE_MAX_MESSAGES};

use crate::helpers::{await_depth, Fixture};

/// Published beyond the bound.
const BEYOND: i64 = 100;

#[tokio::test]
async fn a_queue_nobody_consumes_keeps_its_newest_messages_up_to_the_bound() -> anyhow::Result<()> {
    let fx = Fixture::new().await?;
    let channel = fx.broker.channel().await?;
    let queue = topology::declare_instance_queue(&channel, &fx.ns, &[]).await?;

    // Nobody consumes: every message beyond the bound pushes out the oldest.
    for n in 0..INSTANCE_QUEUE_MAX_MESSAGES + BEYOND {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                n.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await?;
    }

    await_depth(&channel, &queue, INSTANCE_QUEUE_MAX_MESSAGES as u32).await?;
    let oldest = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
        .expect("a message");
    assert_eq!(
        std::str::from_utf8(&oldest.delivery.data)?,
        BEYOND.to_string(),
        "the oldest were dropped, the newest kept"
    );
    fx.cleanup().await
}
