//! The gRPC face of the catalog. Reads are public; `UpdateProduct` is
//! made on behalf of an operator and carries their access token, verified
//! here (the owner of the data enforces who may change it) with the scope
//! `catalog:admin`; the change itself is in [`crate::admin`].

use std::sync::Arc;

use signalbox_messages::channels::Namespace;
use signalbox_platform::{caller, tokens::TokenVerifier};
use signalbox_proto::catalog::v1::{
    catalog_service_server::CatalogService, BatchGetProductsRequest, BatchGetProductsResponse,
    GetProductRequest, ListProductsRequest, ListProductsResponse, Product as ProductMessage,
    UpdateProductRequest,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    admin::{self, Change, ADMIN_SCOPE},
    domain::Product,
    error::CatalogError,
    repo,
};

/// Upper bound on ids in one `BatchGetProducts` call.
const MAX_BATCH: usize = 100;

pub struct CatalogGrpc {
    pool: PgPool,
    ns: Namespace,
    verifier: Arc<TokenVerifier>,
}

impl CatalogGrpc {
    pub fn new(pool: PgPool, ns: Namespace, verifier: Arc<TokenVerifier>) -> Self {
        Self { pool, ns, verifier }
    }

    /// Checks that the call carries a valid access token granting `scope`.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        scope: &'static str,
    ) -> Result<(), CatalogError> {
        caller::verify(&self.verifier, request, scope).await?;
        Ok(())
    }
}

fn parse_id(raw: &str) -> Result<Uuid, CatalogError> {
    Uuid::parse_str(raw).map_err(|_| CatalogError::InvalidId(raw.to_owned()))
}

impl From<Product> for ProductMessage {
    fn from(p: Product) -> Self {
        Self {
            id: p.id.to_string(),
            sku: p.sku,
            name: p.name,
            price_cents: p.price_cents,
            currency: p.currency,
            stock: p.stock,
        }
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogGrpc {
    #[tracing::instrument(skip_all, fields(product_id = %request.get_ref().id))]
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<ProductMessage>, Status> {
        let raw = request.into_inner().id;
        let id = parse_id(&raw)?;
        let product = repo::products_by_id(&self.pool, &[id])
            .await
            .map_err(CatalogError::from)?
            .into_iter()
            .next()
            .ok_or(CatalogError::NotFound(raw))?;
        Ok(Response::new(product.into()))
    }

    #[tracing::instrument(skip_all)]
    async fn list_products(
        &self,
        _request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let products = repo::list_products(&self.pool)
            .await
            .map_err(CatalogError::from)?;
        Ok(Response::new(ListProductsResponse {
            products: products.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(product_id = %request.get_ref().id, user_id))]
    async fn update_product(
        &self,
        request: Request<UpdateProductRequest>,
    ) -> Result<Response<ProductMessage>, Status> {
        self.authorize(&request, ADMIN_SCOPE).await?;
        let request = request.into_inner();
        let id = parse_id(&request.id)?;
        let change = Change::parse(request.price_cents, request.stock)?;
        let product = admin::update(&self.pool, &self.ns, id, change).await?;
        Ok(Response::new(product.into()))
    }

    #[tracing::instrument(skip_all, fields(count = request.get_ref().ids.len()))]
    async fn batch_get_products(
        &self,
        request: Request<BatchGetProductsRequest>,
    ) -> Result<Response<BatchGetProductsResponse>, Status> {
        let raw_ids = request.into_inner().ids;
        if raw_ids.len() > MAX_BATCH {
            return Err(signalbox_platform::ErrorCode::InvalidInput
                .status(format!("at most {MAX_BATCH} ids per call")));
        }
        let ids = raw_ids
            .iter()
            .map(|raw| parse_id(raw))
            .collect::<Result<Vec<_>, _>>()?;
        let products = repo::products_by_id(&self.pool, &ids)
            .await
            .map_err(CatalogError::from)?;
        let missing = ids
            .iter()
            .filter(|id| !products.iter().any(|p| p.id == **id))
            .map(Uuid::to_string)
            .collect();
        Ok(Response::new(BatchGetProductsResponse {
            products: products.into_iter().map(Into::into).collect(),
            missing,
        }))
    }
}
