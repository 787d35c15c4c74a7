//! `/api/orders*`: protected routes, translated to `OrderService` calls made
//! on the caller's behalf (with the caller's access token in the call's
//! metadata, [`AuthenticatedUser::request`]); reading one order is
//! aggregated with catalog details (see [`crate::aggregate`]). Reads need
//! the `orders:read` scope, placing, revising and cancelling
//! `orders:write`. Orders
//! verifies the token again and makes sure its subject owns the order
//! (another user's order is a 404).
//!
//! [`AuthenticatedUser::request`]: crate::auth::AuthenticatedUser::request

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use signalbox_platform::{ErrorCode, Problem};
use signalbox_proto::{
    catalog::v1::{BatchGetProductsRequest, Product},
    orders::v1::{
        CancelOrderRequest, CreateOrderRequest, GetOrderRequest, LineItem, ListOrdersRequest,
        Order, ReviseOrderRequest,
    },
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    aggregate::{self, OrderDetails},
    auth::{Authorized, OrdersRead, OrdersWrite},
    error::UpstreamResult,
    extract::{parse_id, ApiJson, ApiPath},
    order_state::{state_name, StateName},
    upstream::{Clients, Upstream},
};

/// Most ids catalog accepts in one `BatchGetProducts` call.
const CATALOG_BATCH: usize = 100;

#[derive(Debug, Deserialize, ToSchema)]
// The example orders the sample catalog's signal lamp (a seeded product).
#[schema(example = json!({"items": [{"product_id": "0193a4c0-0000-7000-8000-000000000001", "quantity": 2}]}))]
pub struct NewOrder {
    /// At most 50 distinct products (the orders service's rule).
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<NewItem>,
}

/// Types are checked here (a product id must be a UUID); business rules
/// (positive quantities, known products) are the orders service's.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewItem {
    pub product_id: Uuid,
    /// 1 to 1000 per product, repeated lines added up (the orders
    /// service's rule).
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

/// `PATCH /api/orders/{id}`: the order's new items, all of them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Revision {
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<NewItem>,
}

fn line_items(items: Vec<NewItem>) -> Vec<LineItem> {
    items
        .into_iter()
        .map(|item| LineItem {
            product_id: item.product_id.to_string(),
            quantity: item.quantity,
        })
        .collect()
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"order_id": "0192f1e4-9c3d-7e12-8f00-2b6a4de0c7aa", "state": "PENDING"}))]
pub struct Accepted {
    #[schema(format = Uuid)]
    pub order_id: String,
    #[schema(value_type = StateName)]
    pub state: &'static str,
}

/// An order as listed or as returned by a cancel (not aggregated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrderBody {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(value_type = StateName)]
    pub state: &'static str,
    pub items: Vec<ItemBody>,
    pub total_cents: i64,
    pub currency: String,
    /// Why the order was rejected; `null` unless it was.
    pub rejection_reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ItemBody {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderList {
    pub orders: Vec<OrderBody>,
}

impl From<Order> for OrderBody {
    fn from(order: Order) -> Self {
        Self {
            id: order.id,
            state: state_name(order.state),
            items: order
                .items
                .into_iter()
                .map(|item| ItemBody {
                    product_id: item.product_id,
                    quantity: item.quantity,
                    unit_price_cents: item.unit_price_cents,
                })
                .collect(),
            total_cents: order.total_cents,
            currency: order.currency,
            rejection_reason: Some(order.rejection_reason).filter(|r| !r.is_empty()),
            created_at: order.created_at,
            updated_at: order.updated_at,
        }
    }
}

/// Places an order: 202, because the saga decides it later; it is
/// PENDING until catalog has reserved the stock, then APPROVED or
/// REJECTED, pushed on the socket's `user:<id>` channel.
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    operation_id = "create_order",
    summary = "Place an order (scope `orders:write`)",
    request_body = NewOrder,
    security(("bearer" = ["orders:write"])),
    responses(
        (status = 202, description = "The order exists, PENDING until the saga decides it", body = Accepted,
            headers(("Location" = String, description = "`/api/orders/{id}`, where to read it"))),
        (status = 404, description = "A product of the order does not exist (`not_found`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The order cannot be placed as it is (`failed_precondition`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn create(
    State(clients): State<Clients>,
    Authorized { user, .. }: Authorized<OrdersWrite>,
    ApiJson(body): ApiJson<NewOrder>,
) -> Result<Response, Problem> {
    let order = clients
        .orders
        .clone()
        .create_order(user.request(CreateOrderRequest {
            items: line_items(body.items),
        }))
        .await
        .or_problem(Upstream::Orders)?;
    tracing::info!(order_id = %order.id, "order accepted");
    // 202: the order exists but is not decided; the saga approves or rejects
    // it later, and `Location` is where to watch (or the socket pushes it).
    let location = HeaderValue::from_str(&format!("/api/orders/{}", order.id)).map_err(|_| {
        tracing::error!(order_id = %order.id, "order id is not a header value");
        Problem::new(ErrorCode::Internal, "an internal error occurred")
    })?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(Accepted {
            state: state_name(order.state),
            order_id: order.id,
        }),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/api/orders",
    tag = "orders",
    operation_id = "list_orders",
    summary = "The caller's orders (scope `orders:read`)",
    security(("bearer" = ["orders:read"])),
    responses((status = 200, description = "The caller's orders, newest first", body = OrderList)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn list(
    State(clients): State<Clients>,
    Authorized { user, .. }: Authorized<OrdersRead>,
) -> Result<Json<OrderList>, Problem> {
    let listed = clients
        .orders
        .clone()
        .list_orders(user.request(ListOrdersRequest {}))
        .await
        .or_problem(Upstream::Orders)?;
    Ok(Json(OrderList {
        orders: listed.orders.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    tag = "orders",
    operation_id = "get_order",
    summary = "One of the caller's orders, with catalog details (scope `orders:read`)",
    params(("id" = Uuid, Path, description = "The order's id")),
    security(("bearer" = ["orders:read"])),
    responses((status = 200, description = "The order; `degraded: true` when catalog could not add its details", body = OrderDetails)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id, order_id = %raw))]
pub async fn get(
    State(clients): State<Clients>,
    Authorized { user, .. }: Authorized<OrdersRead>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<OrderDetails>, Problem> {
    let id = parse_id(&raw, "order")?;
    let order = clients
        .orders
        .clone()
        .get_order(user.request(GetOrderRequest {
            order_id: id.to_string(),
        }))
        .await
        .or_problem(Upstream::Orders)?;
    let products = match product_details(&clients, aggregate::product_ids(&order)).await {
        Ok(products) => Some(products),
        Err(problem) => {
            // Fallback: the order without details beats no order at all.
            tracing::warn!(detail = %problem.detail, "catalog details unavailable; answering degraded");
            None
        }
    };
    Ok(Json(aggregate::compose(order, products)))
}

/// Revises the items of a PENDING or APPROVED order: 202, because catalog
/// still has to reserve (or release) the difference; the outcome arrives
/// on the socket (`order.approved`, or `order.revision_rejected` with the
/// order as it was) and in `GET /api/orders/{id}`. A revision that loses a
/// race with a cancellation, or meets one still in progress, is a 409.
#[utoipa::path(
    patch,
    path = "/api/orders/{id}",
    tag = "orders",
    operation_id = "revise_order",
    summary = "Replace a PENDING or APPROVED order's items (scope `orders:write`)",
    params(("id" = Uuid, Path, description = "The order's id")),
    request_body = Revision,
    security(("bearer" = ["orders:write"])),
    responses(
        (status = 202, description = "The revision is accepted; catalog reserves or releases the difference", body = Accepted),
        (status = 409, description = "The order is being cancelled, or was (`conflict`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The order cannot be revised in its state (`failed_precondition`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id, order_id = %raw))]
pub async fn revise(
    State(clients): State<Clients>,
    Authorized { user, .. }: Authorized<OrdersWrite>,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<Revision>,
) -> Result<Response, Problem> {
    let id = parse_id(&raw, "order")?;
    let order = clients
        .orders
        .clone()
        .revise_order(user.request(ReviseOrderRequest {
            order_id: id.to_string(),
            items: line_items(body.items),
        }))
        .await
        .or_problem(Upstream::Orders)?;
    tracing::info!(order_id = %order.id, "order revision accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            state: state_name(order.state),
            order_id: order.id,
        }),
    )
        .into_response())
}

/// The catalog products of `ids`, in batches catalog accepts.
async fn product_details(clients: &Clients, ids: Vec<String>) -> Result<Vec<Product>, Problem> {
    let mut products = Vec::with_capacity(ids.len());
    let mut catalog = clients.catalog.clone();
    for batch in ids.chunks(CATALOG_BATCH) {
        let found = catalog
            .batch_get_products(BatchGetProductsRequest {
                ids: batch.to_vec(),
            })
            .await
            .or_problem(Upstream::Catalog)?;
        products.extend(found.products);
    }
    Ok(products)
}

#[utoipa::path(
    post,
    path = "/api/orders/{id}/cancel",
    tag = "orders",
    operation_id = "cancel_order",
    summary = "Cancel one of the caller's orders (scope `orders:write`)",
    params(("id" = Uuid, Path, description = "The order's id")),
    security(("bearer" = ["orders:write"])),
    responses(
        (status = 200, description = "The order, cancelled", body = OrderBody),
        (status = 409, description = "The order changed meanwhile (`conflict`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The order cannot be cancelled in its state (`failed_precondition`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id, order_id = %raw))]
pub async fn cancel(
    State(clients): State<Clients>,
    Authorized { user, .. }: Authorized<OrdersWrite>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<OrderBody>, Problem> {
    let id = parse_id(&raw, "order")?;
    let order = clients
        .orders
        .clone()
        .cancel_order(user.request(CancelOrderRequest {
            order_id: id.to_string(),
        }))
        .await
        .or_problem(Upstream::Orders)?;
    tracing::info!(order_id = %order.id, "order cancelled");
    Ok(Json(order.into()))
}

#[cfg(test)]
mod tests {
    use signalbox_proto::orders::v1::OrderState;

    use super::*;

    #[test]
    fn an_empty_rejection_reason_is_null() {
        let body = OrderBody::from(Order {
            id: "o".into(),
            state: OrderState::Pending as i32,
            ..Order::default()
        });
        assert_eq!(body.rejection_reason, None);
        assert_eq!(body.state, "PENDING");
    }
}
