//! The routing table: every public route, the upstream that serves it, and
//! whether it needs a token. Reading this one function tells what the edge
//! exposes; a route that is not here answers a 404 problem.

pub mod auth;
pub mod catalog;
pub mod orders;

use std::sync::Arc;

use axum::{
    extract::FromRef,
    routing::{get, post},
    Router,
};
use signalbox_platform::tokens::TokenVerifier;

use crate::{error, upstream::Clients};

/// What every handler can reach: the upstream clients and the token verifier.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub clients: Clients,
    pub verifier: Arc<TokenVerifier>,
}

pub fn table(state: AppState) -> Router {
    Router::new()
        // → auth (public).
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/.well-known/jwks.json", get(auth::jwks))
        // → catalog (public).
        .route("/api/catalog/products", get(catalog::list))
        .route("/api/catalog/products/{id}", get(catalog::get))
        // → orders (Bearer token; the handlers take `AuthenticatedUser`).
        .route("/api/orders", post(orders::create).get(orders::list))
        // → orders, then catalog (aggregated).
        .route("/api/orders/{id}", get(orders::get))
        .route("/api/orders/{id}/cancel", post(orders::cancel))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}
