//! The OAuth 2.0 endpoints of the edge: `POST /oauth/token` (RFC 6749 §3.2)
//! and `POST /oauth/revoke` (RFC 7009), translated to the auth service's
//! `Token` and `Revoke` calls.
//!
//! The gateway does the HTTP half of the protocol: the form body
//! (`application/x-www-form-urlencoded`, no repeated parameters), client
//! authentication (HTTP Basic per §2.3.1, or `client_id` / `client_secret`
//! form fields, never both), and the response format. The auth service does
//! the grant logic. Every answer, success or error, carries
//! `Cache-Control: no-store` and `Pragma: no-cache` (§5.1); errors are
//! exactly the JSON of §5.2, with 401 and a `Basic` challenge when the
//! client tried to authenticate with the `Authorization` header and failed.

use std::collections::HashSet;

use axum::{
    extract::{rejection::FormRejection, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Form, Json,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use serde::Serialize;
use signalbox_platform::authorization::credentials;
use signalbox_proto::auth::v1::{
    token_grant_response, RevokeRequest, TokenErrorCode, TokenRequest,
};
use tonic::Status;
use utoipa::ToSchema;

use crate::{
    error::throttled,
    oauth_error::{no_store, OAuthError},
    openapi::OAuthErrorBody,
    upstream::Clients,
};

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"access_token": "eyJhbGciOiJFZERTQSIsImtpZCI6IjEifQ.e30.c2ln", "token_type": "Bearer", "expires_in": 900, "scope": "system:admin"}))]
pub struct TokenBody {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The form of `POST /oauth/token`, as documented (the handler reads the
/// pairs itself, to refuse repeated parameters).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenForm {
    /// `refresh_token` (rotation: the answer carries a new refresh token and
    /// the old one is spent; presenting a spent one revokes its family) or
    /// `client_credentials` (a service account's token).
    #[schema(example = "refresh_token")]
    grant_type: String,
    /// For `grant_type=refresh_token`.
    refresh_token: Option<String>,
    /// Space-separated scopes, for `client_credentials`: at most those the
    /// client was created with.
    scope: Option<String>,
    /// Client authentication in the form, instead of HTTP Basic.
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// The form of `POST /oauth/revoke` (RFC 7009 §2.1).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RevokeForm {
    /// The refresh token to revoke (with its family).
    token: String,
    /// `refresh_token` or `access_token`; informative only.
    token_type_hint: Option<String>,
}

/// The form parameters, each at most once (§3.2); empty values count as
/// absent (§3.1).
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(form: Result<Form<Vec<(String, String)>>, FormRejection>) -> Result<Self, OAuthError> {
        let Form(pairs) = form.map_err(|rejection| match rejection {
            FormRejection::InvalidFormContentType(_) => {
                OAuthError::invalid_request("the body must be application/x-www-form-urlencoded")
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                OAuthError::invalid_request("the request body exceeds the size limit")
            }
            other => OAuthError::invalid_request(other.body_text()),
        })?;
        let mut seen = HashSet::new();
        for (name, _) in &pairs {
            if !seen.insert(name.as_str()) {
                return Err(OAuthError::invalid_request(format!(
                    "the parameter `{}` is repeated",
                    name.chars().take(64).collect::<String>()
                )));
            }
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

/// How the client authenticated, if it did.
struct ClientAuth {
    credentials: Option<(String, String)>,
    /// The `Authorization` header was used (decides 401 vs 400).
    used_header: bool,
}

/// Client authentication (RFC 6749 §2.3): HTTP Basic with the id and secret
/// form-urlencoded, or the `client_id` / `client_secret` parameters.
fn client_auth(headers: &HeaderMap, params: &Params) -> Result<ClientAuth, OAuthError> {
    let form_id = params.get("client_id");
    let form_secret = params.get("client_secret");
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return match (form_id, form_secret) {
            (Some(id), secret) => Ok(ClientAuth {
                credentials: Some((id.to_owned(), secret.unwrap_or_default().to_owned())),
                used_header: false,
            }),
            (None, Some(_)) => Err(OAuthError::invalid_request(
                "client_secret was sent without client_id",
            )),
            (None, None) => Ok(ClientAuth {
                credentials: None,
                used_header: false,
            }),
        };
    };
    if form_id.is_some() || form_secret.is_some() {
        return Err(OAuthError::invalid_request(
            "use one client authentication method, not the header and the form both",
        ));
    }
    let bad = |why: &str| OAuthError::invalid_client(why, true);
    let value = value
        .to_str()
        .map_err(|_| bad("the Authorization header is not ASCII"))?;
    let encoded = credentials(value, "Basic")
        .ok_or_else(|| bad("client authentication must use the Basic scheme"))?;
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| bad("the Basic credentials are not valid base64"))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| bad("the Basic credentials have no `:`"))?;
    let (id, secret) = (form_decode(id), form_decode(secret));
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() => Ok(ClientAuth {
            credentials: Some((id, secret)),
            used_header: true,
        }),
        _ => Err(bad("the Basic credentials are malformed")),
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX`
/// a byte), as §2.3.1 asks of the Basic user name and password.
fn form_decode(raw: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut input = raw.bytes();
    while let Some(b) = input.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = [input.next()?, input.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).ok()
}

/// `POST /oauth/token`.
#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "oauth",
    operation_id = "token",
    summary = "Tokens for a refresh token or for client credentials (RFC 6749)",
    description = "Client authentication, when needed, by HTTP Basic (`Authorization: Basic`, id \
and secret form-urlencoded) or by the `client_id` / `client_secret` parameters, never both. Every \
answer carries `Cache-Control: no-store`.",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The tokens", body = TokenBody),
        (status = 400, description = "`invalid_request`, `invalid_grant`, `unsupported_grant_type`, `invalid_scope`, `unauthorized_client`, or `invalid_client` (form credentials)", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client` with HTTP Basic credentials",
            body = OAuthErrorBody, headers(("WWW-Authenticate" = String, description = "`Basic realm=\"signalbox\"`"))),
    ),
)]
#[tracing::instrument(skip_all, fields(grant_type))]
pub async fn token(
    State(clients): State<Clients>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    match grant(&clients, &headers, form).await {
        Ok(body) => no_store(Json(body).into_response()),
        Err(refused) => refused,
    }
}

async fn grant(
    clients: &Clients,
    headers: &HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<TokenBody, Response> {
    let params = Params::parse(form).map_err(IntoResponse::into_response)?;
    let client = client_auth(headers, &params).map_err(IntoResponse::into_response)?;
    let grant_type = params.get("grant_type").unwrap_or_default();
    tracing::Span::current().record("grant_type", grant_type);
    let (client_id, client_secret) = client.credentials.unwrap_or_default();
    let answer = clients
        .auth
        .clone()
        .token(TokenRequest {
            grant_type: grant_type.to_owned(),
            refresh_token: params.get("refresh_token").unwrap_or_default().to_owned(),
            scope: params.get("scope").unwrap_or_default().to_owned(),
            client_id,
            client_secret,
        })
        .await
        .map_err(throttled_or_unavailable)?
        .into_inner();
    match answer.result {
        Some(token_grant_response::Result::Tokens(tokens)) => Ok(TokenBody {
            access_token: tokens.access_token,
            token_type: "Bearer".to_owned(),
            expires_in: tokens.expires_in,
            refresh_token: Some(tokens.refresh_token).filter(|t| !t.is_empty()),
            scope: Some(tokens.scope).filter(|s| !s.is_empty()),
        }),
        Some(token_grant_response::Result::Error(error)) => {
            let code = TokenErrorCode::try_from(error.code).unwrap_or(TokenErrorCode::Unspecified);
            tracing::info!(error = code.as_str_name(), "token request refused");
            let refused = match code {
                TokenErrorCode::InvalidClient => {
                    OAuthError::invalid_client(error.description, client.used_header)
                }
                TokenErrorCode::InvalidRequest => OAuthError::invalid_request(error.description),
                TokenErrorCode::InvalidGrant => OAuthError::new("invalid_grant", error.description),
                TokenErrorCode::UnauthorizedClient => {
                    OAuthError::new("unauthorized_client", error.description)
                }
                TokenErrorCode::UnsupportedGrantType => {
                    OAuthError::new("unsupported_grant_type", error.description)
                }
                TokenErrorCode::InvalidScope => OAuthError::new("invalid_scope", error.description),
                TokenErrorCode::Unspecified => {
                    tracing::error!("token refusal without a code");
                    OAuthError::unavailable(Status::internal("token refusal without a code"))
                }
            };
            Err(refused.into_response())
        }
        None => {
            tracing::error!("token answer without a result");
            Err(OAuthError::unavailable(Status::internal("empty token answer")).into_response())
        }
    }
}

/// A failed `Token` / `Revoke` call: throttled (429 with `Retry-After`), or
/// the auth service could not answer.
fn throttled_or_unavailable(status: Status) -> Response {
    let Some(wait) = throttled(&status) else {
        return OAuthError::unavailable(status).into_response();
    };
    let mut response = OAuthError::slow_down(status.message()).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, wait);
    response
}

/// `POST /oauth/revoke` (RFC 7009): revokes the family of a refresh token.
/// 200 whether or not the token was known (§2.2), so the answer tells a
/// caller nothing about which tokens exist. Access tokens cannot be revoked
/// (they are checked offline and live minutes); presenting one is a 200 that
/// changes nothing, which §2.2 allows.
#[utoipa::path(
    post,
    path = "/oauth/revoke",
    tag = "oauth",
    operation_id = "revoke",
    summary = "Revoke a refresh token and its family (RFC 7009)",
    request_body(content = RevokeForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Done, whether or not the token was known"),
        (status = 400, description = "`invalid_request`: no token, or a malformed form", body = OAuthErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn revoke(
    State(clients): State<Clients>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let params = match Params::parse(form) {
        Ok(params) => params,
        Err(refused) => return refused.into_response(),
    };
    let Some(token) = params.get("token") else {
        return OAuthError::invalid_request("the token parameter is required").into_response();
    };
    match clients
        .auth
        .clone()
        .revoke(RevokeRequest {
            token: token.to_owned(),
        })
        .await
    {
        Ok(answer) => {
            tracing::info!(revoked = answer.get_ref().revoked, "revocation");
            no_store(StatusCode::OK.into_response())
        }
        Err(status) => throttled_or_unavailable(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn form_decoding_handles_plus_and_percent_escapes() {
        assert_eq!(form_decode("a+b%3Ac%25").as_deref(), Some("a b:c%"));
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%4"), None);
    }

    #[test]
    fn basic_credentials_are_base64_of_form_encoded_id_and_secret() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("svc%2B1:s3cr%3At");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let auth = client_auth(&headers, &Params(Vec::new())).unwrap();
        assert_eq!(
            auth.credentials,
            Some(("svc+1".to_owned(), "s3cr:t".to_owned()))
        );
        assert!(auth.used_header);
    }

    #[test]
    fn header_and_form_credentials_together_are_invalid_request() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YTpi"),
        );
        let params = Params(vec![("client_id".into(), "a".into())]);
        let error = client_auth(&headers, &params).err().unwrap();
        assert_eq!(error.error, "invalid_request");
    }
}
