//! The synchronous call orders makes: pricing items with catalog over gRPC.
//!
//! The channel connects lazily (orders starts even when catalog is not up
//! yet) and every call has a deadline, so a slow catalog fails an order
//! quickly instead of holding the gateway's request. This client is the seam
//! where the resilience layers (circuit breaker, bulkhead) wrap the call.
//!
//! The call carries no access token, and needs none: pricing uses only
//! `BatchGetProducts`, a public product read that catalog answers for
//! anyone (the same data `GET /api/catalog/products` shows). The user's
//! token stops at orders; a catalog method that acts for a user or needs a
//! scope would have to be called with that user's token forwarded.

use std::{collections::HashMap, time::Duration};

use signalbox_proto::catalog::v1::{
    catalog_service_client::CatalogServiceClient, BatchGetProductsRequest, Product,
};
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::error::OrdersError;

#[derive(Clone)]
pub struct CatalogClient {
    client: CatalogServiceClient<Channel>,
}

/// What catalog said about the products of an order.
pub struct Quote {
    pub products: HashMap<Uuid, Product>,
    pub missing: Vec<String>,
}

impl CatalogClient {
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .connect_lazy();
        Ok(Self {
            client: CatalogServiceClient::new(channel),
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
            .map_err(|status| OrdersError::CatalogUnavailable(status.message().to_owned()))?
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
