//! The routing table: every public route, the upstream that serves it, and
//! whether it needs a token (and which scope). Reading this one function
//! tells what the edge exposes; a route that is not here answers a 404
//! problem.

pub mod auth;
pub mod catalog;
pub mod oauth;
pub mod orders;
pub mod system;

use std::sync::Arc;

use axum::{
    extract::FromRef,
    middleware,
    routing::{get, post},
    Router,
};
use signalbox_platform::tokens::TokenVerifier;

use crate::{
    error,
    limits::{self, Answer, PerIp, RateLimiter, TrustedProxies},
    upstream::Clients,
};

/// What every handler can reach: the upstream clients, the token verifier,
/// and the per-IP limit of the credential endpoints.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub clients: Clients,
    pub verifier: Arc<TokenVerifier>,
    pub limiter: Arc<RateLimiter>,
    pub proxies: Arc<TrustedProxies>,
}

pub fn table(state: AppState) -> Router {
    // One bucket per client IP, shared by every credential endpoint; each
    // family answers a refusal in its own format.
    let per_ip = |answer| {
        middleware::from_fn_with_state(
            PerIp {
                limiter: state.limiter.clone(),
                proxies: state.proxies.clone(),
                answer,
            },
            limits::per_ip,
        )
    };
    // → auth (public, rate-limited per client IP).
    let credentials = Router::new()
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/logout", post(auth::logout))
        .route_layer(per_ip(Answer::Problem));
    // → auth, OAuth 2.0 endpoints (public, rate-limited per client IP).
    let oauth = Router::new()
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/revoke", post(oauth::revoke))
        .route_layer(per_ip(Answer::OAuth));

    Router::new()
        .merge(credentials)
        .merge(oauth)
        // → auth (public).
        .route("/.well-known/jwks.json", get(auth::jwks))
        // → catalog (public).
        .route("/api/catalog/products", get(catalog::list))
        .route("/api/catalog/products/{id}", get(catalog::get))
        // → orders (Bearer token; reads need `orders:read`, changes
        // `orders:write`: the handlers take `Authorized<OrdersRead>` or
        // `Authorized<OrdersWrite>`).
        .route("/api/orders", post(orders::create).get(orders::list))
        // → orders, then catalog (aggregated).
        .route("/api/orders/{id}", get(orders::get))
        .route("/api/orders/{id}/cancel", post(orders::cancel))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}
