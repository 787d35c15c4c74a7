//! What a user does to orders — place one, cancel one — written once for
//! every door a request comes through: the gRPC service the gateway calls
//! ([`crate::grpc`]) and the socket commands realtime forwards
//! ([`crate::inbound`]). The door authenticates and decodes; the rules
//! (validation, pricing, ownership, which states may be cancelled) are here.
//!
//! Each action works on the caller's connection, so the caller decides what
//! else commits with it: the gRPC door opens a transaction for the action
//! alone, the socket door puts its processed-messages claim and the stored
//! reply in the same one. Pricing is a network call to catalog, so it is a
//! step of its own ([`price`]) that a caller may make before it opens a
//! transaction.

use signalbox_messages::channels::Namespace;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    catalog::CatalogClient,
    domain::{self, PricedItem, RequestedItems},
    error::OrdersError,
    repo::{self, Order, OrderRow},
    saga,
};

/// An order priced by catalog, not stored yet.
#[derive(Debug, Clone)]
pub struct Priced {
    pub items: Vec<PricedItem>,
    pub total_cents: i64,
    pub currency: String,
}

/// Asks catalog for the current prices of `items`. Every product must
/// exist and all must share one currency.
pub async fn price(catalog: &CatalogClient, items: &RequestedItems) -> Result<Priced, OrdersError> {
    // Synchronous step: catalog quotes the current prices.
    let quote = catalog.quote(&items.product_ids()).await?;
    if !quote.missing.is_empty() {
        return Err(OrdersError::FailedPrecondition(format!(
            "unknown products: {}",
            quote.missing.join(", ")
        )));
    }
    let mut priced = Vec::new();
    let mut currency: Option<String> = None;
    for (product_id, quantity) in items.iter() {
        let product = quote.products.get(&product_id).ok_or_else(|| {
            OrdersError::FailedPrecondition(format!("unknown products: {product_id}"))
        })?;
        match &currency {
            Some(c) if *c != product.currency => {
                return Err(OrdersError::FailedPrecondition(
                    "products in one order must share a currency".to_owned(),
                ))
            }
            _ => currency = Some(product.currency.clone()),
        }
        priced.push(PricedItem {
            product_id,
            quantity,
            unit_price_cents: product.price_cents,
        });
    }
    let total_cents = domain::total_cents(&priced)
        .ok_or_else(|| OrdersError::InvalidInput("the order total is too large".to_owned()))?;
    Ok(Priced {
        items: priced,
        total_cents,
        currency: currency.unwrap_or_else(|| "EUR".to_owned()),
    })
}

/// Stores a priced order for `user_id` as PENDING, with the messages that
/// start its saga, on the caller's connection (its transaction).
pub async fn place(
    conn: &mut PgConnection,
    ns: &Namespace,
    user_id: &str,
    priced: &Priced,
) -> Result<Order, OrdersError> {
    let order = repo::insert_order(
        conn,
        Uuid::now_v7(),
        user_id,
        &priced.items,
        priced.total_cents,
        &priced.currency,
    )
    .await?;
    saga::start(conn, ns, &order).await?;
    tracing::info!(order_id = %order.row.id, total_cents = priced.total_cents, "order created");
    Ok(order)
}

/// Cancels order `raw_id` of `user_id` on the caller's connection (its
/// transaction) and returns the cancelled row. Another user's order is
/// `NotFound`, exactly like one that does not exist.
pub async fn cancel(
    conn: &mut PgConnection,
    ns: &Namespace,
    user_id: &str,
    raw_id: &str,
) -> Result<OrderRow, OrdersError> {
    let id = order_id(raw_id)?;
    let row = match repo::lock_order(conn, id).await? {
        Some(row) if row.user_id == user_id => row,
        _ => return Err(OrdersError::NotFound(raw_id.to_owned())),
    };
    if !row.state().can_cancel() {
        return Err(OrdersError::FailedPrecondition(format!(
            "a {} order cannot be cancelled",
            row.state
        )));
    }
    // A revision in progress makes this a conflict (see `saga::cancel`).
    saga::cancel(conn, ns, &row).await
}

/// Parses an order id given by a client.
pub fn order_id(raw: &str) -> Result<Uuid, OrdersError> {
    Uuid::parse_str(raw)
        .map_err(|_| OrdersError::InvalidInput(format!("`{raw}` is not a valid order id")))
}
