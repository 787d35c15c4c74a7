//! etcd goes away: calls keep going to the instances last known; when it
//! is back, the watcher watches again and sees new instances.

use signalbox_discovery::upstream_with;
use signalbox_discovery::{register, registry::watcher, RegistrationState, SourceStatus};
use signalbox_testkit::DEADLINE;

use crate::helpers::{
    breaker, call_until, calls, client, holds, registered_server, succeed_until, PrivateEtcd,
    Registry,
};

#[tokio::test]
async fn without_etcd_calls_keep_going_to_the_known_instances() {
    // A private etcd: stopping the shared one would disturb every other test.
    let mut etcd = PrivateEtcd::start().await.unwrap();
    let registry = Registry::at(&etcd.url);
    let (a, _ra) = registered_server(&registry, "catalog").await.unwrap();
    let (b, _rb) = registered_server(&registry, "catalog").await.unwrap();
    let (service, view) = upstream_with(
        "catalog",
        "http://catalog.invalid:1",
        &registry.settings,
        breaker(),
    )
    .unwrap();
    let client = client(service);
    call_until("both instances balanced over", &client, || {
        holds(&view, &[a.url(), b.url()])
    })
    .await
    .unwrap();

    etcd.kill().await.unwrap();
    succeed_until("the watcher noticed", &client, || {
        match view.snapshot().source {
            SourceStatus::Stale { .. } => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await
    .unwrap();

    let (a_before, b_before) = (a.calls(), b.calls());
    let failures = calls(&client, 40, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        a.calls() > a_before && b.calls() > b_before,
        "both known instances still get calls: a +{}, b +{}",
        a.calls() - a_before,
        b.calls() - b_before
    );
    holds(&view, &[a.url(), b.url()]).unwrap();

    // Back again: the registrations renew, the watcher lists and watches
    // again, and an instance that arrives now is seen.
    etcd.resume().await.unwrap();
    let (c, _rc) = registered_server(&registry, "catalog").await.unwrap();
    succeed_until(
        "the instance registered after the outage gets calls",
        &client,
        || {
            if c.calls() > 0 {
                Ok(())
            } else {
                Err(view.snapshot().source.to_string())
            }
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        view.snapshot().source,
        SourceStatus::Current { .. }
    ));
}

#[tokio::test]
async fn an_instance_started_while_etcd_is_down_registers_once_it_is_up() {
    let mut etcd = PrivateEtcd::reserve().await.unwrap();
    let registry = Registry::at(&etcd.url);
    // Both sides try first while nothing listens.
    let registration = register("catalog", 50111, &registry.settings).unwrap();
    let mut source = watcher::watch("catalog", &registry.settings);
    let mut state = registration.state();
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, RegistrationState::Retrying { .. })),
    )
    .await
    .expect("the first attempt fails while etcd is down")
    .unwrap();

    etcd.resume().await.unwrap();
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })),
    )
    .await
    .expect("registered once etcd is up")
    .unwrap();
    // `is_ok()` at once: the `Ref` inside would hold the channel's read
    // lock, and the watcher's next publish would wait for it forever.
    let seen = tokio::time::timeout(
        DEADLINE,
        source
            .endpoints
            .wait_for(|set| set.contains("http://127.0.0.1:50111")),
    )
    .await
    .is_ok();
    assert!(
        seen,
        "the watcher never saw it: {:?}",
        *source.status.borrow()
    );
    registration.revoke().await;
}
