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

use crate::{
    error::{throttled, upstream_problem, UpstreamResult},
    extract::ApiJson,
    oauth_error::no_store,
    upstream::{Clients, Upstream},
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

/// The refresh token to end, for logout; not `Debug` either.
#[derive(Deserialize)]
pub struct Logout {
    pub refresh_token: String,
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
