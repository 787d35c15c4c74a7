//! The synchronous call orders makes: pricing items with catalog over gRPC.
//!
//! The call is guarded like every synchronous hop ([`guarded`]): it
//! inherits what is left of the gateway's request budget (the gRPC server
//! runs each handler in the deadline its `grpc-timeout` named, see
//! `signalbox_platform::serve::grpc`), a bulkhead bounds the calls in flight
//! to catalog, reads are retried within a budget, and a circuit breaker
//! stops calling a catalog that keeps failing. A refused call becomes
//! [`OrdersError::CatalogUnavailable`] carrying the refusal, and orders
//! answers with its gRPC code (`Unavailable`, `ResourceExhausted`,
//! `DeadlineExceeded`) and its `signalbox-rejected` metadata, so the gateway
//! tells the client what happened. Catalog's instances are found as the
//! `discovery` settings say (its DNS name, or its registrations in etcd) and
//! balanced per call, each behind its own breaker; channels connect lazily,
//! so orders starts even when catalog is not up yet.
//!
//! The call carries no access token, and needs none: pricing uses only
//! `BatchGetProducts`, a public product read that catalog answers for
//! anyone (the same data `GET /api/catalog/products` shows). The user's
//! token stops at orders; a catalog method that acts for a user or needs a
//! scope would have to be called with that user's token forwarded.

use std::{collections::HashMap, time::Duration};

use signalbox_discovery::DiscoverySettings;
use signalbox_proto::catalog::v1::{
    catalog_service_client::CatalogServiceClient, catalog_service_server, BatchGetProductsRequest,
    Product,
};
use signalbox_resilience::{CallPolicy, ClientService, UpstreamService};
use uuid::Uuid;

use crate::{config::Upstreams, error::OrdersError};

/// How long a connection attempt to catalog may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct CatalogClient {
    client: CatalogServiceClient<ClientService>,
}

/// What catalog said about the products of an order.
pub struct Quote {
    pub products: HashMap<Uuid, Product>,
    pub missing: Vec<String>,
}

impl CatalogClient {
    /// Builds the client without connecting; fails only on a malformed URL.
    pub fn new(
        upstreams: &Upstreams,
        policy: &CallPolicy,
        discovery: &DiscoverySettings,
    ) -> anyhow::Result<Self> {
        let service = guarded(upstreams, policy, discovery)?;
        Ok(Self {
            client: CatalogServiceClient::new(ClientService::new(service)),
        })
    }

    #[tracing::instrument(skip_all, fields(count = ids.len()))]
    pub async fn quote(&self, ids: &[Uuid]) -> Result<Quote, OrdersError> {
        let request = BatchGetProductsRequest {
            ids: ids.iter().map(Uuid::to_string).collect(),
        };
        let response = self
            .client
            .clone()
            .batch_get_products(request)
            .await
            .map_err(OrdersError::CatalogUnavailable)?
            .into_inner();
        let products = response
            .products
            .into_iter()
            .filter_map(|p| Uuid::parse_str(&p.id).ok().map(|id| (id, p)))
            .collect();
        Ok(Quote {
            products,
            missing: response.missing,
        })
    }
}

/// Catalog's reads, the only calls retried: pricing asks again, it changes
/// nothing.
fn idempotent() -> Vec<String> {
    ["GetProduct", "ListProducts", "BatchGetProducts"]
        .iter()
        .map(|m| format!("/{}/{m}", catalog_service_server::SERVICE_NAME))
        .collect()
}

/// The resilience stack of the call to catalog: the one place it is built.
fn guarded(
    upstreams: &Upstreams,
    policy: &CallPolicy,
    discovery: &DiscoverySettings,
) -> anyhow::Result<UpstreamService> {
    let endpoint = endpoint_service(&upstreams.catalog, policy, discovery)?;
    // The deadline (the earlier of our own timeout and what is left of the
    // caller's budget, inherited from the gateway through `grpc-timeout`),
    // a bulkhead (a hung catalog holds at most `max_in_flight` order
    // requests) and retries of reads: see `signalbox_resilience::guard` for
    // why each sits where it does.
    let (stack, _bulkhead) = signalbox_resilience::guard(
        endpoint,
        Duration::from_millis(upstreams.catalog_timeout_ms),
        policy,
        &idempotent(),
    );
    Ok(stack)
}

/// What the calls finally go to: catalog's instances, found as `discovery`
/// says and balanced per call (power of two choices), each behind its own
/// circuit breaker. The breakers sit directly on the channels, so they judge
/// every attempt (a hung one, ended by the deadline above, counts as a slow
/// call); an instance whose breaker is open is left out of the balancing
/// until its interval ends, and with none left a call is refused at once.
fn endpoint_service(
    url: &str,
    policy: &CallPolicy,
    discovery: &DiscoverySettings,
) -> anyhow::Result<UpstreamService> {
    let discovery = DiscoverySettings {
        connect_timeout_ms: CONNECT_TIMEOUT.as_millis() as u64,
        ..discovery.clone()
    };
    let (service, _view) =
        signalbox_discovery::upstream_with("catalog", url, &discovery, (&policy.breaker).into())?;
    Ok(service)
}
