//! The catalog and the orders of a logged-in user, and what bad input gets.

use signalbox_system_tests::{products, TestSystem};

use crate::helpers::Terminal;

#[tokio::test]
async fn products_lists_the_catalog_as_a_table_or_as_json() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);

    let shown = terminal.run(&["products"]).await;
    shown.assert_ok();
    let lamp = shown
        .stdout
        .lines()
        .find(|line| line.starts_with("SIG-LAMP"))
        .unwrap_or_else(|| panic!("no lamp row: {shown:?}"));
    assert!(
        lamp.contains("Signal lamp") && lamp.contains("49.00 EUR"),
        "{lamp}"
    );
    assert!(lamp.contains(products::LAMP), "{lamp}");

    let listed = terminal.run(&["products", "--json"]).await;
    listed.assert_ok();
    let ids: Vec<String> = listed.json()["products"]
        .as_array()
        .expect("products")
        .iter()
        .map(|p| p["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(ids.contains(&products::FLAG.to_owned()), "{ids:?}");
    system.stop().await
}

#[tokio::test]
async fn an_order_placed_with_wait_ends_approved_then_is_listed_and_cancelled() -> anyhow::Result<()>
{
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);
    terminal.logged_in().await;

    // By SKU, two of them; --wait follows it on the socket to its fate.
    let placed = terminal
        .run(&["order", "place", "SIG-LAMP:2", "--wait", "--json"])
        .await;
    placed.assert_ok();
    let placed = placed.json();
    assert_eq!(placed["state"], "APPROVED", "{placed}");
    assert_eq!(placed["event"]["type"], "order.approved");
    let order_id = placed["order_id"].as_str().expect("an order id").to_owned();
    assert_eq!(system.api.stock(products::LAMP).await?, 98);

    let listed = terminal.run(&["order", "list"]).await;
    listed.assert_ok();
    let row = listed
        .stdout
        .lines()
        .find(|line| line.starts_with(&order_id))
        .unwrap_or_else(|| panic!("the order is not listed: {listed:?}"));
    assert!(
        row.contains("APPROVED") && row.contains("98.00 EUR"),
        "{row}"
    );

    let cancelled = terminal.run(&["order", "cancel", &order_id]).await;
    cancelled.assert_ok();
    assert_eq!(
        cancelled.stdout.trim(),
        format!("order {order_id} is CANCELLED")
    );
    // Twice is refused: not possible in that state (exit 5).
    let again = terminal.run(&["order", "cancel", &order_id]).await;
    assert_eq!(again.code, Some(5), "{again:?}");
    assert!(again.stderr.contains("failed_precondition"), "{again:?}");
    system.stop().await
}

#[tokio::test]
async fn an_order_beyond_the_stock_is_rejected_and_wait_exits_8() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);
    terminal.logged_in().await;

    // Three flags in stock; four asked for, by product id.
    let four = format!("{}:4", products::FLAG);
    let placed = terminal.run(&["order", "place", &four, "--wait"]).await;
    assert_eq!(placed.code, Some(8), "{placed:?}");
    assert!(placed.stdout.contains("REJECTED"), "{placed:?}");
    assert!(placed.stderr.contains("was rejected"), "{placed:?}");
    assert_eq!(system.api.stock(products::FLAG).await?, 3);
    system.stop().await
}

#[tokio::test]
async fn bad_input_exits_2_and_says_where_to_look() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);
    terminal.logged_in().await;

    let unknown = terminal.run(&["order", "place", "NO-SUCH-SKU"]).await;
    assert_eq!(unknown.code, Some(2), "{unknown:?}");
    assert!(unknown.stderr.contains("`NO-SUCH-SKU`"), "{unknown:?}");
    assert!(unknown.stderr.contains("signalbox products"), "{unknown:?}");

    let zero = terminal.run(&["order", "place", "SIG-LAMP:0"]).await;
    assert_eq!(zero.code, Some(2), "{zero:?}");

    let not_an_id = terminal.run(&["order", "cancel", "yesterday's"]).await;
    assert_eq!(not_an_id.code, Some(2), "{not_an_id:?}");
    assert!(
        not_an_id.stderr.contains("signalbox order list"),
        "{not_an_id:?}"
    );

    let nobodys = uuid::Uuid::now_v7().to_string();
    let missing = terminal.run(&["order", "cancel", &nobodys]).await;
    assert_eq!(missing.code, Some(2), "{missing:?}");
    assert!(missing.stderr.contains("not_found"), "{missing:?}");

    // Nothing was placed by any of it.
    let listed = terminal.run(&["order", "list", "--json"]).await;
    listed.assert_ok();
    assert_eq!(listed.json()["orders"], serde_json::json!([]));
    system.stop().await
}
