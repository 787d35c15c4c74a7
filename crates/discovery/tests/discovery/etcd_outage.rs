//! etcd goes away: calls keep going to the instances last known; when it
//! is back, the watcher watches again and sees new instances.

use signalbox_discovery::{upstream_with, SourceStatus};

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
