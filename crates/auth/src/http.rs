//! The HTTP face: the JWK Set at its well-known address, beside the health
//! endpoints. Verifiers (gateway, realtime) fetch it directly from here; the
//! gateway also republishes it at the public edge.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, HeaderValue},
    response::IntoResponse,
    routing::get,
    Router,
};

use crate::keys::KeySet;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// How long verifiers and caches may keep the key set. A verifier seeing an
/// unknown `kid` refetches regardless, so this only bounds how long a
/// removed key keeps verifying.
pub const JWKS_CACHE_CONTROL: &str = "public, max-age=300";

/// The JWK Set serialised once at start-up: the keys do not change while the
/// process runs.
#[derive(Debug, Clone)]
pub struct JwksDocument(Arc<str>);

impl JwksDocument {
    pub fn new(keys: &KeySet) -> Self {
        Self(Arc::from(keys.jwks().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn router(jwks: JwksDocument) -> Router {
    Router::new()
        .route(JWKS_PATH, get(serve_jwks))
        .with_state(jwks)
}

async fn serve_jwks(State(jwks): State<JwksDocument>) -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(JWKS_CACHE_CONTROL),
            ),
        ],
        jwks.as_str().to_owned(),
    )
}
