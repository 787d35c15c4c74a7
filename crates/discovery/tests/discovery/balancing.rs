//! Balancing over registered instances, and ejecting the ones that fail:
//! real gRPC servers, one killed or hung while calls keep coming.

use std::time::Duration;

use signalbox_discovery::upstream_with;
use signalbox_resilience::{Rejection, State};
use tokio::time::Instant;

use crate::helpers::{
    breaker, call, call_until, calls, client, holds, registered_server, state_of, succeed_until,
    Registry, TestServer, CALL_DEADLINE,
};

/// The URL the upstream would have in DNS mode; registry mode ignores it.
const UNUSED: &str = "http://catalog.invalid:1";

#[tokio::test]
async fn calls_spread_over_two_instances_and_a_killed_one_is_ejected() {
    let registry = Registry::new();
    let (a, _ra) = registered_server(&registry, "catalog").await.unwrap();
    let (b, _rb) = registered_server(&registry, "catalog").await.unwrap();
    let (service, view) = upstream_with("catalog", UNUSED, &registry.settings, breaker()).unwrap();
    let client = client(service);
    call_until("both instances balanced over", &client, || {
        holds(&view, &[a.url(), b.url()])
    })
    .await
    .unwrap();

    let failures = calls(&client, 40, 1).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        a.calls() > 0 && b.calls() > 0,
        "a got {}, b got {}",
        a.calls(),
        b.calls()
    );

    a.kill();
    // The ejection window: calls that land on the dead instance fail
    // (connection refused) until its breaker opens.
    call_until("the killed instance ejected", &client, || {
        match state_of(&view, &a.url()) {
            Some(State::Open) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();

    let before = b.calls();
    let failures = calls(&client, 50, 5).await;
    assert!(failures.is_empty(), "after the ejection: {failures:?}");
    assert_eq!(
        b.calls() - before,
        50,
        "every call went to the live instance"
    );
}

#[tokio::test]
async fn a_hung_instance_is_ejected_and_the_other_takes_every_call() {
    let registry = Registry::new();
    let (a, _ra) = registered_server(&registry, "catalog").await.unwrap();
    let (b, _rb) = registered_server(&registry, "catalog").await.unwrap();
    let (service, view) = upstream_with("catalog", UNUSED, &registry.settings, breaker()).unwrap();
    let client = client(service);
    call_until("both instances balanced over", &client, || {
        holds(&view, &[a.url(), b.url()])
    })
    .await
    .unwrap();
    let failures = calls(&client, 20, 2).await;
    assert!(failures.is_empty(), "{failures:?}");

    // b accepts every call from now on and never answers: its calls end by
    // their deadline, each one a failure past the slow-call threshold.
    b.hang();
    call_until("the hung instance ejected", &client, || {
        match state_of(&view, &b.url()) {
            Some(State::Open) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();

    let (a_before, b_before) = (a.calls(), b.calls());
    let failures = calls(&client, 50, 5).await;
    assert!(failures.is_empty(), "after the ejection: {failures:?}");
    assert_eq!(a.calls() - a_before, 50);
    assert_eq!(b.calls(), b_before, "the hung instance got no call");
    let snapshot = view.snapshot();
    let hung = snapshot
        .endpoints
        .iter()
        .find(|e| e.address == b.url())
        .unwrap();
    assert!(hung.open_for.is_some());
    // The snapshot's breaker is the endpoint's own, not a copy.
    assert_eq!(hung.breaker.upstream(), format!("catalog@{}", b.addr));
    assert_eq!(hung.breaker.state(), State::Open);
    assert_eq!(hung.in_flight, 0, "abandoned calls are not counted as out");
    assert_eq!(
        hung.transitions.last().map(|t| (t.from, t.to)),
        Some((State::Closed, State::Open))
    );
}

#[tokio::test]
async fn a_new_instance_receives_calls_and_a_deregistered_one_none() {
    let registry = Registry::new();
    let (a, ra) = registered_server(&registry, "catalog").await.unwrap();
    let (service, view) = upstream_with("catalog", UNUSED, &registry.settings, breaker()).unwrap();
    let client = client(service);
    call_until("the first instance balanced over", &client, || {
        holds(&view, &[a.url()])
    })
    .await
    .unwrap();

    let (c, _rc) = registered_server(&registry, "catalog").await.unwrap();
    succeed_until("the new instance receives calls", &client, || {
        if c.calls() > 0 {
            Ok(())
        } else {
            Err("none yet".to_owned())
        }
    })
    .await
    .unwrap();

    // A graceful shutdown deregisters first; the instance still answers
    // the calls that were on their way.
    ra.revoke().await;
    succeed_until("the deregistered instance left", &client, || {
        holds(&view, &[c.url()])
    })
    .await
    .unwrap();
    let (a_before, c_before) = (a.calls(), c.calls());
    let failures = calls(&client, 20, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(a.calls(), a_before, "the deregistered instance got a call");
    assert_eq!(c.calls() - c_before, 20);
}

#[tokio::test]
async fn with_no_ready_instance_a_call_fails_at_once_with_an_open_rejection() {
    let registry = Registry::new();
    let (service, view) = upstream_with("catalog", UNUSED, &registry.settings, breaker()).unwrap();
    let client = client(service);

    // None registered at all.
    let started = Instant::now();
    let refused = call(&client).await.unwrap_err();
    assert!(
        matches!(Rejection::of(&refused), Some(Rejection::Open { .. })),
        "{refused:?}"
    );
    assert!(started.elapsed() < CALL_DEADLINE / 2, "it waited");

    // One, killed and ejected.
    let (a, _ra) = registered_server(&registry, "catalog").await.unwrap();
    call_until("the instance balanced over", &client, || {
        holds(&view, &[a.url()])
    })
    .await
    .unwrap();
    a.kill();
    call_until("the killed instance ejected", &client, || {
        match state_of(&view, &a.url()) {
            Some(State::Open) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    let started = Instant::now();
    let refused = call(&client).await.unwrap_err();
    match Rejection::of(&refused) {
        // Told to come back when the endpoint is probed (15–30 s here).
        Some(Rejection::Open { retry_after }) => {
            assert!(retry_after > Duration::from_secs(5), "{retry_after:?}")
        }
        other => panic!("expected an open rejection, got {other:?} ({refused:?})"),
    }
    assert!(started.elapsed() < CALL_DEADLINE / 2, "it waited");
}

#[tokio::test]
async fn a_server_that_is_not_registered_gets_nothing() {
    // The control for the counts above: a server nobody registered.
    let registry = Registry::new();
    let (a, _ra) = registered_server(&registry, "catalog").await.unwrap();
    let stranger = TestServer::start().await.unwrap();
    let (service, view) = upstream_with("catalog", UNUSED, &registry.settings, breaker()).unwrap();
    let client = client(service);
    call_until("the instance balanced over", &client, || {
        holds(&view, &[a.url()])
    })
    .await
    .unwrap();
    let failures = calls(&client, 10, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(stranger.calls(), 0);
}
