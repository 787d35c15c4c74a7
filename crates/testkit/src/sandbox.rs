//! A test's own corner of the shared servers: its random namespace, the
//! databases it created and the durable queues its services declare, all
//! removed when the test ends — also when it ends in a panic.
//!
//! A harness holds a [`Sandbox`] and ends a passing test with
//! [`Sandbox::remove`], which reports what could not be removed. A failed
//! assertion never gets there; dropping the sandbox then does the same work
//! (through [`crate::block_on_thread`], since `Drop` cannot await).
//!
//! Before anything is removed, the services the sandbox was told about
//! ([`Sandbox::stops`]) are asked to stop: a consumer whose queue vanished
//! under it would otherwise declare it again and leak it. Exclusive queues
//! need no entry; they go with the connections that own them.

use signalbox_messages::channels::Namespace;
use tokio_util::sync::CancellationToken;

use crate::{
    broker,
    db::{self, TestDatabase},
    probe, DEADLINE,
};

pub struct Sandbox {
    namespace: Namespace,
    databases: Vec<String>,
    queues: Vec<String>,
    services: Vec<CancellationToken>,
    removed: bool,
}

impl Sandbox {
    /// A fresh random namespace ([`broker::random_namespace`]), holding
    /// nothing yet.
    pub fn new() -> Self {
        Self {
            namespace: Namespace::new(broker::random_namespace()),
            databases: Vec::new(),
            queues: Vec::new(),
            services: Vec::new(),
            removed: false,
        }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The names of what the sandbox removes, for a test that checks from
    /// outside that they are gone.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            namespace: self.namespace.clone(),
            databases: self.databases.clone(),
            queues: self.queues.clone(),
        }
    }

    /// Creates the empty database `<namespace>_<service>`, dropped with the
    /// sandbox.
    pub async fn database(&mut self, service: &str) -> anyhow::Result<TestDatabase> {
        let database =
            TestDatabase::create(format!("{}_{service}", self.namespace.prefix())).await?;
        self.databases.push(database.name.clone());
        Ok(database)
    }

    /// Durable queues of the namespace to delete with it, with the
    /// namespace's exchanges. A queue that was never declared is no error.
    pub fn queues(&mut self, queues: impl IntoIterator<Item = String>) {
        self.queues.extend(queues);
    }

    /// A service (its shutdown token) to stop before anything is removed.
    pub fn stops(&mut self, shutdown: CancellationToken) {
        self.services.push(shutdown);
    }

    /// Stops the services and removes the databases, the queues and the
    /// namespace's exchanges now; the end of a test that passed.
    pub async fn remove(&mut self) -> anyhow::Result<()> {
        for service in &self.services {
            service.cancel();
        }
        remove(&self.namespace, &self.databases, &self.queues).await?;
        self.removed = true;
        Ok(())
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

/// A test that panicked never called [`Sandbox::remove`]: do it here.
impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        for service in &self.services {
            service.cancel();
        }
        let namespace = self.namespace.clone();
        let databases = std::mem::take(&mut self.databases);
        let queues = std::mem::take(&mut self.queues);
        let removed =
            crate::block_on_thread(async move { remove(&namespace, &databases, &queues).await });
        if let Err(error) = removed {
            eprintln!(
                "could not remove the sandbox {}: {error:#}",
                self.namespace.prefix()
            );
        }
    }
}

async fn remove(
    namespace: &Namespace,
    databases: &[String],
    queues: &[String],
) -> anyhow::Result<()> {
    for name in databases {
        db::drop_database(name).await?;
    }
    broker::delete_namespace(namespace, queues).await
}

/// What a [`Sandbox`] held: its databases, its queues and the exchanges of
/// its namespace.
#[derive(Debug, Clone)]
pub struct Footprint {
    namespace: Namespace,
    databases: Vec<String>,
    queues: Vec<String>,
}

impl Footprint {
    /// Which of them exist on the servers now, by name.
    pub async fn present(&self) -> anyhow::Result<Vec<String>> {
        let mut present = Vec::new();
        for name in &self.databases {
            if db::exists(name).await? {
                present.push(format!("database {name}"));
            }
        }
        for name in &self.queues {
            if broker::queue_exists(name).await? {
                present.push(format!("queue {name}"));
            }
        }
        for name in broker::exchanges(&self.namespace) {
            if broker::exchange_exists(&name).await? {
                present.push(format!("exchange {name}"));
            }
        }
        Ok(present)
    }

    /// Waits, up to [`DEADLINE`], until none of them exists.
    pub async fn await_gone(&self) -> anyhow::Result<()> {
        probe::until(
            &format!("sandbox {} removed", self.namespace.prefix()),
            DEADLINE,
            || async {
                let present = self.present().await?;
                Ok(if present.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still there: {present:?}"))
                })
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;

    use futures::FutureExt;
    use lapin::{
        options::{ExchangeDeclareOptions, QueueDeclareOptions},
        types::FieldTable,
        ExchangeKind,
    };

    use super::*;

    /// Declares a durable queue and the events exchange of `ns`, as a
    /// service would.
    async fn declare(ns: &Namespace, queue: &str) -> anyhow::Result<()> {
        let connection = broker::connect().await?;
        let channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                ns.events_exchange().as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), durable, FieldTable::default())
            .await?;
        connection.close(200, "declared".into()).await?;
        Ok(())
    }

    /// A sandbox holding a database, a durable queue and an exchange.
    async fn occupied() -> anyhow::Result<Sandbox> {
        let mut sandbox = Sandbox::new();
        let ns = sandbox.namespace().clone();
        let database = sandbox.database("sandbox").await?;
        let queue = ns.queue("work");
        declare(&ns, &queue).await?;
        sandbox.queues([queue.clone()]);
        let present = sandbox.footprint().present().await?;
        assert_eq!(
            present,
            [
                format!("database {}", database.name),
                format!("queue {queue}"),
                format!("exchange {}", ns.events_exchange()),
            ]
        );
        Ok(sandbox)
    }

    #[tokio::test]
    async fn a_test_that_panics_leaves_no_database_queue_or_exchange() -> anyhow::Result<()> {
        let mut sandbox = occupied().await?;
        let service = CancellationToken::new();
        sandbox.stops(service.clone());
        let footprint = sandbox.footprint();

        let test = AssertUnwindSafe(async move {
            let _sandbox = sandbox;
            panic!("a failed assertion");
        });
        assert!(test.catch_unwind().await.is_err());

        assert!(service.is_cancelled(), "the service was not stopped");
        footprint.await_gone().await
    }

    #[tokio::test]
    async fn remove_leaves_nothing_behind() -> anyhow::Result<()> {
        let mut sandbox = occupied().await?;
        let footprint = sandbox.footprint();

        sandbox.remove().await?;

        assert_eq!(footprint.present().await?, Vec::<String>::new());
        Ok(())
    }
}
