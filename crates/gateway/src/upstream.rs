//! gRPC clients of the services behind the gateway: the REST→gRPC half of
//! protocol translation.
//!
//! One [`Channel`] per upstream, shared by every request (a channel is a
//! cheap-to-clone handle onto one multiplexed HTTP/2 connection). Channels
//! connect lazily, so the gateway starts, and answers 503 for the routes of a
//! service that is not up yet, instead of refusing to start; the connection is
//! retried on the next request.
//!
//! Every call is bounded twice: by the connect timeout (an address that does
//! not answer at all) and by the per-call timeout (a service that accepted
//! the call and does not finish it). A call on a user's behalf carries the
//! user's access token (`crate::auth::AuthenticatedUser::request`); what a
//! failed call answers the client is [`crate::error`]'s business.

use std::time::Duration;

use anyhow::Context;
use signalbox_proto::{
    auth::v1::auth_service_client::AuthServiceClient,
    catalog::v1::catalog_service_client::CatalogServiceClient,
    orders::v1::order_service_client::OrderServiceClient,
};
use tonic::transport::{Channel, Endpoint};

use crate::config::{Timeouts, Upstreams};

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
}

/// One client per upstream service. Cloning is cheap: clones share the
/// channel (and so the connection) of the original.
#[derive(Clone)]
pub struct Clients {
    pub auth: AuthServiceClient<Channel>,
    pub orders: OrderServiceClient<Channel>,
    pub catalog: CatalogServiceClient<Channel>,
}

impl Clients {
    /// Builds the clients without connecting; fails only on a malformed URL.
    pub fn new(upstreams: &Upstreams, timeouts: &Timeouts) -> anyhow::Result<Self> {
        Ok(Self {
            auth: AuthServiceClient::new(channel(Upstream::Auth, &upstreams.auth, timeouts)?),
            orders: OrderServiceClient::new(channel(
                Upstream::Orders,
                &upstreams.orders,
                timeouts,
            )?),
            catalog: CatalogServiceClient::new(channel(
                Upstream::Catalog,
                &upstreams.catalog,
                timeouts,
            )?),
        })
    }
}

fn channel(upstream: Upstream, url: &str, timeouts: &Timeouts) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid {} upstream url `{url}`", upstream.name()))?
        .connect_timeout(Duration::from_secs(timeouts.connect_secs))
        .timeout(Duration::from_secs(timeouts.upstream_secs));
    // Resilience seam: the rate limiter, bulkhead (concurrency limit) and
    // circuit breaker of the upstream call path wrap this channel, e.g.
    // `ServiceBuilder::new().layer(breaker).layer(bulkhead).service(channel)`,
    // and the clients above become generic over that service. They sit here,
    // per upstream and below the per-call timeout, so that a broken catalog
    // opens only the catalog's breaker and a timed-out call counts as a failure.
    Ok(endpoint.connect_lazy())
}
