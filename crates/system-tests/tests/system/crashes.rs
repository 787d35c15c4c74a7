//! Killed processes lose nothing and do nothing twice.
//!
//! Orders, catalog and the first realtime instance run in child processes
//! of their own (`signalbox_system_tests::child`); the rest of the system
//! runs in the test's process. While orders are placed continuously through
//! the gateway, the test kills, one after another:
//!
//! 1. catalog at its fault point `catalog.command.committed` (armed with
//!    `SIGNALBOX_TEST_ABORT_AT`): a reservation has committed with its
//!    reply in the outbox, the command is not acked, the reply not
//!    published. The kill lands exactly there, not where a timer guesses;
//! 2. orders with `SIGKILL`, wherever its saga is;
//! 3. orders at its fault point `orders.reply.committed`: a decision has
//!    committed with its event in the outbox, the reply is not acked, the
//!    event not published (between commit and publish);
//! 4. catalog with `SIGKILL`, wherever its reservations are;
//! 5. the realtime instance that holds a watcher's socket, with `SIGKILL`.
//!
//! Each is started again as a supervisor would (same binary, settings and
//! ports). Afterwards: every order in the orders database is APPROVED or
//! REJECTED (also those whose 202 was lost with the process), each
//! product's stock is its initial stock minus exactly the approved
//! quantities, catalog holds one reservation per approved order and no
//! other, both outboxes are drained, every dead-letter queue is empty, and
//! the watcher's socket, reconnected with `recover`, was told `recovered:
//! true` and saw the decision of every one of the watcher's orders.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};
use signalbox_platform::faults::points;
use signalbox_system_tests::{
    child::ABORT_AT, socket::Received, Options, Socket, TestSystem, DEADLINE,
};
use signalbox_testkit::probe;
use tokio_util::sync::CancellationToken;

use crate::steady_load::{unpublished, Books, Load};

/// How long the whole system may take to settle after the last kill.
const SETTLE: Duration = Duration::from_secs(90);

/// Reads events from `socket` into `seen` (order id → states), keeping the
/// position of the last one, until the socket closes or `stop`.
async fn watch(
    mut socket: Socket,
    seen: Arc<Mutex<HashMap<String, HashSet<String>>>>,
    last: Arc<Mutex<Option<Value>>>,
    stop: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = socket.receive(Duration::from_secs(3600)) => received,
        };
        match received {
            Ok(Received::Frame(frame)) if frame["type"] == "event" => {
                let data = &frame["data"];
                if let (Some(id), Some(state)) = (data["order_id"].as_str(), data["state"].as_str())
                {
                    seen.lock()
                        .expect("not poisoned")
                        .entry(id.to_owned())
                        .or_default()
                        .insert(state.to_owned());
                }
                *last.lock().expect("not poisoned") =
                    Some(json!({"epoch": frame["epoch"], "offset": frame["offset"]}));
            }
            Ok(Received::Frame(_)) => {}
            Ok(Received::Closed(_)) | Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_services_lose_nothing_and_do_nothing_twice() -> anyhow::Result<()> {
    let mut system = TestSystem::start_with(Options {
        catalog_process: Some(env!("CARGO_BIN_EXE_catalog-child").into()),
        orders_process: Some(env!("CARGO_BIN_EXE_orders-child").into()),
        realtime_process: Some(env!("CARGO_BIN_EXE_realtime-child").into()),
        // Catalog dies at its third committed command (orders has no such
        // point, so the same variable leaves it alone).
        child_env: vec![(
            ABORT_AT.into(),
            format!("{}@3", points::CATALOG_COMMAND_COMMITTED),
        )],
        // The load comes from one address: the edge's limits stay out
        // of the way of a test about crashes.
        gateway: Some(Box::new(signalbox_system_tests::lift_rate_limits)),
        ..Options::default()
    })
    .await?;
    let api = system.api.clone();
    let books = Books::open(
        &api,
        &system.database_url("orders").expect("orders db"),
        &system.database_url("catalog").expect("catalog db"),
    )
    .await?;
    let users = Arc::new(vec![
        api.new_user().await?,
        api.new_user().await?,
        api.new_user().await?,
    ]);
    let watcher = users[0].clone();
    let channel = format!("user:{}", watcher.id);

    // The watcher's socket on the realtime instance that will be killed.
    let seen = Arc::new(Mutex::new(HashMap::<String, HashSet<String>>::new()));
    let last = Arc::new(Mutex::new(None));
    let stop_watching = CancellationToken::new();
    let mut socket = Socket::connect(&system.realtime[0], Some(&watcher.access_token)).await?;
    socket.expect("welcome", DEADLINE).await?;
    assert_eq!(
        socket.subscribe(&channel, DEADLINE).await?["type"],
        "subscribed"
    );
    let first_watch = tokio::spawn(watch(
        socket,
        seen.clone(),
        last.clone(),
        stop_watching.clone(),
    ));

    let load = Load::start(&api, &users);

    // 1. Catalog aborts at its third committed command: committed, not acked.
    let catalog = system.catalog_process.as_mut().expect("catalog child");
    let status = catalog.exited().await?;
    assert!(
        !status.success(),
        "catalog aborted at its fault point: {status}; its output: {:?}",
        catalog.output()
    );
    assert!(
        unpublished(&books.catalog).await? >= 1,
        "a committed reply waits in catalog's outbox"
    );
    println!("crashes: catalog aborted after a commit; restarting it");
    catalog
        .restart(|env| env.retain(|(key, _)| key != ABORT_AT))
        .await?;
    books
        .await_progress("orders decided after catalog's restart")
        .await?;

    // 2. Orders killed wherever it is.
    let orders = system.orders_process.as_mut().expect("orders child");
    orders.kill().await?;
    println!(
        "crashes: orders killed; restarting it armed at {}",
        points::ORDERS_REPLY_COMMITTED
    );
    // 3. ... and started armed: it aborts at its second committed decision.
    orders
        .restart(|env| {
            env.retain(|(key, _)| key != ABORT_AT);
            env.push((
                ABORT_AT.into(),
                format!("{}@2", points::ORDERS_REPLY_COMMITTED),
            ));
        })
        .await?;
    let status = orders.exited().await?;
    assert!(
        !status.success(),
        "orders aborted at its fault point: {status}; its output: {:?}",
        orders.output()
    );
    assert!(
        unpublished(&books.orders).await? >= 1,
        "a committed decision waits in orders' outbox"
    );
    println!("crashes: orders aborted between commit and publish; restarting it");
    orders
        .restart(|env| env.retain(|(key, _)| key != ABORT_AT))
        .await?;
    books
        .await_progress("orders decided after orders' restart")
        .await?;

    // 4. Catalog killed wherever it is.
    let catalog = system.catalog_process.as_mut().expect("catalog child");
    catalog.kill().await?;
    println!("crashes: catalog killed; restarting it");
    catalog.restart(|_| {}).await?;
    books
        .await_progress("orders decided after catalog's second restart")
        .await?;

    // 5. The watcher's realtime instance killed: the socket drops.
    let realtime = system.realtime_process.as_mut().expect("realtime child");
    realtime.kill().await?;
    tokio::time::timeout(DEADLINE, first_watch).await??;
    let position = last.lock().expect("not poisoned").clone();
    println!("crashes: realtime killed at {position:?}; restarting it");
    realtime.restart(|_| {}).await?;
    books
        .await_progress("orders decided after realtime's restart")
        .await?;

    // The socket comes back (to the same address: the restarted instance)
    // and recovers from the last event it saw.
    let mut socket = Socket::connect(&system.realtime[0], Some(&watcher.access_token)).await?;
    socket.expect("welcome", DEADLINE).await?;
    let mut subscribe = json!({"type": "subscribe", "channel": channel});
    if let Some(position) = &position {
        subscribe["recover"] = position.clone();
    }
    socket.send(subscribe).await?;
    let answer = socket
        .wait_for(DEADLINE, |f| {
            f["type"] == "subscribed" || f["type"] == "error"
        })
        .await?;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    if position.is_some() {
        assert_eq!(answer["recovered"], true, "{answer}");
    }
    let second_watch = tokio::spawn(watch(
        socket,
        seen.clone(),
        last.clone(),
        stop_watching.clone(),
    ));

    let accepted = load.finish().await?.accepted;
    println!(
        "crashes: {} orders accepted under the kills",
        accepted.len()
    );

    books.settle(SETTLE).await?;
    assert!(
        accepted.len() >= 10,
        "the load kept going: {}",
        accepted.len()
    );
    let tally = books.check(&api, &accepted, &system.namespace).await?;

    // The watcher saw every one of its orders decided, across the kill of
    // its realtime instance (live or recovered).
    let watcher_orders: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, state FROM orders WHERE user_id = $1")
            .bind(&watcher.id)
            .fetch_all(&books.orders)
            .await?;
    probe::until("the watcher saw every decision", DEADLINE, || async {
        let seen = seen.lock().expect("not poisoned");
        let missing = watcher_orders
            .iter()
            .filter(|(id, state)| !seen.get(&id.to_string()).is_some_and(|s| s.contains(state)))
            .count();
        Ok(if missing == 0 {
            Ok(())
        } else {
            Err(format!(
                "{missing} of {} decisions not seen",
                watcher_orders.len()
            ))
        })
    })
    .await?;
    stop_watching.cancel();
    second_watch.await?;
    println!(
        "crashes: {} orders, {} approved, {} decisions seen by the watcher",
        tally.orders,
        tally.approved,
        watcher_orders.len()
    );

    books.close().await;
    system.stop().await
}
