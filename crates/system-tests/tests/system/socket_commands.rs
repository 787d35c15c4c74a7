//! Commands from sockets to orders and back (DESIGN §1 "messages from
//! clients go to the backend through a competing-consumer queue so exactly
//! one backend instance handles each, and the reply finds its way back to
//! the socket"): realtime publishes `command` frames on the inbound
//! exchange, two orders instances compete for `<ns>.orders.inbound`, and
//! each reply comes back to the instance, and the socket, that sent it.
//!
//! The realtime side alone (timeout, a late reply dropped, rate limit,
//! unknown command) is proven in `crates/realtime/tests/api/commands.rs`.

use std::collections::{HashMap, HashSet};

use reqwest::StatusCode;
use serde_json::{json, Value};
use signalbox_system_tests::{api::User, products, Options, Socket, TestSystem, DEADLINE};

use crate::auth_helpers::post_form;

async fn socket_for(system: &TestSystem, instance: usize, token: &str) -> anyhow::Result<Socket> {
    let mut socket = Socket::connect(&system.realtime[instance], Some(token)).await?;
    socket.expect("welcome", DEADLINE).await?;
    Ok(socket)
}

fn place(id: &str, product: &str, quantity: i64) -> Value {
    json!({"type": "command", "id": id, "name": "order.place",
           "data": {"items": [{"product_id": product, "quantity": quantity}]}})
}

fn cancel(id: &str, order_id: &str) -> Value {
    json!({"type": "command", "id": id, "name": "order.cancel", "data": {"order_id": order_id}})
}

/// Sends `command` and waits for the reply with its id.
async fn call(socket: &mut Socket, command: Value) -> anyhow::Result<Value> {
    let id = command["id"].clone();
    socket.send(command).await?;
    socket
        .wait_for(DEADLINE, |frame| {
            frame["type"] == "reply" && frame["id"] == id
        })
        .await
}

async fn orders_of(system: &TestSystem, user: &User) -> anyhow::Result<Vec<Value>> {
    let api = &system.api;
    let listed = api
        .http()
        .get(api.url("/api/orders"))
        .bearer_auth(&user.access_token)
        .send()
        .await?;
    anyhow::ensure!(
        listed.status() == StatusCode::OK,
        "list: {}",
        listed.status()
    );
    let body: Value = listed.json().await?;
    Ok(body["orders"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_commands_over_two_competing_orders_instances_are_each_handled_once_and_answered_on_their_socket(
) -> anyhow::Result<()> {
    const PER_SOCKET: usize = 12;
    let system = TestSystem::start_with(Options {
        orders_instances: 2,
        ..Options::default()
    })
    .await?;
    let ada = system.api.new_user().await?;
    let bob = system.api.new_user().await?;
    // Ada has a socket on each realtime instance, Bob one: a reply must
    // reach the very socket that sent its command, not just the user.
    let mut sockets = vec![
        (
            "ada0",
            &ada,
            socket_for(&system, 0, &ada.access_token).await?,
        ),
        (
            "ada1",
            &ada,
            socket_for(&system, 1, &ada.access_token).await?,
        ),
        (
            "bob1",
            &bob,
            socket_for(&system, 1, &bob.access_token).await?,
        ),
    ];

    // Every socket sends all its commands at once, then resends the first
    // three ids (a client retrying): one effect, the same reply.
    for (name, _, socket) in &mut sockets {
        for n in 0..PER_SOCKET {
            socket
                .send(place(&format!("{name}-{n}"), products::LAMP, 1))
                .await?;
        }
        for n in 0..3 {
            socket
                .send(place(&format!("{name}-{n}"), products::LAMP, 1))
                .await?;
        }
    }

    let mut order_ids = HashSet::new();
    for (name, _, socket) in &mut sockets {
        let mut replies: HashMap<String, Vec<Value>> = HashMap::new();
        while replies.values().map(Vec::len).sum::<usize>() < PER_SOCKET + 3 {
            let reply = socket.expect("reply", DEADLINE).await?;
            let id = reply["id"].as_str().unwrap_or_default().to_owned();
            assert!(id.starts_with(&format!("{name}-")), "{name} got {reply}");
            assert_eq!(reply["ok"], true, "{reply}");
            assert_eq!(reply["data"]["state"], "PENDING", "{reply}");
            replies.entry(id).or_default().push(reply["data"].clone());
        }
        assert_eq!(replies.len(), PER_SOCKET, "{name}: one answer per id");
        for (id, answers) in &replies {
            assert!(
                answers.iter().all(|a| *a == answers[0]),
                "{id}: a resent command gets the same reply: {answers:?}"
            );
            assert!(
                order_ids.insert(answers[0]["order_id"].clone()),
                "{id}: a new order"
            );
        }
    }

    // Exactly one order per command id, whatever was resent or redelivered.
    let ada_orders = orders_of(&system, &ada).await?;
    let bob_orders = orders_of(&system, &bob).await?;
    assert_eq!(ada_orders.len(), 2 * PER_SOCKET);
    assert_eq!(bob_orders.len(), PER_SOCKET);
    let stored: HashSet<Value> = ada_orders
        .iter()
        .chain(&bob_orders)
        .map(|order| order["id"].clone())
        .collect();
    assert_eq!(stored, order_ids, "the replies name the stored orders");
    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_command_follows_the_rest_rules_and_a_resent_one_has_one_effect(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let ada = system.api.new_user().await?;
    let eve = system.api.new_user().await?;
    let mut socket = socket_for(&system, 0, &ada.access_token).await?;
    let mut eves = socket_for(&system, 1, &eve.access_token).await?;

    let placed = call(&mut socket, place("p", products::LAMP, 1)).await?;
    let order_id = placed["data"]["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // Another user's order is not found, exactly like one that does not exist.
    let foreign = call(&mut eves, cancel("x", &order_id)).await?;
    assert_eq!(foreign["error"]["code"], "not_found", "{foreign}");
    let missing = call(&mut socket, cancel("m", &uuid::Uuid::now_v7().to_string())).await?;
    assert_eq!(missing["error"]["code"], "not_found", "{missing}");

    let cancelled = call(&mut socket, cancel("c", &order_id)).await?;
    assert_eq!(
        cancelled["data"],
        json!({"order_id": order_id, "state": "CANCELLED"}),
        "{cancelled}"
    );
    // The same id again: the stored reply, not "a CANCELLED order cannot be
    // cancelled"; a new id is a new command, and that is its answer.
    let resent = call(&mut socket, cancel("c", &order_id)).await?;
    assert_eq!(resent, cancelled);
    let again = call(&mut socket, cancel("c2", &order_id)).await?;
    assert_eq!(again["error"]["code"], "failed_precondition", "{again}");
    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_unknown_commands_and_missing_scopes_are_refused_with_their_codes(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let ada = system.api.new_user().await?;
    let mut socket = socket_for(&system, 0, &ada.access_token).await?;

    let unknown = call(
        &mut socket,
        json!({"type": "command", "id": "u", "name": "order.frobnicate", "data": {}}),
    )
    .await?;
    assert_eq!(unknown["error"]["code"], "unknown_command", "{unknown}");

    for (id, data, what) in [
        ("b1", json!({}), "items"),
        ("b2", json!({"items": []}), "at least one item"),
        (
            "b3",
            json!({"items": [{"product_id": "nope", "quantity": 1}]}),
            "not a valid",
        ),
        (
            "b4",
            json!({"items": [{"product_id": products::LAMP, "quantity": 0}]}),
            "between",
        ),
    ] {
        let reply = call(
            &mut socket,
            json!({"type": "command", "id": id, "name": "order.place", "data": data}),
        )
        .await?;
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(what),
            "{id}: says what is wrong: {message}"
        );
    }
    let bad_id = call(&mut socket, cancel("b5", "not-an-id")).await?;
    assert_eq!(bad_id["error"]["code"], "bad_request", "{bad_id}");

    // A token without `orders:write` (a read-only service account).
    let pool = sqlx::PgPool::connect(&system.database_url("auth").expect("auth db")).await?;
    let secret = signalbox_auth::clients::create(&pool, "reader", "orders:read")
        .await?
        .secret;
    pool.close().await;
    let issued: Value = post_form(
        &system.api,
        "/oauth/token",
        &[("grant_type", "client_credentials")],
        Some(("reader", &secret)),
    )
    .await?
    .json()
    .await?;
    let token = issued["access_token"].as_str().unwrap_or_default();
    let mut reader = socket_for(&system, 1, token).await?;
    let refused = call(&mut reader, place("f", products::LAMP, 1)).await?;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    system.stop().await
}
