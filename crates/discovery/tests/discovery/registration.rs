//! Self-registration: the key, its lease, and what happens to both.

use signalbox_discovery::{register, DiscoverySettings, Mode, RegistrationState};
use signalbox_testkit::{probe, DEADLINE};

use crate::helpers::Registry;

/// Waits until the registration reports registered, and returns its lease.
async fn registered(state: &mut tokio::sync::watch::Receiver<RegistrationState>) -> i64 {
    let state = tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })),
    )
    .await
    .expect("registered within the deadline")
    .expect("the registration task is running");
    match *state {
        RegistrationState::Registered { lease } => lease,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_registration_appears_under_the_prefix_and_goes_at_once_when_revoked() {
    let registry = Registry::new();

    let registration = register("catalog", 50099, &registry.settings).unwrap();
    registered(&mut registration.state()).await;

    let key = registration.key().unwrap().to_owned();
    assert!(
        key.starts_with(&registry.settings.service_prefix("catalog")),
        "{key}"
    );
    assert_eq!(
        registry.entries("catalog").await.unwrap(),
        [(key, "http://127.0.0.1:50099".to_owned())]
    );

    registration.revoke().await;
    // Revoking waited for etcd: the key is gone now, not a lease TTL later.
    assert_eq!(registry.entries("catalog").await.unwrap(), []);
}

#[tokio::test]
async fn an_instance_that_stops_renewing_is_removed_when_its_lease_expires() {
    let registry = Registry::new();
    let registration = register("orders", 50098, &registry.settings).unwrap();
    registered(&mut registration.state()).await;

    // Dropped without revoking: as if the process had crashed.
    drop(registration);
    assert_eq!(
        registry.entries("orders").await.unwrap().len(),
        1,
        "nothing deletes the key but the lease"
    );
    probe::until("the lease expired", DEADLINE, || async {
        let entries = registry.entries("orders").await?;
        Ok(if entries.is_empty() {
            Ok(())
        } else {
            Err(format!("{entries:?}"))
        })
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_lost_lease_is_replaced_and_the_instance_registered_again() {
    let registry = Registry::new();
    let registration = register("catalog", 50097, &registry.settings).unwrap();
    let mut state = registration.state();
    let first = registered(&mut state).await;

    // The lease vanishes under the instance (as when etcd lost its data).
    registry
        .client()
        .await
        .unwrap()
        .lease_revoke(first)
        .await
        .unwrap();
    assert_eq!(registry.entries("catalog").await.unwrap(), []);

    let again = tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, RegistrationState::Registered { lease } if *lease != first)),
    )
    .await
    .expect("registered again within the deadline")
    .unwrap()
    .clone();
    assert!(matches!(again, RegistrationState::Registered { .. }));
    assert_eq!(
        registry.entries("catalog").await.unwrap(),
        [(
            registration.key().unwrap().to_owned(),
            "http://127.0.0.1:50097".to_owned()
        )],
        "the same key, the same address"
    );
    registration.revoke().await;
}

#[tokio::test]
async fn the_advertised_address_overrides_host_and_port() {
    let registry = Registry::new();
    let settings = DiscoverySettings {
        advertise: Some("http://10.1.2.3:7000".to_owned()),
        ..registry.settings.clone()
    };
    let registration = register("auth", 50051, &settings).unwrap();
    registered(&mut registration.state()).await;
    assert_eq!(
        registry.entries("auth").await.unwrap()[0].1,
        "http://10.1.2.3:7000"
    );
    registration.revoke().await;

    let bad = DiscoverySettings {
        advertise: Some("10.1.2.3".to_owned()),
        ..registry.settings.clone()
    };
    assert!(register("auth", 50051, &bad).is_err());
}

#[tokio::test]
async fn in_dns_mode_nothing_is_registered() {
    let registry = Registry::new();
    let settings = DiscoverySettings {
        mode: Mode::Dns,
        ..registry.settings.clone()
    };
    let registration = register("catalog", 50096, &settings).unwrap();
    assert_eq!(registration.key(), None);
    assert_eq!(*registration.state().borrow(), RegistrationState::Disabled);
    // No task was started that could write anything later.
    assert_eq!(registry.entries("catalog").await.unwrap(), []);
}
