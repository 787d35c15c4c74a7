//! `/api/auth/*` and the JWKS document, translated to `AuthService` calls.

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use signalbox_platform::Problem;
use signalbox_proto::auth::v1::{GetJwksRequest, LoginRequest, RegisterRequest};

use crate::{
    extract::ApiJson,
    upstream::{Clients, Upstream, UpstreamResult},
};

/// Credentials; deliberately not `Debug`, so a password cannot reach a log.
#[derive(Deserialize)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize)]
pub struct Registered {
    pub user_id: String,
    pub email: String,
}

#[derive(Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u32,
    pub refresh_token: String,
}

#[tracing::instrument(skip_all)]
pub async fn register(
    State(clients): State<Clients>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<Registered>), Problem> {
    let registered = clients
        .auth
        .clone()
        .register(RegisterRequest {
            email: body.email,
            password: body.password,
        })
        .await
        .or_problem(Upstream::Auth)?;
    tracing::info!(user_id = %registered.user_id, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            user_id: registered.user_id,
            email: registered.email,
        }),
    ))
}

#[tracing::instrument(skip_all)]
pub async fn login(
    State(clients): State<Clients>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, Problem> {
    let tokens = clients
        .auth
        .clone()
        .login(LoginRequest {
            email: body.email,
            password: body.password,
        })
        .await
        .or_problem(Upstream::Auth)?;
    let body = Tokens {
        access_token: tokens.access_token,
        token_type: if tokens.token_type.is_empty() {
            "Bearer".to_owned()
        } else {
            tokens.token_type
        },
        expires_in: tokens.expires_in,
        refresh_token: tokens.refresh_token,
    };
    // Tokens must not be stored by any cache on the way (RFC 6749 §5.1).
    Ok((
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ],
        Json(body),
    )
        .into_response())
}

/// The auth service's public keys, verbatim. Cacheable for five minutes:
/// keys rotate with overlap, and verifiers refetch on an unknown `kid`.
#[tracing::instrument(skip_all)]
pub async fn jwks(State(clients): State<Clients>) -> Result<Response, Problem> {
    let jwks = clients
        .auth
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .or_problem(Upstream::Auth)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        jwks.jwks_json,
    )
        .into_response())
}
