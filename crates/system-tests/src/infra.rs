//! Creating and removing what a test system owns on the shared servers,
//! with the shared test infrastructure (`signalbox_testkit`).

use signalbox_messages::channels::Namespace;
use signalbox_testkit::{broker, db};

pub use signalbox_testkit::{
    broker::{amqp_url, random_namespace},
    db::{drop_database, server_url as database_server_url},
};

/// Creates the database `name` on `server` (a URL without a database);
/// returns its URL.
pub async fn create_database(server: &str, name: &str) -> anyhow::Result<String> {
    Ok(db::TestDatabase::create_on(server, name).await?.url)
}

/// Every durable queue the services of one namespace declare: catalog's
/// command shard queues and orders' reply and inbound queues, each with its
/// retry queues and its dead-letter queue, and realtime's event log with
/// its epoch queue.
pub fn durable_queues(ns: &Namespace) -> Vec<String> {
    use signalbox_messages::channels::commands;
    use signalbox_messaging::{Shards, WorkQueue};

    let mut work = Shards::new(commands::CATALOG_SHARDS).work_queues(
        &ns.catalog_commands_queue(),
        &ns.commands_exchange(),
        &[commands::RESERVE_STOCK, commands::RELEASE_STOCK],
    );
    work.push(WorkQueue::new(ns.orders_replies_queue()));
    work.push(WorkQueue::new(ns.orders_inbound_queue()));
    // Realtime's event log (a stream) and the queue that holds its epoch.
    let stream = signalbox_realtime::recovery::stream_queue(ns, &Default::default()).name;
    let log = [signalbox_messaging::stream::epoch_queue(&stream), stream];
    work.iter()
        .flat_map(WorkQueue::declared_queues)
        .chain(log)
        .collect()
}

/// Deletes the namespace's queues and exchanges from the broker.
pub async fn delete_broker_objects(ns: &Namespace) -> anyhow::Result<()> {
    broker::delete_namespace(ns, &durable_queues(ns)).await
}

/// Counts the messages waiting in `queue` (a passive declare).
pub async fn queue_depth(queue: &str) -> anyhow::Result<u32> {
    let connection = broker::connect().await?;
    let channel = connection.create_channel().await?;
    let depth = broker::queue_depth(&channel, queue).await?;
    connection.close(200, "depth read".into()).await?;
    Ok(depth)
}
