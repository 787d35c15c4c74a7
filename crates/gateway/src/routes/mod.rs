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
    http::Method,
    routing::{get, post},
    Router,
};
use signalbox_platform::tokens::TokenVerifier;

use crate::{
    error,
    limits::{Answer, Class, Limits},
    upstream::Clients,
};

/// What every handler can reach: the upstream clients, the token verifier,
/// and the rate limits of every route.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub clients: Clients,
    pub verifier: Arc<TokenVerifier>,
    pub limits: Arc<Limits>,
}

/// The rate-limit class of a route, by its method and its path as the table
/// writes it (`/api/orders/{id}`); see `crate::limits`. Every route of the
/// table and of the routers merged beside it (the census) has one; a route
/// added later falls into reads or writes by its method unless it is named
/// here.
pub fn class_of(method: &Method, route: &str) -> Option<(Class, Answer)> {
    let read = *method == Method::GET || *method == Method::HEAD;
    Some(match route {
        // → auth, credentials: public, counted per client IP only.
        r if r.starts_with("/oauth/") => (Class::Credentials, Answer::OAuth),
        r if r.starts_with("/api/auth/") => (Class::Credentials, Answer::Problem),
        // Operator routes: catalog changes (scope `catalog:admin`) and the
        // gateway's own internals.
        "/api/system/upstreams" => (Class::Admin, Answer::Problem),
        r if r.starts_with("/api/catalog/") && !read => (Class::Admin, Answer::Problem),
        _ if read => (Class::Reads, Answer::Problem),
        _ => (Class::Writes, Answer::Problem),
    })
}

pub fn table(state: AppState) -> Router {
    Router::new()
        // → auth (public; class credentials).
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/logout", post(auth::logout))
        // → auth, OAuth 2.0 endpoints (public; class credentials, refusals
        // in RFC 6749 format).
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/revoke", post(oauth::revoke))
        // → auth (public).
        .route("/.well-known/jwks.json", get(auth::jwks))
        // → catalog (public reads; changes need `catalog:admin`).
        .route("/api/catalog/products", get(catalog::list))
        .route(
            "/api/catalog/products/{id}",
            get(catalog::get).patch(catalog::update),
        )
        // → orders (Bearer token; reads need `orders:read`, changes
        // `orders:write`: the handlers take `Authorized<OrdersRead>` or
        // `Authorized<OrdersWrite>`).
        .route("/api/orders", post(orders::create).get(orders::list))
        // → orders, then catalog (aggregated); PATCH revises the items.
        .route("/api/orders/{id}", get(orders::get).patch(orders::revise))
        .route("/api/orders/{id}/cancel", post(orders::cancel))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_class_and_refusal_format() {
        let cases = [
            (
                Method::POST,
                "/api/auth/login",
                Class::Credentials,
                Answer::Problem,
            ),
            (
                Method::POST,
                "/oauth/token",
                Class::Credentials,
                Answer::OAuth,
            ),
            (
                Method::GET,
                "/api/catalog/products/{id}",
                Class::Reads,
                Answer::Problem,
            ),
            (
                Method::GET,
                "/.well-known/jwks.json",
                Class::Reads,
                Answer::Problem,
            ),
            (
                Method::GET,
                "/api/orders/{id}",
                Class::Reads,
                Answer::Problem,
            ),
            (
                Method::PATCH,
                "/api/orders/{id}",
                Class::Writes,
                Answer::Problem,
            ),
            (
                Method::POST,
                "/api/orders/{id}/cancel",
                Class::Writes,
                Answer::Problem,
            ),
            (
                Method::PATCH,
                "/api/catalog/products/{id}",
                Class::Admin,
                Answer::Problem,
            ),
            (
                Method::GET,
                "/api/system/upstreams",
                Class::Admin,
                Answer::Problem,
            ),
            (
                Method::GET,
                "/api/system/instances",
                Class::Reads,
                Answer::Problem,
            ),
        ];
        for (method, route, class, answer) in cases {
            assert_eq!(
                class_of(&method, route),
                Some((class, answer)),
                "{method} {route}"
            );
        }
    }
}
