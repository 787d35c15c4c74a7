//! The database restarts under load: nothing lost, nothing doubled, and
//! every refusal meanwhile a clean 503 problem.
//!
//! The services' databases live on a PostgreSQL server of this test's own
//! (`signalbox_testkit::pg_server::PrivateServer`: `initdb` into a temporary
//! directory, a free port), so the restart disturbs no other test and this
//! one runs with the rest. While orders are placed continuously through the
//! gateway, the server is crashed (`pg_ctl stop -m immediate`: every
//! connection drops at once) and started again after auth, orders and
//! catalog all reported not-ready. Afterwards: every service is ready again (pools reconnected,
//! consumers attached), more orders are decided (relays and consumers
//! resumed), every accepted order is APPROVED or REJECTED, stock is the
//! initial stock minus exactly the approved quantities, no dead letters,
//! and every order the gateway did not accept was answered with an
//! `application/problem+json` body with status 503 (the services wait
//! `APP__DATABASE__ACQUIRE_TIMEOUT_MS`, 1 s, for a connection: less than
//! orders' 2 s deadline on its calls to catalog and the gateway's 5 s, and
//! a read that failed is not retried into a deadline it cannot meet, so a
//! refusal is never a 504).

use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use signalbox_system_tests::{infra, system::await_status, Options, TestSystem, DEADLINE};
use signalbox_testkit::{pg_server::PrivateServer, probe};
use sqlx::PgPool;

use crate::steady_load::{Load, PRODUCTS};

/// How long the system may take to settle after the restart.
const SETTLE: Duration = Duration::from_secs(90);

async fn decided(orders: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE state <> 'PENDING'")
            .fetch_one(orders)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_under_load_loses_nothing_and_refuses_cleanly() -> anyhow::Result<()> {
    let server = tokio::task::spawn_blocking(PrivateServer::start).await??;
    let system = TestSystem::start_with(Options {
        database_server: Some(server.url()),
        // The load comes from one address: the edge's limits stay out
        // of the way of a test about the database.
        gateway: Some(Box::new(signalbox_system_tests::lift_rate_limits)),
        ..Options::default()
    })
    .await?;
    let api = system.api.clone();
    let mut initial = std::collections::HashMap::new();
    for product in PRODUCTS {
        initial.insert(product, api.stock(product).await?);
    }
    let users = Arc::new(vec![api.new_user().await?, api.new_user().await?]);
    let orders_url = system.database_url("orders").expect("orders db");
    let ready_urls: Vec<String> = ["auth", "orders", "catalog"]
        .into_iter()
        .map(|service| system.ready_url(service).expect(service))
        .collect();

    let load = Load::start(&api, &users);
    // Some orders go through before the fault.
    probe::until("orders decided before the restart", DEADLINE, || async {
        let orders = PgPool::connect(&orders_url).await?;
        let n = decided(&orders).await?;
        orders.close().await;
        Ok(if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} decided"))
        })
    })
    .await?;

    // Act: crash the server, see a service notice, start it again.
    let server = tokio::task::spawn_blocking(move || server.crash().map(|()| server)).await??;
    println!("database_restart: PostgreSQL crashed");
    for url in &ready_urls {
        await_status(url, StatusCode::SERVICE_UNAVAILABLE).await?;
    }
    println!("database_restart: auth, orders and catalog report not ready");
    let server =
        tokio::task::spawn_blocking(move || server.start_again().map(|()| server)).await??;
    println!("database_restart: PostgreSQL started again");
    system.wait_until_ready().await?;

    // Relays and consumers resumed: more orders are decided.
    let orders = PgPool::connect(&orders_url).await?;
    let before = decided(&orders).await?;
    probe::until("orders decided after the restart", DEADLINE, || async {
        let n = decided(&orders).await?;
        Ok(if n >= before + 3 {
            Ok(())
        } else {
            Err(format!("{} since", n - before))
        })
    })
    .await?;
    let outcome = load.finish().await?;
    println!(
        "database_restart: {} accepted, {} refused, {} unanswered",
        outcome.accepted.len(),
        outcome.refused.len(),
        outcome.unanswered
    );

    probe::until("every order decided", SETTLE, || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE state = 'PENDING'")
                .fetch_one(&orders)
                .await?;
        Ok(if pending == 0 {
            Ok(())
        } else {
            Err(format!("{pending} pending"))
        })
    })
    .await?;

    // Assert: refusals were clean, nothing lost, nothing doubled.
    assert_eq!(outcome.unanswered, 0, "the gateway answered every request");
    // A refusal is a 503 problem document: orders gave up waiting for a
    // connection before the gateway's deadline ran out.
    for (status, content_type, code) in &outcome.refused {
        assert_eq!(status.as_u16(), 503, "refused {status} {code}");
        assert_eq!(content_type, "application/problem+json", "{status} {code}");
    }
    for id in &outcome.accepted {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM orders WHERE id = $1::uuid")
                .bind(id)
                .fetch_optional(&orders)
                .await?;
        assert!(
            matches!(state.as_deref(), Some("APPROVED" | "REJECTED")),
            "accepted order {id} is {state:?}"
        );
    }
    for product in PRODUCTS {
        let taken: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(i.quantity), 0)::bigint FROM orders o
             JOIN order_items i ON i.order_id = o.id
             WHERE o.state = 'APPROVED' AND i.product_id = $1::uuid",
        )
        .bind(product)
        .fetch_one(&orders)
        .await?;
        assert_eq!(
            api.stock(product).await?,
            initial[product] - taken,
            "stock of {product}"
        );
    }
    for queue in infra::durable_queues(&system.namespace) {
        if queue.ends_with(".dlq") {
            assert_eq!(
                infra::queue_depth(&queue).await?,
                0,
                "{queue} holds dead letters"
            );
        }
    }

    orders.close().await;
    system.stop().await?;
    tokio::task::spawn_blocking(move || drop(server)).await?;
    Ok(())
}
