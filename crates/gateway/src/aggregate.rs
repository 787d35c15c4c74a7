//! Response aggregation: one client request, answers of two services, one
//! response.
//!
//! `GET /api/orders/{id}` reads the order from orders, then the details of
//! its products from catalog in one `BatchGetProducts` call, and joins them.
//! The order is the answer; product details are an enrichment. So the join
//! degrades instead of failing: when catalog cannot answer, the order still
//! returns, every `product` is `null` and `degraded: true` tells the client
//! the answer is partial (a fallback value rather than an error).
//!
//! The join itself is pure ([`compose`]) so its rules are tested without any
//! service.

use std::collections::HashMap;

use serde::Serialize;
use signalbox_proto::{catalog::v1::Product, orders::v1::Order};

use crate::order_state::{state_name, StateName};

/// An order enriched with catalog details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderDetails {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(value_type = StateName)]
    pub state: &'static str,
    pub items: Vec<ItemDetails>,
    pub total_cents: i64,
    pub currency: String,
    pub rejection_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// `true` when catalog could not be asked: the items lack their details.
    pub degraded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemDetails {
    pub product_id: String,
    pub quantity: i64,
    /// The price the order was placed at (not today's catalog price).
    pub unit_price_cents: i64,
    /// `null` when catalog was unavailable or no longer has the product.
    pub product: Option<ProductSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProductSummary {
    pub sku: String,
    pub name: String,
}

/// The distinct product ids of `order`, in item order: what to ask catalog.
pub fn product_ids(order: &Order) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(order.items.len());
    for item in &order.items {
        if !ids.contains(&item.product_id) {
            ids.push(item.product_id.clone());
        }
    }
    ids
}

/// Joins `order` with the `products` catalog returned; `None` means catalog
/// could not be asked, and the result is marked degraded.
pub fn compose(order: Order, products: Option<Vec<Product>>) -> OrderDetails {
    let degraded = products.is_none();
    let by_id: HashMap<String, ProductSummary> = products
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.id,
                ProductSummary {
                    sku: p.sku,
                    name: p.name,
                },
            )
        })
        .collect();
    let items = order
        .items
        .into_iter()
        .map(|item| ItemDetails {
            // Cloned, not removed: an order may list a product twice.
            product: by_id.get(&item.product_id).cloned(),
            product_id: item.product_id,
            quantity: item.quantity,
            unit_price_cents: item.unit_price_cents,
        })
        .collect();
    OrderDetails {
        id: order.id,
        state: state_name(order.state),
        items,
        total_cents: order.total_cents,
        currency: order.currency,
        rejection_reason: Some(order.rejection_reason).filter(|r| !r.is_empty()),
        created_at: order.created_at,
        updated_at: order.updated_at,
        degraded,
    }
}

#[cfg(test)]
mod tests {
    use signalbox_proto::orders::v1::{OrderItem, OrderState};

    use super::*;

    fn order(product_ids: &[&str]) -> Order {
        Order {
            id: "o-1".into(),
            user_id: "u-1".into(),
            state: OrderState::Approved as i32,
            items: product_ids
                .iter()
                .map(|id| OrderItem {
                    product_id: (*id).into(),
                    quantity: 2,
                    unit_price_cents: 150,
                })
                .collect(),
            total_cents: 300 * product_ids.len() as i64,
            currency: "EUR".into(),
            rejection_reason: String::new(),
            created_at: "2025-01-01T00:00:00Z".into(),
            updated_at: "2025-01-01T00:00:01Z".into(),
        }
    }

    fn product(id: &str) -> Product {
        Product {
            id: id.into(),
            sku: format!("SKU-{id}"),
            name: format!("Product {id}"),
            price_cents: 999,
            currency: "EUR".into(),
            stock: 5,
        }
    }

    #[test]
    fn each_distinct_product_is_asked_for_once() {
        assert_eq!(product_ids(&order(&["a", "b", "a"])), vec!["a", "b"]);
    }

    #[test]
    fn items_are_joined_with_their_products() {
        let details = compose(
            order(&["a", "b", "a"]),
            Some(vec![product("a"), product("b")]),
        );
        assert!(!details.degraded);
        assert_eq!(details.state, "APPROVED");
        assert_eq!(details.rejection_reason, None);
        let names: Vec<_> = details
            .items
            .iter()
            .map(|i| i.product.as_ref().map(|p| p.name.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![Some("Product a"), Some("Product b"), Some("Product a")]
        );
        // The order's own price stays, whatever the catalog charges today.
        assert_eq!(details.items[0].unit_price_cents, 150);
    }

    #[test]
    fn a_product_catalog_no_longer_has_is_null_but_not_degraded() {
        let details = compose(order(&["a", "gone"]), Some(vec![product("a")]));
        assert!(!details.degraded);
        assert!(details.items[1].product.is_none());
    }

    #[test]
    fn without_catalog_the_order_is_returned_degraded() {
        let details = compose(order(&["a"]), None);
        assert!(details.degraded);
        assert!(details.items.iter().all(|i| i.product.is_none()));
        assert_eq!(details.total_cents, 300);
    }
}
