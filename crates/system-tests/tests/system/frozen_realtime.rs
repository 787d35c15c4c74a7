//! A frozen realtime instance (`SIGSTOP`: its sockets and its broker
//! connection stay open, nothing answers) holds nothing back: the broker
//! keeps nothing for it beyond fixed bounds, orders keep being placed and
//! approved, and after `SIGCONT` its clients resume correctly, told of what
//! was shed. Realtime #0 runs in a child process
//! (`signalbox_system_tests::child`), the rest in this process.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use signalbox_system_tests::{products, Options, Socket, TestSystem, DEADLINE};

use crate::backpressure_helpers::{any_connection_blocked, publish_prices, queue_state, Resuming};

/// Orders placed (and approved) while the instance is frozen.
const ORDERS: usize = 6;
/// Price changes published meanwhile, for the `catalog` channel.
const PRICES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_realtime_instance_stalls_nothing_and_its_clients_resume() -> anyhow::Result<()> {
    let system = TestSystem::start_with(Options {
        realtime_process: Some(env!("CARGO_BIN_EXE_realtime-child").into()),
        // Prices older than this are shed: every one published during the
        // freeze is, once the instance thaws (placing the orders alone
        // takes longer).
        realtime_process_env: vec![(
            "APP__BACKPRESSURE__DROP_SUPERSEDED_AFTER_MS".into(),
            "300".into(),
        )],
        ..Options::default()
    })
    .await?;
    let api = &system.api;
    let user = api.new_user().await?;
    let user_channel = format!("user:{}", user.id);
    let child = system.realtime_process.as_ref().expect("a realtime child");

    // Clients of the instance about to freeze, and a watcher on the other.
    let mut orders_client =
        Resuming::open(&system.realtime[0], &user.access_token, &user_channel).await?;
    let mut prices_client =
        Resuming::open(&system.realtime[0], &user.access_token, "catalog").await?;
    let mut watcher = Socket::connect(&system.realtime[1], Some(&user.access_token)).await?;
    watcher.expect("welcome", DEADLINE).await?;
    watcher.subscribe(&user_channel, DEADLINE).await?;

    child.freeze()?;

    // Events keep flowing: prices change, orders are placed and approved.
    publish_prices(&system.namespace, products::LAMP, PRICES).await?;
    let mut placed = Vec::new();
    for _ in 0..ORDERS {
        let response = api.place_order(&user, &[(products::LAMP, 1)]).await?;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await?;
        let order_id = body["order_id"].as_str().expect("order_id").to_owned();
        watcher
            .wait_for(DEADLINE, |f| {
                f["type"] == "event"
                    && f["data"]["order_id"] == order_id.as_str()
                    && f["data"]["state"] == "APPROVED"
            })
            .await?;
        placed.push(order_id);
    }

    // The broker holds nothing back for the frozen instance: no publisher
    // is blocked by an alarm, the event log is bounded by age and size, and
    // the instance's own queue (its reply queue) is declared bounded, oldest
    // dropped first (what the broker does at that bound is proven in
    // crates/messaging/tests/broker/instance_queue.rs).
    assert!(!any_connection_blocked().await?, "a connection is blocked");
    let stream = system.namespace.queue("realtime.events");
    let (_, arguments) = queue_state(&stream).await?;
    assert!(
        arguments.contains("x-max-age") && arguments.contains("x-max-length-bytes"),
        "{stream}: {arguments}"
    );
    let reply_queue = child
        .output()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "reply queue ready")
        .and_then(|line| line["queue"].as_str().map(str::to_owned))
        .expect("the child logs its reply queue");
    let (_, arguments) = queue_state(&reply_queue).await?;
    assert!(
        arguments.contains("x-max-length") && arguments.contains("drop-head"),
        "{reply_queue}: {arguments}"
    );

    child.thaw()?;

    // The orders client gets every order's APPROVED, in order (resuming
    // with `recover` if the instance evicted it): nothing it must see is lost.
    let mut approved = HashSet::new();
    while approved.len() < ORDERS {
        let frame = orders_client.next(DEADLINE).await?;
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["data"]["state"] == "APPROVED" {
            approved.insert(frame["data"]["order_id"].as_str().unwrap_or("").to_owned());
        }
    }
    assert!(placed.iter().all(|id| approved.contains(id)));
    assert!(orders_client.resumes.iter().all(|recovered| *recovered));

    // The prices client: the old prices were shed, and once a fresh one
    // comes it is told so first.
    publish_prices(&system.namespace, products::LAMP, 1).await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let told = loop {
        let frame = prices_client.next(DEADLINE).await?;
        let kind = frame["type"].as_str().unwrap_or("").to_owned();
        *seen.entry(kind).or_default() += 1;
        if frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!(told["code"], "events_dropped", "{told}");
    assert!(
        seen.get("event").copied().unwrap_or(0) < PRICES,
        "not every old price was pushed: {seen:?}"
    );
    let shed = child
        .output()
        .iter()
        .any(|line| line.contains("dropping superseded events"));
    assert!(shed, "the first drop is logged");

    system.stop().await
}
