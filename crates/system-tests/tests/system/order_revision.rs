//! The revision step of the order saga, end to end: `PATCH
//! /api/orders/{id}` through the gateway, orders' outbox, catalog reserving
//! or releasing the difference exactly once, the outcome live on the
//! socket.

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use signalbox_system_tests::{api::User, products, Api, Socket, TestSystem, DEADLINE};

/// Waits on `socket` for the event of `order_id` of type `kind`.
async fn event(socket: &mut Socket, order_id: &str, kind: &str) -> anyhow::Result<Value> {
    let frame = socket
        .wait_for(DEADLINE, |frame| {
            frame["type"] == "event"
                && frame["data"]["order_id"] == order_id
                && frame["data"]["type"] == kind
        })
        .await?;
    Ok(frame["data"].clone())
}

/// A user with a socket subscribed to their channel.
async fn user_with_socket(system: &TestSystem) -> anyhow::Result<(User, Socket)> {
    let user = system.api.new_user().await?;
    let mut socket = Socket::connect(&system.realtime[0], Some(&user.access_token)).await?;
    socket.expect("welcome", DEADLINE).await?;
    socket
        .subscribe(&format!("user:{}", user.id), DEADLINE)
        .await?;
    Ok((user, socket))
}

/// Places an order and waits until it is APPROVED; returns its id.
async fn approved(
    api: &Api,
    socket: &mut Socket,
    user: &User,
    items: &[(&str, i64)],
) -> anyhow::Result<String> {
    let placed = api.place_order(user, items).await?;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let order_id = placed.json::<Value>().await?["order_id"]
        .as_str()
        .expect("order_id")
        .to_owned();
    event(socket, &order_id, "order.approved").await?;
    Ok(order_id)
}

async fn revise(
    api: &Api,
    user: &User,
    order_id: &str,
    items: &[(&str, i64)],
) -> anyhow::Result<Response> {
    let items: Vec<Value> = items
        .iter()
        .map(|(product_id, quantity)| json!({"product_id": product_id, "quantity": quantity}))
        .collect();
    Ok(api
        .http()
        .patch(api.url(&format!("/api/orders/{order_id}")))
        .bearer_auth(&user.access_token)
        .json(&json!({ "items": items }))
        .send()
        .await?)
}

async fn cancel(api: &Api, user: &User, order_id: &str) -> anyhow::Result<Response> {
    Ok(api
        .http()
        .post(api.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&user.access_token)
        .send()
        .await?)
}

/// `(product_id, quantity)` of the order's items, sorted.
async fn items_of(
    api: &Api,
    user: &User,
    order_id: &str,
) -> anyhow::Result<(String, Vec<(String, i64)>)> {
    let order: Value = api.get_order(user, order_id).await?.json().await?;
    let mut items: Vec<(String, i64)> = order["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["product_id"].as_str().unwrap_or_default().to_owned(),
                item["quantity"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    items.sort();
    Ok((
        order["state"].as_str().unwrap_or_default().to_owned(),
        items,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revised_order_is_approved_with_its_new_items_and_stock_moves_by_the_difference(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let (user, mut socket) = user_with_socket(&system).await?;
    let (lamps, tablets) = (
        api.stock(products::LAMP).await?,
        api.stock(products::TABLET).await?,
    );
    let order_id = approved(api, &mut socket, &user, &[(products::LAMP, 4)]).await?;

    let answer = revise(
        api,
        &user,
        &order_id,
        &[(products::LAMP, 1), (products::TABLET, 2)],
    )
    .await?;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let revised = event(&mut socket, &order_id, "order.revised").await?;
    let approved_again = event(&mut socket, &order_id, "order.approved").await?;

    assert_eq!(revised["state"], "APPROVED");
    assert_eq!(approved_again["state"], "APPROVED");
    let mut expected = vec![
        (products::LAMP.to_owned(), 1),
        (products::TABLET.to_owned(), 2),
    ];
    expected.sort();
    assert_eq!(
        items_of(api, &user, &order_id).await?,
        ("APPROVED".to_owned(), expected)
    );
    // 4 lamps reserved, then 3 of them released; 2 tablets reserved.
    assert_eq!(api.stock(products::LAMP).await?, lamps - 1);
    assert_eq!(api.stock(products::TABLET).await?, tablets - 2);

    // Cancelling now releases what the order holds after the revision.
    assert_eq!(
        cancel(api, &user, &order_id).await?.status(),
        StatusCode::OK
    );
    event(&mut socket, &order_id, "order.cancelled").await?;
    signalbox_testkit::probe::until("stock released", DEADLINE, || async {
        let back = (
            api.stock(products::LAMP).await?,
            api.stock(products::TABLET).await?,
        );
        Ok(if back == (lamps, tablets) {
            Ok(())
        } else {
            Err(format!("{back:?}"))
        })
    })
    .await?;
    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_beyond_stock_is_rejected_and_the_order_stays_as_it_was() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let (user, mut socket) = user_with_socket(&system).await?;
    let flags = api.stock(products::FLAG).await?;
    let order_id = approved(api, &mut socket, &user, &[(products::FLAG, 1)]).await?;

    let answer = revise(api, &user, &order_id, &[(products::FLAG, flags + 1)]).await?;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let rejected = event(&mut socket, &order_id, "order.revision_rejected").await?;

    assert_eq!(rejected["state"], "APPROVED");
    assert!(
        rejected["reason"]
            .as_str()
            .is_some_and(|r| r.contains("insufficient stock")),
        "{rejected}"
    );
    assert_eq!(
        items_of(api, &user, &order_id).await?,
        ("APPROVED".to_owned(), vec![(products::FLAG.to_owned(), 1)])
    );
    assert_eq!(api.stock(products::FLAG).await?, flags - 1);
    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_order_cannot_be_revised() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let (owner, mut socket) = user_with_socket(&system).await?;
    let stranger = api.new_user().await?;
    let order_id = approved(api, &mut socket, &owner, &[(products::LAMP, 1)]).await?;

    let answer = revise(api, &stranger, &order_id, &[(products::LAMP, 50)]).await?;

    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert_eq!(answer.json::<Value>().await?["code"], "not_found");
    assert_eq!(
        items_of(api, &owner, &order_id).await?,
        ("APPROVED".to_owned(), vec![(products::LAMP.to_owned(), 1)])
    );
    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_racing_a_cancellation_has_one_winner_and_the_loser_gets_409(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let (user, mut socket) = user_with_socket(&system).await?;
    let lamps = api.stock(products::LAMP).await?;
    let order_id = approved(api, &mut socket, &user, &[(products::LAMP, 2)]).await?;

    let (revised, cancelled) = tokio::join!(
        revise(api, &user, &order_id, &[(products::LAMP, 3)]),
        cancel(api, &user, &order_id)
    );
    let (revised, cancelled) = (revised?, cancelled?);

    let statuses = (revised.status(), cancelled.status());
    let (loser, revision_won) = match statuses {
        (StatusCode::ACCEPTED, StatusCode::CONFLICT) => (cancelled, true),
        (StatusCode::CONFLICT, StatusCode::OK) => (revised, false),
        other => panic!("one winner expected, got {other:?}"),
    };
    assert_eq!(loser.json::<Value>().await?["code"], "conflict");
    if revision_won {
        event(&mut socket, &order_id, "order.revised").await?;
        event(&mut socket, &order_id, "order.approved").await?;
        assert_eq!(api.stock(products::LAMP).await?, lamps - 3);
    } else {
        event(&mut socket, &order_id, "order.cancelled").await?;
        signalbox_testkit::probe::until("stock released", DEADLINE, || async {
            let now = api.stock(products::LAMP).await?;
            Ok(if now == lamps {
                Ok(())
            } else {
                Err(now.to_string())
            })
        })
        .await?;
    }
    system.stop().await
}
