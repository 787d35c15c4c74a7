//! A frozen catalog (`SIGSTOP`: its sockets stay open, nothing answers), the
//! whole system around it: the guards answer fast, the routes that do not
//! need catalog keep answering, and everything heals after `SIGCONT`
//! without a restart. Catalog runs in a child process of its own
//! (`signalbox_system_tests::child`); the rest in this process.

use std::time::{Duration, Instant};

use serde_json::Value;
use signalbox_system_tests::{products::LAMP, Options, TestSystem, DEADLINE};
use signalbox_testkit::probe;

/// Generous: an answer "at once" from an open breaker or a full bulkhead is
/// milliseconds; a call that waited for its deadline is at least a second.
const FAST: Duration = Duration::from_millis(900);

#[tokio::test]
async fn a_frozen_catalog_is_answered_fast_and_heals_after_it_thaws() -> anyhow::Result<()> {
    let system = TestSystem::start_with(Options {
        catalog_process: Some(env!("CARGO_BIN_EXE_catalog-child").into()),
        gateway: Some(Box::new(|settings| {
            // A second per catalog call, so that the breaker has seen enough
            // hung calls after a few requests.
            settings.timeouts.upstream_secs = 1;
            // Each of them, ended by that deadline, counts as a failure.
            settings.resilience.catalog.breaker.slow_call_ms = 500;
        })),
        ..Options::default()
    })
    .await?;
    let api = &system.api;
    let user = api.new_user().await?;
    let products = api.url("/api/catalog/products");

    // Healthy: a fresh list (kept for the fallback) and an accepted order.
    let fresh: Value = api.http().get(&products).send().await?.json().await?;
    assert_eq!(fresh["stale"], false);
    let placed = api.place_order(&user, &[(LAMP, 1)]).await?;
    assert_eq!(placed.status(), 202);

    system
        .catalog_process
        .as_ref()
        .expect("catalog runs in a child process")
        .freeze()?;

    // Within a few calls the product list is answered at once, from the
    // fallback (the breaker has opened on the calls that hung).
    let mut fast_after = None;
    for call in 1..=10 {
        let started = Instant::now();
        let response = api.http().get(&products).send().await?;
        let took = started.elapsed();
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        assert!(
            status == 200 && body["stale"] == true || status == 503 || status == 504,
            "call {call}: {status} {body}"
        );
        if took < FAST {
            fast_after = Some(call);
            assert_eq!(status, 200, "with a kept list the answer is the fallback");
            assert_eq!(body["products"], fresh["products"]);
            break;
        }
    }
    let fast_after = fast_after.expect("fast answers within ten calls");
    assert!(fast_after <= 7, "fast after {fast_after} calls");

    // Orders does not need catalog to list orders.
    let listed = api
        .http()
        .get(api.url("/api/orders"))
        .bearer_auth(&user.access_token)
        .send()
        .await?;
    assert_eq!(listed.status(), 200);

    // Placing an order needs catalog's prices: a prompt, clean refusal.
    let started = Instant::now();
    let refused = api.place_order(&user, &[(LAMP, 1)]).await?;
    let took = started.elapsed();
    let status = refused.status().as_u16();
    let problem: Value = refused.json().await?;
    assert!(
        matches!(status, 503 | 504),
        "placing while catalog is frozen: {status} {problem}"
    );
    assert!(
        ["upstream_unavailable", "upstream_timeout", "overloaded"]
            .contains(&problem["code"].as_str().unwrap_or_default()),
        "{problem}"
    );
    assert!(
        took < Duration::from_secs(5),
        "answered in {took:?}, within orders' 2 s deadline and a margin"
    );

    system
        .catalog_process
        .as_ref()
        .expect("catalog runs in a child process")
        .thaw()?;

    // Heals without a restart: fresh products, and an order placed and
    // decided again.
    probe::until("fresh products", DEADLINE, || {
        let request = api.http().get(&products).send();
        async move {
            let response = request.await?;
            let body: Value = response.json().await?;
            Ok(if body["stale"] == false {
                Ok(())
            } else {
                Err(body.to_string())
            })
        }
    })
    .await?;
    let order_id = probe::until("an order accepted", DEADLINE, || {
        let request = api.place_order(&user, &[(LAMP, 1)]);
        async move {
            let response = request.await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            Ok(match (status, body["order_id"].as_str()) {
                (202, Some(id)) => Ok(id.to_owned()),
                _ => Err(format!("{status} {body}")),
            })
        }
    })
    .await?;
    probe::until("the order decided", DEADLINE, || {
        let request = api.get_order(&user, &order_id);
        async move {
            let body: Value = request.await?.json().await?;
            Ok(match body["state"].as_str() {
                Some("APPROVED") => Ok(()),
                other => Err(format!("{other:?}")),
            })
        }
    })
    .await?;

    system.stop().await
}
