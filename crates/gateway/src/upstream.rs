//! gRPC clients of the services behind the gateway: the REST→gRPC half of
//! protocol translation, and where every call is guarded.
//!
//! Each upstream is a balanced service over its discovered instances
//! ([`signalbox_discovery::upstream`]: resolved by DNS, or watched in etcd),
//! one lazily connected tonic channel and one circuit breaker per instance,
//! wrapped in a resilience stack built by [`guarded`]: a deadline, a
//! bulkhead and retries of reads, each its own per upstream, so that a hung
//! catalog fills only catalog's bulkhead and opens only its breakers, and
//! the order routes keep answering. Channels connect lazily, so the gateway
//! starts, and answers 503 for the routes of a service that is not up yet,
//! instead of refusing to start.
//!
//! A call on a user's behalf carries the user's access token
//! (`crate::auth::AuthenticatedUser::request`); what a failed or refused
//! call answers the client is [`crate::error`]'s business; which breakers
//! are open is shown by `GET /api/system/upstreams` ([`Guard`]).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use signalbox_discovery::DiscoverySettings;
use signalbox_proto::{
    auth::v1::auth_service_client::AuthServiceClient,
    catalog::v1::{catalog_service_client::CatalogServiceClient, catalog_service_server},
    orders::v1::{order_service_client::OrderServiceClient, order_service_server},
};
use signalbox_resilience::{
    breaker::Transition, BulkheadLayer, CallPolicy, CircuitBreakerLayer, ClientService,
    UpstreamService,
};

use crate::{
    config::{Resilience, Timeouts, Upstreams},
    fallback::CatalogFallback,
};

/// The services the gateway routes to, named in logs and problem details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Auth,
    Orders,
    Catalog,
}

impl Upstream {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Orders => "orders",
            Self::Catalog => "catalog",
        }
    }

    /// The gRPC methods of this upstream that are safe to send twice: the
    /// reads. Only these are retried; a write (placing an order, logging in)
    /// whose reply was lost may well have happened.
    fn idempotent(self) -> Vec<String> {
        let (service, methods): (&str, &[&str]) = match self {
            Self::Auth => ("", &[]),
            Self::Orders => (
                order_service_server::SERVICE_NAME,
                &["GetOrder", "ListOrders"],
            ),
            Self::Catalog => (
                catalog_service_server::SERVICE_NAME,
                &["GetProduct", "ListProducts", "BatchGetProducts"],
            ),
        };
        methods.iter().map(|m| format!("/{service}/{m}")).collect()
    }
}

/// The clients of every upstream, shared: a clone is one reference count.
///
/// Every request's handler gets its own `Clients` (axum clones the state
/// into each request, and `State<Clients>` clones it again), but calls only
/// one or two upstreams, so the set is shared and a handler clones just the
/// client it calls (`clients.catalog.clone()`, which a tonic client needs:
/// its calls take `&mut self`), instead of every upstream's stack on each
/// of those clones (B2's profile in `docs/benchmarks.md` showed them).
#[derive(Clone)]
pub struct Clients(Arc<ClientSet>);

impl std::ops::Deref for Clients {
    type Target = ClientSet;

    fn deref(&self) -> &ClientSet {
        &self.0
    }
}

/// One client per upstream service. Cloning a client is cheap next to a
/// call, but not free (its boxed stack is cloned layer by layer): clones
/// share the channel (and so the connection), the bulkhead's permits, the
/// retry budget and the breaker of the original.
pub struct ClientSet {
    pub auth: AuthServiceClient<ClientService>,
    pub orders: OrderServiceClient<ClientService>,
    pub catalog: CatalogServiceClient<ClientService>,
    /// The guards of each upstream, for the admin view.
    pub guards: Arc<[Guard]>,
    /// The last good answers of catalog's reads, served when catalog
    /// cannot answer (see [`crate::fallback`]).
    pub catalog_fallback: Arc<CatalogFallback>,
}

impl Clients {
    /// Builds the clients without connecting; fails only on a malformed URL.
    pub fn new(
        upstreams: &Upstreams,
        timeouts: &Timeouts,
        resilience: &Resilience,
        discovery: &DiscoverySettings,
    ) -> anyhow::Result<Self> {
        let discovery = DiscoverySettings {
            // An address that does not answer at all fails the connection
            // attempt, and so the call, without waiting for its deadline.
            connect_timeout_ms: timeouts.connect_secs * 1000,
            ..discovery.clone()
        };
        let guarded =
            |upstream, url: &str, policy| guarded(upstream, url, timeouts, policy, &discovery);
        let (auth, auth_guard) = guarded(Upstream::Auth, &upstreams.auth, &resilience.auth)?;
        let (orders, orders_guard) =
            guarded(Upstream::Orders, &upstreams.orders, &resilience.orders)?;
        let (catalog, catalog_guard) =
            guarded(Upstream::Catalog, &upstreams.catalog, &resilience.catalog)?;
        Ok(Self(Arc::new(ClientSet {
            auth: AuthServiceClient::new(ClientService::new(auth)),
            orders: OrderServiceClient::new(ClientService::new(orders)),
            catalog: CatalogServiceClient::new(ClientService::new(catalog)),
            guards: Arc::from([auth_guard, orders_guard, catalog_guard]),
            catalog_fallback: Arc::default(),
        })))
    }
}

/// The resilience stack of one upstream: the one place it is built.
fn guarded(
    upstream: Upstream,
    url: &str,
    timeouts: &Timeouts,
    policy: &CallPolicy,
    discovery: &DiscoverySettings,
) -> anyhow::Result<(UpstreamService, Guard)> {
    let (endpoint, endpoints) = endpoint_service(upstream, url, policy, discovery)?;
    // The deadline (the request's remaining budget or the per-call timeout),
    // the bulkhead and the retries of reads, in that order: see
    // `signalbox_resilience::guard` for why each sits where it does.
    let (stack, bulkhead) = signalbox_resilience::guard(
        endpoint,
        Duration::from_secs(timeouts.upstream_secs),
        policy,
        &upstream.idempotent(),
    );
    let guard = Guard {
        upstream,
        bulkhead,
        max_in_flight: policy.max_in_flight,
        endpoints,
    };
    Ok((stack, guard))
}

/// What the calls of [`guarded`] finally go to: the upstream's instances,
/// found as `discovery` says (its DNS name resolved and re-resolved, or its
/// registrations watched in etcd), balanced per call (power of two choices),
/// each behind its own circuit breaker. The breakers sit directly on the
/// channels, under the retries, so they judge every attempt — including a
/// hung one that the deadline above ends (booked as a slow call) — and an
/// instance whose breaker is open is left out of the balancing (ejected)
/// until its open interval ends; with none left, a call is refused at once
/// (`Rejection::Open`), costing no connection.
fn endpoint_service(
    upstream: Upstream,
    url: &str,
    policy: &CallPolicy,
    discovery: &DiscoverySettings,
) -> anyhow::Result<(UpstreamService, Endpoints)> {
    let (service, view) = signalbox_discovery::upstream_with(
        upstream.name(),
        url,
        discovery,
        (&policy.breaker).into(),
    )
    .with_context(|| format!("invalid {} upstream url `{url}`", upstream.name()))?;
    let endpoints = Endpoints(Arc::new(move || {
        view.snapshot()
            .endpoints
            .into_iter()
            .map(|endpoint| EndpointGuard {
                address: endpoint.address,
                breaker: endpoint.breaker,
            })
            .collect()
    }));
    Ok((service, endpoints))
}

/// How the calls to one upstream are guarded, kept for the admin view.
#[derive(Clone)]
pub struct Guard {
    pub upstream: Upstream,
    pub bulkhead: BulkheadLayer,
    pub max_in_flight: usize,
    pub endpoints: Endpoints,
}

/// The endpoints of an upstream with their breakers, as they are now (a
/// function, because with client-side discovery the set changes).
#[derive(Clone)]
pub struct Endpoints(Arc<dyn Fn() -> Vec<EndpointGuard> + Send + Sync>);

impl Endpoints {
    pub fn now(&self) -> Vec<EndpointGuard> {
        (self.0)()
    }
}

/// One endpoint of an upstream and its circuit breaker.
#[derive(Clone)]
pub struct EndpointGuard {
    pub address: String,
    pub breaker: CircuitBreakerLayer,
}

impl EndpointGuard {
    pub fn transitions(&self) -> Vec<Transition> {
        self.breaker.transitions()
    }
}
