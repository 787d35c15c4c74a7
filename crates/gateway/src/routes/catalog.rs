//! `/api/catalog/*`, translated to `CatalogService` calls.
//!
//! The two reads fall back to the last good answer when catalog cannot
//! answer ([`crate::fallback`]): the list and a product's details are
//! served from memory, marked stale (`X-Signalbox-Stale: true`, `Age`,
//! `"stale": true`), rather than refused; with nothing kept, the problem.

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};
use std::sync::Arc;

use serde::Serialize;
use signalbox_platform::Problem;
use signalbox_proto::catalog::v1::{GetProductRequest, ListProductsRequest, Product};
use tonic::Status;
use utoipa::ToSchema;

use crate::{
    error::{upstream_down, upstream_problem},
    extract::{parse_id, ApiPath},
    fallback::Kept,
    upstream::{Clients, Upstream},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({"id": "0192f1e4-7b1c-7a51-9a53-6f0cbbfa2c11", "sku": "SB-001", "name": "Signal lamp", "price_cents": 1999, "currency": "EUR", "stock": 25}))]
pub struct ProductBody {
    #[schema(format = Uuid)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductList {
    pub products: Vec<ProductBody>,
    /// `true` when catalog could not answer and this is its last good list.
    pub stale: bool,
}

/// A product's details, and whether they are a fallback.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductDetails {
    #[serde(flatten)]
    pub product: ProductBody,
    /// `true` when catalog could not answer and these are the last good
    /// details.
    pub stale: bool,
}

#[utoipa::path(
    get,
    path = "/api/catalog/products",
    tag = "catalog",
    operation_id = "list_products",
    summary = "Every product, with price and stock",
    responses(
        (status = 200, description = "The products; with `\"stale\": true`, `X-Signalbox-Stale: true` and `Age` when catalog cannot answer and this is its last good answer", body = ProductList,
            headers(("X-Signalbox-Stale" = String, description = "`true` on an answer from memory"), ("Age" = u64, description = "Seconds since that answer, on an answer from memory"))),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list(State(clients): State<Clients>) -> Result<Response, Problem> {
    let kept = &clients.catalog_fallback;
    match clients
        .catalog
        .clone()
        .list_products(ListProductsRequest {})
        .await
    {
        Ok(listed) => {
            let products: Arc<[Product]> = listed.into_inner().products.into();
            kept.keep_list(products.clone());
            Ok(Json(ListView::new(&products, false)).into_response())
        }
        Err(status) => {
            let stale = fallback(status, || kept.list())?;
            Ok((stale.headers(), Json(ListView::new(&stale.value, true))).into_response())
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/catalog/products/{id}",
    tag = "catalog",
    operation_id = "get_product",
    summary = "One product",
    params(("id" = Uuid, Path, description = "The product's id")),
    responses(
        (status = 200, description = "The products; with `\"stale\": true`, `X-Signalbox-Stale: true` and `Age` when catalog cannot answer and this is its last good answer", body = ProductDetails,
            headers(("X-Signalbox-Stale" = String, description = "`true` on an answer from memory"), ("Age" = u64, description = "Seconds since that answer, on an answer from memory"))),
    ),
)]
#[tracing::instrument(skip_all, fields(product_id = %raw))]
pub async fn get(
    State(clients): State<Clients>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, Problem> {
    let id = parse_id(&raw, "product")?.to_string();
    let kept = &clients.catalog_fallback;
    match clients
        .catalog
        .clone()
        .get_product(GetProductRequest { id: id.clone() })
        .await
    {
        Ok(product) => {
            let product = product.into_inner();
            kept.keep_product(&product);
            Ok(Json(details(product, false)).into_response())
        }
        Err(status) => {
            let stale = fallback(status, || kept.product(&id))?;
            Ok((stale.headers(), Json(details(stale.value, true))).into_response())
        }
    }
}

/// The kept value when catalog could not answer and one is kept; otherwise
/// the problem for `status` (an answer of catalog itself, such as
/// `NotFound`, is never replaced by an old value).
fn fallback<T>(status: Status, kept: impl FnOnce() -> Option<Kept<T>>) -> Result<Kept<T>, Problem> {
    if upstream_down(&status) {
        if let Some(kept) = kept() {
            tracing::warn!(code = ?status.code(), age_secs = kept.age.as_secs(), "catalog cannot answer; serving the last good answer");
            return Ok(kept);
        }
    }
    Err(upstream_problem(Upstream::Catalog, status))
}

/// A [`ProductList`] as it is sent, serialised from the products as catalog
/// gave them: borrowed, because the same products are kept for the
/// fallback, and copying them into a [`ProductList`] cost every answer
/// four allocations per product (and as many frees). Its fields are
/// [`ProductBody`]'s, in the same order (a test below holds them to it).
#[derive(Serialize)]
struct ListView<'a> {
    products: Vec<ProductView<'a>>,
    stale: bool,
}

#[derive(Serialize)]
struct ProductView<'a> {
    id: &'a str,
    sku: &'a str,
    name: &'a str,
    price_cents: i64,
    currency: &'a str,
    stock: i64,
}

impl<'a> ListView<'a> {
    fn new(products: &'a [Product], stale: bool) -> Self {
        let products = products
            .iter()
            .map(|p| ProductView {
                id: &p.id,
                sku: &p.sku,
                name: &p.name,
                price_cents: p.price_cents,
                currency: &p.currency,
                stock: p.stock,
            })
            .collect();
        Self { products, stale }
    }
}

fn details(product: Product, stale: bool) -> ProductDetails {
    ProductDetails {
        product: product.into(),
        stale,
    }
}

/// The body of `PATCH /api/catalog/products/{id}`: the new price (in cents;
/// `price` is accepted as its name too) and/or the new stock.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"price_cents": 2499, "stock": 40}))]
pub struct ProductChange {
    /// The new price in cents (`price` is accepted too).
    #[serde(default, alias = "price")]
    pub price_cents: Option<i64>,
    #[serde(default)]
    pub stock: Option<i64>,
}

/// `PATCH /api/catalog/products/{id}` (scope `catalog:admin`) →
/// `UpdateProduct`, on behalf of the operator (their token goes along and
/// catalog verifies it too). Catalog validates the values (400) and knows
/// the product (404), and announces the change on the `catalog` channel.
#[utoipa::path(
    patch,
    path = "/api/catalog/products/{id}",
    tag = "catalog",
    operation_id = "update_product",
    summary = "Change a product's price or stock (scope `catalog:admin`)",
    params(("id" = Uuid, Path, description = "The product's id")),
    request_body = ProductChange,
    security(("bearer" = ["catalog:admin"])),
    responses((status = 200, description = "The product as changed; `catalog.price_changed` / `catalog.stock_changed` follow on the `catalog` channel", body = ProductBody)),
)]
#[tracing::instrument(skip_all, fields(product_id = %raw))]
pub async fn update(
    State(clients): State<Clients>,
    crate::auth::Authorized { user, .. }: crate::auth::Authorized<crate::auth::CatalogAdmin>,
    ApiPath(raw): ApiPath<String>,
    crate::extract::ApiJson(change): crate::extract::ApiJson<ProductChange>,
) -> Result<Json<ProductBody>, Problem> {
    use crate::error::UpstreamResult as _;

    let id = parse_id(&raw, "product")?.to_string();
    let request = signalbox_proto::catalog::v1::UpdateProductRequest {
        id,
        price_cents: change.price_cents,
        stock: change.stock,
    };
    let product = clients
        .catalog
        .clone()
        .update_product(user.request(request))
        .await
        .or_problem(Upstream::Catalog)?;
    Ok(Json(product.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sent_as_its_schema_says() {
        let products = [
            Product {
                id: "0192f1e4-7b1c-7a51-9a53-6f0cbbfa2c11".into(),
                sku: "SB-001".into(),
                name: "Signal lamp".into(),
                price_cents: 1999,
                currency: "EUR".into(),
                stock: 25,
            },
            Product {
                id: "0192f1e4-7b1c-7a51-9a53-6f0cbbfa2c12".into(),
                sku: "SB-002".into(),
                name: "Lever \"frame\"".into(),
                price_cents: 0,
                currency: "GBP".into(),
                stock: -1,
            },
        ];
        for stale in [false, true] {
            let documented = ProductList {
                products: products.iter().cloned().map(Into::into).collect(),
                stale,
            };
            assert_eq!(
                serde_json::to_string(&ListView::new(&products, stale)).unwrap(),
                serde_json::to_string(&documented).unwrap(),
            );
        }
    }
}
