//! Recovery of missed events from the event log (a RabbitMQ stream): on
//! another instance, after an instance is aborted, after every instance
//! restarted; and `recovered: false` when it cannot be done.

use serde_json::{json, Value};
use signalbox_messages::{orders::OrderApproved, Envelope, Message as _};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, Client, TestApp};

/// The next event frame of `client`, as (order id, offset).
async fn event(client: &mut Client) -> (String, u64) {
    let frame = client.next_frame().await;
    assert_eq!(frame["type"], "event", "{frame}");
    order_and_offset(&frame)
}

fn order_and_offset(frame: &Value) -> (String, u64) {
    (
        frame["data"]["order_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        frame["offset"].as_u64().expect("an offset"),
    )
}

/// Publishes `n` events for `user`, with one for someone else between each
/// (the log holds every channel; a replay keeps only the one asked for).
async fn publish_for(app: &TestApp, user: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        app.publish_order_approved("someone-else").await;
        ids.push(app.publish_order_approved(user).await.to_string());
    }
    ids
}

/// Waits until instance `index` has handled everything published so far:
/// a watcher socket there sees an event published after all of it (the
/// log is read in order).
async fn caught_up(app: &TestApp, index: usize) {
    let mut watcher = app.client_on(index, "watcher").await;
    watcher.subscribe("user:watcher").await;
    let mark = app.publish_order_approved("watcher").await.to_string();
    assert_eq!(event(&mut watcher).await.0, mark);
}

#[tokio::test]
async fn a_client_recovers_its_missed_events_on_another_instance_in_order_before_live_ones() {
    let mut app = spawn_app().await;
    let second = app.add_instance().await;
    let mut first = app.client_on(0, "ada").await;
    first.subscribe("user:ada").await;
    publish_for(&app, "ada", 2).await;
    event(&mut first).await;
    let (_, last_seen) = event(&mut first).await;
    drop(first);

    // Missed while disconnected, and handled by the second instance
    // before the client comes back to it: they must come from the log.
    let missed = publish_for(&app, "ada", 3).await;
    caught_up(&app, second).await;

    let mut again = app.client_on(second, "ada").await;
    let subscribed = again
        .recover("user:ada", &app.instances[0].epoch, last_seen)
        .await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");

    let mut offsets = vec![last_seen];
    let mut orders = Vec::new();
    for _ in 0..missed.len() {
        let (order, offset) = event(&mut again).await;
        orders.push(order);
        offsets.push(offset);
    }
    assert_eq!(orders, missed, "exactly the missed events, in order");
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    // Then live ones.
    let live = app.publish_order_approved("ada").await.to_string();
    assert_eq!(event(&mut again).await.0, live);
    app.cleanup().await;
}

#[tokio::test]
async fn a_client_of_an_aborted_instance_recovers_on_another() {
    let mut app = spawn_app().await;
    let second = app.add_instance().await;
    let mut client = app.client_on(0, "ada").await;
    client.subscribe("user:ada").await;
    publish_for(&app, "ada", 1).await;
    let (_, last_seen) = event(&mut client).await;

    // Events keep coming; the instance is aborted among them, as a killed
    // process would be: no shutdown, no close frames.
    let mut missed = publish_for(&app, "ada", 1).await;
    let aborted = app.instances.remove(0);
    aborted.handle.abort();
    let _ = aborted.handle.await;
    missed.extend(publish_for(&app, "ada", 2).await);
    drop(client);
    let other = second - 1;
    caught_up(&app, other).await;

    let mut again = app.client_on(other, "ada").await;
    let subscribed = again.recover("user:ada", &aborted.epoch, last_seen).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let mut orders = Vec::new();
    for _ in 0..missed.len() {
        orders.push(event(&mut again).await.0);
    }
    assert_eq!(orders, missed);
    app.cleanup().await;
}

#[tokio::test]
async fn a_client_recovers_after_every_instance_restarted() {
    let mut app = spawn_app().await;
    app.add_instance().await;
    let mut client = app.client_on(1, "ada").await;
    client.subscribe("user:ada").await;
    publish_for(&app, "ada", 1).await;
    let (_, last_seen) = event(&mut client).await;
    let epoch = app.instances[0].epoch.clone();
    drop(client);

    // Every instance stops; events published meanwhile wait in the log.
    app.stop_instances().await;
    let missed = publish_for(&app, "ada", 2).await;
    app.add_instance().await;
    app.add_instance().await;
    assert_eq!(
        app.instances[0].epoch, epoch,
        "the log and its epoch outlive the instances"
    );

    let mut again = app.client_on(1, "ada").await;
    let subscribed = again.recover("user:ada", &epoch, last_seen).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let mut orders = Vec::new();
    for _ in 0..missed.len() {
        orders.push(event(&mut again).await.0);
    }
    assert_eq!(orders, missed);
    app.cleanup().await;
}

#[tokio::test]
async fn an_unknown_epoch_is_not_recovered_and_live_events_follow() {
    let app = spawn_app().await;
    let mut client = app.client("ada").await;

    let subscribed = client.recover("user:ada", "not-this-log", 3).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["epoch"], app.instances[0].epoch);

    let live = app.publish_order_approved("ada").await.to_string();
    assert_eq!(event(&mut client).await.0, live);
    app.cleanup().await;
}

#[tokio::test]
async fn more_missed_events_than_the_window_keeps_is_not_recovered() {
    let app = spawn_app_with(|settings| settings.recovery.max_events = 2).await;
    let mut client = app.client("ada").await;
    client.subscribe("user:ada").await;
    publish_for(&app, "ada", 1).await;
    let (_, last_seen) = event(&mut client).await;
    drop(client);

    publish_for(&app, "ada", 3).await;
    caught_up(&app, 0).await;

    let mut again = app.client("ada").await;
    let subscribed = again
        .recover("user:ada", &app.instances[0].epoch, last_seen)
        .await;
    assert_eq!(
        subscribed["recovered"], false,
        "three missed, two kept: {subscribed}"
    );
    let live = app.publish_order_approved("ada").await.to_string();
    assert_eq!(
        event(&mut again).await.0,
        live,
        "no replay, live events only"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn missed_events_older_than_the_window_are_not_recovered() {
    let app = spawn_app_with(|settings| settings.recovery.max_age_secs = 600).await;
    let mut client = app.client("ada").await;
    client.subscribe("user:ada").await;
    publish_for(&app, "ada", 1).await;
    let (_, last_seen) = event(&mut client).await;
    drop(client);

    // The first missed event happened an hour ago (its envelope says so,
    // as a message held up in an outbox would).
    let mut envelope = Envelope::new::<OrderApproved>().with_user_id("ada");
    envelope.occurred_at = chrono::Utc::now() - chrono::Duration::hours(1);
    let payload = json!({"order_id": Uuid::now_v7(), "user_id": "ada", "state": "APPROVED"});
    app.publish(OrderApproved::TYPE, &envelope, &payload).await;
    caught_up(&app, 0).await;

    let mut again = app.client("ada").await;
    let subscribed = again
        .recover("user:ada", &app.instances[0].epoch, last_seen)
        .await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_client_ahead_of_the_instance_is_recovered_without_replays_or_repeats() {
    let app = spawn_app().await;
    let mut client = app.client("ada").await;
    client.subscribe("user:ada").await;
    publish_for(&app, "ada", 1).await;
    let (_, offset) = event(&mut client).await;

    // A position this instance has not reached (the client saw it on a
    // faster one): nothing to replay, and what it has is not sent again.
    let mut other = app.client("ada").await;
    let subscribed = other
        .recover("user:ada", &app.instances[0].epoch, offset + 1_000_000)
        .await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    app.cleanup().await;
}

/// Closes, on the broker, every connection named `name` (what
/// `Broker::connect` calls it: `<namespace>/<client>`), with `rabbitmqctl`
/// (`SIGNALBOX_RABBITMQCTL` names another command).
async fn close_broker_connections(name: String) -> usize {
    tokio::task::spawn_blocking(move || {
        let program =
            std::env::var("SIGNALBOX_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
        let listed = std::process::Command::new(&program)
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .unwrap_or_else(|e| panic!("`{program}` must run to cut the instance off: {e}"));
        assert!(listed.status.success(), "list_connections: {listed:?}");
        let wanted = format!("{{\"connection_name\",\"{name}\"}}");
        let pids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|line| line.contains(&wanted))
            .filter_map(|line| line.split('\t').next().map(str::to_owned))
            .collect();
        for pid in &pids {
            let closed = std::process::Command::new(&program)
                .args(["close_connection", pid, "cut off by a test"])
                .output()
                .expect("rabbitmqctl runs");
            assert!(closed.status.success(), "close_connection: {closed:?}");
        }
        pids.len()
    })
    .await
    .expect("the rabbitmqctl task")
}

// Needs `rabbitmqctl` (or `SIGNALBOX_RABBITMQCTL`) able to control the test
// broker, as scripts/services sets it up. It closes only the connection named
// by this test's namespace, so it runs beside the other tests.
#[tokio::test]
async fn events_published_while_an_instance_is_cut_off_reach_its_sockets_afterwards() {
    let app = spawn_app().await;
    let mut client = app.client("ada").await;
    client.subscribe("user:ada").await;
    publish_for(&app, "ada", 1).await;
    event(&mut client).await;

    // The instance loses the broker; the socket stays open. What is
    // published now cannot reach an instance queue that no longer exists,
    // but it is in the log, and the consumer resumes after the last offset
    // it handled.
    let closed = close_broker_connections(format!("{}/realtime", app.namespace)).await;
    assert!(closed >= 1, "the instance's connection was found");
    let missed = publish_for(&app, "ada", 2).await;

    let mut orders = Vec::new();
    for _ in 0..missed.len() {
        orders.push(event(&mut client).await.0);
    }
    assert_eq!(orders, missed);
    app.cleanup().await;
}
