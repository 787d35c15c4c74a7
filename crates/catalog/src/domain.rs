//! Stock reservation rules, free of I/O so they are unit-tested directly.

use std::collections::HashMap;

use signalbox_messages::orders::LineItem;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
}

/// Decides a reservation: all items can be taken from `stock` (product id →
/// available units), or the first reason why not. All or nothing: a partial
/// reservation would leave the order neither approvable nor clean.
pub fn check_reservation(items: &[LineItem], stock: &HashMap<Uuid, i64>) -> Result<(), String> {
    if items.is_empty() {
        return Err("the order has no items".to_owned());
    }
    let mut wanted: HashMap<Uuid, i64> = HashMap::new();
    for item in items {
        if item.quantity <= 0 {
            return Err(format!("quantity of {} must be positive", item.product_id));
        }
        *wanted.entry(item.product_id).or_default() += item.quantity;
    }
    for (product_id, quantity) in wanted {
        match stock.get(&product_id) {
            None => return Err(format!("product {product_id} does not exist")),
            Some(&available) if available < quantity => {
                return Err(format!(
                "insufficient stock for {product_id}: {quantity} requested, {available} available"
            ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(product_id: Uuid, quantity: i64) -> LineItem {
        LineItem {
            product_id,
            quantity,
        }
    }

    #[test]
    fn a_reservation_within_stock_is_accepted() {
        let p = Uuid::now_v7();
        let stock = HashMap::from([(p, 5)]);
        assert_eq!(check_reservation(&[item(p, 5)], &stock), Ok(()));
    }

    #[test]
    fn quantities_of_the_same_product_add_up() {
        let p = Uuid::now_v7();
        let stock = HashMap::from([(p, 5)]);
        let verdict = check_reservation(&[item(p, 3), item(p, 3)], &stock);
        assert!(verdict.unwrap_err().contains("insufficient stock"));
    }

    #[test]
    fn an_unknown_product_is_refused() {
        let verdict = check_reservation(&[item(Uuid::now_v7(), 1)], &HashMap::new());
        assert!(verdict.unwrap_err().contains("does not exist"));
    }
}
