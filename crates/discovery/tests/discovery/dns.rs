//! Platform DNS: a name resolved again and again, balanced over every
//! address it yields.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use signalbox_discovery::{
    balanced, dns, upstream_with, DiscoverySettings, EndpointSettings, Mode, SourceStatus,
};

use crate::helpers::{breaker, call_until, calls, client, holds, succeed_until, TestServer};

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_balanced_over_every_address() {
    // One server on every address the system's resolver gives `localhost`
    // (127.0.0.1, and ::1 where it is listed), on one port.
    let first = TestServer::start().await.unwrap();
    let port = first.port();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", port))
        .await
        .unwrap()
        .collect();
    let mut servers = Vec::new();
    for addr in &addrs {
        if *addr != first.addr {
            servers.push(TestServer::start_on(*addr).await.unwrap());
        }
    }
    servers.push(first);
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();

    let settings = DiscoverySettings {
        dns_interval_ms: 100,
        ..DiscoverySettings::default()
    };
    assert_eq!(settings.mode, Mode::Dns);
    let (service, view) = upstream_with(
        "health",
        &format!("http://localhost:{port}"),
        &settings,
        breaker(),
    )
    .unwrap();
    let client = client(service);
    call_until("localhost's addresses balanced over", &client, || {
        holds(&view, &urls)
    })
    .await
    .unwrap();

    let failures = calls(&client, 20, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    for server in servers.iter().filter(|s| addrs.contains(&s.addr)) {
        assert!(server.calls() > 0, "{} got no call", server.url());
    }
}

/// A resolver whose answer the test sets: addresses, or a failed lookup.
#[derive(Clone, Default)]
struct Answer(Arc<Mutex<Option<Vec<SocketAddr>>>>);

impl Answer {
    fn set(&self, answer: Option<Vec<SocketAddr>>) {
        *self.0.lock().unwrap() = answer;
    }

    fn resolver(&self) -> impl dns::Resolve {
        let answer = self.0.clone();
        move |host: &str, _port: u16| -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
            assert_eq!(host, "catalog.test", "resolved the wrong name");
            let answer = answer.lock().unwrap().clone();
            Box::pin(async move { answer.ok_or_else(|| io::Error::other("SERVFAIL")) })
        }
    }
}

#[tokio::test]
async fn a_re_resolved_name_gains_and_loses_addresses_and_survives_a_failed_lookup() {
    // Two "pods": the same port on two loopback addresses.
    let a = TestServer::start().await.unwrap();
    let b = TestServer::start_on(SocketAddr::new("127.0.0.2".parse().unwrap(), a.port()))
        .await
        .unwrap();
    let answer = Answer::default();
    answer.set(Some(vec![a.addr]));
    let source = dns::resolve_with(
        "catalog",
        &format!("http://catalog.test:{}", a.port()),
        Duration::from_millis(50),
        answer.resolver(),
    )
    .unwrap();
    let endpoint = EndpointSettings {
        connect_timeout: Duration::from_millis(500),
        breaker: breaker(),
    };
    let (service, view) = balanced("catalog", Mode::Dns, source, endpoint);
    let client = client(service);
    call_until("the one address balanced over", &client, || {
        holds(&view, &[a.url()])
    })
    .await
    .unwrap();

    // Scaled up: the next resolution finds the second pod.
    answer.set(Some(vec![a.addr, b.addr]));
    succeed_until("the second address receives calls", &client, || {
        if b.calls() > 0 {
            Ok(())
        } else {
            Err("none yet".to_owned())
        }
    })
    .await
    .unwrap();

    // The first pod is gone from the answer.
    answer.set(Some(vec![b.addr]));
    succeed_until("the first address dropped", &client, || {
        holds(&view, &[b.url()])
    })
    .await
    .unwrap();
    let (a_before, b_before) = (a.calls(), b.calls());
    let failures = calls(&client, 20, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(a.calls(), a_before);
    assert_eq!(b.calls() - b_before, 20);

    // DNS fails: the last answer stays in use.
    answer.set(None);
    succeed_until("the failed lookup noticed", &client, || {
        match view.snapshot().source {
            SourceStatus::Stale { .. } => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await
    .unwrap();
    let failures = calls(&client, 10, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    holds(&view, &[b.url()]).unwrap();
}

#[tokio::test]
async fn an_address_needs_no_resolving_and_is_known_at_once() {
    let a = TestServer::start().await.unwrap();
    let (service, view) = upstream_with(
        "catalog",
        &a.url(),
        &DiscoverySettings::default(),
        breaker(),
    )
    .unwrap();
    let client = client(service);
    // The very first call goes through: nothing to wait for.
    let failures = calls(&client, 1, 1).await;
    assert!(failures.is_empty(), "{failures:?}");
    holds(&view, &[a.url()]).unwrap();
    assert!(matches!(
        view.snapshot().source,
        SourceStatus::Current { .. }
    ));
}
