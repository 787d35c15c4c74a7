//! Fallback: the last good answer, when the upstream cannot give a new one.
//!
//! The product list and a product's details change rarely and are useful
//! even when a little old, so when catalog cannot answer (its breaker is
//! open, its bulkhead full, the deadline passed, or it is unavailable) the
//! gateway answers from the last good response it saw, marked stale: an
//! `X-Signalbox-Stale: true` header, an `Age` header (seconds since that
//! response, RFC 9111 §5.1) and `"stale": true` in the body. With nothing
//! kept yet, the client gets the clean 503 / 504 problem.
//!
//! Per route (see `docs/patterns/fallback.md`): product list and product
//! details fall back to the last good value; an order's details degrade per
//! field (`aggregate`: the order without product names, `degraded: true`);
//! orders and auth routes have no fallback — an order list or a login from
//! memory would be wrong, not just old.
//!
//! What is kept lives in memory, per gateway instance, bounded: the list
//! once, and at most [`MAX_PRODUCTS`] product details.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::http::{HeaderName, HeaderValue};
use signalbox_proto::catalog::v1::Product;

/// The header that marks an answer served from the fallback.
pub const STALE: HeaderName = HeaderName::from_static("x-signalbox-stale");

/// The most product details kept; beyond it, new ones are not kept (the
/// list still covers every product it had).
pub const MAX_PRODUCTS: usize = 1024;

/// A value kept from an earlier answer, and how old it is.
#[derive(Debug, Clone)]
pub struct Kept<T> {
    pub value: T,
    pub age: Duration,
}

impl<T> Kept<T> {
    /// The headers of an answer served from this value.
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 2] {
        [
            (STALE, HeaderValue::from_static("true")),
            (
                axum::http::header::AGE,
                HeaderValue::from(self.age.as_secs()),
            ),
        ]
    }
}

/// The last good answers of catalog's reads.
#[derive(Debug, Default)]
pub struct CatalogFallback {
    // std mutexes: each guards a clone-in or clone-out of a small value,
    // never held across an `.await`. The list is shared with the answer it
    // came in (an `Arc`), so keeping it copies nothing.
    list: Mutex<Option<(Instant, Arc<[Product]>)>>,
    products: Mutex<HashMap<String, (Instant, Product)>>,
}

impl CatalogFallback {
    pub fn keep_list(&self, products: Arc<[Product]>) {
        *lock(&self.list) = Some((Instant::now(), products));
    }

    pub fn keep_product(&self, product: &Product) {
        let mut products = lock(&self.products);
        if products.len() < MAX_PRODUCTS || products.contains_key(&product.id) {
            products.insert(product.id.clone(), (Instant::now(), product.clone()));
        }
    }

    pub fn list(&self) -> Option<Kept<Arc<[Product]>>> {
        lock(&self.list).as_ref().map(|(at, products)| Kept {
            value: products.clone(),
            age: at.elapsed(),
        })
    }

    /// The product as last seen on its own or in the list, whichever is
    /// newer.
    pub fn product(&self, id: &str) -> Option<Kept<Product>> {
        let own = lock(&self.products).get(id).cloned();
        let listed = lock(&self.list).as_ref().and_then(|(at, products)| {
            products
                .iter()
                .find(|p| p.id == id)
                .map(|p| (*at, p.clone()))
        });
        let (at, product) = match (own, listed) {
            (Some(own), Some(listed)) => std::cmp::max_by_key(own, listed, |(at, _)| *at),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => return None,
        };
        Some(Kept {
            value: product,
            age: at.elapsed(),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it left a whole value behind (each update is one
    // assignment): keep serving it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: &str, price_cents: i64) -> Product {
        Product {
            id: id.into(),
            price_cents,
            ..Product::default()
        }
    }

    #[test]
    fn a_product_is_found_on_its_own_or_in_the_list_newest_first() {
        let kept = CatalogFallback::default();
        assert!(kept.product("a").is_none());
        kept.keep_product(&product("a", 1));
        kept.keep_list(Arc::from([product("a", 2), product("b", 3)]));
        assert_eq!(kept.product("a").unwrap().value.price_cents, 2);
        assert_eq!(kept.product("b").unwrap().value.price_cents, 3);
        kept.keep_product(&product("a", 4));
        assert_eq!(kept.product("a").unwrap().value.price_cents, 4);
    }
}
