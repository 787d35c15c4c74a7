//! Operator changes to the catalog: `UpdateProduct` sets a product's price
//! and/or stock and announces it.
//!
//! The change and its events commit together: the product row is locked,
//! updated, and `catalog.price_changed` / `catalog.stock_changed` are written
//! to the outbox in the same transaction; the relay publishes them (with
//! confirms) to the events exchange, where the realtime service's event log
//! picks them up for the public `catalog` channel. An event is written only
//! for a value that actually changed, so setting the same price twice
//! announces nothing the second time.
//!
//! ```text
//!  PATCH /api/catalog/products/{id} ──gateway──▶ UpdateProduct (token with catalog:admin)
//!      tx: lock product → update → outbox[price_changed?, stock_changed?] → commit
//!      relay ──▶ events exchange ──▶ realtime ──▶ sockets subscribed to `catalog`
//! ```

use signalbox_messages::{
    catalog::{PriceChanged, StockChanged},
    channels::Namespace,
    Envelope,
};
use signalbox_messaging::{outbox, Outgoing};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{domain::Product, error::CatalogError, repo};

/// The scope an `UpdateProduct` caller's token must grant.
pub const ADMIN_SCOPE: &str = "catalog:admin";

/// The highest price accepted, in cents: far above any real product, low
/// enough that an order's total of many of them cannot overflow.
pub const MAX_PRICE_CENTS: i64 = 100_000_000;
/// The highest stock accepted.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// What an operator asks to change; at least one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub price_cents: Option<i64>,
    pub stock: Option<i64>,
}

impl Change {
    /// Checks the values: a price in `1..=MAX_PRICE_CENTS`, a stock in
    /// `0..=MAX_STOCK`, and something to change.
    pub fn parse(price_cents: Option<i64>, stock: Option<i64>) -> Result<Self, CatalogError> {
        if price_cents.is_none() && stock.is_none() {
            return Err(CatalogError::InvalidInput(
                "nothing to change: give `price_cents` and/or `stock`".to_owned(),
            ));
        }
        if let Some(price) = price_cents.filter(|p| !(1..=MAX_PRICE_CENTS).contains(p)) {
            return Err(CatalogError::InvalidInput(format!(
                "price_cents must be between 1 and {MAX_PRICE_CENTS}, not {price}"
            )));
        }
        if let Some(stock) = stock.filter(|s| !(0..=MAX_STOCK).contains(s)) {
            return Err(CatalogError::InvalidInput(format!(
                "stock must be between 0 and {MAX_STOCK}, not {stock}"
            )));
        }
        Ok(Self { price_cents, stock })
    }
}

/// Applies `change` to product `id` and writes its events, in one
/// transaction. Returns the product as it is now.
#[tracing::instrument(skip(pool, ns))]
pub async fn update(
    pool: &PgPool,
    ns: &Namespace,
    id: Uuid,
    change: Change,
) -> Result<Product, CatalogError> {
    let mut tx = pool.begin().await?;
    let before = repo::lock_product(&mut tx, id)
        .await?
        .ok_or_else(|| CatalogError::NotFound(id.to_string()))?;
    let after = repo::update_product(&mut tx, id, change.price_cents, change.stock).await?;
    if after.price_cents != before.price_cents {
        let event = PriceChanged {
            product_id: id,
            price_cents: after.price_cents,
            currency: after.currency.clone(),
        };
        outbox::enqueue(
            &mut tx,
            &Outgoing::event(ns, Envelope::new::<PriceChanged>(), &event),
        )
        .await?;
    }
    if after.stock != before.stock {
        let event = StockChanged {
            product_id: id,
            stock: after.stock,
        };
        outbox::enqueue(
            &mut tx,
            &Outgoing::event(ns, Envelope::new::<StockChanged>(), &event),
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(
        price_cents = after.price_cents,
        stock = after.stock,
        "product updated"
    );
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_needs_a_field_and_sane_values() {
        assert!(Change::parse(None, None).is_err());
        assert!(Change::parse(Some(0), None).is_err());
        assert!(Change::parse(Some(-5), None).is_err());
        assert!(Change::parse(None, Some(-1)).is_err());
        assert!(Change::parse(Some(MAX_PRICE_CENTS + 1), None).is_err());
        assert_eq!(
            Change::parse(Some(990), Some(0)).unwrap(),
            Change {
                price_cents: Some(990),
                stock: Some(0)
            }
        );
    }
}
