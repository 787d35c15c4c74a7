//! DESIGN §5: an order goes PENDING → APPROVED (or REJECTED) live on a socket.

use reqwest::StatusCode;
use serde_json::Value;
use signalbox_system_tests::{products, Socket, TestSystem, DEADLINE};

/// Waits on `socket` for the event that carries `order_id` in `state`.
async fn order_event(socket: &mut Socket, order_id: &str, state: &str) -> anyhow::Result<Value> {
    socket
        .wait_for(DEADLINE, |frame| {
            frame["type"] == "event"
                && frame["data"]["order_id"] == order_id
                && frame["data"]["state"] == state
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_goes_pending_then_approved_live_on_the_socket() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let user = api.new_user().await?;
    let stock_before = api.stock(products::LAMP).await?;

    // The socket is on the second realtime instance: the event reaches it
    // because every instance consumes its own copy of the events.
    let mut socket = Socket::connect(&system.realtime[1], Some(&user.access_token)).await?;
    socket.expect("welcome", DEADLINE).await?;
    let subscribed = socket
        .subscribe(&format!("user:{}", user.id), DEADLINE)
        .await?;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");

    let placed = api.place_order(&user, &[(products::LAMP, 2)]).await?;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let body: Value = placed.json().await?;
    assert_eq!(body["state"], "PENDING");
    let order_id = body["order_id"].as_str().expect("order_id").to_owned();

    let pending = order_event(&mut socket, &order_id, "PENDING").await?;
    let approved = order_event(&mut socket, &order_id, "APPROVED").await?;
    assert_eq!(approved["channel"], format!("user:{}", user.id));
    assert!(
        approved["offset"].as_u64() > pending["offset"].as_u64(),
        "offsets grow: {pending} then {approved}"
    );

    // The aggregated view through the gateway agrees, with product details.
    let order: Value = api.get_order(&user, &order_id).await?.json().await?;
    assert_eq!(order["state"], "APPROVED");
    assert_eq!(order["total_cents"], 2 * 4900);
    assert_eq!(order["items"][0]["product"]["sku"], "SIG-LAMP");
    assert_eq!(order["degraded"], false);
    // Stock was reserved exactly once.
    assert_eq!(api.stock(products::LAMP).await?, stock_before - 2);

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_beyond_stock_is_rejected_and_takes_nothing() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let user = api.new_user().await?;
    let stock_before = api.stock(products::FLAG).await?;

    let mut socket = Socket::connect(&system.realtime[0], Some(&user.access_token)).await?;
    socket.expect("welcome", DEADLINE).await?;
    socket
        .subscribe(&format!("user:{}", user.id), DEADLINE)
        .await?;

    let placed = api
        .place_order(&user, &[(products::FLAG, stock_before + 1)])
        .await?;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let order_id = placed.json::<Value>().await?["order_id"]
        .as_str()
        .expect("order_id")
        .to_owned();

    let rejected = order_event(&mut socket, &order_id, "REJECTED").await?;
    assert!(
        rejected["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("insufficient stock")),
        "{rejected}"
    );
    let order: Value = api.get_order(&user, &order_id).await?.json().await?;
    assert_eq!(order["state"], "REJECTED");
    assert_eq!(api.stock(products::FLAG).await?, stock_before);

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_order_is_invisible() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let owner = api.new_user().await?;
    let stranger = api.new_user().await?;

    let placed = api.place_order(&owner, &[(products::TABLET, 1)]).await?;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let order_id = placed.json::<Value>().await?["order_id"]
        .as_str()
        .expect("order_id")
        .to_owned();

    let as_owner = api.get_order(&owner, &order_id).await?;
    assert_eq!(as_owner.status(), StatusCode::OK);
    let as_stranger = api.get_order(&stranger, &order_id).await?;
    assert_eq!(as_stranger.status(), StatusCode::NOT_FOUND);
    let listed: Value = api
        .http()
        .get(api.url("/api/orders"))
        .bearer_auth(&stranger.access_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        listed["orders"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );

    // Nor can the stranger subscribe to the owner's channel.
    let mut socket = Socket::connect(&system.realtime[0], Some(&stranger.access_token)).await?;
    socket.expect("welcome", DEADLINE).await?;
    let answer = socket
        .subscribe(&format!("user:{}", owner.id), DEADLINE)
        .await?;
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], "forbidden");

    system.stop().await
}
