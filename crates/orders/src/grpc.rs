//! The gRPC face of orders, where ownership is enforced: at the owner of the
//! data.
//!
//! No request names its user. Every call is made on behalf of one and
//! carries that user's access token (`authorization: Bearer <token>`
//! metadata, read by the parser every edge uses); orders verifies it with
//! the same verifier as the gateway and realtime and acts for the token's
//! `sub` ([`OrdersGrpc::caller`]). So reaching port 50052 is not enough to
//! act as anyone: a caller needs a valid token of the user, with the scope
//! the method needs (`orders:write` to create, revise and cancel,
//! `orders:read` to get and list). Errors map to gRPC codes in
//! [`crate::error`].

use std::{collections::BTreeMap, sync::Arc};

use signalbox_messages::channels::Namespace;
use signalbox_platform::{caller, tokens::TokenVerifier};
use signalbox_proto::orders::v1::{
    order_service_server::OrderService, CancelOrderRequest, CreateOrderRequest, GetOrderRequest,
    ListOrdersRequest, ListOrdersResponse, Order as OrderMessage, OrderItem, OrderState as Proto,
    ReviseOrderRequest,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{
    actions,
    catalog::CatalogClient,
    domain::{self, OrderState, RequestedItems},
    error::OrdersError,
    repo::{self, Order},
    saga,
};

/// Most orders `ListOrders` returns.
const LIST_LIMIT: i64 = 100;

/// The scope that reading orders needs (`GetOrder`, `ListOrders`).
pub const READ_SCOPE: &str = "orders:read";
/// The scope that changing orders needs (`CreateOrder`, `ReviseOrder`,
/// `CancelOrder`).
pub const WRITE_SCOPE: &str = "orders:write";

pub struct OrdersGrpc {
    pool: PgPool,
    catalog: CatalogClient,
    ns: Namespace,
    verifier: Arc<TokenVerifier>,
}

impl OrdersGrpc {
    pub fn new(
        pool: PgPool,
        catalog: CatalogClient,
        ns: Namespace,
        verifier: Arc<TokenVerifier>,
    ) -> Self {
        Self {
            pool,
            catalog,
            ns,
            verifier,
        }
    }

    /// The user a call is made for: the `sub` of the access token in its
    /// `authorization` metadata, once the token is verified and grants
    /// `scope`. Whatever else the call says about its user is not read.
    /// The user id is recorded on the handler's span (its `user_id` field).
    async fn caller<T>(
        &self,
        request: &Request<T>,
        scope: &'static str,
    ) -> Result<String, OrdersError> {
        Ok(caller::verify(&self.verifier, request, scope).await?.sub)
    }

    async fn create(
        &self,
        user_id: &str,
        request: CreateOrderRequest,
    ) -> Result<Order, OrdersError> {
        let items = RequestedItems::parse(
            request
                .items
                .iter()
                .map(|item| (item.product_id.as_str(), item.quantity)),
        )
        .map_err(OrdersError::InvalidInput)?;
        // Priced before the transaction opens: no connection waits on catalog.
        let priced = actions::price(&self.catalog, &items).await?;
        // One transaction: the order and the messages that start the saga.
        let mut tx = self.pool.begin().await?;
        let order = actions::place(&mut tx, &self.ns, user_id, &priced).await?;
        tx.commit().await?;
        Ok(order)
    }

    async fn cancel(
        &self,
        user_id: &str,
        request: CancelOrderRequest,
    ) -> Result<Order, OrdersError> {
        let mut tx = self.pool.begin().await?;
        let row = actions::cancel(&mut tx, &self.ns, user_id, &request.order_id).await?;
        tx.commit().await?;
        repo::find_order(&self.pool, row.id, user_id)
            .await?
            .ok_or(OrdersError::NotFound(request.order_id))
    }
}

impl OrdersGrpc {
    /// Accepts a revision of the caller's PENDING or APPROVED order: the
    /// new items, priced (agreed prices kept, new products quoted), stored
    /// as a PENDING revision with the messages of the revision step (see
    /// [`saga::revise`]). The order is unchanged until catalog answers.
    async fn revise(
        &self,
        user_id: &str,
        request: ReviseOrderRequest,
    ) -> Result<Order, OrdersError> {
        let id = actions::order_id(&request.order_id)?;
        let items = RequestedItems::parse(
            request
                .items
                .iter()
                .map(|item| (item.product_id.as_str(), item.quantity)),
        )
        .map_err(OrdersError::InvalidInput)?;
        let not_found = || OrdersError::NotFound(request.order_id.clone());
        // Read before pricing, so that no one learns prices (or spends a
        // catalog call) on an order that is not theirs; decided again below
        // under the row lock.
        let current = repo::find_order(&self.pool, id, user_id)
            .await?
            .ok_or_else(not_found)?;
        let quote = actions::price(&self.catalog, &items).await?;
        if quote.currency != current.row.currency {
            return Err(OrdersError::FailedPrecondition(format!(
                "the order is in {}; the products are in {}",
                current.row.currency, quote.currency
            )));
        }
        let agreed: BTreeMap<_, _> = current
            .items
            .iter()
            .map(|item| (item.product_id, item.unit_price_cents))
            .collect();
        let quoted: BTreeMap<_, _> = quote
            .items
            .iter()
            .map(|item| (item.product_id, item.unit_price_cents))
            .collect();
        let priced = domain::reprice(items.iter(), &agreed, &quoted)
            .ok_or_else(|| OrdersError::FailedPrecondition("a product has no price".to_owned()))?;
        let total = domain::total_cents(&priced)
            .ok_or_else(|| OrdersError::InvalidInput("the order total is too large".to_owned()))?;

        // One transaction under the order's row lock: the state check, the
        // revision and its messages. A cancellation holds the same lock, so
        // whichever commits first wins and the other sees it.
        let mut tx = self.pool.begin().await?;
        let row = match repo::lock_order(&mut tx, id).await? {
            Some(row) if row.user_id == user_id => row,
            _ => return Err(not_found()),
        };
        match row.state() {
            OrderState::Cancelled => {
                return Err(OrdersError::Conflict(format!(
                    "order {id} was cancelled; it cannot be revised"
                )))
            }
            state if !state.can_revise() => {
                return Err(OrdersError::FailedPrecondition(format!(
                    "a {} order cannot be revised",
                    state.as_str()
                )))
            }
            _ => {}
        }
        if repo::pending_revision(&mut tx, id).await?.is_some() {
            return Err(OrdersError::Conflict(format!(
                "order {id} has a revision in progress"
            )));
        }
        let revision_id = saga::revise(&mut tx, &self.ns, &row, &priced, total).await?;
        tx.commit().await?;
        tracing::info!(order_id = %id, %revision_id, total_cents = total, "revision accepted");
        repo::find_order(&self.pool, id, user_id)
            .await?
            .ok_or_else(not_found)
    }
}

fn proto_state(state: OrderState) -> Proto {
    match state {
        OrderState::Pending => Proto::Pending,
        OrderState::Approved => Proto::Approved,
        OrderState::Rejected => Proto::Rejected,
        OrderState::Cancelled => Proto::Cancelled,
    }
}

impl From<Order> for OrderMessage {
    fn from(order: Order) -> Self {
        let row = order.row;
        Self {
            id: row.id.to_string(),
            user_id: row.user_id.clone(),
            state: proto_state(row.state()) as i32,
            items: order
                .items
                .into_iter()
                .map(|item| OrderItem {
                    product_id: item.product_id.to_string(),
                    quantity: item.quantity,
                    unit_price_cents: item.unit_price_cents,
                })
                .collect(),
            total_cents: row.total_cents,
            currency: row.currency,
            rejection_reason: row.rejection_reason.unwrap_or_default(),
            created_at: row.created_at.to_rfc3339(),
            updated_at: row.updated_at.to_rfc3339(),
        }
    }
}

#[tonic::async_trait]
impl OrderService for OrdersGrpc {
    #[tracing::instrument(skip_all, fields(user_id))]
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<OrderMessage>, Status> {
        let user_id = self.caller(&request, WRITE_SCOPE).await?;
        let order = self.create(&user_id, request.into_inner()).await?;
        Ok(Response::new(order.into()))
    }

    #[tracing::instrument(skip_all, fields(user_id, order_id = %request.get_ref().order_id))]
    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<OrderMessage>, Status> {
        let user_id = self.caller(&request, WRITE_SCOPE).await?;
        let order = self.cancel(&user_id, request.into_inner()).await?;
        Ok(Response::new(order.into()))
    }

    #[tracing::instrument(skip_all, fields(user_id, order_id = %request.get_ref().order_id))]
    async fn revise_order(
        &self,
        request: Request<ReviseOrderRequest>,
    ) -> Result<Response<OrderMessage>, Status> {
        let user_id = self.caller(&request, WRITE_SCOPE).await?;
        let order = self.revise(&user_id, request.into_inner()).await?;
        Ok(Response::new(order.into()))
    }

    #[tracing::instrument(skip_all, fields(user_id, order_id = %request.get_ref().order_id))]
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<OrderMessage>, Status> {
        let user_id = self.caller(&request, READ_SCOPE).await?;
        let request = request.into_inner();
        let id = actions::order_id(&request.order_id)?;
        let order = repo::find_order(&self.pool, id, &user_id)
            .await
            .map_err(OrdersError::from)?
            .ok_or(OrdersError::NotFound(request.order_id))?;
        Ok(Response::new(order.into()))
    }

    #[tracing::instrument(skip_all, fields(user_id))]
    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let user_id = self.caller(&request, READ_SCOPE).await?;
        let orders = repo::list_orders(&self.pool, &user_id, LIST_LIMIT)
            .await
            .map_err(OrdersError::from)?;
        Ok(Response::new(ListOrdersResponse {
            orders: orders.into_iter().map(Into::into).collect(),
        }))
    }
}
