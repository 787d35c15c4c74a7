//! The routing table: every public route, the upstream that serves it, and
//! whether it needs a token (and which scope). Reading [`api`] tells what
//! the edge exposes; a route that is not there (or in the census's router,
//! or the page's) answers a 404 problem.

pub mod auth;
pub mod catalog;
pub mod oauth;
pub mod orders;
pub mod system;

use std::sync::Arc;

use axum::{extract::FromRef, http::Method, Router};
use signalbox_platform::tokens::TokenVerifier;
use utoipa_axum::{router::OpenApiRouter, routes};

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

/// The documented routes: each is registered from its handler's
/// `#[utoipa::path]` (which names its method and path), so the router and
/// the OpenAPI document (`crate::openapi`) are built from one list.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        // → auth (public; class credentials).
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        // → auth, OAuth 2.0 endpoints (public; class credentials, refusals
        // in RFC 6749 format).
        .routes(routes!(oauth::token))
        .routes(routes!(oauth::revoke))
        // → auth (public).
        .routes(routes!(auth::jwks))
        // → catalog (public reads; changes need `catalog:admin`).
        .routes(routes!(catalog::list))
        .routes(routes!(catalog::get, catalog::update))
        // → orders (Bearer token; reads need `orders:read`, changes
        // `orders:write`: the handlers take `Authorized<OrdersRead>` or
        // `Authorized<OrdersWrite>`).
        .routes(routes!(orders::create, orders::list))
        // → orders, then catalog (aggregated); PATCH revises the items.
        .routes(routes!(orders::get, orders::revise))
        .routes(routes!(orders::cancel))
}

pub fn table(state: AppState) -> Router {
    let (router, _) = api().split_for_parts();
    router
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
