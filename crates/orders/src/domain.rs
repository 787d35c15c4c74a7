//! Order rules, free of I/O.

use std::collections::BTreeMap;

use uuid::Uuid;

/// Most distinct products in one order.
pub const MAX_ITEMS: usize = 50;
/// Most units of one product in one order.
pub const MAX_QUANTITY: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    Pending,
    Approved,
    Rejected,
    Cancelled,
}

impl OrderState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "PENDING" => Some(Self::Pending),
            "APPROVED" => Some(Self::Approved),
            "REJECTED" => Some(Self::Rejected),
            "CANCELLED" => Some(Self::Cancelled),
            _ => None,
        }
    }

    /// Only a pending or approved order can be cancelled.
    pub fn can_cancel(self) -> bool {
        matches!(self, Self::Pending | Self::Approved)
    }

    /// Only a pending or approved order can be revised: a rejected or
    /// cancelled one holds no stock to change.
    pub fn can_revise(self) -> bool {
        matches!(self, Self::Pending | Self::Approved)
    }
}

/// The items of an order as requested: validated, duplicates merged, sorted
/// by product id (so the same request always yields the same order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedItems(Vec<(Uuid, i64)>);

impl RequestedItems {
    pub fn parse<'a>(items: impl IntoIterator<Item = (&'a str, i64)>) -> Result<Self, String> {
        let mut merged: BTreeMap<Uuid, i64> = BTreeMap::new();
        for (raw_id, quantity) in items {
            let id = Uuid::parse_str(raw_id)
                .map_err(|_| format!("`{raw_id}` is not a valid product id"))?;
            if !(1..=MAX_QUANTITY).contains(&quantity) {
                return Err(format!(
                    "quantity of {id} must be between 1 and {MAX_QUANTITY}, got {quantity}"
                ));
            }
            let total = merged.entry(id).or_default();
            *total += quantity;
            if *total > MAX_QUANTITY {
                return Err(format!("quantity of {id} exceeds {MAX_QUANTITY}"));
            }
        }
        if merged.is_empty() {
            return Err("an order needs at least one item".to_owned());
        }
        if merged.len() > MAX_ITEMS {
            return Err(format!(
                "an order has at most {MAX_ITEMS} distinct products"
            ));
        }
        Ok(Self(merged.into_iter().collect()))
    }

    pub fn product_ids(&self) -> Vec<Uuid> {
        self.0.iter().map(|(id, _)| *id).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Uuid, i64)> + '_ {
        self.0.iter().copied()
    }
}

/// A priced line: quantity times the unit price catalog quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedItem {
    pub product_id: Uuid,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// The lines of a revision: each requested product at the price the order
/// already has for it, or at catalog's current price when it is new to the
/// order. A revision changes quantities, not the prices agreed on.
pub fn reprice(
    requested: impl IntoIterator<Item = (Uuid, i64)>,
    agreed: &BTreeMap<Uuid, i64>,
    quoted: &BTreeMap<Uuid, i64>,
) -> Option<Vec<PricedItem>> {
    requested
        .into_iter()
        .map(|(product_id, quantity)| {
            let unit_price_cents = agreed.get(&product_id).or(quoted.get(&product_id))?;
            Some(PricedItem {
                product_id,
                quantity,
                unit_price_cents: *unit_price_cents,
            })
        })
        .collect()
}

/// Sums the lines; `None` on overflow (an absurd order, refused).
pub fn total_cents(items: &[PricedItem]) -> Option<i64> {
    items.iter().try_fold(0i64, |sum, item| {
        item.quantity
            .checked_mul(item.unit_price_cents)
            .and_then(|line| sum.checked_add(line))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_products_are_merged() {
        let id = Uuid::now_v7().to_string();
        let items = RequestedItems::parse([(id.as_str(), 2), (id.as_str(), 3)]).unwrap();
        assert_eq!(items.iter().map(|(_, q)| q).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn bad_items_are_refused_with_a_reason() {
        let id = Uuid::now_v7().to_string();
        assert!(RequestedItems::parse(std::iter::empty()).is_err());
        assert!(RequestedItems::parse([("nope", 1)])
            .unwrap_err()
            .contains("not a valid"));
        assert!(RequestedItems::parse([(id.as_str(), 0)])
            .unwrap_err()
            .contains("between"));
    }

    #[test]
    fn the_total_refuses_to_overflow() {
        let item = PricedItem {
            product_id: Uuid::nil(),
            quantity: i64::MAX,
            unit_price_cents: 2,
        };
        assert_eq!(total_cents(&[item]), None);
    }

    #[test]
    fn a_revision_keeps_agreed_prices_and_quotes_new_products() {
        let (kept, added) = (Uuid::now_v7(), Uuid::now_v7());
        let agreed = BTreeMap::from([(kept, 100)]);
        let quoted = BTreeMap::from([(kept, 999), (added, 50)]);

        let lines = reprice([(kept, 2), (added, 1)], &agreed, &quoted).unwrap();

        assert_eq!(lines[0].unit_price_cents, 100);
        assert_eq!(lines[1].unit_price_cents, 50);
        assert_eq!(reprice([(Uuid::nil(), 1)], &agreed, &quoted), None);
    }

    #[test]
    fn only_pending_and_approved_orders_can_be_revised() {
        assert!(OrderState::Pending.can_revise() && OrderState::Approved.can_revise());
        assert!(!OrderState::Rejected.can_revise() && !OrderState::Cancelled.can_revise());
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in [
            OrderState::Pending,
            OrderState::Approved,
            OrderState::Rejected,
            OrderState::Cancelled,
        ] {
            assert_eq!(OrderState::parse(state.as_str()), Some(state));
        }
    }
}
