//! `/api/catalog/*`, translated to `CatalogService` calls.

use axum::{extract::State, Json};
use serde::Serialize;
use signalbox_platform::Problem;
use signalbox_proto::catalog::v1::{GetProductRequest, ListProductsRequest, Product};

use crate::{
    error::UpstreamResult,
    extract::{parse_id, ApiPath},
    upstream::{Clients, Upstream},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductBody {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
}

impl From<Product> for ProductBody {
    fn from(p: Product) -> Self {
        Self {
            id: p.id,
            sku: p.sku,
            name: p.name,
            price_cents: p.price_cents,
            currency: p.currency,
            stock: p.stock,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProductList {
    pub products: Vec<ProductBody>,
}

#[tracing::instrument(skip_all)]
pub async fn list(State(clients): State<Clients>) -> Result<Json<ProductList>, Problem> {
    let listed = clients
        .catalog
        .clone()
        .list_products(ListProductsRequest {})
        .await
        .or_problem(Upstream::Catalog)?;
    Ok(Json(ProductList {
        products: listed.products.into_iter().map(Into::into).collect(),
    }))
}

#[tracing::instrument(skip_all, fields(product_id = %raw))]
pub async fn get(
    State(clients): State<Clients>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<ProductBody>, Problem> {
    let id = parse_id(&raw, "product")?;
    let product = clients
        .catalog
        .clone()
        .get_product(GetProductRequest { id: id.to_string() })
        .await
        .or_problem(Upstream::Catalog)?;
    Ok(Json(product.into()))
}
