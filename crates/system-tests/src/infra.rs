//! Creating and removing what a test system owns on the shared servers.

use lapin::{
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
    Connection, ConnectionProperties,
};
use signalbox_messages::channels::Namespace;
use sqlx::{Connection as _, PgConnection};

pub fn database_server_url() -> String {
    std::env::var("SIGNALBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn amqp_url() -> String {
    std::env::var("SIGNALBOX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A random namespace: `t` and 12 hex digits. Also used in database names.
pub fn random_namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

async fn admin() -> anyhow::Result<PgConnection> {
    Ok(PgConnection::connect(&format!("{}/postgres", database_server_url())).await?)
}

pub async fn create_database(name: &str) -> anyhow::Result<String> {
    let mut conn = admin().await?;
    sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
        .execute(&mut conn)
        .await?;
    Ok(format!("{}/{name}", database_server_url()))
}

pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut conn = admin().await?;
    sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Every durable queue the services of one namespace declare: catalog's
/// command shard queues and orders' reply queue, each with its retry queues
/// and its dead-letter queue.
pub fn durable_queues(ns: &Namespace) -> Vec<String> {
    use signalbox_messages::channels::commands;
    use signalbox_messaging::{topology, Shards, WorkQueue};

    let mut work = Shards::new(commands::CATALOG_SHARDS).work_queues(
        &ns.catalog_commands_queue(),
        &ns.commands_exchange(),
        &[commands::RESERVE_STOCK, commands::RELEASE_STOCK],
    );
    work.push(WorkQueue::new(ns.orders_replies_queue()));
    work.iter()
        .flat_map(|queue| {
            let retries = (0..queue.retry.delays.len())
                .map(|attempt| topology::retry_queue(&queue.name, attempt));
            [
                queue.name.clone(),
                Namespace::dead_letter_queue(&queue.name),
            ]
            .into_iter()
            .chain(retries)
        })
        .collect()
}

/// Deletes the namespace's queues and exchanges from the broker.
pub async fn delete_broker_objects(ns: &Namespace) -> anyhow::Result<()> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    for queue in durable_queues(ns) {
        channel
            .queue_delete(&queue, QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [
        ns.events_exchange(),
        ns.commands_exchange(),
        ns.inbound_exchange(),
        ns.dead_letter_exchange(),
    ] {
        channel
            .exchange_delete(&exchange, ExchangeDeleteOptions::default())
            .await?;
    }
    conn.close(200, "test cleanup").await?;
    Ok(())
}

/// Counts the messages waiting in `queue` (a passive declare).
pub async fn queue_depth(queue: &str) -> anyhow::Result<u32> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue,
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    conn.close(200, "depth read").await?;
    Ok(declared.message_count())
}
