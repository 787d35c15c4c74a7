//! The private PostgreSQL server: it starts, survives a crash with its
//! data, and is gone after the drop.

use signalbox_testkit::pg_server::PrivateServer;
use sqlx::{Connection, PgConnection};

async fn connect(server: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(&format!("{server}/postgres")).await
}

#[tokio::test]
async fn a_private_server_keeps_its_data_through_a_crash_and_is_removed_on_drop(
) -> anyhow::Result<()> {
    let server = tokio::task::spawn_blocking(PrivateServer::start).await??;
    let url = server.url();
    let mut connection = connect(&url).await?;
    sqlx::query("CREATE TABLE kept (n INT)")
        .execute(&mut connection)
        .await?;
    sqlx::query("INSERT INTO kept VALUES (7)")
        .execute(&mut connection)
        .await?;

    let server = tokio::task::spawn_blocking(move || server.crash().map(|()| server)).await??;
    assert!(
        sqlx::query("SELECT 1")
            .execute(&mut connection)
            .await
            .is_err(),
        "the open connection broke with the crash"
    );
    assert!(
        connect(&url).await.is_err(),
        "nothing listens while it is down"
    );

    let server =
        tokio::task::spawn_blocking(move || server.start_again().map(|()| server)).await??;
    let mut connection = connect(&url).await?;
    let n: i32 = sqlx::query_scalar("SELECT n FROM kept")
        .fetch_one(&mut connection)
        .await?;
    assert_eq!(n, 7, "committed data survives the crash");
    connection.close().await?;

    tokio::task::spawn_blocking(move || drop(server)).await?;
    assert!(
        connect(&url).await.is_err(),
        "the server stopped with the drop"
    );
    Ok(())
}
