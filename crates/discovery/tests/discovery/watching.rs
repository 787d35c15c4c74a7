//! Client-side discovery: a watcher's set follows the registrations.

use signalbox_discovery::{
    register, registry::watcher, Endpoints, RegistrationState, SourceStatus,
};
use signalbox_testkit::DEADLINE;
use tokio::sync::watch;

use crate::helpers::Registry;

async fn until_set(endpoints: &mut watch::Receiver<Endpoints>, want: &[&str]) {
    let want: Endpoints = want.iter().map(|s| s.to_string()).collect();
    let seen = tokio::time::timeout(DEADLINE, endpoints.wait_for(|set| *set == want))
        .await
        .is_ok();
    assert!(seen, "wanted {want:?}, have {:?}", *endpoints.borrow());
}

#[tokio::test]
async fn a_watcher_sees_a_second_instance_arrive_and_the_first_leave() {
    let registry = Registry::new();
    let first = register("catalog", 50101, &registry.settings).unwrap();
    let mut source = watcher::watch("catalog", &registry.settings);

    until_set(&mut source.endpoints, &["http://127.0.0.1:50101"]).await;
    assert!(matches!(
        *source.status.borrow(),
        SourceStatus::Current { .. }
    ));

    let second = register("catalog", 50102, &registry.settings).unwrap();
    until_set(
        &mut source.endpoints,
        &["http://127.0.0.1:50101", "http://127.0.0.1:50102"],
    )
    .await;

    first.revoke().await;
    until_set(&mut source.endpoints, &["http://127.0.0.1:50102"]).await;
    second.revoke().await;
    until_set(&mut source.endpoints, &[]).await;
}

#[tokio::test]
async fn a_watcher_sees_only_its_own_service() {
    let registry = Registry::new();
    let orders = register("orders", 50103, &registry.settings).unwrap();
    // A service whose name starts like the watched one.
    let archive = register("orders-archive", 50104, &registry.settings).unwrap();
    for registration in [&orders, &archive] {
        let mut state = registration.state();
        tokio::time::timeout(
            DEADLINE,
            state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })),
        )
        .await
        .unwrap()
        .unwrap();
    }

    // Both are in etcd before the watcher lists: the listing would show
    // the other one if the prefix matched it.
    let mut source = watcher::watch("orders", &registry.settings);
    until_set(&mut source.endpoints, &["http://127.0.0.1:50103"]).await;
    orders.revoke().await;
    archive.revoke().await;
}
