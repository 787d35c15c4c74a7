//! `/api/auth/*` and the JWKS document, translated to `AuthService` calls.
//!
//! Errors are problems; a throttled login (too many failures for the
//! account, counted by the auth service) is a 429 problem with
//! `Retry-After`.

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use signalbox_platform::Problem;
use signalbox_proto::auth::v1::{GetJwksRequest, LoginRequest, RegisterRequest, RevokeRequest};
use tonic::Status;
use utoipa::ToSchema;

use crate::{
    error::{throttled, upstream_problem, UpstreamResult},
    extract::ApiJson,
    oauth_error::no_store,
    upstream::{Clients, Upstream},
};

/// Credentials; deliberately not `Debug`, so a password cannot reach a log.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"email": "ada@example.com", "password": "correct horse battery staple"}))]
pub struct Credentials {
    /// The auth service's rules: one `@`, a dotted domain, no whitespace.
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"user_id": "0192f1e4-7b1c-7a51-9a53-6f0cbbfa2c11", "email": "ada@example.com"}))]
pub struct Registered {
    pub user_id: String,
    pub email: String,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"access_token": "eyJhbGciOiJFZERTQSIsImtpZCI6IjEifQ.e30.c2ln", "token_type": "Bearer", "expires_in": 900, "refresh_token": "rt_3q2-7wH0"}))]
pub struct Tokens {
    /// A JWT (EdDSA) for `Authorization: Bearer`, with the scopes
    /// `orders:read orders:write`.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u32,
    pub refresh_token: String,
}

/// The refresh token to end, for logout; not `Debug` either.
#[derive(Deserialize, ToSchema)]
pub struct Logout {
    pub refresh_token: String,
}

/// A JSON Web Key Set, as the auth service publishes it (passed through
/// verbatim).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Jwks {
    #[schema(value_type = Vec<Object>)]
    keys: Vec<serde_json::Value>,
}

/// The problem for a failed auth call; a throttled one carries the
/// `Retry-After` the auth service computed.
fn auth_problem(status: Status) -> Response {
    let wait = throttled(&status);
    let mut response = upstream_problem(Upstream::Auth, status).into_response();
    if let Some(wait) = wait {
        response.headers_mut().insert(header::RETRY_AFTER, wait);
    }
    response
}

/// Creates an account; then log in for tokens.
#[utoipa::path(
    post,
    path = "/api/auth/register",
    tag = "auth",
    operation_id = "register",
    summary = "Create an account",
    request_body = Credentials,
    responses(
        (status = 201, description = "The account exists", body = Registered),
        (status = 409, description = "The email is already registered (`conflict`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn register(
    State(clients): State<Clients>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<Registered>), Response> {
    let registered = clients
        .auth
        .clone()
        .register(RegisterRequest {
            email: body.email,
            password: body.password,
        })
        .await
        .map_err(auth_problem)?
        .into_inner();
    tracing::info!(user_id = %registered.user_id, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            user_id: registered.user_id,
            email: registered.email,
        }),
    ))
}

/// Exchanges an email and password for an access token and a refresh
/// token (`Cache-Control: no-store`). Repeated failures for an account are
/// throttled: 429 with `Retry-After`.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    operation_id = "login",
    summary = "Log in: tokens for an email and password",
    request_body = Credentials,
    responses(
        (status = 200, description = "The tokens", body = Tokens),
        (status = 401, description = "Unknown email or wrong password (`unauthenticated`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn login(
    State(clients): State<Clients>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, Response> {
    let tokens = clients
        .auth
        .clone()
        .login(LoginRequest {
            email: body.email,
            password: body.password,
        })
        .await
        .map_err(auth_problem)?
        .into_inner();
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
    Ok(no_store(Json(body).into_response()))
}

/// Ends the session of a refresh token: its whole family is revoked, so
/// neither it nor any token rotated from it refreshes again. 204 whether or
/// not the token was known (nothing to tell an attacker); the access token
/// in hand lives on until it expires, minutes at most.
#[utoipa::path(
    post,
    path = "/api/auth/logout",
    tag = "auth",
    operation_id = "logout",
    summary = "End a session: revoke a refresh token's family",
    request_body = Logout,
    responses((status = 204, description = "Done, whether or not the token was known")),
)]
#[tracing::instrument(skip_all)]
pub async fn logout(
    State(clients): State<Clients>,
    ApiJson(body): ApiJson<Logout>,
) -> Result<StatusCode, Response> {
    let answer = clients
        .auth
        .clone()
        .revoke(RevokeRequest {
            token: body.refresh_token,
        })
        .await
        .map_err(auth_problem)?
        .into_inner();
    tracing::info!(revoked = answer.revoked, "logout");
    Ok(StatusCode::NO_CONTENT)
}

/// The auth service's public keys, verbatim. Cacheable for five minutes:
/// keys rotate with overlap, and verifiers refetch on an unknown `kid`.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "auth",
    operation_id = "jwks",
    summary = "The public keys that verify access tokens (RFC 7517)",
    responses((status = 200, description = "The JSON Web Key Set", body = Jwks)),
)]
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
