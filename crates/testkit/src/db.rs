//! Fresh databases on the shared PostgreSQL server, one per service under
//! test, created and dropped through the server's `postgres` database.

use signalbox_platform::config::DatabaseSettings;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The server's URL without a database: `SIGNALBOX_TEST_DATABASE_URL`, or
/// the local server.
pub fn server_url() -> String {
    std::env::var("SIGNALBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A database a test created, and the URL to reach it.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates the (empty) database `name`. Make the name unique: the test's
    /// random namespace and the service, `<namespace>_<service>`.
    pub async fn create(name: impl Into<String>) -> anyhow::Result<Self> {
        Self::create_on(&server_url(), name).await
    }

    /// Like [`Self::create`], on the server `server` (a URL without a
    /// database), such as a test's [`crate::pg_server::PrivateServer`].
    pub async fn create_on(server: &str, name: impl Into<String>) -> anyhow::Result<Self> {
        let name = name.into();
        let mut admin = admin_on(server).await?;
        // Safe: `identifier` admits only ASCII letters, digits and `_`.
        sqlx::query(AssertSqlSafe(format!(
            r#"CREATE DATABASE "{}""#,
            identifier(&name)?
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        let url = format!("{server}/{name}");
        Ok(Self { name, url })
    }

    /// Settings for a service under test that uses this database.
    pub fn settings(&self, max_connections: u32) -> DatabaseSettings {
        DatabaseSettings::new(self.url.clone(), max_connections)
    }

    /// Drops the database, closing whatever connections are still open.
    pub async fn drop(self) -> anyhow::Result<()> {
        drop_database(&self.name).await
    }
}

/// Drops the database `name` if it exists, `WITH (FORCE)`: connections a
/// stopped service left open do not keep it alive.
pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut admin = admin().await?;
    // Safe: `identifier` admits only ASCII letters, digits and `_`.
    sqlx::query(AssertSqlSafe(format!(
        r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
        identifier(name)?
    )))
    .execute(&mut admin)
    .await?;
    admin.close().await?;
    Ok(())
}

/// Whether the database `name` exists on the server.
pub async fn exists(name: &str) -> anyhow::Result<bool> {
    let mut admin = admin().await?;
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await?;
    admin.close().await?;
    Ok(exists)
}

/// A connection to the server's `postgres` database, for creating and
/// dropping the others.
async fn admin() -> anyhow::Result<PgConnection> {
    admin_on(&server_url()).await
}

async fn admin_on(server: &str) -> anyhow::Result<PgConnection> {
    Ok(PgConnection::connect(&format!("{server}/postgres")).await?)
}

/// A database name that can be spliced into DDL (which takes no bind
/// parameters): ASCII letters, digits and `_` only.
fn identifier(name: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "`{name}` is not a plain database name"
    );
    Ok(name)
}
