//! Chaos: orders keep flowing while the broker misbehaves, and afterwards
//! everything adds up.
//!
//! 200 orders are placed through the gateway in five waves of 40, with a
//! broker fault after each of the first four: connections force-closed
//! (`rabbitmqctl close_all_connections`) twice, then the broker application
//! stopped (`rabbitmqctl stop_app`) — the fourth wave is placed while it is
//! down — and started again, then connections force-closed once more. Each
//! wave starts as soon as the fault before it has happened, while the
//! services are reconnecting. Then every accepted order must end APPROVED or REJECTED, each
//! product's stock must equal its initial stock minus exactly the approved
//! quantities, every dead-letter queue must be empty, and both realtime
//! instances must push events again.
//!
//! This test disturbs every other user of the broker, so its target is left
//! out of `cargo test --workspace` (`test = false` in Cargo.toml) and
//! `scripts/test` runs it alone, after everything else:
//! `cargo test -p signalbox-system-tests --test chaos -- --nocapture`.
//! `SIGNALBOX_RABBITMQCTL` names the control command (default `rabbitmqctl`).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, RngExt, SeedableRng};
use reqwest::StatusCode;
use serde_json::Value;
use signalbox_messages::channels::Namespace;
use signalbox_system_tests::{
    api::User, infra, products, system::await_status, Api, Options, Socket, TestSystem, DEADLINE,
};
use signalbox_testkit::probe;
use tokio::{sync::Semaphore, task::JoinSet};

/// Five waves of 40 orders.
const WAVES: usize = 5;
const WAVE: usize = 40;
const ORDERS: usize = WAVES * WAVE;
const USERS: usize = 8;
/// Orders in flight at once, like a handful of busy browsers.
const CONCURRENCY: usize = 8;
/// How long the system may take to settle after the last fault.
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(180);

const ALL_PRODUCTS: [&str; 5] = [
    products::LAMP,
    "0193a4c0-0000-7000-8000-000000000002",
    "0193a4c0-0000-7000-8000-000000000003",
    products::TABLET,
    products::FLAG,
];

#[derive(Debug, Clone)]
struct Placed {
    user: usize,
    order_id: String,
    product: &'static str,
    quantity: i64,
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let program = std::env::var("SIGNALBOX_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let output = std::process::Command::new(&program).args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

async fn ctl(args: &'static [&'static str]) -> anyhow::Result<()> {
    println!("chaos: rabbitmqctl {}", args.join(" "));
    tokio::task::spawn_blocking(move || rabbitmqctl(args)).await?
}

/// The fault that follows wave `wave` (none after the last). While the
/// broker is stopped orders must report not-ready; the next wave is placed
/// in that state, and the broker is started again after it.
async fn fault_after(wave: usize, orders_ready: &str) -> anyhow::Result<()> {
    match wave {
        0 | 1 => ctl(&["close_all_connections", "chaos test"]).await,
        2 => {
            ctl(&["stop_app"]).await?;
            await_status(orders_ready, StatusCode::SERVICE_UNAVAILABLE).await?;
            println!("chaos: orders reports not ready while the broker is down");
            Ok(())
        }
        3 => {
            ctl(&["start_app"]).await?;
            await_status(orders_ready, StatusCode::OK).await?;
            println!("chaos: orders is ready again");
            ctl(&["close_all_connections", "chaos test"]).await
        }
        _ => Ok(()),
    }
}

/// Places one wave of orders, [`CONCURRENCY`] at a time.
async fn wave(
    api: &Api,
    users: &Arc<Vec<User>>,
    seed: u64,
    indices: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Placed>> {
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut workload = JoinSet::new();
    for index in indices {
        let permit = limit.clone().acquire_owned().await?;
        let (api, users) = (api.clone(), users.clone());
        workload.spawn(async move {
            let _permit = permit;
            place(&api, &users, seed, index).await
        });
    }
    let mut accepted = Vec::new();
    while let Some(placed) = workload.join_next().await {
        accepted.extend(placed??);
    }
    Ok(accepted)
}

/// Places one order; `None` when the gateway did not accept it.
async fn place(
    api: &Api,
    users: &[User],
    rng_seed: u64,
    index: usize,
) -> anyhow::Result<Option<Placed>> {
    let mut rng = StdRng::seed_from_u64(rng_seed.wrapping_add(index as u64));
    let user = rng.random_range(0..users.len());
    let product = ALL_PRODUCTS[rng.random_range(0..ALL_PRODUCTS.len())];
    let quantity = rng.random_range(1..=3);
    let response = api
        .place_order(&users[user], &[(product, quantity)])
        .await?;
    if response.status() != StatusCode::ACCEPTED {
        println!("chaos: order {index} not accepted: {}", response.status());
        return Ok(None);
    }
    let body: Value = response.json().await?;
    let order_id = body["order_id"].as_str().unwrap_or_default().to_owned();
    Ok(Some(Placed {
        user,
        order_id,
        product,
        quantity,
    }))
}

/// The state of every order of every user, by order id.
async fn states(api: &Api, users: &[User]) -> anyhow::Result<HashMap<String, String>> {
    let mut states = HashMap::new();
    for user in users {
        let listed: Value = api
            .http()
            .get(api.url("/api/orders"))
            .bearer_auth(&user.access_token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for order in listed["orders"].as_array().into_iter().flatten() {
            states.insert(
                order["id"].as_str().unwrap_or_default().to_owned(),
                order["state"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    Ok(states)
}

/// Every dead-letter and retry queue of the namespace, with its depth.
async fn dead_letters(ns: &Namespace) -> anyhow::Result<Vec<(String, u32)>> {
    let mut depths = Vec::new();
    for queue in infra::durable_queues(ns) {
        if queue.ends_with(".dlq") {
            depths.push((queue.clone(), infra::queue_depth(&queue).await?));
        }
    }
    Ok(depths)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_order_settles_and_stock_adds_up_despite_broker_faults() -> anyhow::Result<()>
{
    let system = TestSystem::start_with(Options {
        // The whole load comes from one address and a few users, far
        // above what the edge lets one client send: this test is about
        // the broker, so the edge's rate limits stay out of its way.
        gateway: Some(Box::new(signalbox_system_tests::lift_rate_limits)),
        ..Options::default()
    })
    .await?;
    let api = system.api.clone();
    let seed: u64 = rand::rng().random();
    println!("chaos: seed {seed}");

    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(api.new_user().await?);
    }
    let users = Arc::new(users);
    let mut initial = HashMap::new();
    for product in ALL_PRODUCTS {
        initial.insert(product, api.stock(product).await?);
    }

    // Act: waves of orders, each followed by a fault; every wave after the
    // first starts while the services reconnect after the fault before it
    // (the fourth while the broker is down).
    let orders_ready = system
        .ready_url("orders")
        .ok_or_else(|| anyhow::anyhow!("no orders instance"))?;
    let mut accepted = Vec::new();
    let mut last_fault = Instant::now();
    for number in 0..WAVES {
        accepted.extend(wave(&api, &users, seed, number * WAVE..(number + 1) * WAVE).await?);
        if number + 1 < WAVES {
            fault_after(number, &orders_ready).await?;
            last_fault = Instant::now();
        }
    }
    println!("chaos: {} orders accepted", accepted.len());

    // Await convergence: no accepted order left PENDING (probing the public
    // API with a deadline, as a client would).
    let settled = probe::until("every order decided", CONVERGENCE_DEADLINE, || async {
        let states = states(&api, &users).await?;
        let pending = accepted
            .iter()
            .filter(|p| states.get(&p.order_id).is_none_or(|s| s == "PENDING"))
            .count();
        Ok(if pending == 0 {
            Ok(states)
        } else {
            Err(format!("{pending} pending"))
        })
    })
    .await?;
    let converged_after = last_fault.elapsed();

    // Assert: every order decided, stock = initial - approved, no dead letters.
    let approved: Vec<&Placed> = accepted
        .iter()
        .filter(|p| settled[&p.order_id] == "APPROVED")
        .collect();
    let rejected = accepted
        .iter()
        .filter(|p| settled[&p.order_id] == "REJECTED")
        .count();
    let lost = accepted.len() - approved.len() - rejected;
    println!(
        "chaos: accepted {} / approved {} / rejected {} / lost {lost}; converged {:.1} s after the last fault",
        accepted.len(),
        approved.len(),
        rejected,
        converged_after.as_secs_f64()
    );
    assert!(
        accepted.len() >= ORDERS,
        "every order was accepted (202) even while the broker was down"
    );
    assert_eq!(lost, 0);
    for product in ALL_PRODUCTS {
        let taken: i64 = approved
            .iter()
            .filter(|p| p.product == product)
            .map(|p| p.quantity)
            .sum();
        let stock = api.stock(product).await?;
        assert_eq!(stock, initial[product] - taken, "stock of {product}");
    }
    let users_with_orders = accepted
        .iter()
        .map(|p| p.user)
        .collect::<std::collections::HashSet<_>>();
    assert!(users_with_orders.len() > 1);
    for (queue, depth) in dead_letters(&system.namespace).await? {
        assert_eq!(depth, 0, "{queue} holds dead letters");
    }

    // Every realtime instance lost its private queue with the broker; each
    // must have declared a new one and push events again.
    system.wait_until_ready().await?;
    let watcher = &users[0];
    let mut sockets = Vec::new();
    for url in &system.realtime {
        let mut socket = Socket::connect(url, Some(&watcher.access_token)).await?;
        socket.expect("welcome", DEADLINE).await?;
        let answer = socket
            .subscribe(&format!("user:{}", watcher.id), DEADLINE)
            .await?;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        sockets.push(socket);
    }
    let placed = api.place_order(watcher, &[(products::LAMP, 1)]).await?;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let order_id = placed.json::<Value>().await?["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for socket in &mut sockets {
        socket
            .wait_for(DEADLINE, |frame| {
                frame["type"] == "event" && frame["data"]["order_id"] == order_id.as_str()
            })
            .await?;
    }
    println!("chaos: every realtime instance pushes events again");

    system.stop().await
}
