//! `signalbox watch`: the events of the user's orders, live on the socket.

use signalbox_system_tests::{products, TestSystem};

use crate::helpers::{line_where, stored_token, Terminal};

#[tokio::test]
async fn watch_prints_each_event_as_it_is_pushed_and_stops_at_the_awaited_state(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);
    terminal.logged_in().await;

    // --json: every frame on stdout, one line each.
    let mut watching = terminal.spawn(&["watch", "--until", "APPROVED|REJECTED", "--json"]);
    line_where(&mut watching.stdout, |line| {
        line.contains(r#""type":"subscribed""#)
    })
    .await?;

    // The order is placed by someone else (the page, a script): the same
    // user through the gateway.
    let placed = system
        .api
        .http()
        .post(system.api.url("/api/orders"))
        .bearer_auth(stored_token(&terminal))
        .json(&serde_json::json!({"items": [{"product_id": products::LAMP, "quantity": 1}]}))
        .send()
        .await?;
    assert_eq!(placed.status(), 202);
    let order_id = placed.json::<serde_json::Value>().await?["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let pending = line_where(&mut watching.stdout, |line| {
        line.contains(r#""type":"event""#)
    })
    .await?;
    let pending: serde_json::Value = serde_json::from_str(&pending)?;
    assert_eq!(pending["data"]["order_id"], order_id.as_str());
    assert_eq!(pending["data"]["state"], "PENDING");
    let approved = line_where(&mut watching.stdout, |line| line.contains("APPROVED")).await?;
    let approved: serde_json::Value = serde_json::from_str(&approved)?;
    assert_eq!(approved["data"]["order_id"], order_id.as_str());
    assert_eq!(watching.exit_code().await?, Some(0));
    system.stop().await
}

#[tokio::test]
async fn watch_shows_one_line_per_event_for_a_person() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);
    terminal.logged_in().await;

    let mut watching = terminal.spawn(&["watch", "--until", "APPROVED"]);
    // Progress notes go to stderr, so stdout holds only the events.
    line_where(&mut watching.stderr, |line| {
        line.starts_with("# subscribed to user:")
    })
    .await?;
    let placed = terminal
        .run(&["order", "place", "SIG-BELL", "--json"])
        .await;
    placed.assert_ok();
    let order_id = placed.json()["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let first = line_where(&mut watching.stdout, |_| true).await?;
    assert!(
        first.starts_with(&format!("order {order_id}  PENDING")),
        "{first}"
    );
    let last = line_where(&mut watching.stdout, |_| true).await?;
    assert!(
        last.starts_with(&format!("order {order_id}  APPROVED")),
        "{last}"
    );
    assert_eq!(watching.exit_code().await?, Some(0));
    system.stop().await
}

#[tokio::test]
async fn watch_until_a_state_that_does_not_come_exits_7() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);
    terminal.logged_in().await;

    // Nothing is placed: the deadline passes without an APPROVED event.
    let ran = terminal
        .run(&["watch", "--until", "APPROVED", "--timeout", "1"])
        .await;
    assert_eq!(ran.code, Some(7), "{ran:?}");
    assert!(ran.stderr.contains("no APPROVED event within"), "{ran:?}");

    // Someone else's channel is refused, not retried.
    let ran = terminal
        .run(&["watch", "--channel", "user:somebody-else", "--once"])
        .await;
    assert_eq!(ran.code, Some(5), "{ran:?}");
    system.stop().await
}
